"""Cells: one image of an experiment each, declared as a :class:`Recipe` plus what makes it differ.

A cell's ``params`` are the values its experiment varies (``{"layer": -6, "alpha": 0.5}``); they
name its file, label the grid and fill the table. A sweep is the cartesian product of lists of
recipe fields (and of a few generation settings), see :func:`sweep_cells`.

Two cells that must give the same picture are generated once (:func:`generation_key`). In
particular a cell whose alpha is 0 under a blend where alpha 0 returns the text embedding exactly is
the pure-text baseline (:func:`effective_recipe`): an alpha sweep over five layers renders its alpha-0
column once, not five times.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..conditioning.recipe import Recipe
from ..config import Config
from ..errors import InputError, LlmDitError
from ..io import check_name
from ..modes import ALPHA0_IS_TEXT

#: Generation settings a cell may vary (the rest of ``[generation]`` is the run's).
GENERATION_AXES = ("steps", "seed", "shift", "guidance_scale")
#: Prefixes of parameter values in file names ("" = the value alone); other keys are written out.
SHORT = {"alpha": "alpha", "hidden_layer": "layer", "layer": "layer", "steps": "steps", "seed": "seed",
         "token_selection": "", "tokens": "", "normalization_mode": "norm-", "blend": "", "backend": "",
         "outlier_mask": "mask-", "vl_intra_blend_ratio": "intra", "token_budget": "budget", "schedule": "",
         "target_std": "std", "method": "", "caption_tokens": "caption"}
TEXT_ONLY = "text_only"
#: The most cells one sweep may have (a typo in a list should not plan a million pictures).
MAX_SWEEP_CELLS = 5000
#: The longest caption a cell may ask for, in tokens (the caption's ``captionN.txt`` names it).
MAX_CAPTION = 100_000
#: Seed 004's methods: the VL chat's text is the caption itself (aligned) or a generic request.
METHODS = {"caption": "{prompt}", "generic": "Describe this image."}


@dataclass(frozen=True)
class Cell:
    """One image: its file stem, its recipe, the parameters it varies, where its prompt comes from."""

    name: str
    recipe: Recipe
    params: dict[str, Any] = field(default_factory=dict)
    caption: int | None = None  # the prompt is the reference's caption of about this many tokens
    generation: dict[str, Any] = field(default_factory=dict)  # overrides of [generation]

    def __post_init__(self) -> None:
        # the name and the caption length become file names (NAME.png, captions/captionN.txt): a cell
        # read from an edited record must not name a file outside its run folder
        check_name(self.name, "a cell")
        if self.caption is not None and (type(self.caption) is not int or not 1 <= self.caption <= MAX_CAPTION):
            raise InputError(f"cell {self.name}: caption takes a token count in 1..{MAX_CAPTION} (got "
                             f"{self.caption!r})")
        if not isinstance(self.params, dict) or not isinstance(self.generation, dict):
            raise InputError(f"cell {self.name}: params and generation are tables")

    def config(self, config: Config) -> Config:
        """The run's configuration with this cell's generation overrides."""
        return config.replace(**{f"generation.{k}": v for k, v in self.generation.items()}) if self.generation \
            else config

    def group(self) -> tuple:
        """Cells of one group share a prompt and generation settings, so one pure-text baseline."""
        return self.caption, tuple(sorted(self.generation.items()))


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def safe_name(text: str) -> str:
    """A file stem from anything: letters, digits and ``._+-``; at most 120 characters."""
    out = _UNSAFE.sub("-", text).strip("-.")[:120].rstrip("-.")
    if not out:
        raise InputError(f"cannot make a file name from {text!r}")
    return out


def fmt(value: Any) -> str:
    """A parameter value as it appears in names and labels (``0.5``, ``-6``, ``none``)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and "/" in value:  # a file (an adapter, statistics): its name
        from pathlib import Path

        return Path(value).stem
    if isinstance(value, dict) and "kind" in value:  # a schedule
        from ..conditioning.schedule import Schedule

        return Schedule(**value).spec()
    return str(value)


def name_from(params: dict[str, Any]) -> str:
    return safe_name("_".join(SHORT.get(k, k + "-") + fmt(v) for k, v in params.items()))


# -- equivalence ---------------------------------------------------------------------------------

