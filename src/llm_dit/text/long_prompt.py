"""Fitting a caption embedding sequence into Z-Image's token budget.

Every function maps ``x: [L, D]`` to ``[min(L, M), D]``: sequences already within ``M`` tokens
come back unchanged (the same tensor), longer ones are shortened by one of four modes. Z-Image
accepts at most 1504 caption tokens (``MAX_CAPTION_TOKENS``) and at least one.

Modes (``j`` indexes the output, ``0 <= j < M``; ``i`` the input, ``0 <= i < L``):

* ``truncate``: ``y_j = x_j``; keeps the first ``M`` tokens, drops the tail.
* ``interpolate``: linear resampling with both ends pinned. Output ``j`` samples position
  ``p_j = j (L-1)/(M-1)``: ``y_j = (1-f) x_floor(p_j) + f x_floor(p_j)+1`` with ``f = p_j - floor(p_j)``
  (for ``M = 1``, ``y_0 = x_0``). Two taps per output: cheap, but it aliases when ``L >> M``.
* ``pool``: adaptive average pooling. Output ``j`` averages the window
  ``[floor(jL/M), ceil((j+1)L/M))``; every input token contributes, nothing aliases.
* ``attention_pool``: importance-weighted pooling over disjoint buckets. Token ``i`` belongs to
  bucket ``b(i) = floor(iM/L)``; its importance is its novelty w.r.t. its neighbours,
  ``s_i = 1 - mean_{k in N(i)} cos(x_i, x_k)`` with ``N(i) = {k : 0 < |k-i| <= 2, 0 <= k < L}``
  (the neighbours that exist; a sequence of one token has ``s = 1``), and
  ``y_j = sum_{i: b(i)=j} softmax_j(s)_i x_i``. Tokens that repeat their neighbours weigh less.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import MAX_CAPTION_TOKENS
from ..embeddings import check_embedding
from ..errors import InputError, unknown_choice

LONG_PROMPT_MODES = ("truncate", "interpolate", "pool", "attention_pool")


def _check(x: torch.Tensor, max_len: int) -> None:
    check_embedding(x, "the embedding sequence")  # [tokens, dim], not empty, finite (its dtype is kept)
    if max_len < 1:
        raise InputError(f"max_len must be at least 1 (got {max_len})")


def truncate(x: torch.Tensor, max_len: int) -> torch.Tensor:
    _check(x, max_len)
    return x[:max_len]


def interpolate(x: torch.Tensor, max_len: int) -> torch.Tensor:
    _check(x, max_len)
    if x.shape[0] <= max_len:
        return x
    y = F.interpolate(x.T[None].float(), size=max_len, mode="linear", align_corners=True)
    return y[0].T.to(x.dtype)


def pool(x: torch.Tensor, max_len: int) -> torch.Tensor:
    _check(x, max_len)
    if x.shape[0] <= max_len:
        return x
    return F.adaptive_avg_pool1d(x.T[None].float(), max_len)[0].T.to(x.dtype)


def neighbour_novelty(x: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """``s_i = 1 - mean cos(x_i, x_k)`` over the existing neighbours ``0 < |k - i| <= radius``."""
    xf = F.normalize(x.float(), dim=-1)
    n = xf.shape[0]
    total = torch.zeros(n, dtype=torch.float32, device=x.device)
    count = torch.zeros(n, dtype=torch.float32, device=x.device)
    for d in range(1, radius + 1):
        if d >= n:
            break
        sim = (xf[d:] * xf[:-d]).sum(-1)  # cos(x_i, x_{i+d}) for i < n - d
        total[:-d] += sim
        total[d:] += sim
        count[:-d] += 1
        count[d:] += 1
    mean_sim = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
    return 1.0 - mean_sim


def attention_pool(x: torch.Tensor, max_len: int) -> torch.Tensor:
    _check(x, max_len)
    n = x.shape[0]
    if n <= max_len:
        return x
    score = neighbour_novelty(x)
    bucket = torch.div(torch.arange(n, device=x.device) * max_len, n, rounding_mode="floor")
    # softmax within each bucket: subtract the bucket max for stability, then normalise by bucket sums
    bmax = torch.full((max_len,), -torch.inf, device=x.device).scatter_reduce(0, bucket, score, "amax")
    w = torch.exp(score - bmax[bucket])
    wsum = torch.zeros(max_len, device=x.device).index_add_(0, bucket, w)
    w = w / wsum[bucket]
    out = torch.zeros(max_len, x.shape[1], dtype=torch.float32, device=x.device)
    out.index_add_(0, bucket, w[:, None] * x.float())
    return out.to(x.dtype)


_MODES = {"truncate": truncate, "interpolate": interpolate, "pool": pool, "attention_pool": attention_pool}


def fit_length(x: torch.Tensor, max_len: int = MAX_CAPTION_TOKENS, mode: str = "truncate") -> torch.Tensor:
    """Shorten ``x: [L, D]`` to at most ``max_len`` tokens with ``mode`` (see the module docstring)."""
    if mode not in _MODES:
        raise InputError(unknown_choice("long-prompt mode", mode, LONG_PROMPT_MODES))
    return _MODES[mode](x, max_len)
