"""Recipe flags of ``llm-dit generate``: references, extraction, statistics, blend, schedule.

Each flag sets one :class:`~llm_dit.conditioning.Recipe` field (dest ``recipe.<field>``); the recipe
itself validates the values, so the CLI, a recipe file and the web app refuse the same things with the
same sentence.
"""

from __future__ import annotations

import argparse

from ..conditioning.recipe import FILE_FIELDS, Recipe, Reference, shipped_recipes
from ..errors import InputError
from ..io import expand_user
from ..limits import number_problem
from .common import number, one_of

RECIPE = "recipe."
#: ``--recipe``'s help, with the shipped recipes' names (the web page's presets).
RECIPE_HELP = f"a recipe file, or a shipped recipe: {', '.join(shipped_recipes())}"


def add_recipe_flags(p: argparse.ArgumentParser) -> None:
    r = p.add_argument_group("vision conditioning (a Recipe; see docs/recipes.md)")
    r.add_argument("--image", action="append", metavar="REF", help="a reference image (repeat for several)")
    r.add_argument("--weight", action="append", type=number(), metavar="W", help="weight of each --image (default 1)")
    r.add_argument("--role", action="append", metavar="ROLE",
                   help=one_of(Reference, "role") + ", per --image (default content)")
    r.add_argument("--recipe", metavar="NAME|FILE.toml", help=RECIPE_HELP + "; flags override its fields")
    r.add_argument("--save-recipe", metavar="FILE.toml", help="also write the resolved recipe")
    r.add_argument("--vl-model", dest="models.vl", metavar="ID_OR_PATH", help="Qwen3-VL hub id or local folder")
    r.add_argument("--backend", dest=RECIPE + "backend", help=one_of(Recipe, "backend"))
    r.add_argument("--vl-text", dest=RECIPE + "vl_text", metavar="TEXT",
                   help="the VL chat's text; {prompt} stands for the prompt (default: the prompt)")
    r.add_argument("--no-vl-text", action="store_const", const="", dest=RECIPE + "vl_text",
                   help="no text in the VL chat")
    r.add_argument("--vl-system-prompt", dest=RECIPE + "system_prompt", metavar="TEXT")
    r.add_argument("--vl-layer", "--vl-hidden-layer", dest=RECIPE + "hidden_layer", type=int, metavar="K",
                   help="VL hidden_states index (default -6; --vl-hidden-layer: the notes' name)")
    r.add_argument("--tokens", dest=RECIPE + "token_selection", help=one_of(Recipe, "token_selection"))
    r.add_argument("--max-pixels", dest=RECIPE + "max_pixels", type=int, help="pixel budget per reference image")
    r.add_argument("--pool", dest=RECIPE + "pool", type=int, help="average K x K neighbourhoods of image tokens")
    r.add_argument("--intra-ratio", dest=RECIPE + "vl_intra_blend_ratio", type=number(), metavar="R",
                   help="vl_intra_blend_ratio: R x image tokens + (1-R) x text tokens of the VL chat")
    r.add_argument("--dual", dest=RECIPE + "dual_extraction", action="store_const", const=True,
                   help="image part from a pass without text, text part from a pass without the image")
    r.add_argument("--image-layer", dest=RECIPE + "image_layer", type=int, metavar="K",
                   help="layer of the image part")
    r.add_argument("--text-layer", dest=RECIPE + "text_layer", type=int, metavar="K", help="layer of the text part")
    r.add_argument("--image-tokens", dest=RECIPE + "image_tokens", help=one_of(Recipe, "image_tokens"))
    r.add_argument("--text-tokens", dest=RECIPE + "text_tokens", help=one_of(Recipe, "text_tokens"))
    r.add_argument("--adapter", dest=RECIPE + "adapter", metavar="FILE",
                   help="a linear map of VL states to the text encoder's (llm-dit stats adapter)")
    r.add_argument("--norm", dest=RECIPE + "normalization_mode", help=one_of(Recipe, "normalization_mode"))
    r.add_argument("--target-std", dest=RECIPE + "target_std", type=_target_std, metavar="STD|text",
                   help="global normalization target (default: the text embedding's std)")
    r.add_argument("--reference-stats", dest=RECIPE + "reference_stats", metavar="FILE",
                   help="statistics from 'llm-dit stats reference' (default: computed and cached)")
    r.add_argument("--outlier-mask", dest=RECIPE + "outlier_mask", help=one_of(Recipe, "outlier_mask"))
    r.add_argument("--outlier-threshold", dest=RECIPE + "outlier_threshold", type=number(), metavar="T")
    r.add_argument("--token-budget", dest=RECIPE + "token_budget", type=int, metavar="N",
                   help="at most N VL tokens per reference")
    r.add_argument("--budget-mode", dest=RECIPE + "budget_mode", help=one_of(Recipe, "budget_mode"))
    r.add_argument("--blend", dest=RECIPE + "blend", help=one_of(Recipe, "blend"))
    r.add_argument("--vl-alpha", dest=RECIPE + "alpha", type=number(), metavar="A", help="VL share in [0, 1]")
    r.add_argument("--schedule", dest=RECIPE + "schedule", metavar="SPEC",
                   help="alpha per step: linear:0.8:0.2 | cosine:A:B | step:A:B:FRAC | list:a,b,... ")
    r.add_argument("--resample", dest=RECIPE + "resample",
                   help=one_of(Recipe, "resample") + " (VL sequence -> text length)")
    r.add_argument("--magnitude", dest=RECIPE + "magnitude", help=one_of(Recipe, "magnitude"))
    r.add_argument("--style-blend", dest=RECIPE + "style_blend",
                   help="how style references apply: " + one_of(Recipe, "style_blend"))
    r.add_argument("--style-alpha", dest=RECIPE + "style_alpha", type=number(), metavar="A")
    r.add_argument("--gem-p", dest=RECIPE + "gem_p", type=number(), metavar="P")
    r.add_argument("--svd-k", dest=RECIPE + "svd_k", type=int, metavar="K")


