"""Token sequences of different lengths, and their magnitudes (shared by the blend and style modes).

Every tensor is ``[L, D]``. Resampling a sequence to ``n`` tokens is :func:`llm_dit.embeddings.resample`
(``linear`` or ``area``; it lives with the embedding check because the VL layer needs it too).
"""

from __future__ import annotations

import torch

from ..embeddings import RESAMPLE_METHODS, notes_names, resample  # noqa: F401  (re-exported)


@notes_names()
def interpolate_sequence(x: torch.Tensor, target_length: int) -> torch.Tensor:
    """Seed 001's helper: ``[L, D]`` (or ``[1, L, D]``) linearly resampled to ``target_length`` tokens."""
    return resample(x, target_length, "linear")


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
