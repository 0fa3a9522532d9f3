"""The run folder's lock: one command writes a run folder (or a trials folder) at a time.

``DIR/.lock`` (hidden: the web app never serves or lists it) is held with an exclusive ``flock`` by
the process that opened the folder, from before anything in it is written or removed (preparing a
folder rewrites run.json and removes temporary files: another writer's, if it were let in) until
the run has written its report. While held, the file names its holder (pid, host, start time, run
key, run name), for the messages of the processes it turns away:

* another run (another run key) is refused at once, in one sentence (exit 2): give another --out;
* the same run (the same command, or one that differs only in speed settings, which the run key
  leaves out) waits for the holder when the caller asks (``if_busy="wait"``: the CLI), then resumes:
  the cells the holder finished are skipped, so each cell is made once. Otherwise it is refused
  (:class:`~llm_dit.errors.FolderBusy`, exit 1): the web app and library calls, which must not
  block a worker for hours.

The kernel drops a ``flock`` when its process ends, however it ends (SIGKILL included), so the file
a killed process leaves behind blocks nothing. It is never removed (removing a lock file races with
a process that has just opened it), only emptied when its holder lets it go.

Under a launcher (:mod:`processes`) the first process holds the lock for all of them; the others
work inside the folder it holds. A claim queue (processes or machines sharing one run's cells
without a launcher) would extend this: a process of the same run would join instead of waiting
(a third ``if_busy``), the holder staying the one that prepares the folder and writes the report,
and each cell would be claimed with a lock of its own (``cells/.NAME.claim``) before it is made.

POSIX only (Linux, macOS): ``fcntl`` is imported where it is used, so the package imports elsewhere.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from ..errors import FolderBusy, InputError

LOCK_FILE = ".lock"
IfBusy = Literal["refuse", "wait"]
#: How long a holder may take to write its name after taking the lock (it does so at once).
NAME_WAIT_S = 5.0


@dataclass(frozen=True)
class Holder:
    """The process that holds a folder's lock, as it wrote itself into the lock file."""

    pid: int
    host: str
    started: str  # local time, "2025-01-31 14:05:09"
    run_key: str
    run: str  # the run's name: the experiment, "sweep", or the trials' name

    def describe(self) -> str:
        """``process 4242, started 2025-01-31 14:05:09`` (with ``on HOST`` when it is another machine)."""
        where = "" if self.host == socket.gethostname() else f" on {self.host}"
        return f"process {self.pid}{where}, started {self.started}"

    def gone(self) -> bool:
        """Whether this process is known to have ended (a stale name left by a killed process, read
        while something else held the lock for an instant: :func:`holder`)."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # another user's process: alive
            return False
        return False


class FolderLock:
    """A held lock on a run folder; :meth:`release` (or the end of a ``with`` block) lets it go."""

    def __init__(self, out: Path, fd: int):
        self.out = out
        self._fd: int | None = fd

    def release(self) -> None:
        """Empty the lock file and let the lock go (the file stays: see the module docstring)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # a name only while held
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read(fd: int) -> Holder | None:
    """The holder named in the lock file open as ``fd``, or None (empty: free, or just taken)."""
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return Holder(int(data["pid"]), str(data["host"]), str(data["started"]), str(data["run_key"]),
                      str(data["run"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def take(out: Path, run_key: str, run: str, if_busy: IfBusy = "refuse",
         echo: Callable[[str], None] | None = None) -> FolderLock:
    """Lock ``out`` for the run ``run_key`` (named ``run``); made if missing. Refuses, or with
    ``if_busy="wait"`` waits for, another process that holds it (see the module docstring); the
    decision is taken before anything in the folder but the lock file is written.

    The caller refuses a folder that is not its to lock (a file, a folder of other files) first."""
    import fcntl  # POSIX only

    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + NAME_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            other = _read(fd)
            if other is None or other.gone():  # just taken and not yet named, or held for an instant
                if time.monotonic() > deadline:
                    raise FolderBusy(f"{out} is locked by another process that does not say which run it is "
                                     f"({out / LOCK_FILE}); wait for it to end or give another --out")
                time.sleep(0.05)
                continue
            if other.run_key != run_key:
                raise InputError(f"{out} is being written by another run ({other.run}, {other.describe()}); "
                                 "give another --out")
            if if_busy != "wait":
                raise FolderBusy(f"{out} is being written by the same run in another process ({other.describe()}); "
                                 "wait for it to finish, then run the same command again to resume")
            if echo is not None:
                echo(f"waiting for {other.describe()}, which is writing the same run in {out}; then the cells it "
                     "finished are skipped")
            fcntl.flock(fd, fcntl.LOCK_EX)  # until that process ends (Ctrl-C interrupts it)
            break
        me = Holder(os.getpid(), socket.gethostname(), datetime.now().strftime("%Y-%m-%d %H:%M:%S"), run_key, run)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(me)).encode("utf-8"), 0)
    except BaseException:
        os.close(fd)
        raise
    return FolderLock(out, fd)


def holder(out: Path) -> Holder | None:
    """The process writing ``out`` now, or None when none holds its lock (read-only: for a server
    that must answer at once rather than start a job that would be refused)."""
    import fcntl  # POSIX only

    try:
        fd = os.open(out / LOCK_FILE, os.O_RDONLY)
    except OSError:  # no lock file: no run ever held the folder
        return None
    try:
        if _read(fd) is None:  # emptied on release: free (or being taken this instant)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd)
        return None  # a name left by a killed process (the descriptor's close drops the shared lock)
    finally:
        os.close(fd)


def is_ours(name: str) -> bool:
    """Files a run folder may hold before its plan is written: the lock, temporary files."""
    return name == LOCK_FILE or (name.startswith(".") and name.endswith(".tmp"))
