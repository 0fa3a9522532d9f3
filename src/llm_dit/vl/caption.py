"""Captions from Qwen3-VL (Instruct or Thinking), for caption-aligned conditioning (seed 004).

A Thinking model's generation prompt opens ``<think>``, so its output usually reads
``reasoning </think> caption``; an Instruct model writes the caption directly. Generation can stop
at its token budget inside the reasoning (no ``</think>``), and models sometimes nest tags or write
a line before ``<think>``: :func:`parse_thinking_content` handles each case.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..config import DEFAULT_MAX_PIXELS
from ..errors import LlmDitError

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "You write captions for a text-to-image model. Describe the image in one detailed paragraph: the "
    "subjects and what they do, composition and framing, colors, lighting, materials, style and medium, "
    "and the background. Describe only what is visible."
)
DEFAULT_PROMPT = "Describe this image in detail."

OPEN, CLOSE = "<think>", "</think>"


def parse_thinking_content(text: str, started_in_thinking: bool = False) -> tuple[str, str | None]:
    """Split generated text into ``(caption, thinking)``; ``thinking`` is None when there was none.

    * The **last** ``</think>`` ends the reasoning; everything after it is the caption. Nested tags
      inside the reasoning stay part of it.
    * With ``started_in_thinking`` (Thinking models: the generation prompt opened the block) all
      text before that point is reasoning. Otherwise the reasoning starts after the first
      ``<think>``, and text before it is not reasoning: it is kept in the caption.
    * A ``<think>`` after the last ``</think>`` opens a block that was cut off: it and what follows
      are dropped from the caption.
    * No ``</think>`` although reasoning began (the token budget ran out): the caption is what came
      before ``<think>`` (usually empty) and the rest is thinking.
    """
    close = text.rfind(CLOSE)
    head, tail = (text[:close], text[close + len(CLOSE):]) if close >= 0 else (text, "")
    reopened = tail.find(OPEN)
    if reopened >= 0:  # a new reasoning block began after the answer and was cut off: not caption
        tail = tail[:reopened]
    open_at = -1 if started_in_thinking else head.find(OPEN)
    if open_at >= 0:
        before, thinking = head[:open_at], head[open_at + len(OPEN):]
    elif close >= 0 or started_in_thinking:
        before, thinking = "", head.removeprefix(OPEN) if started_in_thinking else head
    else:
        return text.strip(), None
    caption = "\n\n".join(part for part in (before.strip(), tail.strip()) if part)
    return caption, thinking.strip()


@dataclass
class Caption:
    caption: str
    thinking: str | None
    raw: str
    tokens: int
    attempts: int


def caption_image(
    extractor,
    image,
    min_tokens: int = 0,
    max_new_tokens: int = 1024,
    prompt: str = DEFAULT_PROMPT,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    temperature: float = 0.6,
    top_p: float = 0.95,
    top_k: int = 20,
    attempts: int = 3,
    seed: int = 42,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Caption:
    """Caption ``image``; retry (temperature +0.1 each time, new seed) until the caption has at least
    ``min_tokens`` tokens, else fail with one sentence that says what to change."""
    if min_tokens < 0 or attempts < 1:
        raise LlmDitError("min_tokens must be >= 0 and attempts >= 1")
    if not (isinstance(temperature, (int, float)) and 0 <= temperature < float("inf")):
        raise LlmDitError(f"temperature must be a number >= 0 (got {temperature})")
    thinking_model = extractor.variant == "thinking"
    best = None
    for attempt in range(attempts):
        t = temperature + 0.1 * attempt if temperature > 0 else 0.0
        log.info(f"caption: attempt {attempt + 1}/{attempts}, up to {max_new_tokens} new tokens"
                 + (f" for at least {min_tokens}" if min_tokens else "") + f" (temperature {t:.2g})")
        raw = extractor.generate(prompt, image, system_prompt=system_prompt, max_new_tokens=max_new_tokens,
                                 temperature=t, top_p=top_p, top_k=top_k, seed=seed + attempt,
                                 max_pixels=max_pixels)
        caption, thinking = parse_thinking_content(raw, started_in_thinking=thinking_model)
        n = len(extractor.tokenizer(caption, add_special_tokens=False).input_ids) if caption else 0
        best = Caption(caption, thinking, raw, n, attempt + 1)
        log.info(f"caption: {n} tokens" + (" (after the model's thinking)" if thinking is not None else ""))
        if n >= max(min_tokens, 1):
            return best
        if temperature == 0:
            break  # greedy decoding would repeat itself
    budget_hit = best.thinking is not None and CLOSE not in best.raw
    why = "the reasoning used the whole token budget" if budget_hit else f"it had {best.tokens} tokens"
    raise LlmDitError(
        f"no usable caption after {best.attempts} attempt(s): {why}; at least {max(min_tokens, 1)} were asked "
        "(raise --max-new-tokens or lower --min-tokens)"
    )
