"""From a run folder's records to what a researcher reads: metadata.json, grids, plots, report.html.

Everything here reads only the folder (``run.json``, ``cells/*.json``, ``stats/*``, the PNGs), so
``llm-dit report DIR`` rebuilds it for a finished, partial or interrupted run without any model.
``report.html`` refers to the images by relative paths: it opens from disk, anywhere the folder goes.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..io import write_json
from . import folder
from .cells import fmt
from .findings import write_findings
from .grid import Panel, layout, render
from .presets import EXPERIMENTS, GridSpec
from .report_html import title as run_title
from .report_html import write_html

SEED_FIELDS = ("vl_shape", "vl_std", "token_selection", "normalization_mode", "blended_std", "generation_time",
               "alpha", "hidden_layer")


def _model(spec: str, kind: str) -> str:
    from ..models.loading import resolve_model_path

    try:
        return resolve_model_path(spec, kind)
    except Exception:
        return spec


def _z_image(models: dict) -> str:
    """The Z-Image a run used, for its metadata: the resolved folder or hub id, or its single files."""
    if any(models.get(k) for k in ("dit", "text_encoder", "vae")):
        from ..config import ModelsConfig
        from ..models.single_file import identity

        try:
            return identity(ModelsConfig.model_validate(models))
        except Exception:
            return str(models.get("z_image"))
    return _model(models["z_image"], "z_image")


#: The fields of run.json's plan (besides the config) that metadata.json repeats, so that it alone
#: re-runs the run (:func:`~llm_dit.experiments.specs.spec_from_metadata`).
PLAN_FIELDS = ("name", "quick", "images", "prompt", "given_caption", "details", "cells", "grids")


def build_metadata(out: Path, found: folder.RunFolder | None = None) -> dict:
    """The run-level fields and one entry per planned cell (``status``: one of
    :data:`~llm_dit.experiments.folder.CELL_STATUSES`), read by :func:`folder.read_run` (or given)."""
    found = found or folder.read_run(out)
    if found is None:
        raise InputError(f"{out} holds no llm-dit run (no readable {folder.RUN_FILE})")
    run = found.plan
    cfg = run["config"]
    g = cfg["generation"]
    results = [{"name": c.name, "status": c.status, "success": None, "params": c.params, "recipe": c.recipe}
               if c.record is None else {**c.record, "status": c.status} for c in found.cells]
    captions = found.captions
    sessions = run.get("sessions", [])
    last = sessions[-1] if sessions else {}
    counts = found.counts()
    from .answers import answers
    from .checks import degenerate
    from .evidence import aggregate

    evidence = aggregate([{"results": results}])
    meta = {
        "experiment": run["name"],
        "quick": run.get("quick", False),
        "image": run["images"][0] if run["images"] else None,
        "images": run["images"],
        "prompt": run["prompt"],
        "captions": captions,
        "seed": g["seed"],
        "steps": g["steps"],
        "width": g["width"],
        "height": g["height"],
        "models": {"z_image": _z_image(cfg["models"]), "vl": _model(cfg["models"]["vl"], "vl")},
        "versions": last.get("versions"),
        "git_revision": last.get("git_revision"),
        "config": cfg,
        "details": run.get("details", {}),
        # what `llm-dit compare --from metadata.json` re-runs: run.json's plan, the config above aside
        "plan": {**{k: run.get(k) for k in PLAN_FIELDS},  # the caption budget only where the run had one
                 **{k: run[k] for k in ("caption_max_new_tokens",) if run.get(k) is not None}},
        "run_key": run["run_key"],
        "sessions": sessions,
        "counts": counts,
        "warnings": degenerate(results),  # comparisons that compare nothing (see checks.py)
        "answers": answers(run["name"], evidence, {c.name: c.params for c in found.cells}),
        "evidence": evidence,  # one trial: the values of the records, the differences between cells
        "results": results,
    }
    return meta


def _matches(params: dict, where: dict) -> bool:
    return all(k in params and fmt(params[k]) == fmt(v) for k, v in where.items())


def _panel(out: Path, r: dict) -> Panel:
    from PIL import Image

    if r["status"] == "done":
        try:
            with Image.open(out / r["file"]) as im:
                return Panel(r["name"], im.convert("RGB"))
        except Exception:
            return Panel(r["name"], None, "unreadable")
    return Panel(r["name"], None, r["status"])


def grid_title(meta: dict, spec: GridSpec) -> str:
    """The slice first: a title too long for the grid is cut at its end (a long caption), never
    where it names the slice."""
    return f"[{spec.title}]  {run_title(meta)}" if spec.title else run_title(meta)


def write_grids(out: Path, meta: dict, specs: list[GridSpec], thumbnails: dict | None = None) -> list[Path]:
    """``comparison_grid.png`` and one grid per spec; ``thumbnails``: ``{cell: grid.thumbnail(picture)}``
    made while the run wrote its cells (the others are read from their PNGs)."""
    from PIL import Image

    from ..images import save_png

    thumbnails = thumbnails or {}
    panels = {r["name"]: Panel(r["name"], thumbnails[r["name"]]) if r["status"] == "done" and r["name"] in thumbnails
              else _panel(out, r) for r in meta["results"]}  # each picture read once, for every grid
    lead = []
    for i in range(len(meta["images"])):
        p = out / folder.reference_name(i)
        if p.is_file():
            with Image.open(p) as im:
                lead.append(Panel("reference" if i == 0 else f"reference {i + 1}", im.convert("RGB")))
    written = []
    for spec in [GridSpec("comparison_grid.png"), *specs]:
        cells = [(r["params"], panels[r["name"]]) for r in meta["results"] if _matches(r["params"], spec.where)]
        if not cells:
            continue
        grid = render(layout(grid_title(meta, spec), lead, cells, spec.rows, spec.cols))
        # written last, at every run's end; like every report file, made again by `llm-dit report DIR`
        written.append(save_png(grid, out / spec.file, compress_level=1, durable=False))
    return written


# -- plots ------------------------------------------------------------------------------------------


def _stats(out: Path, name: str) -> dict | None:
    from ..io import load_tensors

    p = out / "stats" / f"{name}.safetensors"
    if not p.is_file():
        return None
    try:
        return load_tensors(p, "llm_dit_cell_stats", "cell statistics")[1]
    except InputError:
        return None


def _start_plots(out: Path, meta: dict, workers) -> tuple[list, list]:
    """The report's plots (see :mod:`report_plots`) handed to ``workers``
    (:class:`report_plots.PlotWorkers`) when given: ``(jobs, replies)``; :func:`_collect` waits."""
    from .report_plots import plot_jobs

    stats = {r["name"]: s for r in meta["results"] if r["status"] == "done" and (s := _stats(out, r["name"]))}
    exp = EXPERIMENTS.get(meta["experiment"])
    jobs = plot_jobs(out, meta["results"], stats, exp.look_at if exp else ())
    try:
        return jobs, workers.submit(jobs) if workers is not None else []
    except Exception:  # workers shut down or broken: drawn here
        return jobs, []


def _collect(started: tuple[list, list]) -> list[Path]:
    """The plots' files; a plot no worker drew (none given, or one that failed or died) drawn here."""
    from .report_plots import draw

    jobs, replies = started
    paths = []
    for i, job in enumerate(jobs):
        try:
            path = replies[i].result() if replies else draw(*job)
        except Exception:
            path = draw(*job)
        paths.append(Path(path))
    return paths


def write_report(out: str | Path, thumbnails: dict | None = None, workers=None) -> Path:
    """metadata.json, the grids, the plots and report.html of the run in ``out`` (``thumbnails``: see
    :func:`write_grids`; ``workers``: see :func:`_start_plots`; they draw while the grids are written)."""
    from ..io import confined

    out = Path(out)
    with confined(out):  # whatever the folder's records say, the report writes only inside it
        meta = build_metadata(out)
        write_json(out / "metadata.json", meta, durable=False)
        specs = [GridSpec(**g) for g in meta["plan"]["grids"] or []]
        drawing = _start_plots(out, meta, workers)
        grids = write_grids(out, meta, specs, thumbnails)
        plots = _collect(drawing)
        write_findings(out, meta, meta["evidence"], grids[0].name if grids else None)
        return write_html(out, meta, grids, plots)
