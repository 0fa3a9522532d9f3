"""The Qwen3-VL chat: messages, the processor, the pixel budget and the model variant.

The chat is one user turn ``[image_1, ..., image_n, text]`` after an optional system turn, rendered
with the checkpoint's own chat template and generation prompt. The processor resizes each image so
that its pixel count lies within ``[min_pixels, max_pixels]`` at multiples of ``patch * merge = 32``
and expands each ``<|image_pad|>`` to one token per merged ``2 x 2`` patch group, so a
``max_pixels`` budget is a token budget: about ``max_pixels / 1024`` tokens per image.
"""

from __future__ import annotations

import logging

from PIL import Image

from ..errors import InputError
from ..limits import MAX_PIXELS, check_number
from ..models.chat_template import resolve_chat_template

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


def pixel_bounds(processor, max_pixels: int | None, min_pixels: int | None = None) -> dict | None:
    """The processor ``size`` override for a pixel budget (``None``: the checkpoint's own).
    ``min_pixels``: a floor other than the checkpoint's (smaller images are enlarged up to it; the
    ``dopsd`` backend's 512 x 512), unless it is above ``max_pixels``."""
    if max_pixels is None:
        return None
    check_number(max_pixels, "max_pixels", whole=True, ge=32 * 32, le=MAX_PIXELS)  # at least one 32x32 token
    if min_pixels is None or min_pixels > max_pixels:
        # a floor above the budget is dropped, not clamped to it: the processor rounds an enlarged
        # image up, past a floor equal to the bound
        min_pixels = processor.image_processor.size.get("shortest_edge", 32 * 32)
    return {"shortest_edge": min(min_pixels, max_pixels), "longest_edge": max_pixels}


def run_processor(processor, messages: list[dict], images: list[Image.Image], max_pixels: int | None,
                  answer_prefix: str = "", min_pixels: int | None = None):
    """Render the chat with the generation prompt (plus ``answer_prefix``, the start of the
    assistant's turn) and process it: input ids, pixels, grids (each image's pixels within
    ``[min_pixels, max_pixels]``; see :func:`pixel_bounds`)."""
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + answer_prefix
    kwargs = {}
    size = pixel_bounds(processor, max_pixels, min_pixels)
    if size is not None:
        kwargs["size"] = size
    return processor(text=[text], images=images or None, return_tensors="pt", **kwargs)
