"""Run the cells of an experiment or a sweep: plan everything, then load each model once.

Stages (the same functions ``llm-dit generate`` uses, given the requests of many cells at once):

    0. check: reference images, every cell's recipe, layers and schedules; nothing loads before
    1. skip finished cells (their record carries this run's key and their PNG opens)
    2. Qwen3-VL (when a pending cell needs it): captions, then every unique extraction: requests
       that differ only in their layers share one forward pass; unloaded unless it scores images
    3. Z-Image: every unique prompt encoded once; splice extractions borrow its text encoder;
       reference statistics once per layer set
    4. one generation per unique picture (baselines first; :mod:`pictures`): cells that must give
       the same picture (a pure-text cell and every alpha-0 cell of its group) share it; batches of
       ``runtime.batch_size``; each cell's PNG, then its record, written on a thread beside the GPU
    5. metadata.json, grids and report.html from the records

Same seed for every cell (a CPU generator), so cells differ only by what the experiment varies.
Under a launcher (``accelerate launch``, ``torchrun``; :mod:`processes`) every process plans the same
cells, takes its share of the pictures (baselines, then the rest, each split evenly; a barrier
between the two so that every picture is scored against its baseline), and the first process
writes run.json's session and the report once all are done.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from ..conditioning.run import CAPTION_STANDIN, check_recipe_run, run_extractions
from ..config import Config
from ..errors import InputError, LlmDitError
from ..images import load_image, save_png
from ..provenance import provenance
from . import folder
from .cells import Cell, check_unique, effective_recipe
from .pictures import Pictures
from .plan import Job, RunSpec, Summary, cell_key, merge_requests, plan_jobs, run_key

Echo = Callable[[str], None]
OnCell = Callable[[int, int, str], None]


class Runner(Pictures):
    """One run of a :class:`RunSpec` into a folder (see the module docstring)."""

    def __init__(self, spec: RunSpec, config: Config, out: str | Path, echo: Echo | None = None,
                 progress: bool = True, models=None, on_step=None, on_cell: OnCell | None = None, procs=None):
        """``models``: a :class:`~llm_dit.models.pool.ModelPool` to take models from and leave them in
        (a server); without one, models load for this run and are freed after it. ``on_step(done, n)``
        reports denoising steps, ``on_cell(done, total, name)`` finished cells; either may raise
        :class:`~llm_dit.errors.Cancelled` to stop the run (its report is still written). ``procs``: the
        :class:`~llm_dit.experiments.processes.Processes` of several runs in a row (trials), left open;
        without it the run joins the launcher's processes and leaves them at its end."""
        self.spec, self.config, self.out = spec, config, Path(out)
        self.echo = echo or (lambda msg: print(msg, file=sys.stderr))
        self.progress = progress
        from ..models.pool import ModelPool

        # a run of its own stages its models itself (VL unloaded after extraction unless it scores)
        self.own = models is None
        self.pool = ModelPool(keep="all") if models is None else models
        self.on_step, self.on_cell = on_step, on_cell
        self.cells_done = 0
        self.key = ""
        self.keys: dict[str, str] = {}  # cell name -> cell key
        self.references: list = []
        self.timings: dict[str, float] = {}
        self.vl = None  # the Qwen3-VL extractor while loaded
        self.model = None  # ZImage while loaded
        self.scorers: list = []  # optional CLIP / SigLIP scorers from local folders
        self.texts: dict = {}  # prompt -> its text encoding (or the exception that stopped it)
        self.encode_seconds: dict = {}  # prompt -> seconds its encoding took (told by the first cell using it)
        self.baselines: dict = {}  # generation key of a pure-text picture -> the picture (or its file)
        self.thumbnails: dict = {}  # cell name -> its grid thumbnail (made while finishing the cell)
        self.stats_memo: dict = {}  # reference statistics by (file, layers, whitening)
        self.notes: list[str] = []
        self.plot_workers = None  # processes that draw the report's plots (GPU runs, first process)
        self.writer = None  # the thread that writes the cells' PNGs (during the picture stage)
        self.frozen = False  # gc.freeze() in force (from the models loaded to the end of the run)
        self.shared_procs = procs

    # -- 0. checks ---------------------------------------------------------------------------

    def check(self) -> None:
        from ..analysis.hub_metrics import check_paths
        from ..models.loading import resolve_model_path, resolve_placement
        from ..vl.chat import check_aspect_ratio

        check_paths(self.config)
        resolve_placement(self.config.runtime)  # a device that is not there: refused before any folder exists
        resolve_model_path(self.config.models.z_image, "z_image")
        if any(c.recipe.backend != "text" or c.caption is not None for c in self.spec.cells):
            resolve_model_path(self.config.models.vl, "vl")
        offloaded = self.config.runtime.offload.startswith("group_")
        if offloaded and (self.config.metrics.vqa == "on" or any(
                c.caption is not None for c in self.spec.cells) and self.spec.caption is None):
            raise InputError(f"runtime.offload = '{self.config.runtime.offload}' keeps Qwen3-VL offloaded, so it cannot "
                             "write captions or score VQA; use a profile without group offloading (e.g. --profile "
                             "rtx4090), give the caption (--caption), or --vqa off")
        check_unique(self.spec.cells)
        folder.check_cell_names([c.name for c in self.spec.cells])
        self.references = []
        for i, path in enumerate(self.spec.images):
            im = load_image(path, f"reference image {i + 1}")
            check_aspect_ratio(im)
            self.references.append(im)
        for c in self.spec.cells:
            cfg = c.config(self.config)
            prompt = self.spec.prompt if c.caption is None else CAPTION_STANDIN
            try:
                check_recipe_run(c.recipe.resolve(cfg), cfg, prompt)
            except LlmDitError as e:
                raise type(e)(f"cell {c.name}: {e}") from None

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> Summary:
        from .processes import Processes

        started = time.perf_counter()
        threading.Thread(target=provenance, daemon=True).start()  # git and versions, for run.json at the end
        self.check()
        procs = self.procs = self.shared_procs or Processes()
        if procs.count > 1 and procs.cuda_device():
            import torch

            # every process loads its own models onto its own GPU ("auto"/"cuda" mean the current one)
            torch.cuda.set_device(procs.cuda_device())
            if ":" in self.config.runtime.device:
                self.config = self.config.replace(**{"runtime.device": "cuda"})
        self.key = run_key(self.spec, self.config)
        started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        run_file = None
        if procs.main:  # one process prepares the folder (it removes temporary files others could be writing)
            run_file = folder.prepare(self.out, self.key, self.spec.plan(self.config))
            for i, im in enumerate(self.references):
                if not (self.out / folder.reference_name(i)).exists():  # same run key: same reference bytes
                    save_png(im, self.out / folder.reference_name(i))
        procs.wait()
        self.keys = {c.name: cell_key(self.key, c) for c in self.spec.cells}
        done = self._finished()
        self._time("setup", started)  # checks, processes, the folder, the references written
        pending = [c for c in self.spec.cells if c.name not in done]
        if procs.main:
            self.echo(f"{len(self.spec.cells)} cells: {len(done)} already done, {len(pending)} to run"
                      + (f" on {procs.count} processes" if procs.count > 1 else ""))
        failed: list[str] = []
        generated = 0
        ok = False
        try:
            if pending:
                generated, failed = self._run_pending(pending, done)
            ok = True
        finally:
            try:
                session = {"process": procs.index, "seconds": round(time.perf_counter() - started, 3),
                           "cells_run": self.cells_done, "pictures_generated": generated, "failed": failed,
                           "stages": self.timings}
                if procs.count == 1 or ok:  # a process that failed alone: the launcher stops the others
                    sessions = procs.gather(session)
                    generated, failed = sum(x["pictures_generated"] for x in sessions), [f for x in sessions
                                                                                         for f in x["failed"]]
                    if procs.main:
                        try:
                            self._close(run_file, started_at, sessions, generated, failed)
                        except OSError as e:  # the folder took no more writes: the run's own error says so
                            if ok or folder.write_error(e, self.out) is None:
                                raise
                    if self.shared_procs is None:
                        procs.close()
            finally:
                if self.plot_workers is not None:
                    self.plot_workers.close()
                if self.frozen:
                    gc.unfreeze()  # before the models are freed: unloading relies on the collector
                self.unload()
        return Summary(self.out, len(self.spec.cells), len(done), generated, failed, main=procs.main)

    def _finished(self) -> dict[str, dict]:
        """Records of the cells finished under this run's keys (read from the folder)."""
        return {c.name: rec for c in self.spec.cells if (rec := folder.finished(self.out, c.name, self.keys[c.name]))
                and (not self.spec.save_embeddings or (self.out / "embeddings" / f"{c.name}.safetensors").is_file())}

    def _close(self, run_file: dict, started_at: str, sessions: list[dict], generated: int,
               failed: list[str]) -> None:
        """This session in run.json (one entry, with each process's part when there were several),
        then metadata.json, the grids and report.html from every record."""
        from .report import write_report

        session = {"started": started_at, **provenance(), "seconds": max(x["seconds"] for x in sessions),
                   "cells_run": sum(x["cells_run"] for x in sessions),
                   "pictures_generated": generated, "failed": failed, "stages": sessions[0]["stages"],
                   "metric_notes": self.notes}
        if len(sessions) > 1:
            session["processes"] = sessions
        run_file["sessions"].append(session)
        # the session's account is not flushed to disk: nothing depends on it, and on ext4 a flush can
        # wait for every file written before it (the pictures, the report) to reach the disk too
        folder.write_json(self.out / folder.RUN_FILE, run_file, durable=False)
        t0 = time.perf_counter()
        write_report(self.out, self.thumbnails, self.plot_workers)
        session["stages"] = {**session["stages"], "report": round(time.perf_counter() - t0, 3)}
        folder.write_json(self.out / folder.RUN_FILE, run_file, durable=False)  # with the report's time

    def _plots_beside(self) -> bool:
        """Whether worker processes draw the report's plots (see ``report_plots``): on a GPU, whose
        run leaves the CPU's other cores idle."""
        return self.model.placement.device.type == "cuda"

    def _time(self, stage: str, t0: float) -> None:
        self.timings[stage] = round(self.timings.get(stage, 0.0) + time.perf_counter() - t0, 3)

    def _run_pending(self, pending: list[Cell], done: dict[str, dict]) -> tuple[int, list[str]]:
        procs = self.procs
        needs_captions = sorted({c.caption for c in pending if c.caption is not None})
        resolved = {c.name: c.recipe.resolve(c.config(self.config)) for c in pending}
        makes_captions = bool(needs_captions) and self.spec.caption is None and any(
            not (self.out / "captions" / f"caption{n}.txt").is_file() for n in needs_captions)
        any_vl = any(effective_recipe(r).backend == "vl" for r in resolved.values())
        # decided for the whole run, so every cell gets the same metrics whichever process makes it
        vqa = self.config.metrics.vqa == "on" or (self.config.metrics.vqa == "auto" and (makes_captions or any_vl)
                                                   and not self.config.runtime.offload.startswith("group_"))

        # 2. Qwen3-VL: captions (one process makes them, the others read them), then extractions
        if makes_captions and procs.main:
            self._load_vl()
        captions = self._captions(needs_captions) if procs.main else {}
        procs.wait()
        if not procs.main:
            captions = self._captions(needs_captions)
        jobs = plan_jobs(pending, resolved, captions, self.spec.prompt, self.config)
        aliases = {}  # jobs already pictured by a finished cell: copy, do not generate
        for rec in done.values():
            aliases.setdefault(rec.get("generation_key"), rec)
        # this process's share: baselines (pure text) and then the rest, each split evenly
        baselines = procs.share([j for j in jobs if j.is_text])
        others = procs.share([j for j in jobs if not j.is_text])
        mine = baselines + others
        to_extract = [j for j in mine if j.recipe.backend == "vl" and j.key not in aliases]
        if self.vl is None and (to_extract or (vqa and mine)):
            self._load_vl()
        extractions = self._extract(to_extract, "vl")
        if not vqa and self.vl is not None:
            if self.own:
                self.pool.release("vl")
            self.vl = None  # a shared pool keeps it or not, by the profile's keep_models

        # 3. Z-Image
        if mine:
            t0 = time.perf_counter()
            self.model = self.pool.z_image(self.config)
            self.model.pipe.set_progress_bar_config(disable=True)  # the bar over cells is the one to watch
            self._time("load_z_image", t0)
            if procs.main and self._plots_beside():
                from .report_plots import PlotWorkers

                t0 = time.perf_counter()
                self.plot_workers = PlotWorkers()
                self._time("plot_workers", t0)
            # Everything alive now (the models above all) lives until the run ends: out of the cycle
            # collector's sight until then, so the collections that the pictures' and the report's
            # allocations trigger do not walk it (a full collection walks ~0.4 M objects here: 0.25 s
            # on a CI core, on whichever thread happens to allocate, the one feeding the GPU included)
            gc.freeze()
            self.frozen = True
            from ..analysis.hub_metrics import load_scorers

            self.scorers, self.notes = load_scorers(self.config, self.model.placement.device)
            for note in self.notes:
                self.echo("metric " + note)
            extractions.update(self._extract([j for j in mine if j.recipe.backend == "splice"
                                              and j.key not in aliases], "splice"))

        # 4. pictures: baselines first (every other picture is compared with its baseline)
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(j.cells) for j in mine), desc="cells", unit="cell", file=sys.stderr,
                   disable=not self.progress or not procs.main, dynamic_ncols=True)
        try:
            return self._picture_stage(baselines, others, extractions, aliases, done, bar)
        finally:
            bar.close()

    # -- stages --------------------------------------------------------------------------------

    def _load_vl(self) -> None:
        t0 = time.perf_counter()
        if "vl" not in self.pool.loaded():  # a shared pool (a server, trials) may hold it already
            self.echo(f"loading Qwen3-VL ({self.config.models.vl})")
        self.vl = self.pool.vl(self.config)
        self._time("load_vl", t0)

    def _captions(self, lengths: list[int]) -> dict[int, str]:
        """``{tokens: caption}``: read from the folder, else written (given, or by Qwen3-VL)."""
        from ..io import write_text
        from .captions import make_caption

        out = {}
        for n in lengths:
            path = self.out / "captions" / f"caption{n}.txt"
            if path.is_file():
                out[n] = path.read_text(encoding="utf-8").strip()
                continue
            t0 = time.perf_counter()
            text, meta = make_caption(self.vl, self.references[0], n, self.config, self.spec.caption)
            write_text(path, text + "\n")
            folder.write_json(path.with_suffix(".json"), meta)
            self._time("caption", t0)
            self.echo(f"caption of {meta['tokens']} tokens (target {n}) -> {path.relative_to(self.out)}")
            out[n] = text
        return out

    def _extract(self, jobs: list[Job], backend: str) -> dict:
        """``{request: result}`` for every request of ``jobs``; one forward pass per distinct chat."""
        requests = [r for j in jobs for r in j.requests]
        if not requests:
            return {}
        merged = merge_requests(requests)
        unique = list(dict.fromkeys(merged.values()))
        # splice: the pool borrows the vision tower of a Qwen3-VL still loaded (it scores pictures)
        extractor = self.vl if backend == "vl" else self.pool.splice(self.config)
        images = dict(zip(self.spec.images, self.references))
        self.echo(f"{backend} extraction: {len(unique)} forward pass(es) for {len(requests)} request(s)")
        seconds: dict = {}
        t0 = time.perf_counter()
        results = run_extractions(extractor, unique, images, seconds=seconds)
        self._time(f"extract_{backend}", t0)
        if backend == "splice" and self.own:
            self.pool.release("splice")
        for j in jobs:
            j.extract_seconds = round(sum(seconds[merged[r]] for r in j.requests), 3)
        return {r: results[m] for r, m in merged.items()}

    def unload(self) -> None:
        if self.own:  # a shared pool's models stay with it
            self.pool.release()
        self.vl = self.model = None
        self.scorers = []


def run(spec: RunSpec, config: Config, out: str | Path, echo: Echo | None = None, progress: bool = True,
        **hooks) -> Summary:
    """Run ``spec`` into ``out`` (resuming what a previous run of the same command finished);
    ``hooks``: ``models``, ``on_step``, ``on_cell``, ``procs`` of :class:`Runner`."""
    if not spec.cells:
        raise InputError("nothing to run: the experiment has no cells")
    try:
        return Runner(spec, config, out, echo, progress, **hooks).run()
    except OSError as e:  # a full disk or a folder that takes no writes: one sentence, and how to resume
        err = folder.write_error(e, Path(out))
        if err is None:
            raise
        raise err from None
