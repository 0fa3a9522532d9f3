"""Conditioning: extractions + text embedding -> the caption embedding Z-Image receives.

``sequence`` (resampling, magnitudes), ``style`` (style delta, style vectors), ``blend`` (pure tensor
blend modes, the registry), ``schedule`` (alpha
over the steps), ``recipe`` (the declarative ``Recipe``), ``build`` (plan and build), ``run``
(staged model runs).

The names below are imported when first asked for (PEP 562): ``from llm_dit.conditioning.recipe
import Recipe`` then reads a recipe without importing torch, which the blend functions need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Each public name and the submodule that defines it.
_WHERE = {
    **dict.fromkeys(("BLEND_MODES", "STYLE_MODES", "blend_adain", "blend_adain_per_dim", "blend_interpolate",
                     "blend_linear", "blend_style_vector", "blend_with_style_delta", "concat", "replace"),
                    "blend"),
    "resample": "sequence",
    **dict.fromkeys(("Conditioning", "ExtractionRequest", "build_conditioning", "plan_extractions"), "build"),
    **dict.fromkeys(("Recipe", "Reference"), "recipe"),
    **dict.fromkeys(("Schedule", "parse_schedule"), "schedule"),
    **dict.fromkeys(("compute_style_delta", "gem_pool", "mean_pool", "style_vector", "svd_style_vector"), "style"),
}

__all__ = [
    "BLEND_MODES", "STYLE_MODES", "Conditioning", "ExtractionRequest", "Recipe", "Reference", "Schedule",
    "blend_adain", "blend_adain_per_dim", "blend_interpolate", "blend_linear", "blend_style_vector",
    "blend_with_style_delta", "build_conditioning", "compute_style_delta", "concat", "gem_pool", "mean_pool",
    "parse_schedule", "plan_extractions", "replace", "resample", "style_vector", "svd_style_vector",
]

if TYPE_CHECKING:
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
    )
    from .build import Conditioning, ExtractionRequest, build_conditioning, plan_extractions
    from .recipe import Recipe, Reference
    from .schedule import Schedule, parse_schedule
    from .sequence import resample
    from .style import compute_style_delta, gem_pool, mean_pool, style_vector, svd_style_vector


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value
