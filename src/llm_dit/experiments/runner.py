"""Run the cells of an experiment or a sweep: plan everything, then load each model once.

The stages, in the order they run (each a function below over one :class:`RunContext`):

    0. :func:`prepare_run`: reference images, every cell's recipe, layers, schedules and the files it
       names, checked and loaded into a :class:`PreparedRun`; nothing loads a model before
    1. :func:`open_folder`: the run folder locked (:mod:`lock`: another run is refused, the same
       run waits or is refused) and made ready; cells whose record carries this run's key and
       whose PNG opens are finished and skipped
    2. Qwen3-VL (when a pending cell needs it): :func:`make_captions`, then :func:`extract` every
       unique extraction (requests that differ only in their layers share one forward pass);
       unloaded unless it scores images
    3. Z-Image: loaded; splice and dopsd extractions borrow its text encoder
    4. :class:`~llm_dit.experiments.pictures.PictureStage`: every unique prompt encoded once,
       reference statistics once per layer set, then one generation per unique picture (baselines
       first): cells that must give the same picture (a pure-text cell and every alpha-0 cell of its
       group) share it; batches of ``runtime.batch_size``; each cell's PNG, then its record, written
       on a thread beside the GPU
    5. :func:`close_run`: this session in run.json, then metadata.json, grids and report.html from the
       records

Same seed for every cell (a CPU generator), so cells differ only by what the experiment varies.

Several processes of one run (``if_busy="join"``: the same command started again on this host or
another sharing the folder, under a launcher such as ``accelerate launch`` or ``torchrun``, or by
``llm-dit sweep --workers N``) each plan every cell and pull them from the folder: each process
claims a picture before making it (:mod:`claims`), captions too; the first one in prepares the
folder and the last one out writes the report (:func:`~lock.enter`). No process waits for another
but to score a picture against a baseline that another is still making. Trials' processes (runs in
a row under one launcher) still split each run's pictures evenly, with a barrier after the baselines.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..conditioning.run import CAPTION_STANDIN, Checked, Loaded, check_recipe, run_extractions
from ..config import Config
from ..errors import InputError, LlmDitError
from ..images import load_image, save_png
from ..protocols import OnStep
from ..provenance import provenance
from . import folder, lock
from .cells import Cell, check_unique, effective_recipe
from .claims import CellClaims, worker_id
from .plan import Job, PreparedRun, RunSpec, Summary, cell_key, merge_requests, plan_jobs, run_key
from .processes import Processes
from .workers import worker_index

if TYPE_CHECKING:
    from ..conditioning.recipe import Recipe
    from ..generate import ZImage
    from ..protocols import Captioner
    from ..protocols import Models as ModelsProvider

log = logging.getLogger(__name__)

Echo = Callable[[str], None]
#: ``on_cell(done, total, name)`` after each finished cell; it may raise Cancelled to stop the run.
OnCell = Callable[[int, int, str], None]


# -- 0. prepare ----------------------------------------------------------------------------------


def prepare_run(spec: RunSpec, config: Config) -> PreparedRun:
    """Stage 0: everything a user can get wrong, refused before any folder or model exists (the
    model paths, the device, offloading against captions and VQA, cell names, reference images,
    every cell's recipe for its prompt, or for a stand-in when its prompt is a caption not yet written)."""
    from ..analysis.hub_metrics import check_paths
    from ..models.loading import check_z_image, resolve_model_path, resolve_placement
    from ..vl.chat import check_aspect_ratio

    if not spec.cells:
        raise InputError("nothing to run: the experiment has no cells")
    check_paths(config)
    resolve_placement(config.runtime)  # a device that is not there: refused before any folder exists
    check_z_image(config.models)  # a folder, hub id or single files (ComfyUI's)
    if any(c.recipe.backend != "text" or c.caption is not None for c in spec.cells):
        resolve_model_path(config.models.vl, "vl")
    offloaded = config.runtime.offload.startswith("group_")
    if offloaded and (config.metrics.vqa == "on" or any(
            c.caption is not None for c in spec.cells) and spec.caption is None):
        raise InputError(f"runtime.offload = '{config.runtime.offload}' keeps Qwen3-VL offloaded, so it "
                         "cannot write captions or score VQA; use a profile without group offloading (e.g. "
                         "--profile rtx4090), give the caption (--caption), or --vqa off")
    check_unique(spec.cells)
    folder.check_cell_names([c.name for c in spec.cells])
    loaded = Loaded()  # each file read once: its digest (the run key's) is of the bytes decoded here
    references = []
    for i, path in enumerate(spec.images):
        im = load_image(path, f"reference image {i + 1}", loaded.digests)
        check_aspect_ratio(im, f"reference image {i + 1} {path}")
        references.append(im)
    resolved: dict[str, Recipe] = {}
    checked: dict[str, Checked] = {}
    for c in spec.cells:
        cfg = c.config(config)
        prompt = spec.prompt if c.caption is None else CAPTION_STANDIN
        try:
            resolved[c.name] = c.recipe.resolve(cfg)
            checked[c.name] = check_recipe(resolved[c.name], cfg, prompt or "", loaded)
        except LlmDitError as e:
            raise type(e)(f"cell {c.name}: {e}") from None
    return PreparedRun(spec, config, references, resolved, checked, loaded)


# -- the context every stage reads ---------------------------------------------------------------


@dataclass
class RunContext:
    """One run into one folder: its inputs, its processes, where progress goes, and its account."""

    prepared: PreparedRun
    out: Path
    pool: ModelsProvider
    own: bool  # the run loaded its models itself (it frees them; the VL after extraction unless it scores)
    procs: Processes
    echo: Echo
    progress: bool = True
    on_step: OnStep | None = None
    on_cell: OnCell | None = None
    if_busy: lock.IfBusy = "refuse"  # another process writes the same run in the folder: refuse, wait or join
    split: bool = False  # trials under a launcher: the processes split the cells (they do not join)
    folder_lock: lock.FolderLock | None = None  # the folder's lock (the first process, from open_folder to the end)
    claims: CellClaims | None = None  # joined runs: this process's claims on the cells it makes
    since: float = field(default_factory=time.time)  # this process's start (a failure since then is settled)
    keys: dict[str, str] = field(default_factory=dict)  # cell name -> cell key
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds (this process)
    cells_done: int = 0

    @property
    def spec(self) -> RunSpec:
        return self.prepared.spec

    @property
    def config(self) -> Config:
        return self.prepared.config

    @property
    def joined(self) -> bool:
        """Whether other processes of the same run may work in the folder beside this one."""
        return self.folder_lock is not None and self.folder_lock.shared

    def time(self, stage: str, t0: float) -> None:
        """Add the seconds since ``t0`` to ``stage``."""
        self.timings[stage] = round(self.timings.get(stage, 0.0) + time.perf_counter() - t0, 3)

    def cell_done(self, total: int, name: str) -> None:
        self.cells_done += 1
        if self.on_cell is not None:
            self.on_cell(self.cells_done, total, name)

    def finished(self) -> dict[str, dict]:
        """Records of the cells finished under this run's keys (read from the folder)."""
        return {c.name: rec for c in self.spec.cells if (rec := self.finished_cell(c.name))}

    def finished_cell(self, name: str) -> dict | None:
        """The record of cell ``name`` if it is finished under this run's key (with its embeddings
        when the run saves them), else None."""
        rec = folder.finished(self.out, name, self.keys[name])
        if rec is None or (self.spec.save_embeddings
                           and not (self.out / "embeddings" / f"{name}.safetensors").is_file()):
            return None
        return rec

    def settled(self, name: str) -> bool:
        """Whether cell ``name`` needs no more work in this session: finished, or failed since this
        process started (by another process of a joined run; an older failure is retried)."""
        return self.finished_cell(name) is not None or folder.failed_since(self.out, name, self.keys[name],
                                                                           self.since)


@dataclass
class Held:
    """What the run holds until its end, besides models: plot workers, the collector's freeze."""

    plot_workers: Any = None  # report_plots.PlotWorkers (GPU runs, first process)
    frozen: bool = False  # gc.freeze() in force (from the models loaded to the end of the run)

    def close(self) -> None:
        if self.plot_workers is not None:
            self.plot_workers.close()
        if self.frozen:
            gc.unfreeze()  # before the models are freed: unloading relies on the collector
            self.frozen = False


@dataclass
class Models:
    """The run's models while loaded (taken from the pool, which owns them)."""

    vl: Captioner | None = None  # Qwen3-VL: captions, extraction, VQA
    z_image: ZImage | None = None
    scorers: list = field(default_factory=list)  # optional CLIP / SigLIP scorers from local folders
    notes: list[str] = field(default_factory=list)  # metrics skipped, and why

    def load_vl(self, ctx: RunContext) -> Captioner:
        t0 = time.perf_counter()
        if "vl" not in ctx.pool.loaded():  # a shared pool (a server, trials) may hold it already
            ctx.echo(f"loading Qwen3-VL ({ctx.config.models.vl})")
        self.vl = ctx.pool.vl(ctx.config)
        ctx.time("load_vl", t0)
        return self.vl

    def release_vl(self, ctx: RunContext) -> None:
        if ctx.own:
            ctx.pool.release("vl")
        self.vl = None  # a shared pool keeps it or not, by the profile's keep_models

    def release(self, ctx: RunContext) -> None:
        if ctx.own:  # a shared pool's models stay with it
            ctx.pool.release()
        self.vl = self.z_image = None
        self.scorers = []


# -- 1. the folder -------------------------------------------------------------------------------


def open_folder(ctx: RunContext, key: str) -> tuple[dict | None, dict[str, dict]]:
    """The run file's content (the first process locks the folder and prepares it for the run
    ``key``; None in the others) and the records of the cells finished already."""
    run_file = None

    def prepare() -> None:  # by one process (it removes temporary files others could be writing)
        nonlocal run_file
        run_file = folder.prepare(ctx.out, key, ctx.spec.plan(ctx.config), ctx.keys)
        for i, im in enumerate(ctx.prepared.references):
            if not (ctx.out / folder.reference_name(i)).exists():  # same run key: same reference bytes
                save_png(im, ctx.out / folder.reference_name(i))

    if ctx.if_busy == "join" and not ctx.split:  # every process: others of the same run may work beside it
        folder.check_out(ctx.out)  # a folder that is not ours: refused before the lock file is made in it
        ctx.folder_lock = lock.enter(ctx.out, key, ctx.spec.name, prepare)
        if run_file is None and ctx.procs.count == 1 and worker_index() is None:  # (a launcher's, --workers'
            # processes join each other: no news)
            ctx.echo(f"joining the processes of the same run in {ctx.out}: each takes the next cell none holds")
        return run_file, ctx.finished()
    if ctx.procs.main:
        folder.check_out(ctx.out)
        ctx.folder_lock = lock.take(ctx.out, key, ctx.spec.name, ctx.if_busy, ctx.echo)  # before any write
        prepare()
    ctx.procs.wait()
    return run_file, ctx.finished()


# -- 2. Qwen3-VL ---------------------------------------------------------------------------------


def make_captions(ctx: RunContext, models: Models, lengths: list[int]) -> dict[int, str]:
    """``{tokens: caption}``: read from the folder, else written (given, or by Qwen3-VL)."""
    from ..io import write_text
    from ..vl.caption import make_caption

    out = {}
    for i, n in enumerate(lengths):
        path = folder.caption_path(ctx.out, n)
        if path.is_file():
            out[n] = path.read_text(encoding="utf-8").strip()
            continue
        t0 = time.perf_counter()
        ctx.echo(f"caption {i + 1}/{len(lengths)}: about {n} tokens")
        text, meta = make_caption(models.vl, ctx.prepared.references[0], n, ctx.config, ctx.spec.caption,
                                  max_new_tokens=ctx.spec.caption_max_new_tokens)
        write_text(path, text + "\n")
        folder.write_json(path.with_suffix(".json"), meta)
        ctx.time("caption", t0)
        ctx.echo(f"caption of {meta['tokens']} tokens (target {n}) -> {path.relative_to(ctx.out)}")
        out[n] = text
    return out


def pull_captions(ctx: RunContext, models: Models, lengths: list[int]) -> dict[int, str]:
    """:func:`make_captions` for a joined run: each caption made by the process that claims it
    (Qwen3-VL loaded then), read from the folder by the others once written, so every cell of the
    run is conditioned on the same text."""
    from .claims import POLL_S

    claims = ctx.claims
    assert claims is not None  # joined runs only
    out: dict[int, str] = {}
    for n in lengths:
        path = folder.caption_path(ctx.out, n)
        while n not in out:
            if path.is_file():
                out.update(make_captions(ctx, models, [n]))  # read
            elif claims.claim(f"caption-{n}"):
                try:
                    if not path.is_file() and models.vl is None:  # not written meanwhile: this one makes it
                        models.load_vl(ctx)
                    out.update(make_captions(ctx, models, [n]))
                finally:
                    claims.release(f"caption-{n}")
            else:  # another process is writing it
                time.sleep(POLL_S)
    return out


def extract(ctx: RunContext, models: Models, jobs: list[Job], backend: str) -> dict:
    """``{request: result}`` for every request of ``jobs``; one forward pass per distinct chat."""
    requests = [r for j in jobs for r in j.requests]
    if not requests:
        return {}
    merged = merge_requests(requests)
    unique = list(dict.fromkeys(merged.values()))
    # splice, dopsd: the pool borrows the vision tower of a Qwen3-VL still loaded (it scores pictures)
    extractor = models.vl if backend == "vl" else \
        ctx.pool.splice(ctx.config) if backend == "splice" else ctx.pool.dopsd(ctx.config)
    images = dict(zip(ctx.spec.images, ctx.prepared.references, strict=True))
    ctx.echo(f"{backend} extraction: {len(unique)} forward pass(es) for {len(requests)} request(s)")
    seconds: dict = {}
    t0 = time.perf_counter()
    results = run_extractions(extractor, unique, images, seconds=seconds)
    ctx.time(f"extract_{backend}", t0)
    if backend != "vl" and ctx.own:
        ctx.pool.release(backend)
    for j in jobs:
        j.extract_seconds = round(sum(seconds[merged[r]] for r in j.requests), 3)
    return {r: results[m] for r, m in merged.items()}


# -- 3. Z-Image ----------------------------------------------------------------------------------


def plots_beside(model: ZImage) -> bool:
    """Whether worker processes draw the report's plots (see ``report_plots``): on a GPU, whose run
    leaves the CPU's other cores idle."""
    return model.placement.device.type == "cuda"


def load_z_image(ctx: RunContext, models: Models) -> ZImage:
    t0 = time.perf_counter()
    models.z_image = model = ctx.pool.z_image(ctx.config)
    assert model.pipe is not None, "a loaded ZImage has its pipeline"
    model.pipe.set_progress_bar_config(disable=True)  # the bar over cells is the one to watch
    ctx.time("load_z_image", t0)
    from ..analysis.hub_metrics import load_scorers

    models.scorers, models.notes = load_scorers(ctx.config, model.placement.device)
    for note in models.notes:
        ctx.echo("metric " + note)
    return model


# -- the pending cells: stages 2 to 4 ------------------------------------------------------------


@dataclass
class Pending:
    """What the picture stage needs besides the context: the plan of this process's pictures."""

    baselines: list[Job]  # pure-text pictures (every other picture is scored against its baseline)
    others: list[Job]
    extractions: dict  # request -> extraction result
    aliases: dict[str, dict]  # generation key -> the record of a finished cell that shows that picture
    done: dict[str, dict]  # records of the cells finished before


def run_pending(ctx: RunContext, models: Models, held: Held, pending: list[Cell],
                done: dict[str, dict]) -> tuple[int, list[str], dict]:
    """Stages 2 to 4 for ``pending`` cells: ``(pictures generated, failed cells, grid thumbnails by
    cell name)``. ``held`` gets what must be closed when the run ends."""
    if not ctx.joined:
        return _run_pending(ctx, models, held, pending, done)
    pending = [c for c in pending if not ctx.settled(c.name)]  # what others finished meanwhile
    if not pending:
        return 0, [], {}
    ctx.claims = CellClaims(ctx.out).start()  # a caption or a picture is claimed before it is made
    try:
        return _run_pending(ctx, models, held, pending, done)
    finally:
        ctx.claims.stop()


def _run_pending(ctx: RunContext, models: Models, held: Held, pending: list[Cell],
                 done: dict[str, dict]) -> tuple[int, list[str], dict]:
    from .pictures import PictureStage

    procs, config = ctx.procs, ctx.config
    needs_captions = sorted({c.caption for c in pending if c.caption is not None})
    # decided from every cell of the run, so every cell gets the same metrics whichever process (or
    # session) makes it
    uses_vl = (any(c.caption is not None for c in ctx.spec.cells) and ctx.spec.caption is None) or any(
        effective_recipe(r).backend == "vl" for r in ctx.prepared.resolved.values())
    vqa = config.metrics.vqa == "on" or (config.metrics.vqa == "auto" and uses_vl
                                         and not config.runtime.offload.startswith("group_"))

    # 2. Qwen3-VL: captions (one process makes each, the others read it), then extractions
    if ctx.claims is not None:
        captions = pull_captions(ctx, models, needs_captions)
    else:
        if procs.main and ctx.spec.caption is None and any(
                not folder.caption_path(ctx.out, n).is_file() for n in needs_captions):  # Qwen3-VL writes some
            models.load_vl(ctx)
        captions = make_captions(ctx, models, needs_captions) if procs.main else {}
        procs.wait()
        if not procs.main:
            captions = make_captions(ctx, models, needs_captions)
    jobs = plan_jobs(pending, ctx.prepared, captions)
    aliases: dict[str, dict] = {}  # jobs already pictured by a finished cell: copy, do not generate
    for rec in done.values():
        aliases.setdefault(rec.get("generation_key", ""), rec)
    # baselines (pure text) first, then the rest: every job when the processes pull them, else
    # (trials' processes) this process's share of each, split evenly
    share = (lambda js: js) if ctx.claims is not None else procs.share
    baselines = share([j for j in jobs if j.is_text])
    others = share([j for j in jobs if not j.is_text])
    mine = baselines + others
    to_extract = [j for j in mine if j.recipe.backend == "vl" and j.key not in aliases]
    if models.vl is None and (to_extract or (vqa and mine)):
        models.load_vl(ctx)
    extractions = extract(ctx, models, to_extract, "vl")
    if not vqa and models.vl is not None:
        models.release_vl(ctx)

    # 3. Z-Image
    if mine:
        model = load_z_image(ctx, models)
        if procs.main and plots_beside(model):
            from .report_plots import PlotWorkers

            t0 = time.perf_counter()
            held.plot_workers = PlotWorkers()
            ctx.time("plot_workers", t0)
        # Everything alive now (the models above all) lives until the run ends: out of the cycle
        # collector's sight until then, so the collections that the pictures' and the report's
        # allocations trigger do not walk it (a full collection walks ~0.4 M objects here: 0.25 s
        # on a CI core, on whichever thread happens to allocate, the one feeding the GPU included)
        gc.freeze()
        held.frozen = True
        for backend in ("splice", "dopsd"):
            extractions.update(extract(ctx, models, [j for j in mine if j.recipe.backend == backend
                                                     and j.key not in aliases], backend))

    # 4. pictures: baselines first (every other picture is compared with its baseline)
    return PictureStage(ctx, models).run(Pending(baselines, others, extractions, aliases, done))


# -- 5. closing ----------------------------------------------------------------------------------


def close_run(ctx: RunContext, run_file: dict, session: dict, sessions: list[dict], held: Held,
              thumbnails: dict) -> None:
    """This session in run.json (``session``: its start, counts and notes; one entry, with each
    process's part, ``sessions``, when there were several), then metadata.json, the grids and
    report.html from every record (``thumbnails``: the grid's pictures made while finishing cells)."""
    from .report import write_report

    session = {"started": session.pop("started"), **provenance(), "seconds": max(x["seconds"] for x in sessions),
               "cells_run": sum(x["cells_run"] for x in sessions), **session, "stages": sessions[0]["stages"]}
    if len(sessions) > 1:
        session["processes"] = sessions
    run_file["sessions"].append(session)
    # the session's account is not flushed to disk: nothing depends on it, and on ext4 a flush can
    # wait for every file written before it (the pictures, the report) to reach the disk too
    folder.write_json(ctx.out / folder.RUN_FILE, run_file, durable=False)
    t0 = time.perf_counter()
    write_report(ctx.out, thumbnails, held.plot_workers)
    session["stages"] = {**session["stages"], "report": round(time.perf_counter() - t0, 3)}
    folder.write_json(ctx.out / folder.RUN_FILE, run_file, durable=False)  # with the report's time


def close_joined(ctx: RunContext, session: dict, held: Held, thumbnails: dict) -> bool:
    """The end of a process of a joinable run: its session added to run.json; if it is the last
    of the run in the folder, metadata.json, the grids and report.html from every record. True if
    it wrote the report."""
    from .report import write_report

    session = {"started": session.pop("started"), **provenance(), "worker": worker_id(), **session}

    def note() -> None:  # under the folder's gate: one process rewrites run.json at a time
        run_file = folder.read_json(ctx.out / folder.RUN_FILE)
        if folder.is_plan(run_file):
            run_file["sessions"] = [*run_file.get("sessions", []), session]
            folder.write_json(ctx.out / folder.RUN_FILE, run_file, durable=False)

    assert ctx.folder_lock is not None
    if not ctx.folder_lock.leave(note):
        ctx.echo("other processes of this run are still at work: the last one to finish writes the report")
        return False
    write_report(ctx.out, thumbnails, held.plot_workers)
    return True


# -- the run -------------------------------------------------------------------------------------


def run_prepared(prepared: PreparedRun, out: str | Path, echo: Echo | None = None, progress: bool = True,
                 models: ModelsProvider | None = None, on_step: OnStep | None = None, on_cell: OnCell | None = None,
                 procs: Processes | None = None, if_busy: lock.IfBusy = "refuse") -> Summary:
    """Run a :class:`PreparedRun` into ``out`` (stages 1 to 5; see the module docstring).

    ``models``: a :class:`~llm_dit.pool.ModelPool` to take models from and leave them in (a server);
    without one, models load for this run and are freed after it. ``on_step(done, n)`` reports
    denoising steps, ``on_cell(done, total, name)`` finished cells; either may raise
    :class:`~llm_dit.errors.Cancelled` to stop the run (its report is still written). ``procs``: the
    :class:`~llm_dit.experiments.processes.Processes` of several runs in a row (trials), left open;
    without it the run joins the launcher's processes and leaves them at its end. ``if_busy``: what
    to do when another process is writing the same run into ``out`` (``"wait"`` for it, then resume;
    ``"refuse"``: :class:`~llm_dit.errors.FolderBusy`); another run there is always refused."""
    from ..io import confined

    try:
        with confined(out):  # names are checked where they enter; this catches what a check missed
            return _run(prepared, Path(out), echo, progress, models, on_step, on_cell, procs, if_busy)
    except OSError as e:  # a full disk or a folder that takes no writes: one sentence, and how to resume
        err = folder.write_error(e, Path(out))
        if err is None:
            raise
        raise err from None


def _run(prepared: PreparedRun, out: Path, echo: Echo | None, progress: bool, models: ModelsProvider | None,
         on_step: OnStep | None, on_cell: OnCell | None, procs: Processes | None, if_busy: lock.IfBusy) -> Summary:
    from ..pool import ModelPool

    started = time.perf_counter()
    threading.Thread(target=provenance, daemon=True).start()  # git and versions, for run.json at the end
    shared_procs = procs is not None
    procs = procs or Processes()
    if procs.count > 1 and procs.cuda_device():
        import torch

        # every process loads its own models onto its own GPU ("auto"/"cuda" mean the current one)
        torch.cuda.set_device(procs.cuda_device())
        if ":" in prepared.config.runtime.device:
            prepared = _replace_config(prepared, prepared.config.replace(**{"runtime.device": "cuda"}))
    ctx = RunContext(prepared, out, ModelPool(keep="all") if models is None else models, models is None,
                     procs, echo or log.info, progress, on_step, on_cell, if_busy, split=shared_procs)
    try:
        return _run_folder(ctx, started, shared_procs)
    finally:
        if ctx.folder_lock is not None:  # taken by open_folder; let go once the report is written (or the run failed)
            ctx.folder_lock.release()


def _run_folder(ctx: RunContext, started: float, shared_procs: bool) -> Summary:
    """Stages 1 to 5 of :func:`_run` (``started``: its start; ``shared_procs``: the caller's processes)."""
    procs = ctx.procs
    digests = ctx.prepared.loaded.digests  # of the bytes the checks read: the pictures' inputs
    key = run_key(ctx.spec, ctx.config, digests)
    ctx.keys = {c.name: cell_key(key, c, digests) for c in ctx.spec.cells}
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    run_file, done = open_folder(ctx, key)
    ctx.time("setup", started)  # processes, the folder, the references written
    pending = [c for c in ctx.spec.cells if c.name not in done]
    if procs.main:
        ctx.echo(f"{len(ctx.spec.cells)} cells: {len(done)} already done, {len(pending)} to run"
                 + (f" on {procs.count} processes" if procs.count > 1 else ""))
    loaded, held = Models(), Held()
    main, reported = procs.main, True  # the process that prints the summary; whether it wrote the report
    failed: list[str] = []
    generated = 0
    thumbnails: dict = {}
    ok = False
    try:
        if pending:
            generated, failed, thumbnails = run_pending(ctx, loaded, held, pending, done)
        ok = True
    finally:
        try:
            session = {"process": procs.index, "seconds": round(time.perf_counter() - started, 3),
                       "cells_run": ctx.cells_done, "pictures_generated": generated, "failed": failed,
                       "stages": ctx.timings}
            if ctx.joined:  # joinable: the last one out reports
                try:
                    reported = close_joined(ctx, {"started": started_at, **session, "metric_notes": loaded.notes}, held,
                                        thumbnails)
                except OSError as e:  # the folder took no more writes: the run's own error says so
                    if ok or folder.write_error(e, ctx.out) is None:
                        raise
            elif procs.count == 1 or ok:  # a process that failed alone: the launcher stops the others
                sessions = procs.gather(session)
                generated, failed = sum(x["pictures_generated"] for x in sessions), [f for x in sessions
                                                                                     for f in x["failed"]]
                if procs.main:
                    assert run_file is not None  # the main process prepared the folder
                    try:
                        close_run(ctx, run_file, {"started": started_at, "pictures_generated": generated,
                                                  "failed": failed, "metric_notes": loaded.notes},
                                  sessions, held, thumbnails)
                    except OSError as e:  # the folder took no more writes: the run's own error says so
                        if ok or folder.write_error(e, ctx.out) is None:
                            raise
                if not shared_procs:
                    procs.close()
        finally:
            held.close()
            loaded.release(ctx)
    return Summary(ctx.out, len(ctx.spec.cells), len(done), generated, failed, main=main, reported=reported,
                   stages=dict(ctx.timings))


def _replace_config(prepared: PreparedRun, config: Config) -> PreparedRun:
    from dataclasses import replace

    return replace(prepared, config=config)


def run(spec: RunSpec, config: Config, out: str | Path, echo: Echo | None = None, progress: bool = True,
        **hooks: Any) -> Summary:
    """Check ``spec`` (:func:`prepare_run`), then run it into ``out``, resuming what a previous run of
    the same command finished; ``hooks``: ``models``, ``on_step``, ``on_cell``, ``procs``, ``if_busy``
    of :func:`run_prepared`."""
    return run_prepared(prepare_run(spec, config), out, echo, progress, **hooks)
