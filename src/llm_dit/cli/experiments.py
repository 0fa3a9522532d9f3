"""``llm-dit experiments``, ``compare``, ``sweep`` and ``report``: thin doors to :mod:`llm_dit.experiments`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..conditioning.recipe import FILE_FIELDS, Recipe, Reference
from ..config import MetricsConfig
from ..errors import InputError
from ..experiments.workers import summary_line, worker_index
from ..interrupt import unwinding
from ..limits import MAX_NEW_TOKENS
from .common import add_config_flags, add_generation_flags, config, count, number, one_of
from .conditioning import RECIPE_HELP, absolute, references_from_args

if TYPE_CHECKING:
    from ..config import Config
    from ..experiments.specs import RunSpec, SpecMaker

log = logging.getLogger(__name__)  # the runner's progress lines: stderr, hidden by -q

#: Sweep flags (comma lists) and the recipe field each one varies.
AXIS_FLAGS = {
    "alphas": ("alpha", "A,B,..", "VL share per cell"),
    "layers": ("hidden_layer", "K,K,..", "VL hidden layers (use --layers=-2,-6)"),
    "tokens": ("token_selection", "SEL,..", one_of(Recipe, "token_selection", ", ")),
    "norms": ("normalization_mode", "MODE,..", one_of(Recipe, "normalization_mode", ", ")),
    "blends": ("blend", "MODE,..", one_of(Recipe, "blend", ", ")),
    "masks": ("outlier_mask", "MODE,..", one_of(Recipe, "outlier_mask", ", ")),
    "intra_ratios": ("vl_intra_blend_ratio", "R,..", "image:text mixing ratios"),
    "budgets": ("token_budget", "N,..", "VL tokens per reference"),
    "backends": ("backend", "B,..", one_of(Recipe, "backend", ", ")),
    "target_stds": ("target_std", "STD,..", "global normalization targets (numbers or 'text')"),
    "methods": ("method", "M,..", "seed 004: caption (VL text = the caption) and/or generic (with --caption-tokens)"),
}


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="the run folder (re-run the command to resume)")
    p.add_argument("--images", nargs="+", metavar="IMG_OR_DIR",
                   help="trials: the same cells on each of these reference images (files or folders of images)")
    p.add_argument("--seeds", metavar="N|S1,S2",
                   help="trials: N seeds from --seed on (or a list); with --images, every image x seed")
    p.add_argument("--caption", metavar="TEXT", help="use this caption instead of generating one")
    p.add_argument("--caption-file", metavar="FILE", help="read the caption from a file")
    p.add_argument("--caption-max-new-tokens", type=count(ge=1, le=MAX_NEW_TOKENS), metavar="N",
                   help="the generation budget of each caption, thinking and caption together (seed 004's "
                        "--max-tokens; default: the target length, plus 1536 for a Thinking model)")
    p.add_argument("--save-embeddings", action="store_true", help="also save each cell's embeddings")
    p.add_argument("--vqa", dest="metrics.vqa", help="P('Yes') score from Qwen3-VL: " + one_of(MetricsConfig, "vqa"))
    p.add_argument("--clip", dest="metrics.clip", metavar="DIR", help="a local CLIP folder: image-prompt score")
    p.add_argument("--siglip", dest="metrics.siglip", metavar="DIR", help="a local SigLIP folder: image-prompt score")
    p.add_argument("--vl-model", dest="models.vl", metavar="ID_OR_PATH", help="Qwen3-VL hub id or local folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (summary lines only)")
    p.add_argument("--workers", metavar="N|auto",
                   help="start N processes of this command, one per visible GPU ('auto': one per GPU), "
                        "each taking the next cell none holds")
    add_generation_flags(p)
    add_config_flags(p)


def add_parsers(sub) -> None:
    p = sub.add_parser("experiments", help="list the named experiments")
    p.add_argument("--debug", action="store_true")
    p.set_defaults(func=cmd_experiments)

    p = sub.add_parser("compare", help="run a named experiment: images, grids, metadata.json, report.html")
    p.add_argument("--experiment", metavar="NAME", help="see 'llm-dit experiments'")
    p.add_argument("--image", action="append", metavar="IMG", help="the reference image (twice for multi_reference)")
    p.add_argument("--prompt", help="the prompt (caption experiments write their own)")
    p.add_argument("--quick", action="store_true", help="the experiment's short version")
    p.add_argument("--outlier-threshold", type=number(), metavar="T",
                   help="the outlier masks' threshold in every VL cell (default 10: std ratio to the text encoder's)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="a recipe field set in every VL cell, e.g. --set max_pixels=262144 (repeat)")
    p.add_argument("--from", dest="from_metadata", metavar="DIR/metadata.json",
                   help="run again what an earlier run recorded (compare or sweep: same cells and settings)")
    _add_run_flags(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("sweep", help="the cartesian product of recipe fields: images, grids, report")
    p.add_argument("--image", action="append", metavar="IMG", help="a reference image (repeat for several)")
    p.add_argument("--weight", action="append", type=number(), metavar="W", help="weight of each --image")
    p.add_argument("--role", action="append", metavar="ROLE", help=one_of(Reference, "role") + ", per --image")
    p.add_argument("--prompt", help="the prompt (or --caption-tokens N: the reference's caption)")
    p.add_argument("--caption-tokens", type=int, metavar="N", help="the prompt is a caption of about N tokens")
    p.add_argument("--recipe", metavar="NAME|FILE.toml", help=RECIPE_HELP + ": the fixed part of every cell")
    p.add_argument("--grid", metavar="FILE.toml", help="[recipe] fixed fields and [axes] lists, as a file")
    axes = p.add_argument_group("axes (comma lists; one value = a fixed field)")
    for flag, (_, metavar, what) in AXIS_FLAGS.items():
        axes.add_argument("--" + flag.replace("_", "-"), dest="axis_" + flag, metavar=metavar, help=what)
    axes.add_argument("--schedules", dest="axis_schedules", action="append", metavar="SPEC",
                      help="an alpha schedule per cell (repeat): linear:0.8:0 ...")
    axes.add_argument("--vary", action="append", metavar="FIELD=V1,V2",
                      help="any recipe field, or steps / seed / shift / guidance_scale (repeat)")
    _add_run_flags(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="(re)build metadata.json, grids, plots, report.html and findings.md of a run "
                                      "folder; or compare several folders in one page")
    p.add_argument("dir", metavar="DIR", nargs="+", help="a run or trials folder (several: one page comparing them)")
    p.add_argument("--single-file", action="store_true",
                   help="also write report_single.html: every picture embedded, one file to send")
    p.add_argument("--out", metavar="FILE.html", help="the comparison page (with several folders)")
    p.add_argument("--debug", action="store_true")
    p.set_defaults(func=cmd_report)


def cmd_experiments(args) -> int:
    from ..experiments.presets import catalog

    for e in catalog():
        print(f"{e['name']:24s} {e['cells']:3d} cells ({e['quick_cells']} quick)  {e['summary']}")
    return 0


def _images(args) -> list[str]:
    return [absolute(im) for im in args.image or []]


def _caption(args) -> str | None:
    if args.caption is not None and args.caption_file:
        raise InputError("give --caption or --caption-file, not both")
    if args.caption_file:
        p = Path(args.caption_file)
        if not p.is_file():
            raise InputError(f"caption file {p} does not exist")
        text = p.read_text(encoding="utf-8", errors="replace")
    else:
        text = args.caption
    if text is not None and not text.strip():
        raise InputError("the caption is empty")
    return text


def _trials(args, cfg, image_sets: list[list[str]], make: SpecMaker) -> int | None:
    """Run ``make(images, config) -> (spec, config)`` once per image set x seed when the command asks
    for trials (``--images`` with several images, or ``--seeds``); None when it asks for one run."""
    from ..experiments.trials import plan_trials, run_trials, seeds_from

    seeds = seeds_from(args.seeds, cfg.generation.seed) if args.seeds else [cfg.generation.seed]
    if len(image_sets) * len(seeds) == 1:
        return None
    firsts = [images[0] if images else "" for images in image_sets]
    trials = []
    for trial in plan_trials(firsts, seeds):
        images = image_sets[firsts.index(trial.image)]
        trials.append((trial, *make(images, cfg.replace(**{"generation.seed": trial.seed}))))
    if args.workers is not None and worker_index() is None:
        raise InputError("--workers runs the cells of one run; trials (--images, --seeds) run under a launcher "
                         "instead (accelerate launch, torchrun: docs/cli.md)")
    with unwinding():  # as in _run
        summary = run_trials(trials, args.out, echo=log.info, progress=not args.no_progress, if_busy="wait")
    return _report(summary, args)


def _image_sets(args, images_per_set: int) -> list[list[str]]:
    """The reference images of each trial: one set from ``--image``, or one per ``--images`` image."""
    from ..experiments.trials import images_from

    if not args.images:
        return [_images(args)]
    if args.image:
        raise InputError("give --image or --images, not both (--images runs the cells once per image)")
    if images_per_set != 1:
        raise InputError(f"--images runs trials of one-image runs; this one takes {images_per_set} images: give "
                         "them with --image (and --seeds for trials)")
    return [[im] for im in images_from(args.images)]


def _run(spec, cfg, args) -> int:
    from ..experiments.runner import run

    if args.workers is not None and worker_index() is None:
        done = _workers(spec, cfg, args)
        if done is not None:
            return done
    worker = worker_index()
    # the same run already being written into --out (the same command started twice, on this host or
    # another sharing the folder): join it, each process taking the next cell none holds; another run
    # there is refused (experiments/lock.py). A Ctrl-C stops the run through its finally blocks: its
    # session (and, from the last process of the run, the report) is written
    with unwinding():
        first = worker is None or worker[0] == 0  # the other workers of --workers say only what they made
        summary = run(spec, cfg, args.out, echo=log.info if first else log.debug, if_busy="join",
                      progress=not args.no_progress and first)
    if worker is not None:  # a worker of --workers: its parent adds the summaries up and reports
        print(summary_line(summary))
        return 1 if summary.failed else 0
    return _report(summary, args)


def _workers(spec, cfg, args) -> int | None:
    """``--workers N``: the command started N times, one process per visible GPU, joining one run
    (experiments/workers.py); None when that is one process (this one runs it)."""
    from ..experiments import workers
    from ..experiments.plan import Summary
    from ..experiments.runner import prepare_run

    gpus = workers.visible_gpus()
    n = workers.worker_count(args.workers, gpus)
    prepare_run(spec, cfg)  # bad input: one sentence here, not one from every worker
    if n == 1:
        return None
    where = f"one per GPU ({','.join(gpus[:n])})" if gpus else "on the CPU (no GPU is visible)"
    log.info(f"starting {n} workers {where}; each takes the next cell none holds")
    started = workers.start(args.argv, n, gpus)
    with unwinding():  # a Ctrl-C is passed on to the workers, which write their sessions as they stop
        workers.wait(started)

    def report(summaries: list[dict]) -> int:
        return _report(Summary(Path(args.out), summaries[0]["total"], min(s["skipped"] for s in summaries),
                               sum(s["generated"] for s in summaries),
                               sorted({f for s in summaries for f in s["failed"]}),
                               reported=any(s["reported"] for s in summaries)), args)

    return workers.exit_code(started, report)


def _report(summary, args) -> int:
    if not summary.main:  # another process of a multi-process run: the first one reports
        return 1 if summary.failed else 0
    report = summary.out / "report.html"
    print(f"{summary.total} cells: {summary.skipped} already done, {summary.generated} picture(s) generated, "
          f"{len(summary.failed)} failed")
    if not summary.reported:  # joined: other processes of the run work on; the last one reports
        print(f"report: written by the last process of this run to finish ({report}; `llm-dit report "
              f"{summary.out}` writes it now)")
        return 1 if summary.failed else 0
    for w in _warnings(summary.out):
        print(f"warning: {w}")
    print(f"report: {report}")
    if summary.failed:
        print(f"llm-dit: error: {len(summary.failed)} of {summary.total} cells failed ({', '.join(summary.failed[:5])}"
              f"{', ...' if len(summary.failed) > 5 else ''}); their errors are in {summary.out / 'metadata.json'}",
              file=sys.stderr)
        return 1
    return 0


def _warnings(out: Path) -> list[str]:
    """The degenerate comparisons the report found (metadata.json's ``warnings``; a trial's named)."""
    import json

    try:
        warnings = json.loads((out / "metadata.json").read_text(encoding="utf-8"))["warnings"]
        return [(f"[{w['trial']}] " if "trial" in w else "") + w["text"] for w in warnings]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def cmd_compare(args) -> int:
    from ..experiments.specs import experiment_spec, spec_from_metadata
    from .common import overrides

    if args.from_metadata:
        given = [f for f, v in (("--experiment", args.experiment), ("--image", args.image), ("--prompt", args.prompt),
                                ("--quick", args.quick), ("--caption", args.caption),
                                ("--caption-file", args.caption_file), ("--set", args.set),
                                ("--caption-max-new-tokens", args.caption_max_new_tokens),
                                ("--images", args.images), ("--seeds", args.seeds),
                                ("--outlier-threshold", args.outlier_threshold)) if v]
        given += [f"{k}" for k in overrides(args)] + (["--profile"] if args.profile != "default" else []) + (
            ["--config"] if args.config else [])
        if given:
            raise InputError(f"--from re-runs the recorded run with its recorded settings; give only --out (and "
                             f"--no-progress, --save-embeddings), not {', '.join(given)}")
        spec, cfg = spec_from_metadata(args.from_metadata, save_embeddings=args.save_embeddings)
        return _run(spec, cfg, args)
    if not args.experiment:
        raise InputError("give --experiment NAME (see llm-dit experiments), or --from DIR/metadata.json")
    from ..experiments.presets import get_experiment

    caption, fields, cfg = _caption(args), _recipe_fields(args), config(args)

    def make(images: list[str], cfg: Config) -> tuple[RunSpec, Config]:
        return experiment_spec(args.experiment, images, args.prompt, cfg, quick=args.quick, caption=caption,
                               save_embeddings=args.save_embeddings, recipe=fields,
                               caption_max_new_tokens=args.caption_max_new_tokens)

    sets = _image_sets(args, get_experiment(args.experiment).images)
    done = _trials(args, cfg, sets, make)
    return done if done is not None else _run(*make(sets[0], cfg), args)


def _recipe_fields(args) -> dict:
    """``compare``'s recipe overrides: ``--set FIELD=VALUE`` and ``--outlier-threshold``, typed as
    their fields take them (file fields made absolute)."""
    from ..experiments.cells import coerce

    fields: dict = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set takes FIELD=VALUE (got '{item}')")
        key = key.strip()
        fields[key] = absolute(value) if key in FILE_FIELDS and value else coerce(key, value)
    if args.outlier_threshold is not None:
        fields["outlier_threshold"] = args.outlier_threshold
    return fields


def sweep_axes(args) -> tuple[dict, dict]:
    """``(base recipe fields, axes)`` from --recipe, --grid and the axis flags (flags win)."""
    from ..conditioning import Recipe
    from ..experiments.cells import sweep_axis
    from ..io import parse_toml

    base: dict = Recipe.load(args.recipe).to_dict() if args.recipe else {}
    axes: dict[str, list] = {}
    if args.grid:
        p = Path(args.grid)
        if not p.is_file():
            raise InputError(f"grid file {p} does not exist")
        try:
            data = parse_toml(p.read_text(encoding="utf-8"), f"grid file {p}")
        except InputError:  # nested too deep: the sentence names the file
            raise
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"grid file {p} is not valid TOML: {e}") from None
        unknown = set(data) - {"recipe", "axes"}
        if unknown:
            raise InputError(f"grid file {p}: unknown table(s) {sorted(unknown)}; expected [recipe] and [axes]")
        for table in ("recipe", "axes"):
            if not isinstance(data.get(table, {}), dict):
                raise InputError(f"grid file {p}: '{table}' must be a table ([{table}] with one key per field)")
        base.update(data.get("recipe", {}))
        for k, v in data.get("axes", {}).items():
            axes[k.removeprefix("generation.")] = v if isinstance(v, list) else [v]
    # command-line values are text: each is typed as its field takes it (file values are typed already)
    for flag, (field, _, _) in AXIS_FLAGS.items():
        text = getattr(args, "axis_" + flag)
        if text is not None:
            axes[field] = sweep_axis(field, text)[1]
    if args.axis_schedules:
        axes["schedule"] = list(args.axis_schedules)
    for item in args.vary or []:
        key, sep, values = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--vary takes FIELD=V1,V2 (got '{item}')")
        key, axes_values = sweep_axis(key, values)
        axes[key] = axes_values
    fixed = {k: v[0] for k, v in axes.items() if isinstance(v, list) and len(v) == 1}
    return {**base, **{k: v for k, v in fixed.items() if k in Recipe.model_fields}}, \
        {k: v for k, v in axes.items() if k not in fixed or k not in Recipe.model_fields}


def _notes_defaults(args, base: dict, axes: dict) -> int | None:
    """The notes' ``[vl]`` alpha and method of ``--config`` set in ``base`` where neither the recipe nor
    an axis sets them (flags win); returns the caption tokens: ``--caption-tokens``, else the table's
    when the sweep has no prompt and no caption_tokens axis."""
    from ..config import notes_vl
    from ..experiments.cells import METHODS

    notes = notes_vl(args.config)
    if notes.alpha is not None and "alpha" not in base and "alpha" not in axes:
        base["alpha"] = notes.alpha
    if notes.method is not None and "vl_text" not in base and "method" not in axes and "vl_text" not in axes:
        base["vl_text"] = METHODS[notes.method]
    if args.caption_tokens is None and args.prompt is None and "caption_tokens" not in axes:
        return notes.caption_tokens
    return args.caption_tokens


def cmd_sweep(args) -> int:
    from ..experiments.specs import sweep_spec

    caption = _caption(args)
    references = references_from_args(args)
    base, axes = sweep_axes(args)
    cfg = config(args, notes=True)
    caption_tokens = _notes_defaults(args, base, axes)
    for key in FILE_FIELDS:
        if isinstance(base.get(key), str):
            base[key] = absolute(base[key])
        if key in axes:
            axes[key] = [v if v is None else absolute(v) for v in axes[key]]

    def make(images: list[str], cfg: Config) -> tuple[RunSpec, Config]:
        refs = references if not args.images else [{"image": im} for im in images]
        return sweep_spec(refs, args.prompt, base, axes, cfg, caption_tokens=caption_tokens, caption=caption,
                          save_embeddings=args.save_embeddings, caption_max_new_tokens=args.caption_max_new_tokens)

    if args.images and (args.weight or args.role):
        raise InputError("--weight and --role go with --image; --images gives one content reference per trial")
    sets = _image_sets(args, 1) if args.images else [[r["image"] for r in references]]
    done = _trials(args, cfg, sets, make)
    return done if done is not None else _run(*make(sets[0], cfg), args)


def cmd_report(args) -> int:
    from ..experiments.folder import TRIALS_FILE
    from ..experiments.report import write_report
    from ..experiments.report_share import compare_runs, single_file
    from ..experiments.trials_report import write_trials_report

    folders = [Path(d) for d in args.dir]
    for out in folders:
        if not out.is_dir():
            raise InputError(f"{out} is not a folder")
    if len(folders) > 1:
        if not args.out:
            raise InputError("give --out FILE.html for the page comparing several folders")
        print(f"report: {compare_runs(folders, Path(args.out), embedded=args.single_file)}")
        return 0
    if args.out:
        raise InputError("--out names the page comparing several folders; one folder's report is DIR/report.html")
    out = folders[0]
    path = write_trials_report(out, rebuild_trials=True) if (out / TRIALS_FILE).is_file() else write_report(out)
    print(f"report: {path}")
    if args.single_file:
        print(f"single file: {single_file(out)}")
    return 0
