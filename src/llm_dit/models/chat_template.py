"""The chat template a checkpoint's processor renders with, found as transformers finds it.

A Qwen3-VL checkpoint may keep its template in four places; transformers' processor and tokenizer
read different ones, and a checkpoint may carry two copies that differ. :func:`resolve_chat_template`
answers which one the processor uses, from the files alone (no weights).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError

#: Where a checkpoint keeps the chat template its processor uses, in the order transformers' processor
#: reads them (``ProcessorMixin.get_processor_dict``, measured on 5.25): a ``chat_template`` key in
#: ``processor_config.json``, else the legacy ``chat_template.json`` (Qwen3-VL's published layout),
#: else ``chat_template.jinja`` (so with both files the ``.json`` one wins, as in transformers). Only
#: then the tokenizer's own (``tokenizer_config.json``).
PROCESSOR_TEMPLATE_FILES = ("processor_config.json", "chat_template.json", "chat_template.jinja")
TOKENIZER_TEMPLATE_SOURCE = "tokenizer_config.json"


@dataclass(frozen=True)
class ChatTemplate:
    """The chat template a checkpoint's processor renders with, and where it came from.

    ``source``: one of :data:`PROCESSOR_TEMPLATE_FILES` or ``tokenizer_config.json``.
    ``tokenizer_differs``: the tokenizer carries another template, which is not used (Qwen2.5-VL
    once shipped such a pair; the processor's copy is the one transformers' processor uses).
    """

    text: str
    source: str
    tokenizer_differs: bool = False

    def to_dict(self) -> dict:
        return {"source": self.source, "tokenizer_differs": self.tokenizer_differs,
                "sha256": hashlib.sha256(self.text.encode()).hexdigest()}


def _checkpoint_file(source: str, name: str) -> Path | None:
    """``name`` in the folder or hub id ``source`` (the hub cache; no error when it is absent)."""
    folder = Path(source)
    if folder.is_dir():
        path = folder / name
        return path if path.is_file() else None
    from transformers.utils import cached_file

    # transformers' own lookup (cache, offline mode) with its documented "absent is None" switch.
    found = cached_file(source, name, _raise_exceptions_for_missing_entries=False)
    return Path(found) if found else None


def _template_in(path: Path, name: str) -> str | None:
    """The template text ``path`` holds (None: a processor config without one); a one-line
    :class:`ModelLoadError` for a file that is not what its name says."""
    try:
        text = path.read_text(encoding="utf-8")
        if name.endswith(".jinja"):
            return text
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path} cannot be read as {name}: {e}") from None
    template = data.get("chat_template") if isinstance(data, dict) else None
    if template is None and name == "processor_config.json":
        return None
    if not isinstance(template, str) or not template.strip():
        raise ModelLoadError(f"{path} holds no chat template: expected a JSON object with a \"chat_template\" string")
    return template


def resolve_chat_template(source: str, tokenizer) -> ChatTemplate:
    """The template transformers' processor would use for the checkpoint ``source`` (a folder or hub
    id), else the tokenizer's; a one-line :class:`ModelLoadError` naming ``source`` when there is none."""
    own = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    for name in PROCESSOR_TEMPLATE_FILES:
        path = _checkpoint_file(source, name)
        text = _template_in(path, name) if path is not None else None
        if text is not None:
            return ChatTemplate(text, name, tokenizer_differs=own is not None and own != text)
    if own:
        return ChatTemplate(own, TOKENIZER_TEMPLATE_SOURCE)
    raise ModelLoadError(
        f"{source} has no chat template: none in {', '.join(PROCESSOR_TEMPLATE_FILES[1:])} or its "
        f"{TOKENIZER_TEMPLATE_SOURCE}; copy the chat_template.json of the model's repository into it")
