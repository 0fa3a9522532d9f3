"""``--workers N``: the same command started N times, one process per visible GPU, all joining one run.

Each worker is the command itself (``python -m llm_dit ARGS``) with ``LLM_DIT_WORKER=i/N`` in its
environment and, on a machine with GPUs, ``CUDA_VISIBLE_DEVICES`` naming its one GPU; it joins the
run folder and pulls cells as a process started by hand would (:mod:`runner`, :mod:`claims`). The
parent only starts them, passes their output on and reports when they are done:

* worker 0 writes to this terminal (its progress bar, its lines); the others' stderr lines are
  passed on prefixed ``[worker i]``, and their progress bars are off;
* every worker's summary comes back on its stdout as one JSON line (:func:`summary_line`), and the
  parent adds them up;
* the workers run in sessions of their own: a Ctrl-C reaches the parent alone, which passes one
  SIGINT to each (each writes its session as it stops) and waits for them; a SIGTERM (a scheduler
  ending the job) is passed on the same way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from ..errors import InputError

#: The environment variable that makes a process a worker of ``--workers``: ``"i/N"``.
WORKER_ENV = "LLM_DIT_WORKER"
#: What starts the JSON line of a worker's summary on its stdout.
SUMMARY_TAG = "llm-dit-worker-summary "


def worker_index() -> tuple[int, int] | None:
    """``(i, N)`` when this process is worker ``i`` of ``N`` started by ``--workers``, else None."""
    value = os.environ.get(WORKER_ENV, "")
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        return None
    return (i, n) if 0 <= i < n else None


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (their indices when it is
    unset); empty without a GPU."""
    import torch

    count = torch.cuda.device_count()
    names = os.environ.get("CUDA_VISIBLE_DEVICES")
    if names is None:
        return [str(i) for i in range(count)]
    return [n.strip() for n in names.split(",") if n.strip()][:count]


def worker_count(asked: str, gpus: list[str], flag: str = "--workers") -> int:
    """How many workers ``--workers asked`` (or ``flag``) means: a number, or ``auto`` (one per
    visible GPU, or one without a GPU); a number beyond the visible GPUs is refused in one sentence."""
    if asked == "auto":
        return max(1, len(gpus))
    try:
        n = int(asked)
    except ValueError:
        n = 0
    if n < 1:
        raise InputError(f"{flag} takes a number of processes (1 or more) or 'auto', not {asked!r}")
    if gpus and n > len(gpus):
        raise InputError(f"{flag} {n} asks for one GPU per worker, and {len(gpus)} GPU(s) are visible "
                         f"({','.join(gpus)}); give {flag} {len(gpus)} or fewer, or 'auto'")
    return n


@dataclass
class Worker:
    """One started worker: its process, and the summary it sent back (None until it ends)."""

    index: int
    proc: subprocess.Popen
    summary: dict | None = None
    readers: list[threading.Thread] = field(default_factory=list)


def start(argv: list[str], n: int, gpus: list[str], first: int = 0, err: IO[str] | None = None) -> list[Worker]:
    """Start workers ``first`` to ``n - 1`` of ``n`` of the command ``llm-dit argv`` (see the module
    docstring; ``first=1``: this process is worker 0, on the first GPU); ``err``: where the other
    workers' prefixed lines go (this process's stderr by default)."""
    err = err or sys.stderr
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // n))
    workers = []
    for i in range(first, n):
        env = {**os.environ, WORKER_ENV: f"{i}/{n}"}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i]
        else:  # CPU workers share the cores instead of each taking them all
            env["OMP_NUM_THREADS"] = threads
        proc = subprocess.Popen([sys.executable, "-m", "llm_dit", *argv], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=None if i == 0 else subprocess.PIPE,
                                start_new_session=True)  # out of the terminal's reach: Ctrl-C is the parent's
        w = Worker(i, proc)
        w.readers.append(threading.Thread(target=_read_stdout, args=(w,), daemon=True))
        if i > 0:
            w.readers.append(threading.Thread(target=_pass_on, args=(proc.stderr, f"[worker {i}] ", err),
                                              daemon=True))
        for t in w.readers:
            t.start()
        workers.append(w)
    return workers


def wait(workers: list[Worker]) -> None:
    """Wait for every worker to end. A Ctrl-C (``KeyboardInterrupt`` here) or a SIGTERM is passed on
    to each worker once, then the workers are waited for; the interrupt is raised again after."""
    previous = signal.getsignal(signal.SIGTERM)

    def terminate(signum: int, frame: Any) -> None:
        _signal_all(workers, signal.SIGTERM)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminate)
    try:
        try:
            for w in workers:
                w.proc.wait()
        except KeyboardInterrupt:
            _signal_all(workers, signal.SIGINT)
            for w in workers:
                w.proc.wait()
            raise
    finally:
        for w in workers:
            for t in w.readers:
                t.join()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def stop(workers: list[Worker], timeout: float = 60.0) -> None:
    """Stop workers that serve until told (``serve --gpus``' helpers): one SIGINT each (a helper in
    a run writes its session as it stops), then a SIGKILL for any still running after ``timeout``."""
    _signal_all(workers, signal.SIGINT)
    for w in workers:
        try:
            w.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()


def _signal_all(workers: list[Worker], signum: int) -> None:
    for w in workers:
        if w.proc.poll() is None:
            try:
                w.proc.send_signal(signum)
            except ProcessLookupError:  # ended meanwhile
                pass


def _read_stdout(w: Worker) -> None:
    """A worker's stdout: its summary line kept, any other line passed on."""
    assert w.proc.stdout is not None
    for line in w.proc.stdout:
        if line.startswith(SUMMARY_TAG):
            try:
                w.summary = json.loads(line[len(SUMMARY_TAG):])
                continue
            except ValueError:
                pass
        sys.stdout.write(line)


def _pass_on(stream: IO[str] | None, prefix: str, err: IO[str]) -> None:
    assert stream is not None
    for line in stream:
        err.write(prefix + line)
        err.flush()


def summary_line(summary: Any) -> str:
    """The line a worker prints on stdout instead of its summary (a
    :class:`~llm_dit.experiments.plan.Summary`), for the parent to add up."""
    return SUMMARY_TAG + json.dumps({"total": summary.total, "skipped": summary.skipped,
                                     "generated": summary.generated, "failed": summary.failed,
                                     "reported": summary.reported})


def exit_code(workers: list[Worker], on_summaries: Callable[[list[dict]], int]) -> int:
    """The command's exit code once the workers ended: that of a worker that ended without a summary
    (refused, or crashed: its own stderr said why), else ``on_summaries(summaries)``."""
    for w in workers:
        if w.summary is None:
            return w.proc.returncode or 1
    return on_summaries([w.summary for w in workers if w.summary is not None])
