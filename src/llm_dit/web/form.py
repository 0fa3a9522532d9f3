"""The generate page's controls, derived from :class:`~llm_dit.conditioning.Recipe` itself.

Every recipe field gets a control (a field added to the recipe appears on the page without touching
the page); its kind, choices and bounds come from the field's type. The page sends what the person
set; the server validates it with the recipe's own validation, as the CLI does.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from ..conditioning.recipe import FILE_FIELDS, Recipe, read_recipe_file, shipped_recipes
from ..conditioning.schedule import Schedule
from ..config import Config, GenerationConfig

#: Sections of the form, in the order of the recipe's own comments (fields not named: "other").
GROUPS = {
    "extraction": ["backend", "vl_text", "system_prompt", "hidden_layer", "token_selection", "max_pixels", "pool",
                   "vl_intra_blend_ratio", "dual_extraction", "image_layer", "text_layer", "image_tokens",
                   "text_tokens"],
    "statistics": ["adapter", "normalization_mode", "target_std", "reference_stats", "outlier_mask",
                   "outlier_threshold"],
    "length": ["token_budget", "budget_mode"],
    "blend": ["blend", "alpha", "schedule", "resample", "magnitude", "style_blend", "style_alpha", "gem_p", "svd_k"],
}
HELP = {
    "backend": "text: Z-Image as shipped; vl: Qwen3-VL's own states; splice: its vision tower into Qwen3-4B; "
               "dopsd: Qwen3-VL's forward with Qwen3-4B's weights (D-OPSD)",
    "vl_text": "the VL chat's text; {prompt} stands for the prompt; empty: image only",
    "hidden_layer": "hidden_states index of the VL model (seeds: -6)",
    "alpha": "VL share: y = alpha * VL + (1 - alpha) * text",
    "schedule": "alpha per step, e.g. linear:0.8:0.2 (overrides alpha)",
    "vl_intra_blend_ratio": "image tokens x R + text tokens x (1 - R) of the VL chat",
    "target_std": "global normalization target: a number, or 'text' (the prompt's std)",
    "adapter": "a file inside the runs folder (llm-dit stats adapter)",
    "reference_stats": "a file inside the runs folder (llm-dit stats reference)",
    "token_budget": "at most N VL tokens per reference",
    "style_alpha": "how much the style references apply (default: alpha)",
}
GENERATION_FIELDS = ("steps", "seed", "width", "height", "shift", "guidance_scale")
def _bounds(info) -> dict[str, float]:
    out = {}
    for m in info.metadata:
        for attr, key in (("ge", "min"), ("gt", "min"), ("le", "max"), ("lt", "max")):
            if getattr(m, attr, None) is not None:
                out[key] = getattr(m, attr)
    return out


def _control(name: str, info, default: Any) -> dict[str, Any]:
    ann = info.annotation
    args = typing.get_args(ann)
    union = typing.get_origin(ann) in (typing.Union, types.UnionType)
    nullable = union and type(None) in args
    inner = [a for a in args if a is not type(None)] if union else [ann]
    c: dict[str, Any] = {"name": name, "nullable": nullable, "default": default, "help": HELP.get(name, ""),
                         **_bounds(info)}
    one = inner[0] if len(inner) == 1 else None
    if one is not None and typing.get_origin(one) is typing.Annotated:  # e.g. LayerIndex | None: its bounds
        one, *meta = typing.get_args(one)
        c.update({k: v for m in meta for k, v in _bounds(m).items()})
    if one is not None and typing.get_origin(one) is Literal:
        c.update(kind="enum", options=list(typing.get_args(one)))
    elif one is bool:
        c.update(kind="bool")
    elif one is int:
        c.update(kind="int")
    elif one is float:
        c.update(kind="float")
    elif one is Schedule:
        c.update(kind="schedule")
    elif name in FILE_FIELDS:
        c.update(kind="file")
    else:
        c.update(kind="text")  # str, or float | "text"
    if name == "alpha":
        c.update(kind="slider", step=0.05)
    return c


def recipe_controls(config: Config) -> list[dict[str, Any]]:
    """One control per recipe field except ``references`` (the page's reference list), grouped; a
    field left empty takes the profile's value (shown as ``profile``)."""
    resolved = Recipe().resolve(config).to_dict()
    where = {f: g for g, fields in GROUPS.items() for f in fields}
    out = []
    for name, info in Recipe.model_fields.items():
        if name == "references":
            continue
        c = _control(name, info, info.default)
        c["group"] = where.get(name, "other")
        c["profile"] = resolved.get(name)
        out.append(c)
    return out


def generation_controls(config: Config) -> list[dict[str, Any]]:
    g = config.generation
    out = []
    for name in GENERATION_FIELDS:
        info = GenerationConfig.model_fields[name]
        c = _control(name, info, getattr(g, name))
        if name in ("width", "height"):
            c["step"] = 16
        out.append(c)
    return out


def presets() -> dict[str, dict[str, Any]]:
    """The page's presets: the shipped recipes (``src/llm_dit/recipes/*.toml``), read as ``--recipe
    NAME`` reads them. ``recipe`` holds the fields the file sets (the page resets the others),
    ``generation`` and ``caption_tokens`` what it suggests beside them."""
    out = {}
    for name in shipped_recipes():
        f = read_recipe_file(name)
        out[name] = {"title": f.title or name, "note": f.note,
                     "recipe": f.recipe.model_dump(mode="json", exclude_unset=True),
                     "generation": f.generation, "caption_tokens": f.caption_tokens}
    return out
