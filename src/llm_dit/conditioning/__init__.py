"""Conditioning: extractions + text embedding -> the caption embedding Z-Image receives.

``blend`` (pure tensor blend modes), ``style`` (style delta, style vectors), ``schedule`` (alpha
over the steps), ``recipe`` (the declarative ``Recipe``), ``build`` (plan and build), ``run``
(staged model runs).
"""

from .blend import (
    BLEND_MODES,
    STYLE_MODES,
    blend_adain,
    blend_adain_per_dim,
    blend_interpolate,
    blend_linear,
    blend_style_vector,
    blend_with_style_delta,
    concat,
    replace,
    resample,
)
from .build import Conditioning, ExtractionRequest, build_conditioning, plan_extractions
from .recipe import Recipe, Reference
from .schedule import Schedule, parse_schedule
from .style import compute_style_delta, gem_pool, mean_pool, style_vector, svd_style_vector

__all__ = [
    "BLEND_MODES", "STYLE_MODES", "Conditioning", "ExtractionRequest", "Recipe", "Reference", "Schedule",
    "blend_adain", "blend_adain_per_dim", "blend_interpolate", "blend_linear", "blend_style_vector",
    "blend_with_style_delta", "build_conditioning", "compute_style_delta", "concat", "gem_pool", "mean_pool",
    "parse_schedule", "plan_extractions", "replace", "resample", "style_vector", "svd_style_vector",
]
