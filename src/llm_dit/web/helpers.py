"""``llm-dit serve --gpus N``: a warm pool of N processes, one per GPU, sharing the server's runs.

The server's own process works on the first GPU, as without ``--gpus``; it starts N - 1 helpers
(the same command, :mod:`~llm_dit.experiments.workers`), each on one more GPU, each keeping its
models loaded between runs (a :class:`~llm_dit.pool.ModelPool`). The queue they share is the one
the CLI's workers share: run folders and their claims (:mod:`~llm_dit.experiments.claims`).

* When the server starts a sweep or an experiment, it *posts* its run: an empty file
  ``RUNS/.pool/NAME`` (hidden: never served or listed). It runs the job as a joined run, and takes
  the post down when the job ends (done, failed or cancelled).
* Each helper looks at the posts every quarter second. A run it has not joined yet, whose folder
  the server has prepared and is writing, it joins (:func:`~llm_dit.experiments.specs.spec_from_run`:
  the run as recorded), pulling cells until none is left, then looks again.
* A run whose post is taken down (the job cancelled) is left by its helpers after the cell each is
  making; a helper whose server has gone (killed) leaves at its next cell, and ends.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import Cancelled, LlmDitError
from ..interrupt import unwinding
from ..io import NAME

log = logging.getLogger(__name__)

#: The folder of posted runs, inside the runs folder.
POSTS = ".pool"
#: How often a helper looks for posted runs (seconds).
LOOK_S = 0.25


def post(runs: Path, run: str) -> None:
    """Post the run ``run`` for the helpers to join."""
    (runs / POSTS).mkdir(exist_ok=True)
    (runs / POSTS / run).touch()


def unpost(runs: Path, run: str) -> None:
    """Take the post of ``run`` down: its helpers leave it after their current cell."""
    (runs / POSTS / run).unlink(missing_ok=True)


def posted(runs: Path) -> dict[str, int]:
    """The posted runs: name -> when posted (ns; a run posted again is a new post). Only run names
    (:data:`~llm_dit.io.NAME`) count: a post's name becomes a folder under ``runs``."""
    out = {}
    try:
        for p in (runs / POSTS).iterdir():
            if not NAME.fullmatch(p.name):
                continue
            try:
                out[p.name] = p.stat().st_mtime_ns
            except FileNotFoundError:  # taken down meanwhile
                pass
    except FileNotFoundError:
        pass
    return out


def serve(runs: Path, idle_unload: float, echo: Callable[[str], None] = log.info) -> int:
    """A helper's life: join each posted run once, until the server (this process's parent) ends;
    models unloaded after ``idle_unload`` seconds without a run (0: never)."""
    from ..experiments import runner  # noqa: F401  imported now, not when the first run is posted
    from ..generate import ZImage  # noqa: F401
    from ..pool import ModelPool

    pool = ModelPool()
    parent = os.getppid()
    joined: set[tuple[str, int]] = set()
    idle_since = time.monotonic()
    try:
        while os.getppid() == parent:
            for name, stamp in sorted(posted(runs).items()):
                if (name, stamp) not in joined and _join(runs, name, pool, parent, echo):
                    joined.add((name, stamp))
                    idle_since = time.monotonic()
            if idle_unload > 0 and pool.loaded() and time.monotonic() - idle_since >= idle_unload:
                pool.release()  # idle: give the memory back
            time.sleep(LOOK_S)
    finally:
        pool.release()
    return 0


def _join(runs: Path, name: str, pool, parent: int, echo: Callable[[str], None]) -> bool:
    """Work on the posted run ``name`` beside the server; False if it is not ready to join yet (its
    folder not prepared, or not being written)."""
    from ..experiments.lock import holder
    from ..experiments.runner import run
    from ..experiments.specs import spec_from_run
    from ..models.classes import out_of_memory_message

    out, post_file = runs / name, runs / POSTS / name
    if holder(out) is None:  # not started yet, or already finished: nothing to join
        return False
    try:
        spec, config = spec_from_run(out)
    except LlmDitError:  # run.json not written yet
        return False

    def on_cell(done: int, total: int, cell: str) -> None:
        if not post_file.exists() or os.getppid() != parent:  # cancelled, or the server is gone
            raise Cancelled()

    echo(f"joining run {name}")
    try:
        with unwinding():  # stopped (the server ends): its session written as it leaves the run
            s = run(spec, config, out, echo=echo, progress=False, models=pool, on_cell=on_cell, if_busy="join")
        echo(f"left run {name}: {s.generated} picture(s) made here")
    except Cancelled:
        echo(f"left run {name}: cancelled")
    except LlmDitError as e:
        echo(f"left run {name}: {e}")
    except Exception as e:  # a bug, or the GPU out of memory: this helper stays up for the next run
        echo(f"left run {name}: {out_of_memory_message(e) or f'{type(e).__name__}: {e}'}")
        pool.release()
    return True