def effective_recipe(recipe: Recipe) -> Recipe:
    """The recipe that gives the same picture, simplest form: the pure-text recipe when the VL part
    cannot change the embedding (alpha 0 at every step, no style reference, raw magnitude)."""
    if recipe.backend == "text":
        return Recipe(backend="text")
    if recipe.magnitude != "raw" or recipe.blend not in ALPHA0_IS_TEXT:
        return recipe
    alpha_zero = recipe.alpha == 0 if recipe.schedule is None else (
        recipe.schedule.kind == "constant" and recipe.schedule.start == 0)
    style_zero = all(r.role == "content" for r in recipe.references) or recipe.style_alpha == 0 or (
        recipe.style_alpha is None and alpha_zero)
    if alpha_zero and style_zero:
        return Recipe(backend="text")
    return recipe


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def generation_key(recipe: Recipe, prompt: str, config: Config) -> str:
    """Equal for two cells that must give the same picture (effective recipe, prompt, generation)."""
    return digest(effective_recipe(recipe).to_dict(), prompt, config.generation.model_dump(mode="json"))


# -- building cell lists -------------------------------------------------------------------------


def check_unique(cells: list[Cell]) -> list[Cell]:
    seen: dict[str, Cell] = {}
    for c in cells:
        if c.name in seen:
            raise InputError(f"two cells are named {c.name!r}; give the sweep distinct values")
        seen[c.name] = c
    return cells


def with_baselines(cells: list[Cell]) -> list[Cell]:
    """Add a pure-text cell to every group (prompt, generation settings) that has none, first in
    its group, so every cell can be compared with the picture the text alone gives."""
    out: list[Cell] = []
    groups: dict[tuple, list[Cell]] = {}
    taken = {c.name for c in cells}
    for c in cells:
        groups.setdefault(c.group(), []).append(c)
    for (caption, gen), members in groups.items():
        if not any(effective_recipe(c.recipe).backend == "text" for c in members):
            suffix = [f"caption{caption}"] if caption else []
            suffix += [SHORT.get(k, k + "-") + fmt(v) for k, v in gen]
            name = "_".join([TEXT_ONLY, *suffix])
            if name in taken:  # a token selection named text_only, say
                name = "_".join(["pure_text", *suffix])
            out.append(Cell(name, Recipe(backend="text"), {}, caption, dict(gen)))
        out.extend(members)
    return check_unique(out)


def coerce(key: str, value: Any) -> Any:
    """A sweep value typed on the command line (text) as the field ``key`` takes it.

    Candidates in order: ``None`` for "none"/"null" where the field allows it, the text itself (a
    mode name such as ``none`` or ``text_only``), then an integer, a number, a boolean; the first the
    field accepts wins, else the text (validation then names the field). Typed values pass as they are.
    """
    if not isinstance(value, str) or key in ("schedule", "method"):  # schedules parse their own text
        return value
    if key == "caption_tokens":  # a token count (sweep_cells names a value that is none)
        return int(value.strip()) if value.strip().lstrip("-").isdigit() else value
    from pydantic import TypeAdapter, ValidationError

    from ..config import GenerationConfig

    info = Recipe.model_fields.get(key) or GenerationConfig.model_fields.get(key)
    if info is None or info.annotation is None:  # every field of both models is annotated
        return value
    text, low = value.strip(), value.strip().lower()
    candidates: list[Any] = [None] if low in ("none", "null") else []
    candidates.append(text)
    for kind in (int, float):
        try:
            candidates.append(kind(text))
        except ValueError:
            pass
    if low in ("true", "false"):
        candidates.append(low == "true")
    adapter = TypeAdapter(info.annotation)
    for c in candidates:
        try:
            adapter.validate_python(c, strict=True)
            return c
        except ValidationError:
            continue
    return text


def sweep_axis(key: str, values: str | list[Any]) -> tuple[str, list[Any]]:
    """One sweep axis as a person gives it: ``(field, values)``, e.g. ``("alpha", "0.3, 0.5")``.

    ``key``: a recipe field, a generation setting (``steps`` or ``generation.steps``) or ``method``.
    ``values``: a comma list of text, or a list; each text value is typed as the field takes it
    (:func:`coerce`), other values pass as they are. Returns the field's name and the typed list;
    :func:`sweep_cells` then checks the field and the values. The command line (``--alphas``,
    ``--vary FIELD=V1,V2``) and the web app's sweep form both call this.
    """
    key = key.strip().removeprefix("generation.")
    if isinstance(values, str):
        items: list[Any] = [v.strip() for v in values.split(",")]
        if not all(items):
            raise InputError(f"empty value in the list '{values}'", field=f"axes.{key}")
    else:
        items = list(values)
    return key, [coerce(key, v) for v in items]


