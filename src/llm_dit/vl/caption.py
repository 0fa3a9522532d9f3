"""Captions from Qwen3-VL (Instruct or Thinking), for caption-aligned conditioning (seed 004).

A Thinking model's generation prompt opens ``<think>``, so its output usually reads
``reasoning </think> caption``; an Instruct model writes the caption directly. Generation can stop
at its token budget inside the reasoning (no ``</think>``), and models sometimes nest tags or write
a line before ``<think>``: :func:`parse_thinking_content` handles each case.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..config import DEFAULT_MAX_PIXELS, Config
from ..errors import LlmDitError
from ..limits import (
    MAX_CAPTION_ATTEMPTS,
    MAX_NEW_TOKENS,
    MAX_PIXELS,
    MAX_SEED,
    MAX_TEMPERATURE,
    MAX_TOP_K,
    check_number,
)
from ..protocols import Captioner
from .chat import CLOSE, OPEN

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "You write captions for a text-to-image model. Describe the image in one detailed paragraph: the "
    "subjects and what they do, composition and framing, colors, lighting, materials, style and medium, "
    "and the background. Describe only what is visible."
)
DEFAULT_PROMPT = "Describe this image in detail."

#: New tokens for a caption by default. A Thinking model reasons first, and its reasoning is generated
#: from the same budget: it gets THINKING_BUDGET more (seed 004 gave 2500 tokens for a 1024 target).
CAPTION_BUDGET = 1024
THINKING_BUDGET = 1536



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
    raw: str  # the whole reply, reasoning and think tags included
    tokens: int
    attempts: int
    max_new_tokens: int = 0  # the generation budget it had (thinking plus caption)


@dataclass(frozen=True)
class CaptionRequest:
    """How to ask Qwen3-VL for a caption (the sampling settings are Qwen3's recommended ones)."""

    prompt: str = DEFAULT_PROMPT
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT  # None: no system turn
    min_tokens: int = 0  # fewer tokens than this (or none at all): ask again
    # Thinking and caption together; None: CAPTION_BUDGET, plus THINKING_BUDGET for a Thinking model.
    max_new_tokens: int | None = None
    attempts: int = 3
    temperature: float = 0.6  # raised by 0.1 per attempt; 0: greedy, one attempt
    top_p: float = 0.95
    top_k: int = 20
    seed: int = 42  # attempt ``i`` samples with ``seed + i``
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        """Every number in its range (:mod:`llm_dit.limits`), refused here: before a model generates."""
        check_number(self.min_tokens, "min_tokens", whole=True, ge=0, le=MAX_NEW_TOKENS)
        if self.max_new_tokens is not None:
            check_number(self.max_new_tokens, "max_new_tokens", whole=True, ge=1, le=MAX_NEW_TOKENS)
        check_number(self.attempts, "attempts", whole=True, ge=1, le=MAX_CAPTION_ATTEMPTS)
        check_number(self.temperature, "temperature", ge=0, le=MAX_TEMPERATURE)
        check_number(self.top_p, "top_p", gt=0, le=1)
        check_number(self.top_k, "top_k", whole=True, ge=0, le=MAX_TOP_K)
        check_number(self.seed, "seed", whole=True, ge=0, le=MAX_SEED)
        if self.max_pixels is not None:
            check_number(self.max_pixels, "max_pixels", whole=True, ge=1024, le=MAX_PIXELS)


def caption_image(extractor: Captioner, image, request: CaptionRequest | None = None) -> Caption:
    """Caption ``image``; retry (temperature +0.1 each time, new seed) until the caption has at least
    ``request.min_tokens`` tokens, else fail with one sentence that says what to change."""
    r = request or CaptionRequest()  # its numbers are checked when it is made
    min_tokens, temperature = r.min_tokens, r.temperature
    thinking_model = extractor.variant == "thinking"
    budget = r.max_new_tokens or CAPTION_BUDGET + (THINKING_BUDGET if thinking_model else 0)
    best: Caption | None = None
    for attempt in range(r.attempts):
        t = temperature + 0.1 * attempt if temperature > 0 else 0.0
        log.info(f"caption: attempt {attempt + 1}/{r.attempts}, up to {budget} new tokens"
                 + (f" for at least {min_tokens}" if min_tokens else "") + f" (temperature {t:.2g})")
        raw = extractor.generate(r.prompt, image, system_prompt=r.system_prompt, max_new_tokens=budget,
                                 temperature=t, top_p=r.top_p, top_k=r.top_k, seed=r.seed + attempt,
                                 max_pixels=r.max_pixels)
        caption, thinking = parse_thinking_content(raw, started_in_thinking=thinking_model)
        n = len(extractor.tokenizer(caption, add_special_tokens=False).input_ids) if caption else 0
        best = Caption(caption, thinking, raw, n, attempt + 1, budget)
        log.info(f"caption: {n} tokens" + (" (after the model's thinking)" if thinking is not None else ""))
        if n >= max(min_tokens, 1):
            return best
        if temperature == 0:
            break  # greedy decoding would repeat itself
    assert best is not None, "attempts >= 1 (checked above)"
    budget_hit = best.thinking is not None and CLOSE not in best.raw
    why = "the reasoning used the whole token budget" if budget_hit else f"it had {best.tokens} tokens"
    raise LlmDitError(
        f"no usable caption after {best.attempts} attempt(s): {why}; at least {max(min_tokens, 1)} were asked "
        "(raise --max-new-tokens or lower --min-tokens)"
    )


# -- captions of a target length (seed 004's caption experiments) ----------------------------
# A caption of target ``n`` tokens is asked for in about ``0.75 n`` words (English runs about 1.33
# tokens per word) and cut to at most ``n`` tokens of the VL tokenizer, which Qwen3-4B shares.


def _tokenizer(vl: Captioner | None, config: Config):
    if vl is not None:
        return vl.tokenizer
    from transformers import AutoTokenizer

    from ..models.loading import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(config.models.vl, "vl"))


def cut(text: str, n: int, tokenizer) -> tuple[str, int]:
    """``text`` cut to at most ``n`` tokens; returns it and its token count."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) <= n:
        return text, len(ids)
    return tokenizer.decode(ids[:n]).strip(), n


def make_caption(vl: Captioner | None, image, n: int, config: Config,
                 given: str | None = None, max_new_tokens: int | None = None) -> tuple[str, dict]:
    """``(caption, metadata)`` of about ``n`` tokens for ``image`` (``vl``: None only with ``given``).
    ``max_new_tokens``: the generation budget, thinking and caption together (seed 004's
    ``--max-tokens``); None: ``n``, plus THINKING_BUDGET for a Thinking model."""
    tok = _tokenizer(vl, config)
    if given is not None:
        text, tokens = cut(given.strip(), n, tok)
        return text, {"target_tokens": n, "tokens": tokens, "source": "given"}
    assert vl is not None, "a caption is generated by Qwen3-VL or given"
    words = max(8, round(0.75 * n))
    request = f"Describe this image in detail, in about {words} words."
    budget = max_new_tokens or n + (THINKING_BUDGET if vl.variant == "thinking" else 0)
    cap = caption_image(vl, image, CaptionRequest(prompt=request, max_new_tokens=budget, seed=config.generation.seed,
                                                  max_pixels=config.vl.max_pixels))
    text, tokens = cut(cap.caption, n, tok)
    return text, {"target_tokens": n, "tokens": tokens, "source": "generated", "request": request,
                  "model_variant": vl.variant, "attempts": cap.attempts, "thinking": cap.thinking,
                  "raw": cap.raw, "generated_tokens": cap.tokens, "max_new_tokens": budget}
