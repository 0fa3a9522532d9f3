"""Token sequences of different lengths, and their magnitudes (shared by the blend and style modes).

Every tensor is ``[L, D]``. Resampling a sequence to ``n`` tokens (:func:`resample`):

* ``linear`` (the seeds): ``F.interpolate(mode="linear", align_corners=False)``; output ``j`` reads
  position ``p_j = (j + 0.5) L / n - 0.5`` (clamped) with two taps. Squeezing ~1000 image tokens into
  ~20 keeps ~40 of them and drops the rest: aliasing.
* ``area``: adaptive average pooling; output ``j`` averages input window
  ``[floor(jL/n), ceil((j+1)L/n))``, so every token contributes. When ``n > L`` each window holds one
  token: tokens are repeated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError, unknown_choice

RESAMPLE_METHODS = ("linear", "area")


def resample(x: torch.Tensor, n: int, method: str = "linear") -> torch.Tensor:
    """``[L, D] -> [n, D]`` by ``linear`` or ``area`` (see the module docstring); ``L == n`` is a no-op."""
    if method not in RESAMPLE_METHODS:
        raise InputError(unknown_choice("resampling", method, RESAMPLE_METHODS))
    if n < 1:
        raise InputError(f"cannot resample to {n} tokens")
    if x.shape[0] == n:
        return x
    seq = x.T[None].float()  # [1, D, L]: F.interpolate works along the last axis
    if method == "linear":
        out = F.interpolate(seq, size=n, mode="linear", align_corners=False)
    else:
        out = F.adaptive_avg_pool1d(seq, n)
    return out[0].T


def token_rms(x: torch.Tensor) -> torch.Tensor:
    """``[L, D] -> [L]``: ``sqrt(mean_d x[i, d]^2)``."""
    return x.float().pow(2).mean(-1).sqrt()


def typical_rms(x: torch.Tensor) -> float:
    """The median token RMS: robust to the few massive-activation tokens of a real Qwen3 sequence."""
    return float(token_rms(x).median())


def match_rms(x: torch.Tensor, target: float) -> torch.Tensor:
    """Scale every token to RMS ``target``; all-zero tokens stay zero."""
    r = token_rms(x)[:, None]
    return torch.where(r > 0, x * (target / torch.where(r > 0, r, 1.0)), x)
