"""Run specs from what a person asked for: a named experiment, or a sweep of recipe fields.

The command line (``compare``, ``sweep``) and the web app both call these, so the two refuse the same
things with the same sentence (and the web app reports the field at fault).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import MAX_CAPTION_TOKENS, Config
from ..errors import InputError
from .plan import RunSpec

#: What a command builds its runs with: ``(reference images, config) -> (spec, the config it runs with)``
#: (one call per trial when a command runs trials).
SpecMaker = Callable[[list[str], Config], tuple[RunSpec, Config]]


def experiment_spec(name: str, images: list[str], prompt: str | None, config: Config, quick: bool = False,
                    caption: str | None = None, save_embeddings: bool = False,
                    recipe: dict[str, Any] | None = None,
                    caption_max_new_tokens: int | None = None) -> tuple[RunSpec, Config]:
    """The :class:`RunSpec` of a named experiment and the configuration it runs with (its overrides
    applied). ``images``: absolute paths; ``caption``: a given caption for caption experiments;
    ``recipe``: fields set in every VL cell (e.g. ``{"outlier_threshold": 2.0}``), recorded in the
    run's details; a field the experiment varies itself is refused. ``caption_max_new_tokens``: the
    generation budget of each caption (caption experiments)."""
    from .presets import Inputs, get_experiment

    exp = get_experiment(name)
    if exp.caption and prompt is not None:
        raise InputError(f"{exp.name} writes its own prompts (captions of the image); give a caption instead",
                         field="prompt")
    if not exp.caption and (prompt is None or not prompt.strip()):
        raise InputError(f"{exp.name} needs a prompt", field="prompt")
    if not exp.caption and caption is not None:
        raise InputError(f"a caption applies to caption experiments, not {exp.name}", field="caption")
    if caption is not None and not caption.strip():
        raise InputError("the caption is empty", field="caption")
    _check_budget(caption_max_new_tokens, exp.caption, f"{exp.name} writes no captions")
    if exp.config:
        config = config.replace(**exp.config)
    try:
        cells = exp.cells(Inputs(images, quick))
    except InputError as e:
        e.field = e.field or "images"
        raise
    if recipe:
        cells = _set_fields(exp.name, cells, recipe)
    grids = exp.grids(cells) if exp.grids else []
    spec = RunSpec(exp.name, images, prompt, cells, grids, quick=quick, caption=caption,
                   save_embeddings=save_embeddings, details={"recipe": recipe} if recipe else {},
                   caption_max_new_tokens=caption_max_new_tokens)
    return spec, config


def _check_budget(budget: int | None, captions: bool, why_not: str) -> None:
    """Refuse a caption budget where no caption is written, or out of 1..MAX_NEW_TOKENS."""
    from ..limits import MAX_NEW_TOKENS

    if budget is None:
        return
    if not captions:
        raise InputError(f"a caption budget (max new tokens) applies to runs that caption the image; {why_not}",
                         field="caption_max_new_tokens")
    if type(budget) is not int or not 1 <= budget <= MAX_NEW_TOKENS:
        raise InputError(f"the caption budget (max new tokens) must be a whole number in 1..{MAX_NEW_TOKENS} "
                         f"(got {budget!r})", field="caption_max_new_tokens")


def _set_fields(name: str, cells: list, fields: dict[str, Any]) -> list:
    """``cells`` with ``fields`` set in every recipe that reads the VL model (text cells unchanged)."""
    from dataclasses import replace

    from ..conditioning.recipe import Recipe
    from ..errors import LlmDitError

    vl = [c for c in cells if c.recipe.uses_vl]
    for key in fields:
        if key not in Recipe.model_fields:
            raise InputError(f"{key!r} is not a recipe field", field=f"recipe.{key}")
        varied = len({repr(getattr(c.recipe, key)) for c in vl}) > 1 or any(key in c.params for c in vl)
        if key == "references" or varied:
            raise InputError(f"{name} varies {key} itself; sweep it instead (llm-dit sweep)", field=f"recipe.{key}")
    out = []
    for c in cells:
        if c.recipe.uses_vl:
            try:
                c = replace(c, recipe=Recipe.from_dict({**c.recipe.to_dict(), **fields}))
            except LlmDitError as e:
                e.field = f"recipe.{e.field}" if e.field else "recipe"
                raise
        out.append(c)
    return out


def sweep_spec(references: list[dict], prompt: str | None, base: dict[str, Any], axes: dict[str, list],
               config: Config, caption_tokens: int | None = None, caption: str | None = None,
               save_embeddings: bool = False, caption_max_new_tokens: int | None = None) -> tuple[RunSpec, Config]:
    """The :class:`RunSpec` of a sweep: every combination of ``axes`` (typed values) over the fixed
    recipe fields ``base``, with ``references`` (``[{"image", "weight"?, "role"?}]``, absolute paths)."""
    from ..conditioning.recipe import check_prompt_or_caption
    from .cells import sweep_cells
    from .presets import slice_grids

    axes = dict(axes)
    lengths = axes.get("caption_tokens")
    if lengths is not None:  # the caption_tokens axis: one caption per length (seed 004 phase 4)
        if caption_tokens is not None:
            raise InputError("give caption tokens as one number or as a sweep list (caption_tokens=N1,N2), not both",
                             field="axes.caption_tokens")
        if isinstance(lengths, list) and len(lengths) == 1:  # one value: a fixed caption length
            caption_tokens = axes.pop("caption_tokens")[0]
            lengths = None
    # a caption_tokens axis asks what caption tokens do (each value is checked with the axis, in sweep_cells)
    prompt = check_prompt_or_caption(prompt, caption_tokens if lengths is None else 1, len(references))
    _check_budget(caption_max_new_tokens, caption_tokens is not None or lengths is not None,
                  "this sweep has a prompt (give caption tokens)")
    if caption_tokens is not None or lengths is not None:
        config = config.replace(**{"encoder.max_length": MAX_CAPTION_TOKENS})
    if not axes:
        raise InputError("nothing to sweep: give at least one list of values (e.g. alpha 0.3,0.5)", field="axes")
    if "method" in axes and caption_tokens is None and lengths is None:
        raise InputError("the method axis compares caption-aligned and generic VL text: give caption tokens",
                         field="axes.method")
    base = dict(base)
    if references:
        base["references"] = references
    cells = sweep_cells(base, axes, caption=caption_tokens)
    images = list(dict.fromkeys(r["image"] for r in references))
    spec = RunSpec("sweep", images, prompt, cells, slice_grids(cells), caption=caption,
                   save_embeddings=save_embeddings, details={"base": base, "axes": axes},
                   caption_max_new_tokens=caption_max_new_tokens)
    return spec, config


def spec_from_metadata(path: str, save_embeddings: bool = False) -> tuple[RunSpec, Config]:
    """The :class:`RunSpec` and configuration recorded in a run's ``metadata.json`` (``path``), to run
    it again: the same cells, recipes, grids, prompt and settings. A reference image that is no
    longer at its recorded path is taken from the run folder's copy (``reference.png``, ...)."""
    return _recorded(Path(path), "plan", "from", save_embeddings,
                     "is not the metadata.json of an llm-dit run (rebuild it with llm-dit report DIR)")


