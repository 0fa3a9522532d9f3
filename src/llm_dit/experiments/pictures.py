"""Stage 4 of a run (:mod:`runner`): batches, generation, and the cells finished beside the GPU.

A :class:`PictureStage` reads the run's :class:`~llm_dit.experiments.runner.RunContext` and its
loaded :class:`~llm_dit.experiments.runner.Models`, and keeps what it makes for later pictures: the
text encodings and reference statistics (memos), the baselines' pictures and the grid thumbnails.

First the text encodings and reference statistics (models, on the main thread). Then per batch of
jobs with the same generation settings (``runtime.batch_size``): one pipeline call for the batch
(one call per picture again if the batch fails). One background thread works beside the GPU: it
blends the conditioning of the next batch before the GPU needs it, and finishes each job of the
last (record, metrics, PNG, statistics), in that order.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..conditioning.build import build_conditioning, reference_stats_layers
from ..conditioning.run import conditioning_record, reference_stats_for
from ..errors import LlmDitError
from ..images import load_image
from ..io import confining
from . import folder, records
from .plan import Job, text_key

if TYPE_CHECKING:
    from .runner import Models, Pending, RunContext


class PictureStage:
    """The pictures of a run's pending jobs (see the module docstring)."""

    def __init__(self, ctx: RunContext, models: Models) -> None:
        self.ctx, self.models = ctx, models
        self.texts: dict = {}  # prompt -> its text encoding (or the exception that stopped it)
        self.encode_seconds: dict[str, float] = {}  # prompt -> seconds (told by the first cell using it)
        self.stats_memo: dict = {}  # reference statistics by (file, layers, whitening)
        self.baselines: dict = {}  # generation key of a pure-text picture -> the picture (or its file)
        self.thumbnails: dict = {}  # cell name -> its grid thumbnail (made while finishing the cell)
        self.writer: ThreadPoolExecutor | None = None  # writes the cells' PNGs (while the stage runs)
        self.aliases: dict[str, dict] = {}
        self.extractions: dict = {}
        self.elsewhere: list[Job] = []  # joined runs: jobs another process held when this one came to them
        self.baseline_jobs: dict[str, Job] = {}  # generation key -> the pending pure-text job

    def run(self, pending: Pending) -> tuple[int, list[str], dict]:
        """Every picture of ``pending`` under a progress bar over cells: ``(generated, failed cells,
        thumbnails by cell name)``."""
        from tqdm.auto import tqdm

        self.aliases, self.extractions = pending.aliases, pending.extractions
        self.baseline_jobs = {j.key: j for j in pending.baselines}
        jobs = pending.baselines + pending.others
        bar = tqdm(total=sum(len(j.cells) for j in jobs), desc="cells", unit="cell", file=sys.stderr,
                   disable=not self.ctx.progress or not self.ctx.procs.main, dynamic_ncols=True)
        try:
            generated, failed = self._stage(pending.baselines, pending.others, pending.done, bar)
        finally:
            bar.close()
        return generated, failed, self.thumbnails

    def _stage(self, baselines: list[Job], others: list[Job], done: dict[str, dict], bar) -> tuple[int, list[str]]:
        """The pictures of ``baselines`` (pure text), then of ``others``; ``(generated, failed)``.

        The GPU makes the next picture while one background thread finishes the last (metrics, PNG,
        record, statistics: CPU work that would otherwise add a third to each picture's time at
        1024 x 1024); a second one writes each PNG meanwhile (zlib leaves the interpreter lock free),
        which shortens what is left to do after the last picture. Cells are finished in order, all of
        them before this returns. In a joined run a picture whose baseline another process is still
        making is made at once; only its scoring waits for that baseline (:meth:`_baseline`)."""
        with (ThreadPoolExecutor(1, "llm-dit-cells", initializer=confining()) as finisher,
              ThreadPoolExecutor(1, "llm-dit-png", initializer=confining()) as self.writer):
            try:
                if self.ctx.claims is not None:  # joined: each job claimed first; then those others held
                    finishing = self._generate(baselines + others, done, bar, finisher)
                    finishing += self._settle(done, bar, finisher)
                elif self.ctx.procs.count > 1:  # trials' processes: a share each, every baseline on disk first
                    finishing = self._generate(baselines, done, bar, finisher)
                    for f in finishing:
                        f.result()
                    self.ctx.procs.wait()
                    done = self.ctx.finished()
                    finishing += self._generate(others, done, bar, finisher)
                else:  # in one pass: the first blend of the rest is not queued behind the baselines' finishing
                    finishing = self._generate(baselines + others, done, bar, finisher)
                waited = time.perf_counter()
                results = [f.result() for f in finishing]
                self.ctx.time("wait_thread", waited)  # the last cells' finishing, after the last picture
            except BaseException:  # a Ctrl-C, a cancel, an error that stops the run: the cell being finished
                # is finished (with the writer still open: once it is shut, that cell would be recorded as
                # failed, "cannot schedule new futures after shutdown"); the queued ones stay pending
                finisher.shutdown(wait=True, cancel_futures=True)
                raise
        return sum(r[0] for r in results), [name for r in results for name in r[1]]

    def _generate(self, jobs: list[Job], done: dict[str, dict], bar, finisher: ThreadPoolExecutor) -> list[Future]:
        """Every picture of ``jobs`` (in batches of ``runtime.batch_size``); the futures of their
        finishing on ``finisher``."""
        aliases = self.aliases
        for rec in done.values():  # finished in an earlier session or by another process: read when needed
            if rec.get("pure_text"):
                self.baselines.setdefault(rec["generation_key"], self.ctx.out / rec["file"])
        self._inputs([j for j in jobs if j.key not in aliases])
        # joined runs: each job claimed when its batch is formed, so a process holds at most the
        # batch it makes and the one blended beside it; the rest stay for the others
        batches = self._batches(self._claimed(jobs, bar) if self.ctx.claims is not None else jobs)
        finishing: list[Future] = []
        checked = 0

        def prepare() -> tuple[list[Job] | None, Future | None]:  # the next batch; its blends on the thread
            batch = next(batches, None)
            if batch is not None and batch[0].key not in aliases:
                return batch, finisher.submit(self._prepare, batch)
            return batch, None

        following, ahead = prepare()
        while following is not None:
            batch = following
            t0 = time.perf_counter()
            current = ahead
            following, ahead = prepare()  # the next made beside the GPU's work on this one
            waited = time.perf_counter()
            built = current.result() if current else None
            self.ctx.time("wait_thread", waited)  # the GPU idles while the thread is behind
            pictures = self._pictures(*built) if built else {}
            for job in batch:
                picture = pictures.get(job.key)
                if job.is_text and isinstance(picture, tuple):
                    self.baselines[job.key] = picture[0]  # before any later cell is scored against it
                finishing.append(finisher.submit(self._finish, job, picture, bar, t0))
            while checked < len(finishing) and finishing[checked].done():  # finished in order
                finishing[checked].result()  # a cancel or an interrupt raised while finishing stops the run now
                checked += 1
        return finishing

    def _claimed(self, jobs: list[Job], bar):
        """The jobs of ``jobs`` this process claims (joined runs), one at a time as batches form;
        one another process holds goes to :attr:`elsewhere`, one already settled is counted done."""
        claims = self.ctx.claims
        assert claims is not None
        for job in jobs:
            if not claims.claim(job.key):
                self.elsewhere.append(job)
            elif self._settled(job):  # made (or failed) by another process since this one looked
                claims.release(job.key)
                bar.update(len(job.cells))
            else:
                yield job

    def _settled(self, job: Job) -> bool:
        return all(self.ctx.settled(c.name) for c in job.cells)

    def _settle(self, done: dict[str, dict], bar, finisher: ThreadPoolExecutor) -> list[Future]:
        """Wait for the jobs other processes held (:attr:`elsewhere`) to be settled, making each whose
        claim was let go unsettled or expired (its process killed); the futures of those made."""
        from .claims import POLL_S

        finishing: list[Future] = []
        while self.elsewhere:
            waiting, self.elsewhere = self.elsewhere, []
            finishing += self._generate(waiting, done, bar, finisher)
            if len(self.elsewhere) == len(waiting):  # all still held elsewhere: look again in a while
                time.sleep(POLL_S)
        return finishing

    def _finish(self, job: Job, picture: Any, bar, t0: float) -> tuple[int, list[str]]:
        """:meth:`_finish_job`, then (joined runs) the job's claim let go."""
        claims = self.ctx.claims
        try:
            if claims is not None and job.key in claims.lost():  # taken over by another: not recorded twice
                return 0, []
            return self._finish_job(job, picture, bar, t0)
        finally:
            if claims is not None:
                claims.release(job.key)

    def _finish_job(self, job: Job, picture: Any, bar, t0: float) -> tuple[int, list[str]]:
        """Record, score and write the cells of ``job`` (``picture``: what :meth:`_pictures` made, or
        the exception that stopped it, or None for a job pictured by a finished cell);
        ``(generated, failed)``."""
        from ..analysis.metrics import image_metrics
        from .grid import thumbnail

        ctx, aliases = self.ctx, self.aliases
        assert self.writer is not None  # set while the stage runs
        started = time.perf_counter()
        pngs: list[Future] = []  # each cell's PNG, written by the writer thread while this one scores the picture
        try:
            if job.key in aliases:  # pictured by a finished cell: reuse its picture
                rec = aliases[job.key]
                image = load_image(ctx.out / rec["file"], "the picture of cell " + rec["name"])
                cond_record, timings, metrics = rec["conditioning"], {}, rec.get("metrics", {})
            elif isinstance(picture, Exception):
                raise picture
            else:
                image, cond, text, timings = picture
            pngs = [self.writer.submit(records.write_picture, ctx.out, c, job, image) for c in job.cells]
            if job.key not in aliases:
                t1 = time.perf_counter()
                g = job.config.generation
                alphas = [job.recipe.alpha_at(i, g.steps) if not job.is_text else 0.0 for i in range(g.steps)]
                cond_record = {**conditioning_record(cond, alphas, text.summary()),
                               "generation_time": timings["generate"]}
                records.save_stats(ctx.out, job, cond, alphas[0], ctx.spec.save_embeddings)
                ref = ctx.prepared.references[0] if ctx.prepared.references else None
                base = None if job.is_text else self._baseline(text_key(job.prompt, job.config))
                # on the CPU: on the GPU each copy and result would wait for every kernel the main
                # thread has queued since (measured: a cell's finishing then took a whole picture's
                # time, and the next blend, queued behind it, left the GPU idle)
                metrics = image_metrics(image, ref, base, "cpu")
                vl = self.models.vl
                if vl is not None and vl.model is not None:
                    metrics["vqa_yes"] = vl.answer_probability(
                        image, f"Does this image show {job.prompt}?", max_pixels=ctx.config.vl.max_pixels)
                for scorer in self.models.scorers:
                    metrics[scorer.name] = scorer.score(image, job.prompt)
                timings["metrics"] = round(time.perf_counter() - t1, 3)
            owner = aliases[job.key]["name"] if job.key in aliases else job.cells[0].name
            thumb, pixels = thumbnail(image), records.picture_digest(image)
            for cell, png in zip(job.cells, pngs, strict=True):
                self.thumbnails[cell.name] = thumb
                png.result()  # the picture on disk before its record
                records.write_cell(ctx.out, cell, job, cond_record, timings, metrics,
                                   None if cell.name == owner else owner, ctx.keys[cell.name], pixels)
                bar.update(1)
                bar.write(records.summary_line(cell, cond_record, metrics, time.perf_counter() - t0), file=sys.stderr)
                ctx.cell_done(bar.total, cell.name)
            ctx.time("finish_cells", started)  # on the finishing thread, beside the GPU's work
            return (0 if job.key in aliases else 1), []
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as e:  # one cell's failure is recorded; the run goes on
            if folder.write_error(e, ctx.out) is not None:
                raise  # the folder takes no more writes: nothing after this cell could be saved either
            for png in pngs:  # no picture written after its cell's failure record
                png.exception()
            msg = _one_line(e)
            for cell in job.cells:
                records.write_failure(ctx.out, cell, msg, ctx.keys[cell.name])
                bar.update(1)
                bar.write(f"{cell.name}: FAILED: {msg}", file=sys.stderr)
                ctx.cell_done(bar.total, cell.name)
            return 0, [c.name for c in job.cells]

    def _baseline(self, key: str) -> Any:
        """The pure-text picture of generation key ``key`` (what a job of that prompt and settings is
        scored against), or None when the run has none, or it failed. In a joined run, a baseline
        another process holds is waited for here, on the finishing thread, while the GPU goes on
        with the next pictures; if that process dies, this one's main thread makes the baseline
        once the claim expires (:meth:`_settle`), and the wait ends there too."""
        from .claims import POLL_S

        job = self.baseline_jobs.get(key)
        while key not in self.baselines and self.ctx.claims is not None and job is not None:
            if not self._settled(job):
                time.sleep(POLL_S)
                continue
            rec = next((r for c in job.cells if (r := self.ctx.finished_cell(c.name))), None)
            if rec is None:  # failed: the pictures of its prompt are scored without it
                return None
            self.baselines.setdefault(key, self.ctx.out / rec["file"])
        base = self.baselines.get(key)
        if isinstance(base, Path):
            base = self.baselines[key] = load_image(base, "a baseline")
        return base

    def _batches(self, jobs: list[Job]):
        """Consecutive jobs with the same generation settings, up to ``runtime.batch_size`` at a time
        (a job pictured by a finished cell stands alone; baselines are not batched with the rest)."""
        aliases = self.aliases
        size = self.ctx.config.runtime.batch_size
        batch: list[Job] = []
        for job in jobs:
            if batch and (job.key in aliases or len(batch) >= size or batch[0].is_text != job.is_text
                          or batch[0].config.generation != job.config.generation):
                yield batch
                batch = []
            if job.key in aliases:
                yield [job]
            else:
                batch.append(job)
        if batch:
            yield batch

    def _prepare(self, batch: list[Job]) -> tuple[list, dict]:
        """The conditioning of each job of ``batch``: ``([(job, conditioning, per-step embeddings, text
        encoding, timings)], {job key: the exception that stopped its conditioning})``."""
        built, failed = [], {}
        for job in batch:
            try:
                built.append((job, *self._conditioning(job)))
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as e:
                failed[job.key] = e
        return built, failed

    def _pictures(self, built: list, failed: dict) -> dict:
        """``{job key: (image, conditioning, text encoding, timings)}`` for a batch :meth:`_prepare`
        built, or the exception that stopped a job (its conditioning, or its picture)."""
        out = dict(failed)
        if not built:
            return out
        t0 = time.perf_counter()
        images = self._images([b[2] for b in built], built[0][0].config.generation)
        share = round((time.perf_counter() - t0) / len(built), 3)
        self.ctx.time("generate", t0)
        for (job, cond, _, text, timings), image in zip(built, images, strict=True):
            timings.update(generate=share, batch=len(built))
            out[job.key] = image if isinstance(image, Exception) else (image, cond, text, timings)
        return out

    def _images(self, steps: list, generation) -> list:
        """The pictures of a batch in one pipeline call; if that fails (out of memory, say), one at a
        time, each picture's failure its own."""
        model = self.models.z_image
        assert model is not None  # loaded before the picture stage
        if len(steps) > 1:
            try:
                return model.generate_batch(steps, generation=generation, on_step=self.ctx.on_step)
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as e:
                self.ctx.echo(f"a batch of {len(steps)} failed ({_one_line(e)}); generating its pictures one at a time")
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        images: list = []
        for step in steps:
            try:
                images.append(model.generate(step, generation=generation, on_step=self.ctx.on_step))
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as e:
                images.append(e)
        return images

    def _inputs(self, jobs: list[Job]) -> None:
        """The text encodings and reference statistics of ``jobs``, made here on the main thread (they
        run models) before any blend; one that fails is kept, and fails the jobs that need it."""
        model = self.models.z_image
        assert model is not None  # loaded before the picture stage
        for job in jobs:
            t0 = time.perf_counter()
            if job.prompt not in self.texts:
                self.texts[job.prompt] = _attempt(model.encode, job.prompt)
                self.encode_seconds[job.prompt] = round(time.perf_counter() - t0, 3)
                self.ctx.time("encode", t0)
            memo = _stats_memo(job)
            if memo and memo not in self.stats_memo:
                given = job.files.stats if job.files is not None else None
                pipe = model.pipe
                assert pipe is not None, "a loaded ZImage has its pipeline"
                self.stats_memo[memo] = _attempt(reference_stats_for, job.recipe, job.config, pipe.tokenizer,
                                                 pipe.text_encoder, self.ctx.echo, given)

    def _conditioning(self, job: Job) -> tuple:
        """The conditioning of ``job``: (conditioning, per-step embeddings, text encoding, timings);
        pure tensor work on the inputs :meth:`_inputs` made."""
        timings = {"extract": job.extract_seconds, "encode": self.encode_seconds.pop(job.prompt, 0.0)}
        t0 = time.perf_counter()
        memo = _stats_memo(job)
        text, stats = self.texts[job.prompt], self.stats_memo[memo] if memo else None
        for made in (text, stats):
            if isinstance(made, Exception):
                raise made
        cond = build_conditioning(job.recipe, job.prompt, text.embeddings,
                                  {r: self.extractions[r] for r in job.requests}, stats,
                                  job.files.adapter if job.files is not None else None)
        step = cond.step_embeds(job.config.generation.steps)
        timings["conditioning"] = round(time.perf_counter() - t0, 3)
        return cond, step, text, timings


def _stats_memo(job: Job) -> tuple | None:
    """The key of the reference statistics ``job`` normalizes with, or None when it needs none."""
    layers = tuple(reference_stats_layers(job.recipe))
    return (job.recipe.reference_stats, layers, job.recipe.normalization_mode == "whiten") if layers else None


def _attempt(make: Any, *args: Any) -> Any:
    """``make(*args)``, or the exception it raised (kept for the jobs that need what it makes)."""
    try:
        return make(*args)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:
        return e


def _one_line(e: BaseException) -> str:
    from ..models.classes import out_of_memory_message
    from ..models.loading import first_line

    if isinstance(e, LlmDitError):
        return first_line(e)
    return out_of_memory_message(e) or f"{type(e).__name__}: {first_line(e)}"
