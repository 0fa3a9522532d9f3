"""Outlier dimensions between VL hidden states and the text-encoder reference, in both directions.

For each dimension ``d``: ``r_d = sd_x[d] / sd_r[d]`` (population std of the VL tokens over the
reference std). A dimension is an outlier when ``max(r_d, 1 / r_d) > threshold``:

* ``vl_high``: the VL tokens vary far more than the reference (``r_d > threshold``);
* ``ref_high``: the reference varies far more (``1 / r_d > threshold``). The seeds' "617x in dim
  396" is this direction: Qwen3-4B has a massive activation there that image tokens lack.

Masking modes, applied to the outlier dimensions only:

* ``zero``:    ``y[:, d] = 0``
* ``clamp``:   ``y[:, d] = clip(x[:, d], ref_min[d], ref_max[d])`` (the range seen in the reference)
* ``scale``:   ``y[:, d] = mu_x[d] + (x[:, d] - mu_x[d]) * sd_r[d] / sd_x[d]`` (std -> reference std,
  mean kept; a constant dimension is left as is)
* ``restore``: ``y[:, d] = mu_r[d]`` (the reference mean)

:func:`mask_outlier_dimensions` is seed 001's call as written: ``mask_outlier_dimensions(vl_emb,
qwen3_stats, threshold=10.0)`` returns the masked tensor (``zero`` by default), with ``qwen3_stats``
the notes' dict or ``.npz`` archive (``per_dim_std``, ``per_dim_mean``) or :class:`ReferenceStats`,
and ``vl_emb`` ``[n, D]`` or ``[1, n, D]``. The seed's sketch computes ``std(VL) / std(ref) < 10``,
one direction only; its text ("zero out dimensions with >10x std ratio", "dim 396: 617x") means
the ratio either way, since the 617x of dim 396 is the reference's std over the image tokens'
(``ref_high``): the sketch as written would keep exactly that dimension. Both directions it is.
:func:`mask_outliers` also returns what was done.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..embeddings import check_embedding, notes_names
from ..errors import InputError, unknown_choice
from ..limits import check_number
from .reference import ReferenceStats, as_reference

MASK_MODES = ("none", "zero", "clamp", "scale", "restore")
_TINY = 1e-12


@dataclass(frozen=True)
class OutlierDim:
    dim: int
    ratio: float  # max(sd_x / sd_r, sd_r / sd_x) >= 1
    direction: str  # "vl_high" or "ref_high"
    vl_std: float
    ref_std: float


def _check(x: torch.Tensor, reference: ReferenceStats, threshold: float) -> torch.Tensor:
    check_number(threshold, "outlier threshold", gt=1)
    if x.ndim != 2 or x.shape[0] < 2:
        raise InputError(f"outlier statistics need a [tokens, dim] tensor of at least 2 tokens (got {tuple(x.shape)})")
    if x.shape[1] != reference.std.shape[0]:
        raise InputError(f"embeddings have width {x.shape[1]}, the reference {reference.std.shape[0]}")
    return check_embedding(x, "the embeddings")


def _ratios(x: torch.Tensor, reference: ReferenceStats) -> tuple[torch.Tensor, torch.Tensor]:
    sd_x = x.std(0, unbiased=False)
    up = (sd_x + _TINY) / (reference.std + _TINY)
    return torch.maximum(up, 1.0 / up), sd_x


def get_outlier_dimensions(x: torch.Tensor, reference: ReferenceStats, threshold: float = 10.0) -> list[OutlierDim]:
    """The outlier dimensions of ``x: [n, D]``, largest ratio first."""
    x = _check(x, reference, threshold)
    ratio, sd_x = _ratios(x, reference)
    dims = torch.nonzero(ratio > threshold).flatten().tolist()
    out = [
        OutlierDim(
            dim=d,
            ratio=float(ratio[d]),
            direction="vl_high" if sd_x[d] > reference.std[d] else "ref_high",
            vl_std=float(sd_x[d]),
            ref_std=float(reference.std[d]),
        )
        for d in dims
    ]
    return sorted(out, key=lambda o: -o.ratio)


@notes_names(vl_emb="x", qwen3_stats="reference")
def mask_outlier_dimensions(x: torch.Tensor, reference, threshold: float = 10.0, mode: str = "zero") -> torch.Tensor:
    """``x`` with ``mode`` applied to its outlier dimensions (the notes' call; see the module docstring).
    ``reference``: :class:`ReferenceStats`, the notes' stats dict or archive, or a file path."""
    return mask_outliers(x, as_reference(reference), threshold, mode)[0]


def mask_outliers(
    x: torch.Tensor, reference: ReferenceStats, threshold: float = 10.0, mode: str = "zero"
) -> tuple[torch.Tensor, dict]:
    """Apply ``mode`` to the outlier dimensions; returns the new tensor and what was done."""
    if mode not in MASK_MODES:
        raise InputError(unknown_choice("outlier masking", mode, MASK_MODES))
    if mode == "clamp" and (reference.min is None or reference.max is None):
        raise InputError("clamp needs the reference's per-dimension range, which these statistics lack (the notes' "
                         ".npz holds mean and std): use zero, scale or restore, or llm-dit stats reference")
    outliers = get_outlier_dimensions(x, reference, threshold)
    y = x.float().clone()
    dims = torch.tensor([o.dim for o in outliers], dtype=torch.long)
    if mode != "none" and len(dims):
        cols = y[:, dims]
        if mode == "zero":
            cols = torch.zeros_like(cols)
        elif mode == "clamp":
            assert reference.min is not None and reference.max is not None  # checked above
            cols = torch.maximum(torch.minimum(cols, reference.max[dims]), reference.min[dims])
        elif mode == "scale":
            mu, sd = cols.mean(0), cols.std(0, unbiased=False)
            gain = torch.where(sd > 0, reference.std[dims] / torch.where(sd > 0, sd, 1.0), torch.ones_like(sd))
            cols = mu + (cols - mu) * gain
        else:  # restore
            cols = reference.mean[dims].expand_as(cols).clone()
        y[:, dims] = cols
    info = {
        "mode": mode,
        "threshold": threshold,
        "masked_dimensions": [o.dim for o in outliers] if mode != "none" else [],
        "outliers": [asdict(o) for o in outliers],
    }
    return y, info
