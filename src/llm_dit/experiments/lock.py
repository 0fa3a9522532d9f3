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

A launcher's processes (:mod:`processes`) join the run as below; only trials under a launcher are
held by their first process for all of them, the others working inside the folder it holds.

**Joining** (``if_busy="join"``, the CLI's): processes of the same run, on one host or several
sharing the folder, work in it together, pulling its cells (:mod:`claims`). :func:`enter` lets the
first one in prepare the folder under an exclusive lock, then hold it shared; a process of the same
run arriving later takes it shared too (a process of another run, finding it held, is refused as
above). :meth:`FolderLock.leave` lets a process go; the last one out (it can take the lock
exclusively again) writes the report. Every decision is taken under a second lock, the gate
(``DIR/.lock.gate``, held for an instant), so no process slips in while the first one turns its
exclusive lock into a shared one (``flock`` does that in two steps).

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
from .claims import CLAIMS_DIR, pid_ended

LOCK_FILE = ".lock"
GATE_FILE = ".lock.gate"
IfBusy = Literal["refuse", "wait", "join"]
#: How long a holder may take to write its name after taking the lock (it does so at once).
NAME_WAIT_S = 5.0
#: How long :func:`enter` tries again before refusing another run's name: :func:`holder` (a web
#: server listing folders) holds a free folder's lock for an instant, its stale name still there.
PROBE_S = 0.3


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
        return self.host == socket.gethostname() and pid_ended(self.pid)


class FolderLock:
    """A held lock on a run folder; :meth:`release` (or the end of a ``with`` block) lets it go.

    ``shared``: taken by :func:`enter` (a process of a run that others may join), held shared."""

    def __init__(self, out: Path, fd: int, shared: bool = False):
        self.out = out
        self._fd: int | None = fd
        self.shared = shared

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

    def leave(self, note: Callable[[], None] | None = None) -> bool:
        """For a lock taken by :func:`enter`: ``note()`` (what this process leaves in the folder for the
        record: one at a time), then True if this process is the last of the run in the folder, and
        now holds it exclusively (it writes the report, then :meth:`release`); False (the lock let go)
        while others of the run are still working in it."""
        import fcntl  # POSIX only

        if self._fd is None:
            return False
        with _gate(self.out):
            if note is not None:
                note()
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:  # others hold it shared: they finish the run
                fd, self._fd = self._fd, None
                os.close(fd)
                return False

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _gate:
    """The folder's gate (``GATE_FILE``), held exclusively for the ``with`` block: one entering or
    leaving process decides at a time."""

    def __init__(self, out: Path) -> None:
        self.path = out / GATE_FILE
        self.fd: int | None = None

    def __enter__(self) -> None:
        import fcntl  # POSIX only

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _read(fd: int) -> Holder | None:
    """The holder named in the lock file open as ``fd``, or None (empty: free, or just taken)."""
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return Holder(int(data["pid"]), str(data["host"]), str(data["started"]), str(data["run_key"]),
                      str(data["run"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def enter(out: Path, run_key: str, run: str, prepare: Callable[[], None]) -> FolderLock:
    """Enter ``out`` for the run ``run_key`` (named ``run``) beside the processes of the same run
    already there (see "Joining" in the module docstring); made if missing. The first one in calls
    ``prepare()`` (the folder made ready) before any other may enter. Another run holding it is
    refused in one sentence (:class:`~llm_dit.errors.InputError`)."""
    import fcntl  # POSIX only

    out.mkdir(parents=True, exist_ok=True)
    with _gate(out):
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + NAME_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    first = True
                    break
                except BlockingIOError:
                    pass
                # held: the name is the run's first process, which may have left while others of
                # its run work on (so its pid may be gone); empty only for an instant
                other = _read(fd)
                if other is not None and other.run_key == run_key:
                    first = False
                    break
                if other is not None and time.monotonic() > deadline - NAME_WAIT_S + PROBE_S:
                    raise InputError(f"{out} is being written by another run ({other.run}, {other.describe()}); "
                                     "give another --out")
                if time.monotonic() > deadline:  # a process of take() holds it and never named itself
                    raise FolderBusy(f"{out} is locked by another process that does not say which run it is "
                                     f"({out / LOCK_FILE}); wait for it to end or give another --out")
                time.sleep(0.05)
            if first:
                me = Holder(os.getpid(), socket.gethostname(), datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
                            run_key, run)
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(asdict(me)).encode("utf-8"), 0)
                try:
                    prepare()
                except BaseException:  # refused (a folder of another run, say): it names no holder
                    os.ftruncate(fd, 0)
                    raise
            # shared from here: the run's other processes may join; under the gate none enters meanwhile
            fcntl.flock(fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
    return FolderLock(out, fd, shared=True)


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
                with _gate(out):  # not while a joining run turns its lock from exclusive to shared
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
            if if_busy == "refuse":  # "join" here (trials' processes, which do not join) waits as "wait" does
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
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held, shared or not: refused
        except BlockingIOError:
            return _read(fd)
        return None  # a name left by a killed process (the descriptor's close drops the lock)
    finally:
        os.close(fd)


def is_ours(name: str) -> bool:
    """Files a run folder may hold before its plan is written: the lock and its gate, the claims
    folder, temporary files."""
    return name in (LOCK_FILE, GATE_FILE, CLAIMS_DIR) or (name.startswith(".") and name.endswith(".tmp"))
