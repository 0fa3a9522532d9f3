"""Reference statistics and the normalization modes that map VL hidden states toward them.

``x`` is ``[n, D]`` (VL tokens), float32. ``mu_x``, ``sd_x`` are per-dimension mean and population
std over the ``n`` tokens; ``mu_r``, ``sd_r``, ``C_r`` the reference's (:class:`ReferenceStats`).

* ``global``: ``y = x * t / std(x)``, ``std`` over all elements; the target ``t`` is a number, or
  ``"text"``: the std of the paired text embedding at the same layer. A constant ``x`` is left as is.
* ``per_dim``: ``z = (x - mu_x) / sd_x`` (``z = 0`` where ``sd_x = 0``, e.g. a single token), optionally
  clipped to ``[-c, c]``, then ``y = z * sd_r + mu_r``.
* ``hybrid``: ``w * per_dim(x) + (1 - w) * global(x)``.
* ``cross`` (seed 001 #8, cross-normalization): ``global(per_dim(x))``, the reference's per-dimension
  shape at the global target std (e.g. 50, 61 or 70; ``"text"`` by default).
* ``whiten``: ZCA to the reference: ``y = W_x (x - mu_x) C_r^(1/2) + mu_r`` with
  ``W_x = (C_x + d I)^(-1/2)``, computed from the SVD of the centred tokens (``C_x`` is rank
  ``<= n - 1`` when ``n < D``; ``d`` is a small ridge, relative to the mean eigenvalue).

:func:`whiten_embeddings` is seed 003's call, ``whiten_embeddings(emb, reference_cov)``: the same
ZCA step, coloured by a bare ``[D, D]`` covariance (``y = W_x (x - mu_x) C^(1/2) + mu_x``: the
tokens' own mean is kept, since a covariance carries none) or by :class:`ReferenceStats` (``whiten``).
The seed's sketch, ``U diag(1/S) V^T @ C``, is not what its docstring says ("match reference
covariance"): ``U V^T`` of uncentred tokens is not white, and ``@ C`` gives covariance ``C^2``. The
docstring's meaning is what is implemented: the result's covariance is ``C`` (up to the ridge, on
the ``n - 1`` directions ``n`` tokens span).

All modes are defined for one token and for zero-variance dimensions (no NaN). Note: Z-Image's
caption embedder begins with an RMSNorm per token, so scaling a whole sequence by a constant does not
change the image at all; scale matters only when embeddings are mixed (blends, concatenation).

Statistics are layer-matched: a reference computed at one layer is refused for another unless forced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..embeddings import check_embedding, notes_names
from ..errors import InputError, unknown_choice
from ..limits import MAX_RIDGE, check_number
from ..modes import NORMALIZATION_MODES, NormalizationMode  # noqa: F401  (re-exported)
from .reference import ReferenceStats, covariance_sqrt

#: The notes' ``DEFAULT_TARGET_STD``: Qwen3-4B's std over all elements at layer -2, as their
#: ``qwen3_4b_stats.npz`` records it (61.0957), rounded as they did. ``scale_to_text=True`` scales to it
#: when no other target (a number, the paired text embedding, reference statistics) is given.
NOTES_TARGET_STD = 61.0

#: Modes that need reference statistics.
REFERENCE_MODES = ("per_dim", "hybrid", "whiten", "cross")
def _check_input(x: torch.Tensor) -> torch.Tensor:
    return check_embedding(x, "the embeddings")


def _dim_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(0), x.std(0, unbiased=False)


def scale_global(x: torch.Tensor, target_std: float) -> tuple[torch.Tensor, float]:
    """``x * target / std(x)`` and the factor; a constant ``x`` gets factor 1."""
    x = _check_input(x)
    check_number(target_std, "target std", gt=0)
    sd = float(x.std(unbiased=False))
    factor = target_std / sd if sd > 0 else 1.0
    return x * factor, factor


def normalize_per_dim(x: torch.Tensor, reference: ReferenceStats, clip_sigma: float | None = 3.0) -> torch.Tensor:
    x = _check_input(x)
    if clip_sigma is not None:
        check_number(clip_sigma, "clip sigma", gt=0)
    mu, sd = _dim_moments(x)
    z = torch.where(sd > 0, (x - mu) / torch.where(sd > 0, sd, 1.0), torch.zeros_like(x))
    if clip_sigma is not None:
        z = z.clamp(-clip_sigma, clip_sigma)
    return z * reference.std + reference.mean


def _zca(x: torch.Tensor, ridge: float) -> torch.Tensor:
    """``(C_x + d I)^(-1/2)`` applied to the centred rows of ``x`` (float32)."""
    check_number(ridge, "whitening ridge", gt=0, le=MAX_RIDGE)
    n = x.shape[0]
    mu = x.mean(0)
    xc = (x - mu).double()
    u, s, vh = torch.linalg.svd(xc, full_matrices=False)  # xc = u diag(s) vh; C_x = vh^T diag(s^2/n) vh
    lam = s**2 / n
    delta = ridge * float(lam.mean()) if float(lam.sum()) > 0 else 1.0
    gain = torch.where(s > 0, s / torch.sqrt(lam + delta), torch.zeros_like(s))
    return ((u * gain) @ vh).float()


def whiten(x: torch.Tensor, reference: ReferenceStats, ridge: float = 1e-3) -> torch.Tensor:
    x = _check_input(x)
    return _zca(x, ridge) @ reference.covariance_sqrt() + reference.mean


@notes_names(embeddings="emb")
def whiten_embeddings(emb: torch.Tensor, reference_cov, ridge: float = 1e-3) -> torch.Tensor:
    """Seed 003's whitening (see the module docstring): ``emb`` ``[n, D]`` (or ``[1, n, D]``),
    ``reference_cov`` a ``[D, D]`` covariance or :class:`ReferenceStats`."""
    x = _check_input(emb)
    if isinstance(reference_cov, ReferenceStats):
        return whiten(x, reference_cov, ridge)
    c = reference_cov
    if not isinstance(c, torch.Tensor) or c.ndim != 2 or tuple(c.shape) != (x.shape[1], x.shape[1]):
        shape = tuple(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__
        raise InputError(f"reference_cov must be a [{x.shape[1]}, {x.shape[1]}] covariance (got {shape})")
    c = c.double()
    if not torch.isfinite(c).all() or not torch.allclose(c, c.T, rtol=1e-4, atol=1e-6 * float(c.abs().max())):
        raise InputError("reference_cov must be a finite, symmetric covariance matrix")
    return _zca(x, ridge) @ covariance_sqrt(c) + x.mean(0)


@dataclass
class Normalized:
    """A normalized selection and its statistics (the seeds' ``original_std``/``scaled_std``/``scale_factor``)."""

    embeddings: torch.Tensor
    mode: str
    original_std: float
    scaled_std: float
    scale_factor: float  # scaled_std / original_std (for every mode; 1.0 when undefined)


def normalize(
    x: torch.Tensor,
    mode: str = "none",
    *,
    reference: ReferenceStats | None = None,
    target_std: float | str | None = None,
    text: torch.Tensor | None = None,
    clip_sigma: float | None = 3.0,
    hybrid_weight: float = 0.5,
) -> Normalized:
    """Apply one of :data:`NORMALIZATION_MODES` (see the module docstring)."""
    x = _check_input(x)
    if mode not in NORMALIZATION_MODES:
        raise InputError(unknown_choice("normalization", mode, NORMALIZATION_MODES))
    if mode in REFERENCE_MODES and reference is None:
        raise InputError(f"normalization '{mode}' needs reference statistics (llm-dit stats reference)")
    if not 0.0 <= hybrid_weight <= 1.0:
        raise InputError(f"hybrid weight must be in [0, 1] (got {hybrid_weight})")

    def global_target() -> float:
        if isinstance(target_std, (int, float)) and not isinstance(target_std, bool):
            return float(target_std)
        if target_std in (None, "text"):
            if text is not None:
                return float(_check_input(text).std(unbiased=False))
            if target_std == "text":
                raise InputError("target std 'text' needs the paired text embedding")
            if reference is not None:
                return reference.global_std
        raise InputError("global normalization needs a target std: a number, 'text' with a text embedding, "
                         "or reference statistics")

    if mode == "none":
        y = x
    elif mode == "global":
        y, _ = scale_global(x, global_target())
    else:
        assert reference is not None, "the REFERENCE_MODES have their statistics (checked above)"
        if mode == "per_dim":
            y = normalize_per_dim(x, reference, clip_sigma)
        elif mode == "hybrid":
            y = hybrid_weight * normalize_per_dim(x, reference, clip_sigma) + (1 - hybrid_weight) * scale_global(
                x, global_target()
            )[0]
        elif mode == "cross":
            y, _ = scale_global(normalize_per_dim(x, reference, clip_sigma), global_target())
        else:
            y = whiten(x, reference)
    before = float(x.std(unbiased=False))
    after = float(y.std(unbiased=False))
    return Normalized(y, mode, before, after, after / before if before > 0 else 1.0)
