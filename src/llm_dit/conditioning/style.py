"""Style components of a VL extraction: the style delta (seed 001 #5) and style vectors (seed 003).

* Style delta: ``d = vl_style - vl_neutral``, where the neutral extraction is the same chat with a
  solid gray image of the same size (same VL text, same token selection), so both sequences have the
  same length and layout and the difference cancels what the template and the text contribute.
* Style vectors, one ``[D]`` vector from ``x: [n, D]``:

  - ``mean``: ``s = (1/n) sum_i x_i``
  - ``gem``: generalized mean, ``s_d = ((1/n) sum_i |x_id|^p)^(1/p)`` (the seed's formula: it
    takes magnitudes, so ``s >= 0``; ``p = 1`` is the mean absolute value, ``p -> inf`` the max)
  - ``svd``: the mean of the rank-``k`` reconstruction, ``s = mean_i (U_k S_k V_k^T)_i`` with
    ``x = U S V^T`` (uncentred, as the seed; ``k`` above the rank keeps every component, which is
    the plain mean)
"""

from __future__ import annotations

import torch
from PIL import Image

from ..embeddings import check_embedding, notes_names
from ..errors import InputError, unknown_choice
from ..limits import MAX_SVD_K, check_number
from .sequence import resample

STYLE_VECTORS = ("mean", "gem", "svd")
#: The seeds' neutral image: solid mid gray.
NEUTRAL_GRAY = (128, 128, 128)


def neutral_image(like: Image.Image) -> Image.Image:
    """A solid gray image the size of ``like`` (so its token grid matches)."""
    return Image.new("RGB", like.size, NEUTRAL_GRAY)


@notes_names(style_vl_embeddings="style_vl", neutral_vl_embeddings="neutral_vl")
def compute_style_delta(style_vl: torch.Tensor, neutral_vl: torch.Tensor) -> torch.Tensor:
    """``style_vl - neutral_vl``, ``[n, D]``; a neutral sequence of another length is first area-resampled."""
    style_vl = check_embedding(style_vl, "the style VL embedding")
    neutral_vl = check_embedding(neutral_vl, "the neutral VL embedding")
    return style_vl - resample(neutral_vl, style_vl.shape[0], "area")


@notes_names(embeddings="x")
def mean_pool(x: torch.Tensor) -> torch.Tensor:
    return x.mean(0)


@notes_names(embeddings="x")
def gem_pool(x: torch.Tensor, p: float = 3.0) -> torch.Tensor:
    check_number(p, "the GeM exponent p", gt=0)
    # m * mean((|x|/m)^p)^(1/p) in float64: |x|^p itself overflows float32 for activations ~1e3 at p ~ 13.
    a = x.double().abs()
    m = a.max(0).values
    ratio = a / torch.where(m > 0, m, 1.0)
    return (m * ratio.pow(p).mean(0).pow(1.0 / p)).float()


@notes_names(embeddings="x")
def svd_style_vector(x: torch.Tensor, k: int = 10) -> torch.Tensor:
    check_number(k, "svd_k", whole=True, ge=1, le=MAX_SVD_K)
    u, s, vh = torch.linalg.svd(x.double(), full_matrices=False)
    k = min(k, s.shape[0])
    return ((u[:, :k] * s[:k]) @ vh[:k]).mean(0).float()


@notes_names(embeddings="x")
def style_vector(x: torch.Tensor, kind: str = "mean", p: float = 3.0, k: int = 10) -> torch.Tensor:
    """One ``[D]`` vector from ``[n, D]`` tokens by ``kind`` in :data:`STYLE_VECTORS`."""
    x = check_embedding(x, "the VL embedding")
    if kind == "mean":
        return mean_pool(x)
    if kind == "gem":
        return gem_pool(x, p)
    if kind == "svd":
        return svd_style_vector(x, k)
    raise InputError(unknown_choice("style vector", kind, STYLE_VECTORS))
