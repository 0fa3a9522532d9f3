"""The Qwen3-VL chat: messages, the processor, the pixel budget and the model variant.

The chat is one user turn ``[image_1, ..., image_n, text]`` after an optional system turn, rendered
with the checkpoint's own chat template and generation prompt. The processor resizes each image so
that its pixel count lies within ``[min_pixels, max_pixels]`` at multiples of ``patch * merge = 32``
and expands each ``<|image_pad|>`` to one token per merged ``2 x 2`` patch group, so a
``max_pixels`` budget is a token budget: about ``max_pixels / 1024`` tokens per image.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..errors import InputError, ModelLoadError
from ..limits import MAX_PIXELS, check_number

log = logging.getLogger(__name__)

#: The tags of a Thinking model's reasoning block. Qwen3's tokenizers do not mark them special, but a
#: checkpoint may: :func:`decode_reply` keeps them either way.
OPEN, CLOSE = "<think>", "</think>"

#: Qwen's resizing refuses images whose long side is more than 200 times the short side.
MAX_ASPECT_RATIO = 200


def check_aspect_ratio(image: Image.Image, name: str) -> None:
    """Refuse an image Qwen3-VL's resizing cannot take; ``name`` says which, as ``load_image`` names an
    image: what it is and its file (``"reference image 2 /data/strip.png"``)."""
    w, h = image.size
    if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
        raise InputError(f"{name} is {w}x{h} pixels, too elongated for Qwen3-VL (aspect ratio above "
                         f"{MAX_ASPECT_RATIO})")


def build_messages(images: list[Image.Image], text: str | None, system_prompt: str | None) -> list[dict]:
    content: list[dict] = [{"type": "image"} for _ in images]
    if text:
        content.append({"type": "text", "text": text})
    if not content:
        raise InputError("the chat is empty: give at least one image or some text")
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({"role": "user", "content": content})
    return messages


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
        f"{TOKENIZER_TEMPLATE_SOURCE}; a Qwen3-VL checkpoint ships one in chat_template.json")


def load_processor(path: str, tokenizer=None):
    """``Qwen3VLProcessor`` from a checkpoint folder, with or without torchvision, and the chat template
    it renders with (:func:`resolve_chat_template`; the tokenizer is given the same one, so no code
    path can render with another).

    ``AutoProcessor`` needs torchvision for Qwen3-VL's video processor. Without it we build the
    processor from the image processor (the PIL implementation) and the tokenizer, with no video
    processor: images work the same way, videos are not supported.
    """
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen3VLProcessor

    class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
        def check_argument_for_proper_class(self, name, arg):
            if name == "video_processor" and arg is None:
                return None
            return super().check_argument_for_proper_class(name, arg)

    tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
    template = resolve_chat_template(path, tokenizer)
    if template.tokenizer_differs:
        log.warning(f"{path}: the tokenizer's chat template differs from {template.source}'s; using {template.source}, "
                    "as transformers' processor does")
    tokenizer.chat_template = template.text
    image_processor = AutoImageProcessor.from_pretrained(path)
    processor = ImageOnlyQwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=template.text,
    )
    return processor, template


def detect_variant(processor) -> str:
    """``thinking`` when the chat template's generation prompt opens a ``<think>`` block, else ``instruct``.

    Read from what the template renders, not from the model's name or path.
    """
    messages = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    rendered = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "thinking" if rendered.rstrip().endswith("<think>") else "instruct"


def decode_reply(tokenizer, ids) -> str:
    """Generated token ids as text: special tokens (end of turn, padding) removed, the think tags kept
    whether or not the tokenizer marks them special (``skip_special_tokens`` would erase a special
    ``</think>`` and turn a whole reply into reasoning)."""
    keep = {tokenizer.convert_tokens_to_ids(tag) for tag in (OPEN, CLOSE)}
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    drop = special - keep
    return tokenizer.decode([int(i) for i in ids if int(i) not in drop], skip_special_tokens=False)


def pixel_bounds(processor, max_pixels: int | None) -> dict | None:
    """The processor ``size`` override for a pixel budget (``None``: the checkpoint's own)."""
    if max_pixels is None:
        return None
    check_number(max_pixels, "max_pixels", whole=True, ge=32 * 32, le=MAX_PIXELS)  # at least one 32x32 token
    min_pixels = processor.image_processor.size.get("shortest_edge", 32 * 32)
    return {"shortest_edge": min(min_pixels, max_pixels), "longest_edge": max_pixels}


def run_processor(processor, messages: list[dict], images: list[Image.Image], max_pixels: int | None,
                  answer_prefix: str = ""):
    """Render the chat with the generation prompt (plus ``answer_prefix``, the start of the
    assistant's turn) and process it: input ids, pixels, grids."""
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + answer_prefix
    kwargs = {}
    size = pixel_bounds(processor, max_pixels)
    if size is not None:
        kwargs["size"] = size
    return processor(text=[text], images=images or None, return_tensors="pt", **kwargs)
