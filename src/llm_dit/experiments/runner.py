"""Run the cells of an experiment or a sweep: plan everything, then load each model once.

Stages (the same functions ``llm-dit generate`` uses, given the requests of many cells at once):

    0. check: reference images, every cell's recipe, layers and schedules; nothing loads before
    1. skip finished cells (their record carries this run's key and their PNG opens)
    2. Qwen3-VL (when a pending cell needs it): captions, then every unique extraction: requests
       that differ only in their layers share one forward pass; unloaded unless it scores images
    3. Z-Image: every unique prompt encoded once; splice extractions borrow its text encoder;
       reference statistics once per layer set
    4. one generation per unique picture (baselines first): cells that must give the same picture
       (a pure-text cell and every alpha-0 cell of its group) share it; each cell's PNG, then its record
    5. metadata.json, grids and report.html from the records

Same seed for every cell (a CPU generator), so cells differ only by what the experiment varies.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from ..config import Config
from ..conditioning.build import build_conditioning, reference_stats_layers
from ..conditioning.run import (CAPTION_STANDIN, check_recipe_run, conditioning_record, reference_stats_for,
                                run_extractions)
from ..errors import InputError, LlmDitError
from ..images import load_image, save_png
from . import folder
from .cells import Cell, check_unique, effective_recipe
from .plan import Job, RunSpec, Summary, cell_key, merge_requests, plan_jobs, run_key, text_key

Echo = Callable[[str], None]
OnCell = Callable[[int, int, str], None]


class Runner:
    """One run of a :class:`RunSpec` into a folder (see the module docstring)."""

    def __init__(self, spec: RunSpec, config: Config, out: str | Path, echo: Echo | None = None,
                 progress: bool = True, models=None, on_step=None, on_cell: OnCell | None = None):
        """``models``: a :class:`~llm_dit.models.pool.ModelPool` to take models from and leave them in
        (a server); without one, models load for this run and are freed after it. ``on_step(done, n)``
        reports denoising steps, ``on_cell(done, total, name)`` finished cells; either may raise
        :class:`~llm_dit.errors.Cancelled` to stop the run (its report is still written)."""
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
        self.notes: list[str] = []

    # -- 0. checks ---------------------------------------------------------------------------

    def check(self) -> None:
        from ..vl.chat import check_aspect_ratio

        from ..analysis.hub_metrics import check_paths
        from ..models.loading import resolve_model_path, resolve_placement

        check_paths(self.config)
        resolve_placement(self.config.runtime)  # a device that is not there: refused before any folder exists
        resolve_model_path(self.config.models.z_image, "z_image")
        if any(c.recipe.backend != "text" or c.caption is not None for c in self.spec.cells):
            resolve_model_path(self.config.models.vl, "vl")
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
        from .report import write_report

        self.check()
        self.key = run_key(self.spec, self.config)
        started = time.perf_counter()
        started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        run_file = folder.prepare(self.out, self.key, self.spec.plan(self.config))
        for i, im in enumerate(self.references):
            if not (self.out / folder.reference_name(i)).exists():  # same run key: same reference bytes
                save_png(im, self.out / folder.reference_name(i))
        self.keys = {c.name: cell_key(self.key, c) for c in self.spec.cells}
        done = {c.name: rec for c in self.spec.cells if (rec := folder.finished(self.out, c.name, self.keys[c.name]))
                and (not self.spec.save_embeddings or (self.out / "embeddings" / f"{c.name}.safetensors").is_file())}
        pending = [c for c in self.spec.cells if c.name not in done]
        self.echo(f"{len(self.spec.cells)} cells: {len(done)} already done, {len(pending)} to run")
        failed: list[str] = []
        generated = 0
        try:
            if pending:
                generated, failed = self._run_pending(pending, done)
        finally:
            self.unload()
            from ..provenance import provenance

            session = {"started": started_at, **provenance(),
                       "seconds": round(time.perf_counter() - started, 3), "cells_run": len(pending),
                       "pictures_generated": generated, "failed": failed, "stages": self.timings,
                       "metric_notes": self.notes}
            run_file["sessions"].append(session)
            folder.write_json(self.out / folder.RUN_FILE, run_file)
            write_report(self.out)
        return Summary(self.out, len(self.spec.cells), len(done), generated, failed)

    def _time(self, stage: str, t0: float) -> None:
        self.timings[stage] = round(self.timings.get(stage, 0.0) + time.perf_counter() - t0, 3)

    def _run_pending(self, pending: list[Cell], done: dict[str, dict]) -> tuple[int, list[str]]:
        needs_captions = sorted({c.caption for c in pending if c.caption is not None})
        resolved = {c.name: c.recipe.resolve(c.config(self.config)) for c in pending}
        needs_vl_model = bool(needs_captions and self.spec.caption is None) or any(
            effective_recipe(r).backend == "vl" for r in resolved.values())
        vqa = self.config.metrics.vqa == "on" or (self.config.metrics.vqa == "auto" and needs_vl_model)

        # 2. Qwen3-VL: captions, then extractions
        if needs_vl_model or vqa:
            self._load_vl()
        captions = self._captions(needs_captions)
        jobs = plan_jobs(pending, resolved, captions, self.spec.prompt, self.config)
        aliases = {}  # jobs already pictured by a finished cell: copy, do not generate
        for rec in done.values():
            aliases.setdefault(rec.get("generation_key"), rec)
        extractions = self._extract([j for j in jobs if j.recipe.backend == "vl" and j.key not in aliases], "vl")
        if not vqa and self.vl is not None:
            if self.own:
                self.pool.release("vl")
            self.vl = None  # a shared pool keeps it or not, by the profile's keep_models

        # 3. Z-Image
        t0 = time.perf_counter()
        self.model = self.pool.z_image(self.config)
        self.model.pipe.set_progress_bar_config(disable=True)  # the bar over cells is the one to watch
        self._time("load_z_image", t0)
        from ..analysis.hub_metrics import load_scorers

        self.scorers, self.notes = load_scorers(self.config, self.model.placement.device)
        for note in self.notes:
            self.echo("metric " + note)
        extractions.update(self._extract([j for j in jobs if j.recipe.backend == "splice" and j.key not in aliases],
                                         "splice"))

        # 4. pictures
        return self._generate(jobs, extractions, aliases, done)

    # -- stages --------------------------------------------------------------------------------

    def _load_vl(self) -> None:
        t0 = time.perf_counter()
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

    def _generate(self, jobs: list[Job], extractions: dict, aliases: dict[str, dict],
                  done: dict[str, dict]) -> tuple[int, list[str]]:
        from tqdm.auto import tqdm

        from ..analysis.metrics import image_metrics

        texts: dict[str, object] = {}
        stats_memo: dict[tuple, dict] = {}
        # generation key of a pure-text picture -> the picture (finished in an earlier session, or now)
        baselines: dict[str, object] = {rec["generation_key"]: self.out / rec["file"] for rec in done.values()
                                        if rec.get("pure_text")}
        generated, failed = 0, []
        total = sum(len(j.cells) for j in jobs)
        bar = tqdm(total=total, desc="cells", unit="cell", disable=not self.progress, file=sys.stderr,
                   dynamic_ncols=True)
        try:
            for job in jobs:
                t0 = time.perf_counter()
                try:
                    if job.key in aliases:  # pictured by a finished cell: reuse its picture
                        rec = aliases[job.key]
                        image = load_image(self.out / rec["file"], "the picture of cell " + rec["name"])
                        cond_record, timings, metrics = rec["conditioning"], {}, rec.get("metrics", {})
                    else:
                        image, cond_record, timings = self._picture(job, extractions, texts, stats_memo)
                        generated += 1
                        t1 = time.perf_counter()
                        ref = self.references[0] if self.references else None
                        base = None if job.is_text else baselines.get(text_key(job.prompt, job.config))
                        if isinstance(base, Path):
                            base = baselines[text_key(job.prompt, job.config)] = load_image(base, "a baseline")
                        metrics = image_metrics(image, ref, base)
                        if self.vl is not None and self.vl.model is not None:
                            metrics["vqa_yes"] = self.vl.answer_probability(
                                image, f"Does this image show {job.prompt}?", max_pixels=self.config.vl.max_pixels)
                        for scorer in self.scorers:
                            metrics[scorer.name] = scorer.score(image, job.prompt)
                        timings["metrics"] = round(time.perf_counter() - t1, 3)
                    if job.is_text:
                        baselines[job.key] = image
                    owner = aliases[job.key]["name"] if job.key in aliases else job.cells[0].name
                    for cell in job.cells:
                        self._write_cell(cell, job, image, cond_record, timings, metrics,
                                         same_as=None if cell.name == owner else owner)
                        bar.update(1)
                        bar.write(self._summary_line(cell, cond_record, metrics, time.perf_counter() - t0),
                                  file=sys.stderr)
                        self._cell_done(total, cell.name)
                except (KeyboardInterrupt, MemoryError):
                    raise
                except Exception as e:  # one cell's failure is recorded; the run goes on
                    msg = _one_line(e)
                    for cell in job.cells:
                        failed.append(cell.name)
                        folder.write_record(self.out, cell.name, {
                            "name": cell.name, "success": False, "error": msg, "params": cell.params,
                            "cell_key": self.keys[cell.name], "recipe": cell.recipe.to_dict()})
                        bar.update(1)
                        bar.write(f"{cell.name}: FAILED: {msg}", file=sys.stderr)
                        self._cell_done(total, cell.name)
        finally:
            bar.close()
        return generated, failed

    def _cell_done(self, total: int, name: str) -> None:
        self.cells_done += 1
        if self.on_cell is not None:
            self.on_cell(self.cells_done, total, name)

    def _picture(self, job: Job, extractions: dict, texts: dict, stats_memo: dict):
        """Build the conditioning of ``job`` and generate its picture."""
        timings = {"extract": job.extract_seconds}
        t0 = time.perf_counter()
        if job.prompt not in texts:
            texts[job.prompt] = self.model.encode(job.prompt)
            self._time("encode", t0)
        text = texts[job.prompt]
        timings["encode"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        layers = tuple(reference_stats_layers(job.recipe))
        stats = None
        if layers:
            memo = (job.recipe.reference_stats, layers, job.recipe.normalization_mode == "whiten")
            if memo not in stats_memo:
                stats_memo[memo] = reference_stats_for(job.recipe, job.config, self.model.pipe.tokenizer,
                                                       self.model.pipe.text_encoder, self.echo)
            stats = stats_memo[memo]
        cond = build_conditioning(job.recipe, job.prompt, text.embeddings,
                                  {r: extractions[r] for r in job.requests}, stats)
        g = job.config.generation
        step = cond.step_embeds(g.steps)
        timings["conditioning"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        image = self.model.generate(step, generation=g, on_step=self.on_step)
        timings["generate"] = round(time.perf_counter() - t0, 3)
        self._time("generate", t0)
        alphas = [job.recipe.alpha_at(i, g.steps) if not job.is_text else 0.0 for i in range(g.steps)]
        record = conditioning_record(cond, alphas, text.summary())
        record["generation_time"] = timings["generate"]
        self._save_stats(job, cond, alphas[0])
        return image, record, timings

    def _save_stats(self, job: Job, cond, alpha: float) -> None:
        from ..io import save_tensors

        y = cond.at(alpha)
        tensors = {"text_std": cond.text.std(0, unbiased=False), "blended_std": y.std(0, unbiased=False)}
        vl = cond.content if cond.content is not None else cond.style
        if vl is not None:
            tensors["vl_std"] = vl.std(0, unbiased=False)
        for cell in job.cells:
            save_tensors(self.out / "stats" / f"{cell.name}.safetensors", tensors, "llm_dit_cell_stats",
                         {"cell": cell.name, "alpha": alpha})
            if self.spec.save_embeddings:
                emb = {"blended": y, "text": cond.text}
                if cond.content is not None:
                    emb["content"] = cond.content
                if cond.style is not None:
                    emb["style"] = cond.style
                save_tensors(self.out / "embeddings" / f"{cell.name}.safetensors", emb, "llm_dit_cell_embeddings",
                             {"cell": cell.name, "alpha": alpha, "recipe": job.recipe.to_dict()})

    def _write_cell(self, cell: Cell, job: Job, image, cond_record: dict, timings: dict, metrics: dict,
                    same_as: str | None) -> None:
        """The PNG, then its record: a record on disk means the cell is finished."""
        declared = cell.recipe.resolve(job.config)
        file = f"{cell.name}.png"
        g = job.config.generation
        record = {
            "name": cell.name,
            "success": True,
            "file": file,
            "params": cell.params,
            "prompt": job.prompt,
            "caption_tokens": cell.caption,
            # the seeds' fields (seed 000); the VL ones are null where no VL reached the DiT (pure text)
            "vl_shape": cond_record.get("vl_shape"),
            "vl_std": cond_record.get("vl_std"),
            "token_selection": declared.token_selection if declared.uses_vl else None,
            "normalization_mode": declared.normalization_mode if declared.uses_vl else None,
            "blended_std": cond_record.get("blended_std"),
            "generation_time": timings.get("generate", cond_record.get("generation_time")),
            "alpha": _declared_alpha(declared, g.steps),
            "hidden_layer": declared.hidden_layer if declared.uses_vl else None,
            "backend": declared.backend,
            "blend_mode": declared.blend if declared.uses_vl else None,
            "same_picture_as": same_as,
            "pure_text": job.is_text,
            "generation": {k: getattr(g, k) for k in ("seed", "steps", "width", "height", "shift", "guidance_scale")},
            "timings": timings,
            "metrics": metrics,
            "recipe": declared.to_dict(),
            "conditioning": cond_record,
            "generation_key": job.key,
            "cell_key": self.keys[cell.name],
        }
        save_png(image, self.out / file, {"cell": cell.name, "prompt": job.prompt, "recipe": record["recipe"],
                                          "seed": g.seed, "steps": g.steps})
        folder.write_record(self.out, cell.name, record)

    @staticmethod
    def _summary_line(cell: Cell, cond: dict, metrics: dict, seconds: float) -> str:
        parts = [f"{cell.name}: {seconds:.1f} s"]
        if cond.get("blended_std") is not None:
            parts.append(f"blended_std {cond['blended_std']:.4g}")
        for k in ("ssim_ref", "ssim_text", "grid_artifact", "vqa_yes"):
            if k in metrics:
                parts.append(f"{k} {metrics[k]:.3g}")
        return ", ".join(parts)

    def unload(self) -> None:
        if self.own:  # a shared pool's models stay with it
            self.pool.release()
        self.vl = self.model = None
        self.scorers = []


def _declared_alpha(recipe, steps: int):
    """The alpha a cell asked for: 0 for pure text, one number, or one per step under a schedule."""
    if not recipe.uses_vl:
        return 0.0
    alphas = [recipe.alpha_at(i, steps) for i in range(steps)]
    return alphas[0] if len(set(alphas)) == 1 else alphas


def _one_line(e: BaseException) -> str:
    from ..models.loading import _first_line

    return _first_line(e) if isinstance(e, LlmDitError) else f"{type(e).__name__}: {_first_line(e)}"


def run(spec: RunSpec, config: Config, out: str | Path, echo: Echo | None = None, progress: bool = True,
        **hooks) -> Summary:
    """Run ``spec`` into ``out`` (resuming what a previous run of the same command finished);
    ``hooks``: ``models``, ``on_step``, ``on_cell`` of :class:`Runner`."""
    if not spec.cells:
        raise InputError("nothing to run: the experiment has no cells")
    return Runner(spec, config, out, echo, progress, **hooks).run()
