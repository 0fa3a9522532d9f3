"""Z-Image's own text encoding (Qwen3-4B), exactly as diffusers' ``ZImagePipeline.encode_prompt``.

    prompt -> chat template (user turn, generation prompt, enable_thinking=True)
           -> tokens (at most ``max_length``, template included)
           -> Qwen3 forward -> hidden_states[hidden_layer][0]          # [L, D], D = 2560 real, 64 tiny

``hidden_states`` has ``num_hidden_layers + 1`` entries: index 0 is the token embeddings, index k
the output of decoder layer k-1 (raw residual stream), and -1 the final-normed output. Z-Image was
trained on -2. diffusers pads to ``max_length`` on the tokenizer's ``padding_side`` and drops the
padded positions afterwards; the attention mask keeps the real positions from seeing the padding;
we pad the same way so the result is bit-identical to diffusers under either side (the tests check
this).

Prompts longer than ``max_length`` tokens: ``truncate`` cuts the token sequence there (as diffusers,
which can cut off the template's closing tokens), the other modes encode the whole prompt and
shorten the embedding sequence with :func:`llm_dit.text.long_prompt.fit_length`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import MAX_CAPTION_TOKENS
from ..errors import InputError
from .capture import canonical_layer, capture_hidden_states
from .long_prompt import fit_length


@dataclass
class TextEncoding:
    """One encoded prompt. ``embeddings`` is ``[L, D]`` float32 on the CPU."""

    embeddings: torch.Tensor
    prompt: str
    formatted_prompt: str
    hidden_layer: int
    prompt_tokens: int  # tokens of the formatted prompt before any shortening
    max_length: int
    long_prompt_mode: str
    truncated: bool = False  # tokens were cut off (truncate mode)
    compressed: bool = False  # embeddings were shortened by interpolate/pool/attention_pool
    token_ids: list[int] = field(default_factory=list, repr=False)

    @property
    def num_tokens(self) -> int:
        return int(self.embeddings.shape[0])

    def summary(self) -> dict:
        return {
            "hidden_layer": self.hidden_layer,
            "prompt_tokens": self.prompt_tokens,
            "num_tokens": self.num_tokens,
            "max_length": self.max_length,
            "long_prompt_mode": self.long_prompt_mode,
            "truncated": self.truncated,
            "compressed": self.compressed,
            "std": float(self.embeddings.std()) if self.num_tokens > 1 else 0.0,
        }


def check_prompt(prompt: str) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("the prompt is empty")
    return prompt


@torch.no_grad()
def run_text_encoder(
    text_encoder,
    ids: list[int],
    layers: list[int],
    min_length: int = 0,
    pad_id: int | None = 0,
    image_features: torch.Tensor | None = None,
    image_token_id: int | None = None,
    padding_side: str = "right",
) -> dict[int, torch.Tensor]:
    """``{k: hidden_states[k][0, real]}`` (float32, CPU, ``[n, D]``) of a Qwen3 encoder for canonical
    indices ``k``, ``real`` being the ``n`` positions of ``ids``.

    The sequence is padded to ``min_length`` on ``padding_side`` (the tokenizer's, as diffusers
    pads) with an attention mask, exactly as diffusers does: the kept positions are mathematically
    independent of the padding (with left padding they sit at positions ``width - n ..``, and RoPE
    sees only relative offsets), but the kernels round differently, and bit-exact parity with
    diffusers is worth ~1 ms. With ``image_features: [m, D]`` (the splice backend) the input embeddings at the ``m``
    ``image_token_id`` positions are replaced by them. The pass stops after the deepest layer.
    """
    n = len(ids)
    width = max(n, min_length)
    device = text_encoder.device
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side is '{padding_side}'; a tokenizer pads 'right' or 'left'")
    real = slice(0, n) if padding_side == "right" else slice(width - n, width)
    input_ids = torch.full((1, width), pad_id if pad_id is not None else 0, dtype=torch.long, device=device)
    input_ids[0, real] = torch.tensor(ids, dtype=torch.long, device=device)
    mask = torch.zeros((1, width), dtype=torch.bool, device=device)
    mask[0, real] = True
    kwargs: dict = {"attention_mask": mask, "use_cache": False}
    if image_features is None:
        kwargs["input_ids"] = input_ids
    else:
        assert image_token_id is not None, "image features replace the embeddings of their slot token"
        embeds = text_encoder.get_input_embeddings()(input_ids)
        slots = input_ids[0] == image_token_id
        if int(slots.sum()) != image_features.shape[0]:
            raise ValueError(f"{int(slots.sum())} image slots for {image_features.shape[0]} image features")
        embeds[0, slots] = image_features.to(embeds.device, embeds.dtype)
        kwargs["inputs_embeds"] = embeds
    # Streamed through the GPU (offload "encoder", group_*: diffusers' hooks on the encoder), the pass
    # runs to its end, so the hooks offload what they brought in and settle their prefetch order.
    streamed = getattr(text_encoder, "_diffusers_hook", None) is not None
    states = capture_hidden_states(text_encoder.layers, text_encoder.norm, layers, lambda: text_encoder(**kwargs),
                                   stop_early=not streamed)
    return {k: v[0, real].float().cpu() for k, v in states.items()}


def format_prompt(tokenizer, prompt: str) -> str:
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=True)


@torch.no_grad()
def encode_prompt(
    tokenizer,
    text_encoder,
    prompt: str,
    hidden_layer: int = -2,
    max_length: int = 512,
    long_prompt_mode: str = "truncate",
    allow_empty: bool = False,
) -> TextEncoding:
    """Encode one prompt as Z-Image does; see the module docstring for the math.

    ``allow_empty`` admits ``""``, which is what diffusers encodes as the default negative prompt.
    """
    if not allow_empty:
        check_prompt(prompt)
    if not 1 <= max_length <= MAX_CAPTION_TOKENS:
        raise InputError(f"max_length must be in 1..{MAX_CAPTION_TOKENS} (got {max_length})")
    k = canonical_layer(hidden_layer, text_encoder.config.num_hidden_layers, "text encoder")
    formatted = format_prompt(tokenizer, prompt)
    ids = tokenizer(formatted, add_special_tokens=False).input_ids
    n_prompt = len(ids)
    truncated = long_prompt_mode == "truncate" and n_prompt > max_length
    if long_prompt_mode == "truncate":
        ids = ids[:max_length]
    limit = getattr(text_encoder.config, "max_position_embeddings", None)
    if limit and len(ids) > limit:
        raise InputError(f"the prompt has {len(ids)} tokens; the text encoder accepts at most {limit}")

    emb = run_text_encoder(text_encoder, ids, [k], min_length=max_length, pad_id=tokenizer.pad_token_id,
                           padding_side=tokenizer.padding_side)[k]
    compressed = emb.shape[0] > max_length
    emb = fit_length(emb, max_length, long_prompt_mode)
    return TextEncoding(
        embeddings=emb,
        prompt=prompt,
        formatted_prompt=formatted,
        hidden_layer=hidden_layer,
        prompt_tokens=n_prompt,
        max_length=max_length,
        long_prompt_mode=long_prompt_mode,
        truncated=truncated,
        compressed=compressed,
        token_ids=ids,
    )
