"""Z-Image attention with its rotary embedding in real arithmetic, for ``runtime.compile``.

diffusers' ``ZSingleStreamAttnProcessor`` rotates queries and keys as complex numbers
(``view_as_complex(x) * freqs_cis``). TorchInductor generates no code for complex operators: it
falls back to eager kernels there, so every block of a compiled DiT leaves its fused code four
times (q and k, each cast to float32, multiplied, cast back), about 0.6 GB of memory traffic per
block at 1024 x 1024. The same rotation written with real numbers fuses into the kernels around
it. With a pair ``(a, b)`` of one head's channels and ``freqs_cis = c + i s`` for its position:

    (a + i b)(c + i s) = (a c - b s) + i (a s + b c)

computed in float32 as diffusers does, then cast back to the model's dtype. Everything else is the
stock processor's: projections, the q/k RMSNorm, diffusers' attention dispatch (so the backend
chosen by ``runtime.attention`` applies), the output projection.

Shapes: ``hidden_states`` (batch, seq, dim); q, k, v (batch, seq, heads, head_dim);
``freqs_cis`` (batch, seq, head_dim / 2) complex64.
"""

from __future__ import annotations

from typing import cast

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_z_image import ZSingleStreamAttnProcessor


def rotate(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """``x`` (batch, seq, heads, head_dim) rotated by ``freqs_cis`` (batch, seq, head_dim / 2),
    channel pairs ``(2j, 2j + 1)`` taken as complex numbers, in float32; the result in ``x``'s dtype."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (..., head_dim / 2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    f = torch.view_as_real(freqs_cis).unsqueeze(2)  # (batch, seq, 1, head_dim / 2, 2): a view, no copy
    c, s = f[..., 0], f[..., 1]
    return torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2).type_as(x)


class RealRopeAttnProcessor(ZSingleStreamAttnProcessor):
    """``ZSingleStreamAttnProcessor`` with :func:`rotate` in place of its complex multiply."""

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, freqs_cis: torch.Tensor | None = None) -> torch.Tensor:
        if getattr(attn, "fused_projections", False):  # see fuse_qkv: one matrix product instead of three
            q, k, v = attn.to_qkv(hidden_states).unflatten(-1, (3 * attn.heads, -1)).chunk(3, dim=-2)
        else:
            q, k, v = (p(hidden_states).unflatten(-1, (attn.heads, -1)) for p in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if freqs_cis is not None:
            q, k = rotate(q, freqs_cis), rotate(k, freqs_cis)
        if attention_mask is not None and attention_mask.ndim == 2:  # (batch, seq): a padded batch
            attention_mask = attention_mask[:, None, None, :]
        out = dispatch_attention_fn(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend, parallel_config=self._parallel_config)
        out = attn.to_out[0](out.flatten(2, 3).to(q.dtype))
        return attn.to_out[1](out) if len(attn.to_out) > 1 else out


def use_real_rope(transformer) -> int:
    """Give every attention layer of a Z-Image ``transformer`` a :class:`RealRopeAttnProcessor`
    (keeping the attention backend each had); the number of layers changed."""
    changed = 0
    for module in transformer.modules():
        proc = getattr(module, "processor", None)
        if type(proc) is ZSingleStreamAttnProcessor:
            new = RealRopeAttnProcessor()
            new.__dict__.update(proc.__dict__)  # _attention_backend, _parallel_config
            module.set_processor(new)
            changed += 1
    return changed


class RowsOf(torch.nn.Module):
    """``to_q``, ``to_k`` or ``to_v`` after :func:`fuse_qkv`: rows of the fused projection that hold no
    tensor of their own. Views kept as parameters would become copies the first time the DiT moves
    between devices (``Module.to`` copies each parameter apart, as offloading hooks do), adding a third
    of the attention weights; these read the fused layer's tensors as they are at the time."""

    def __init__(self, fused: torch.nn.Module, rows: slice) -> None:
        super().__init__()
        self._fused = (fused,)  # in a tuple: not a submodule, so neither moved nor counted twice
        self.rows = rows

    def _part(self, name: str) -> torch.Tensor | None:
        t = getattr(self._fused[0], name)
        return None if t is None else t[self.rows]

    @property
    def weight(self) -> torch.Tensor:
        return cast(torch.Tensor, self._part("weight"))

    @property
    def weight_scale(self) -> torch.Tensor:  # FP8 layers' per-row scales (fp8.py)
        return cast(torch.Tensor, self._part("weight_scale"))

    @property
    def bias(self) -> torch.Tensor | None:
        return self._part("bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fused[0](x)[..., self.rows]


@torch.no_grad()
def fuse_qkv(transformer) -> int:
    """One (dim, 3 dim) projection per attention layer in place of three (dim, dim) ones (diffusers'
    ``Attention.fuse_projections``, or stacked rows for FP8 layers: their row scales make the numbers the
    same); ``to_q``, ``to_k`` and ``to_v`` become :class:`RowsOf` it, so no memory is added, wherever the
    DiT moves. Read by :class:`RealRopeAttnProcessor`; the number of layers fused."""
    from .fp8 import FP8Linear, concat_rows

    fused = 0
    for module in transformer.modules():
        if isinstance(getattr(module, "processor", None), RealRopeAttnProcessor) and not module.fused_projections:
            projections = {name: getattr(module, name) for name in ("to_q", "to_k", "to_v")}
            if isinstance(module.to_q, FP8Linear):  # runtime.precision fp8*
                module.to_qkv = concat_rows(list(projections.values()))
                module.fused_projections = True
            else:
                module.fuse_projections()
            n = 0
            for name, proj in projections.items():
                rows = slice(n, n + proj.weight.shape[0])
                n = rows.stop
                setattr(module, name, RowsOf(module.to_qkv, rows))
            fused += 1
    return fused