def _target_std(text: str):
    if text == "text":
        return text
    value: float | None
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or number_problem(value) is not None:  # the range is the recipe's
        raise argparse.ArgumentTypeError(f"must be a finite number or 'text' (got {text})")
    return value


def absolute(path: str, what: str = "path") -> str:
    """Paths are stored absolute: a recipe, a sidecar or a run folder then reruns from any folder
    (``~`` expanded; ``~nosuchuser`` refused in one line naming ``what``)."""
    return str(expand_user(path, what).absolute())


def references_from_args(args: argparse.Namespace) -> list[dict]:
    """``[{"image", "weight"?, "role"?}]`` from ``--image`` (absolute), ``--weight`` and ``--role``."""
    images = [absolute(im, "--image") for im in args.image or []]
    for flag, values in (("--weight", args.weight), ("--role", args.role)):
        if values and len(values) != len(images):
            raise InputError(f"give one {flag} per --image ({len(values)} for {len(images)} image(s))")
    return [{"image": im, **({"weight": args.weight[i]} if args.weight else {}),
             **({"role": args.role[i]} if args.role else {})} for i, im in enumerate(images)]


def recipe_from_args(args: argparse.Namespace, config):
    """The :class:`Recipe` the flags describe (on top of ``--recipe``), not yet resolved."""
    from ..conditioning import Recipe

    base = Recipe.load(args.recipe) if args.recipe else None  # a file, or a shipped recipe by name
    fields = {k[len(RECIPE):]: v for k, v in vars(args).items() if k.startswith(RECIPE) and v is not None}
    for key in FILE_FIELDS:
        if fields.get(key):
            fields[key] = absolute(fields[key], key)
    if "schedule" in fields and "alpha" in fields:
        raise InputError("give --vl-alpha or --schedule, not both (a schedule sets alpha per step)")
    references = references_from_args(args)
    if references:
        fields["references"] = references
    if base is None and "backend" not in fields:
        given = sorted(fields) + (["vl_model"] if getattr(args, "models.vl", None) else [])
        if not references and given:  # e.g. --blend without --image: say so instead of ignoring it
            raise InputError(f"vision settings ({', '.join(given)}) need --image REF "
                             "(or --backend vl to condition on the VL text alone)")
        fields["backend"] = config.vl.backend if references else "text"
    data = {**(base.to_dict() if base else {}), **fields}
    if "alpha" in fields:
        data["schedule"] = None  # --vl-alpha over a recipe with a schedule: a constant alpha
    return Recipe.from_dict(data)
