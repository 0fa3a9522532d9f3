"""The job queue of ``llm-dit serve``: one worker thread owns the GPU and the loaded models.

Requests are checked when they arrive (a bad one is refused with 422 and never becomes a job); a
job is then only work: a function of the job, run by the worker in submission order. The job
reports progress (``step`` of ``steps`` while denoising, ``cells_done`` of ``cells`` in a run, a
message) and may be cancelled: a queued job is dropped; a running one stops at its next progress
report (:class:`~llm_dit.errors.Cancelled`, raised from the report), a run keeps what it finished.

Models stay loaded in the :class:`~llm_dit.pool.ModelPool` between jobs and are released
after ``idle_unload`` seconds without work, or after a job ran out of memory.

The jobs outlive the server: every change of state (submitted, started, ended, cancelled) rewrites
``RUNS/.jobs.json`` (hidden: never served, never listed as a run). A server started on that folder
lists the finished jobs again, and the jobs that were queued or running when it stopped (cleanly or
killed) as ``interrupted``: a run's finished cells are in its folder, and the run page resumes it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Cancelled, LlmDitError
from ..io import NAME, parse_json, write_json
from ..models.classes import out_of_memory_message
from ..protocols import Models

log = logging.getLogger(__name__)

TERMINAL = ("done", "failed", "cancelled", "interrupted")
#: Finished jobs kept for the page (the oldest are forgotten first).
HISTORY = 200
#: The file in the runs folder that keeps the jobs across restarts.
JOBS_FILE = ".jobs.json"
_ids = itertools.count(1)
_SAVED = ("id", "kind", "title", "run", "state", "created", "started", "finished", "progress", "result", "error")


def _interrupted(job: Job) -> str:
    return ("the server stopped before this job finished; " +
            ("the finished cells are kept: resume the run from its page" if job.run else "submit it again"))


def _gone(job: Job) -> dict:
    raise LlmDitError("this job was recorded by an earlier server and cannot run again")


@dataclass
class Job:
    """One unit of GPU work and what the page shows of it."""

    kind: str  # generate | sweep | experiment
    title: str
    work: Callable[[Job], dict]
    run: str | None = None  # the run folder's name (sweeps and experiments)
    id: str = field(default_factory=lambda: f"{next(_ids):04d}-{int(time.time() * 1000) % 10**6:06d}")
    state: str = "queued"  # queued | running | done | failed | cancelled
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    progress: dict[str, Any] = field(default_factory=lambda: {"step": 0, "steps": 0, "cells_done": 0, "cells": 0,
                                                              "message": ""})
    result: dict | None = None
    error: str | None = None
    version: int = 0  # bumped on every change: the event stream sends a state when it moved
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _stopping: bool = field(default=False, repr=False)  # the server stops: the job ends "interrupted"

    @classmethod
    def restored(cls, saved: dict) -> Job:
        """A job as an earlier server recorded it; one that had not ended is ``interrupted``."""
        if not all(isinstance(saved.get(k), str) for k in ("id", "kind", "title", "state")) or \
                not isinstance(saved.get("progress", {}), dict):
            raise TypeError("a recorded job lacks its id, kind, title, state or progress")
        if not NAME.fullmatch(saved["id"]) or not (saved.get("run") is None or isinstance(saved["run"], str)
                                                   and NAME.fullmatch(saved["run"])):
            raise TypeError("a recorded job's id or run is not a name")  # ids and runs name files and folders
        job = cls(saved["kind"], saved["title"], _gone, **{k: saved[k] for k in _SAVED[3:] if k in saved},
                  id=saved["id"])
        if job.state not in TERMINAL:
            job.state, job.error = "interrupted", _interrupted(job)
        return job

    # -- progress hooks (called from the worker; each is a point where a cancel takes effect) --

    def _changed(self, **progress) -> None:
        self.progress.update(progress)
        self.version += 1
        if self._cancel.is_set():
            raise Cancelled()

    def log(self, message: str) -> None:
        self._changed(message=message)

    def on_step(self, done: int, steps: int) -> None:
        self._changed(step=done, steps=steps)

    def on_cell(self, done: int, total: int, name: str) -> None:
        self._changed(cells_done=done, cells=total, message=f"finished {name}")

    def to_dict(self, position: int | None = None) -> dict:
        return {"id": self.id, "kind": self.kind, "title": self.title, "state": self.state, "position": position,
                "run": self.run, "created": self.created, "started": self.started, "finished": self.finished,
                "progress": dict(self.progress), "result": self.result, "error": self.error,
                "cancel_requested": self._cancel.is_set()}


class JobQueue:
    """Jobs in submission order, run one at a time by one worker thread."""

    def __init__(self, pool: Models, idle_unload: float = 900.0, record: Path | None = None):
        self.pool = pool
        self.idle_unload = idle_unload
        self.record = record  # the jobs file (None: the jobs live only as long as the server)
        self._saving = threading.Lock()
        self.jobs: dict[str, Job] = {}
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.current: Job | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="llm-dit-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker: queued jobs and the running one (at its next progress report) end
        ``interrupted``, and are recorded so."""
        with self._cond:
            self._stop = True
            for job in self._pending:
                job.state, job.finished, job.error = "interrupted", time.time(), _interrupted(job)
            self._pending.clear()
            if self.current is not None:
                self.current._stopping = True
                self.current._cancel.set()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self.save()  # a job still running now (a model loading) is read back as interrupted
        self.pool.release()

    # -- the record ------------------------------------------------------------------------

    def load(self) -> None:
        """The jobs an earlier server recorded (an unreadable record is set aside, with a warning)."""
        global _ids
        if self.record is None or not self.record.is_file():
            return
        try:
            saved = parse_json(self.record.read_text(encoding="utf-8"), str(self.record))["jobs"]
            jobs = [Job.restored(j) for j in saved]
        except (OSError, ValueError, KeyError, TypeError) as e:
            aside = self.record.with_name(self.record.name + ".unreadable")
            log.warning(f"{self.record} could not be read ({type(e).__name__}); the earlier jobs are not "
                        f"listed; it is kept as {aside}")
            with contextlib.suppress(OSError):  # a read-only folder: the next save replaces it
                self.record.replace(aside)
            return
        with self._cond:
            for job in jobs:
                self.jobs[job.id] = job
        # new ids go on after the recorded ones (an id is "NNNN-millis")
        numbers = [int(j.id.split("-")[0]) for j in jobs if j.id.split("-")[0].isdigit()]
        _ids = itertools.count(max([next(_ids), *(n + 1 for n in numbers)]))
        self.save()  # the interrupted ones are recorded as such

    def save(self) -> None:
        """Rewrite the record (one writer at a time; renamed into place, so a kill leaves it whole).
        A record that cannot be written costs the list after a restart, not the job: a warning."""
        if self.record is None:
            return
        with self._saving:
            with self._cond:
                jobs = [{k: v for k, v in j.to_dict().items() if k in _SAVED} for j in self.jobs.values()]
            try:
                write_json(self.record, {"jobs": jobs}, durable=False)
            except OSError as e:
                log.warning(f"the job record {self.record} could not be written: {e}")

    # -- the page's side -------------------------------------------------------------------

    def submit(self, job: Job) -> Job:
        with self._cond:
            self.jobs[job.id] = job
            self._pending.append(job)
            self._forget_old()
            self._cond.notify_all()
        self.save()
        return job

    def position(self, job: Job) -> int | None:
        """0 while running, 1.. while queued (1: next), None when finished."""
        if job.state == "running":
            return 0
        if job.state != "queued":
            return None
        with self._cond:
            for i, j in enumerate(self._pending):
                if j is job:
                    return i + 1
        return None

    def cancel(self, job: Job) -> Job:
        with self._cond:
            if job.state == "queued":
                self._pending.remove(job)
                job.state, job.finished = "cancelled", time.time()
                job.version += 1
            elif job.state == "running":
                job._cancel.set()
                job.version += 1
        self.save()
        return job

    def active_runs(self) -> set[str]:
        """Run folders a queued or running job writes to."""
        return {j.run for j in list(self.jobs.values()) if j.run and j.state in ("queued", "running")}

    def _forget_old(self) -> None:
        ended = [j for j in self.jobs.values() if j.state in TERMINAL]
        for j in ended[: max(0, len(ended) - HISTORY)]:
            del self.jobs[j.id]

    # -- the worker's side -----------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                waited = time.monotonic()
                while not self._pending and not self._stop:
                    self._cond.wait(timeout=min(self.idle_unload, 60.0) if self.idle_unload > 0 else 60.0)
                    if self.idle_unload > 0 and not self._pending and time.monotonic() - waited >= self.idle_unload:
                        self.pool.release()  # idle: give the memory back
                        waited = time.monotonic()
                if self._stop:
                    return
                job = self._pending.popleft()
                job.state, job.started = "running", time.time()
                job.version += 1
                self.current = job
            self.save()
            self._execute(job)
            with self._cond:
                self.current = None

    def _execute(self, job: Job) -> None:
        try:
            result = job.work(job)
            job.result, job.state = result, "done"
        except Cancelled:
            job.state = "interrupted" if job._stopping else "cancelled"
            if job._stopping:
                job.error = _interrupted(job)
        except LlmDitError as e:
            job.state, job.error = "failed", str(e)
        except MemoryError:
            job.state, job.error = "failed", "out of memory; the models were unloaded, try a smaller size"
            self.pool.release()
        except Exception as e:  # a bug or an out-of-memory of the GPU: the server stays up
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            oom = out_of_memory_message(e)
            job.state, job.error = "failed", oom or f"{type(e).__name__}: {first}"
            if oom:
                self.pool.release()
            log.exception(f"job {job.id} failed: {job.error}")  # the traceback, for whoever runs the server
        finally:
            job.finished = time.time()
            job.version += 1
            self.save()
