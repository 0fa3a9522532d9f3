"""FP8 weights for the DiT's linear layers: half the memory, and products on FP8 tensor cores.

Quantization of a weight ``W [N, K]`` (float8 e4m3, largest value 448), one scale per output channel:

    s_n = max_k |W_nk| / 448                 (float32, [N, 1])
    Q_nk = e4m3(W_nk / s_n)                  (|Q_nk| <= 448; 3 mantissa bits: a relative rounding
                                              error <= 2^-4 per element above e4m3's normal range)
    W_nk ~ s_n * Q_nk

Two ways to compute ``y = x W^T + b`` from ``(Q, s)`` (``runtime.precision``):

* ``fp8_weights``: ``y = x (s * Q)^T + b``, the product in the activations' dtype (bfloat16 on a GPU):
  ``Q`` is dequantized for each call. Half the DiT's weight memory, on any device (a float8 tensor is
  only storage here), for +20 % time eager and +3 % with ``--compile`` (which fuses the dequantization).
* ``fp8``: the activations are quantized the same way, one scale per token (row ``m`` of ``x``):
  ``t_m = max_k |x_mk| / 448``, ``P = e4m3(x / t)``, and ``y = (t s^T) * (P Q^T) + b``, with ``P Q^T``
  accumulated in float32 on FP8 tensor cores (``torch._scaled_mm`` with row-wise scales: GPUs of
  compute capability 8.9 and newer: Ada, Hopper, Blackwell).

Which layers: :data:`FP8_LAYERS`, the attention and feed-forward products of the transformer blocks
and refiners (97.7% of the DiT's weights: 6.02 B of 6.15 B). The embedders, the adaLN modulations and
the final layer stay in the model's dtype: small, and where a token's scale is set (measured: each
alone in FP8 moves a forward as much as all the attention layers do; BENCHMARKS.md, section 6). The
text encoder and Qwen3-VL are never quantized, so the hidden states a researcher extracts and reads
are the same in every precision.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

FP8 = torch.float8_e4m3fn
#: The largest float8 e4m3 value.
E4M3_MAX = float(torch.finfo(FP8).max)
#: The DiT's linear layers held in FP8 (names within ``ZImageTransformer2DModel``): attention and
#: feed-forward, in the 30 blocks and the 4 refiners.
FP8_LAYERS = re.compile(r"(layers|noise_refiner|context_refiner)\.\d+\."
                        r"(attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.w[123])")
#: Compute capability of the first GPUs with FP8 tensor cores (Ada Lovelace; Hopper is 9.0).
FP8_CAPABILITY = (8, 9)
#: How far each precision moves Z-Image's output from bfloat16 eager, measured by ``bench/fp8.py``
#: (full-size random weights, 1024 x 1024, 9 steps; BENCHMARKS.md, section 6): the relative error of
#: one DiT forward and the mean absolute pixel difference (0..255). For scale, bfloat16 compiled
#: (``--compile``) differs from bfloat16 eager by 1.46e-2 and 0.72: rounding alone. Recorded beside
#: each picture made in FP8 (``Placement.to_dict``). Real checkpoints may have outlier channels that
#: make FP8 worse than random weights do.
FIDELITY: dict[str, dict[str, float | str]] = {
    "fp8_weights": {"forward_rel_error": 5.38e-2, "pixel_diff": 0.99},
    "fp8": {"forward_rel_error": 6.37e-2, "pixel_diff": 1.04},
}
FIDELITY_SOURCE = ("bench/fp8.py on an NVIDIA H200, 2026-12-05, random weights; bf16 --compile vs eager: "
                   "1.46e-2 and 0.72")


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q, s)`` with ``x ~ s * Q``: ``Q`` float8 e4m3 of ``x``'s shape ``[R, K]``, ``s`` float32
    ``[R, 1]`` = each row's largest magnitude / 448 (a zero row gets a tiny scale and zeros)."""
    amax = x.detach().abs().amax(dim=-1, keepdim=True).float()
    scale = amax.clamp(min=1e-12) / E4M3_MAX
    # clamped: a quotient that rounds a hair above 448 would become NaN (e4m3fn has no infinity)
    q = (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``s * Q`` in ``dtype`` (through float32 for float16, whose range would make small scales
    subnormal; bfloat16 has float32's range)."""
    if dtype == torch.float16:
        return (q.float() * scale).to(dtype)
    return q.to(dtype) * scale.to(dtype)


def scaled_product(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
    """``x W^T + b`` on FP8 tensor cores: ``x [..., K]`` quantized per row, ``(q, scale)`` from
    :func:`quantize_rowwise` of ``W [N, K]``; the result ``[..., N]`` in ``x``'s dtype."""
    rows = x.reshape(-1, x.shape[-1])
    p, t = quantize_rowwise(rows)
    # q.t() is column-major, as _scaled_mm wants its second operand
    y = torch._scaled_mm(p, q.t(), scale_a=t, scale_b=scale.t(), bias=bias, out_dtype=x.dtype)
    return y.reshape(*x.shape[:-1], y.shape[-1])


class FP8Linear(nn.Module):
    """A linear layer whose weight is held as float8 ``(weight, weight_scale)`` (see the module
    docstring); ``compute``: ``"fp8_weights"`` (dequantize, product in the activations' dtype) or
    ``"fp8"`` (FP8 product). Plain parameters, so ``.to()``, offloading hooks and ``torch.compile``
    treat it as any layer."""

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                 compute: str) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.weight_scale = nn.Parameter(weight_scale, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.compute = compute

    @classmethod
    def from_linear(cls, linear: nn.Linear, compute: str, work: torch.device | None = None,
                    store: torch.device | None = None) -> FP8Linear:
        """Quantize ``linear`` on ``work`` (its device by default: a GPU does it in microseconds) and
        keep the result on ``store`` (where ``linear`` was by default)."""
        w = linear.weight.detach()
        store = store or w.device
        if compute == "fp8" and (w.shape[0] % 16 or w.shape[1] % 16):
            compute = "fp8_weights"  # FP8 tensor cores take sizes in multiples of 16 (the real DiT's all are)
        q, s = quantize_rowwise(w.to(work or w.device))
        bias = linear.bias.detach().to(store) if linear.bias is not None else None
        return cls(q.to(store), s.to(store), bias, compute)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compute == "fp8":
            return scaled_product(x, self.weight, self.weight_scale, self.bias)
        return F.linear(x, dequantize(self.weight, self.weight_scale, x.dtype), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, compute={self.compute}")


def check_precision(precision: str, device: torch.device, dtype: torch.dtype = torch.bfloat16) -> None:
    """Refuse, in one sentence, ``fp8`` where FP8 products cannot run (a CPU, MPS, a GPU older than
    compute capability 8.9, activations not in bfloat16: row-wise scaled products give bfloat16).
    ``fp8_weights`` runs anywhere."""
    if precision != "fp8":
        return
    if device.type != "cuda":
        raise ConfigError(f"runtime.precision = \"fp8\" needs a GPU with FP8 tensor cores (device is {device}); "
                          "use \"fp8_weights\" for the memory saving alone")
    if dtype != torch.bfloat16:
        raise ConfigError(f"runtime.precision = \"fp8\" computes with bfloat16 activations (runtime.dtype is "
                          f"{str(dtype).removeprefix('torch.')}); set runtime.dtype = \"bfloat16\" or \"auto\"")
    index = device.index if device.index is not None else torch.cuda.current_device()
    cap = torch.cuda.get_device_capability(index)
    if cap < FP8_CAPABILITY:
        name = torch.cuda.get_device_name(index)
        raise ConfigError(f"runtime.precision = \"fp8\" needs a GPU with FP8 tensor cores (compute capability 8.9 "
                          f"or newer: Ada, Hopper, Blackwell); {name} is {cap[0]}.{cap[1]}: use \"fp8_weights\"")


def to_fp8(dit: nn.Module, compute: str, work: torch.device | None = None,
           store: torch.device | None = None, layers: re.Pattern = FP8_LAYERS) -> int:
    """Replace the DiT's linear layers named by ``layers`` (:data:`FP8_LAYERS`) by :class:`FP8Linear`
    (in place); the number replaced. ``work``/``store``: see :meth:`FP8Linear.from_linear`. Done before
    the DiT is placed (so a small GPU never holds its bfloat16 weights) and before ``runtime.compile``
    fuses q, k, v (:func:`~llm_dit.models.rope.fuse_qkv` fuses FP8 layers too)."""
    return len(replace_linears(dit, layers, lambda child: FP8Linear.from_linear(child, compute, work, store)))


def replace_linears(dit: nn.Module, layers: re.Pattern, make) -> list[tuple[nn.Module, str, nn.Linear]]:
    """Put ``make(child)`` in place of each ``nn.Linear`` whose name ``layers`` matches whole;
    ``(parent, name, the layer replaced)`` for each, what putting them back needs."""
    replaced = []
    for name, module in list(dit.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and layers.fullmatch(full):
                setattr(module, child_name, make(child))
                replaced.append((module, child_name, child))
    return replaced


def concat_rows(layers: list[FP8Linear]) -> FP8Linear:
    """One layer computing ``layers``' outputs side by side (``[N1 + N2 + ..., K]``): their quantized
    rows and row scales stacked, so its numbers are theirs exactly."""
    given = [m.bias for m in layers if m.bias is not None]
    bias = None
    if given:  # a layer without one adds zeros
        bias = torch.cat([m.bias.data if m.bias is not None else given[0].new_zeros(m.out_features) for m in layers])
    return FP8Linear(torch.cat([m.weight.data for m in layers]), torch.cat([m.weight_scale.data for m in layers]),
                     bias, layers[0].compute)


def weight_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers, shared storage counted once."""
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total
