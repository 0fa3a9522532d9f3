"""The research notes' module path for normalization, masking and blending
(``from llm_dit.vl.blending import blend_adain``): an alias that re-exports the library's functions,
which take the notes' keyword names and ``[1, L, D]`` tensors.

It lives in ``vl/`` by name only: blending is the conditioning layer's, so this file is ranked there
(``tests/test_layers.py``) and nothing in the package imports it. docs/notes.md maps each name.
"""

from ..conditioning.blend import (
    BLEND_MODES,
    blend_adain,
    blend_adain_per_dim,
    blend_embeddings,
    blend_interpolate,
    blend_linear,
    blend_style_vector,
    blend_with_style_delta,
    concat,
    replace,
)
from ..conditioning.sequence import interpolate_sequence, resample
from ..conditioning.style import compute_style_delta, gem_pool, mean_pool, style_vector, svd_style_vector
from .normalize import NOTES_TARGET_STD, normalize, normalize_per_dim, scale_global, whiten, whiten_embeddings
from .outliers import get_outlier_dimensions, mask_outlier_dimensions, mask_outliers
from .reference import ReferenceStats, as_reference

#: The notes' name for the default global target (61.0).
DEFAULT_TARGET_STD = NOTES_TARGET_STD

__all__ = [
    "BLEND_MODES", "DEFAULT_TARGET_STD", "ReferenceStats", "as_reference", "blend_adain", "blend_adain_per_dim",
    "blend_embeddings", "blend_interpolate", "blend_linear", "blend_style_vector", "blend_with_style_delta",
    "compute_style_delta", "concat", "gem_pool", "get_outlier_dimensions", "interpolate_sequence",
    "mask_outlier_dimensions", "mask_outliers", "mean_pool", "normalize", "normalize_per_dim", "replace",
    "resample", "scale_global", "style_vector", "svd_style_vector", "whiten", "whiten_embeddings",
]