def _check_generation_value(key: str, value: Any) -> None:
    """Refuse a swept generation value out of its ``[generation]`` range, naming the axis."""
    from pydantic import ValidationError

    from ..config import GenerationConfig, describe_error

    try:
        GenerationConfig.model_validate({key: float(value) if key in ("shift", "guidance_scale") else value})
    except ValidationError as e:
        raise InputError(describe_error(e.errors()[0], GenerationConfig, "sweep value"), field=f"axes.{key}") from None


def _kind_name(kind) -> str:
    return {str: "text", int: "whole number"}.get(kind, "number")


def sweep_cells(base: dict[str, Any], axes: dict[str, list[Any]], caption: int | None = None) -> list[Cell]:
    """The cartesian product of ``axes`` over the ``base`` recipe fields, plus pure-text baselines.

    Keys are :class:`Recipe` fields, :data:`GENERATION_AXES`, ``method`` (seed 004: ``caption`` or
    ``generic`` VL text, see :data:`METHODS`) or ``caption_tokens`` (seed 004 phase 4: each cell's
    prompt is a caption of that many tokens; ``caption`` is then unused). Every combination is
    validated as a recipe before anything runs, so a bad value fails with the field named.
    """
    from ..config import MAX_CAPTION_TOKENS

    fields = set(Recipe.model_fields)
    for key, values in axes.items():
        if key not in fields and key not in GENERATION_AXES and key not in ("method", "caption_tokens"):
            raise InputError(f"cannot sweep {key!r}: not a recipe field or one of {', '.join(GENERATION_AXES)}, "
                             "method, caption_tokens", field=f"axes.{key}")
        if not isinstance(values, list) or not values:
            raise InputError(f"the sweep list for {key!r} is empty", field=f"axes.{key}")
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
            raise InputError(f"the sweep list for {key!r} repeats a value ({values})", field=f"axes.{key}")
        if key in GENERATION_AXES or key == "method":
            kind = str if key == "method" else (int if key in ("steps", "seed") else (int, float))
            for v in values:
                if isinstance(v, bool) or not isinstance(v, kind):
                    raise InputError(f"the sweep list for {key!r} holds {v!r}, not a {_kind_name(kind)}",
                                     field=f"axes.{key}")
                if key in GENERATION_AXES:  # its range (and nan, inf) now, not when the run reaches the cell
                    _check_generation_value(key, v)
        if key == "caption_tokens":
            for v in values:
                if type(v) is not int or not 1 <= v <= MAX_CAPTION_TOKENS:
                    raise InputError(f"the sweep list for 'caption_tokens' holds {v!r}, not a whole number in "
                                     f"1..{MAX_CAPTION_TOKENS}", field="axes.caption_tokens")
    total = 1
    for values in axes.values():
        total *= len(values)
    if total > MAX_SWEEP_CELLS:
        raise InputError(f"the sweep has {total} cells, over the limit of {MAX_SWEEP_CELLS}; "
                         "split it into several runs", field="axes")
    keys = list(axes)
    cells = []
    for combo in itertools.product(*(axes[k] for k in keys)):
        point = dict(zip(keys, combo, strict=True))  # this cell's value of every axis
        recipe_part = {k: v for k, v in point.items() if k in fields}
        gen = {k: v for k, v in point.items() if k in GENERATION_AXES}
        if "method" in point:
            if point["method"] not in METHODS:
                raise InputError(f"method must be one of {', '.join(METHODS)} (got {point['method']!r})",
                                 field="axes.method")
            recipe_part["vl_text"] = METHODS[point["method"]]
        fields_ = {**base, **recipe_part}
        if fields_.get("backend") == "text":  # the pure-text side of a backend sweep: no references
            fields_.pop("references", None)
        try:
            recipe = Recipe.from_dict(fields_)
        except LlmDitError as e:  # a swept value: the error names its axis
            if e.field in point:
                e.field = f"axes.{e.field}"
            raise
        params = {k: (recipe.schedule.spec() if k == "schedule" and recipe.schedule else v) for k, v in point.items()}
        cells.append(Cell(name_from(params) if params else "cell", recipe, params,
                          point.get("caption_tokens", caption), gen))
    return with_baselines(cells)  # which checks the names, baselines included