def spec_from_run(out: str | Path) -> tuple[RunSpec, Config]:
    """The :class:`RunSpec` and configuration of the run folder ``out``, from its ``run.json``: what
    resumes it (its run key is the recorded one, so finished cells are kept)."""
    from .folder import RUN_FILE

    return _recorded(Path(out) / RUN_FILE, None, "run", False, "is not the run.json of an llm-dit run")


def _recorded(p: Path, plan_key: str | None, where: str, save_embeddings: bool,
              broken: str) -> tuple[RunSpec, Config]:
    """The run recorded in the JSON file ``p``: its plan under ``plan_key`` (None: at the top, as in
    run.json) and its ``config``; ``broken`` ends the sentence for a file that is no such record."""
    from ..conditioning.recipe import Recipe
    from ..errors import LlmDitError
    from ..io import parse_json
    from .cells import Cell
    from .folder import reference_name
    from .presets import GridSpec

    if not p.is_file():
        raise InputError(f"{p} does not exist", field=where)
    try:
        meta = parse_json(p.read_text(encoding="utf-8"), str(p))
    except InputError as e:  # nested too deep (parse_json's sentence names the file)
        e.field = where
        raise
    except (OSError, ValueError):
        raise InputError(f"{p} {broken}", field=where) from None
    try:
        plan, recorded = (meta[plan_key] if plan_key else meta), meta["config"]
        moved = {}  # recorded path -> the run folder's copy, for references no longer where they were
        for i, im in enumerate(plan["images"]):
            copy = p.parent / reference_name(i)
            if not Path(im).is_file() and copy.is_file():
                moved[im] = str(copy.resolve())
        cells = [Cell(c["name"], Recipe.from_dict(_moved(c["recipe"], moved)), c["params"], c.get("caption"),
                      c.get("generation") or {}) for c in plan["cells"]]
        grids = [GridSpec(**g) for g in plan.get("grids") or []]
        config = Config.from_dict(recorded)
        images = [moved.get(im, im) for im in plan["images"]]
        name, prompt, caption, details = plan["name"], plan["prompt"], plan.get("given_caption"), plan.get("details")
        budget = plan.get("caption_max_new_tokens")
        if not isinstance(name, str) or not all(isinstance(x, (str, type(None))) for x in (prompt, caption)) \
                or not isinstance(details, (dict, type(None))) or not isinstance(budget, (int, type(None))):
            raise TypeError("a field of the wrong type")
    except LlmDitError as e:
        raise InputError(f"{p} records a run this version cannot repeat: {e}", field=where) from None
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise InputError(f"{p} {broken}", field=where) from None
    spec = RunSpec(name, images, prompt, cells, grids, quick=bool(plan.get("quick")), caption=caption,
                   save_embeddings=save_embeddings, details=details or {}, caption_max_new_tokens=budget)
    return spec, config


def _moved(recipe: dict, moved: dict[str, str]) -> dict:
    """``recipe`` with its reference images' paths replaced per ``moved``."""
    def image(path: Any) -> Any:  # anything not a path is left for the recipe's validation to name
        return moved.get(path, path) if isinstance(path, str) else path

    refs = [{**r, "image": image(r.get("image"))} if isinstance(r, dict) else r
            for r in recipe.get("references") or []]
    return {**recipe, "references": refs} if refs else recipe
