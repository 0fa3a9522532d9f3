"""The ``dopsd`` backend's model: D-OPSD's multimodal features (arXiv 2605.05204).

Qwen3-VL's ``Qwen3VLModel`` (its config, vision tower and forward: M-RoPE from its ``text_config``,
DeepStack) whose language model runs on Z-Image's Qwen3-4B text-encoder weights, the very tensors of
the loaded encoder, lent for each forward pass (:func:`lent_weights`). Qwen3-VL's own language
weights are never read. :class:`~llm_dit.vl.extract.VLEmbeddingExtractor` runs it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import InputError, ModelLoadError
from ..models.loading import first_line

#: The sizes in which the text encoder must equal Qwen3-VL's ``text_config`` (the dopsd backend).
ARCHITECTURE = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "head_dim", "vocab_size")


def check_same_architecture(text_config, encoder_config, vl_name: str = "Qwen3-VL") -> None:
    """Refuse, in one sentence, a text encoder whose sizes (:data:`ARCHITECTURE`) differ from Qwen3-VL's
    language model's: its weights cannot stand in for Qwen3-VL's (the dopsd backend)."""
    diffs = [f"{k} {getattr(encoder_config, k, None)} vs {getattr(text_config, k, None)}" for k in ARCHITECTURE
             if getattr(encoder_config, k, None) != getattr(text_config, k, None)]
    if diffs:
        raise ModelLoadError(f"the dopsd backend needs Z-Image's text encoder to match {vl_name}'s language model, "
                             f"but they differ ({', '.join(diffs)}; text encoder vs {vl_name})")


def build_dopsd_model(source: str, text_encoder, vision, vl_name: str = "Qwen3-VL"):
    """``Qwen3VLModel`` (Qwen3-VL's config, vision tower and forward) whose language model runs on
    ``text_encoder``'s weights: the very tensors, not copies (:func:`lent_weights`).

    Built on the meta device (no memory, no random initialisation), then the loaded ``vision`` tower
    is put in place. The language model takes the encoder's state dict once with ``assign=True``, to
    check that it fits, and gives it back: it holds the encoder's tensors only during a forward pass.
    Only the rotary table (M-RoPE's ``inv_freq``, a buffer outside the state dict) is its own,
    computed from Qwen3-VL's ``text_config``.
    """
    from transformers import AutoConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel, Qwen3VLTextRotaryEmbedding

    config = AutoConfig.from_pretrained(source)
    check_same_architecture(config.text_config, text_encoder.config, vl_name)
    dtype = text_encoder.dtype
    with torch.device("meta"):
        model = Qwen3VLModel._from_config(config, dtype=dtype)
    model.visual = vision
    lm = model.language_model
    try:
        lm.load_state_dict(text_encoder.state_dict(), strict=True, assign=True)
    except RuntimeError as e:
        raise ModelLoadError(f"Z-Image's text encoder does not load into {vl_name}'s language model: "
                             f"{first_line(e)}") from e
    with torch.device(text_encoder.device):
        lm.rotary_emb = Qwen3VLTextRotaryEmbedding(config=config.text_config)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a tensor neither the tower nor the encoder gave
        raise ModelLoadError(f"{vl_name}: no weights for {left[0]} in the dopsd model")
    _give_back(lm)
    return model.eval()


def _give_back(lm) -> None:
    """Replace every parameter of ``lm`` by a meta tensor of its shape: no reference is kept."""
    for module in lm.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)


@contextlib.contextmanager
def lent_weights(lm, text_encoder, device: torch.device) -> Iterator[None]:
    """``lm`` runs on ``text_encoder``'s tensors as they are now, for one forward pass.

    Resident on ``device``, the encoder's tensors themselves are assigned (the same ``data_ptr``; no
    copy). Where an offloading policy keeps them elsewhere (on the CPU between uses, under
    ``group_*``, ``model`` or ``encoder``), each is copied to ``device`` for this pass only. Afterwards
    ``lm`` holds meta tensors again, so it never keeps a tensor the encoder's offloading has since
    replaced (which would pin a stale copy in memory) and never runs on one that was moved away.
    """
    state = {k: v if v.device == device else v.to(device) for k, v in text_encoder.state_dict().items()}
    lm.load_state_dict(state, strict=True, assign=True)
    del state
    try:
        yield
    finally:
        _give_back(lm)


def cut_chat(inputs, limit: int, special) -> tuple[Any, int]:
    """The processed chat cut to its first ``limit`` tokens (D-OPSD's tokenizer limit), and the number
    of tokens cut; refused when an image would be cut (``special``: the chat's :class:`SpecialIds`)."""
    ids = inputs["input_ids"][0]
    n = int(ids.shape[0])
    if n <= limit:
        return inputs, 0
    vision = torch.isin(ids, torch.tensor([special.vision_start, special.image_pad, special.vision_end])).nonzero()
    if len(vision) and int(vision[-1]) >= limit:
        raise InputError(f"the chat's images reach token {int(vision[-1]) + 1}, past the dopsd backend's limit of "
                         f"{limit} tokens: lower max_pixels or give fewer images")
    for k in ("input_ids", "attention_mask", "mm_token_type_ids"):
        if k in inputs:
            inputs[k] = inputs[k][:, :limit]
    return inputs, n - limit
