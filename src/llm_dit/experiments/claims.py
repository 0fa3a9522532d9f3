"""Claims on a run's cells: any number of processes, on one host or several sharing a filesystem,
pull the cells of one run folder with no static split and no barrier.

A claim is a file ``DIR/.claims/G.NAME`` (hidden: the web app never serves or lists it) for cell
``NAME`` at generation ``G``, created with ``O_CREAT | O_EXCL``, which exactly one creator wins,
on a local disk as on NFS. Its lease is its modification time: the holder touches it every
``lease_s / 4`` seconds (:meth:`CellClaims.renew`, on a thread), and a claim untouched for
``lease_s`` has expired: its holder died (a SIGKILL, a lost host) or hangs. An expired claim at
generation ``G`` is taken over by creating ``G + 1``, which again exactly one process wins; the old
holder, if it was only slow, sees the newer generation when it renews and gives the cell up
(:meth:`CellClaims.lost`). Nothing is ever renamed or rewritten by another process, so no race can
move a live claim. Hosts' clocks are assumed to agree within a small part of the lease (NTP).

A finished cell is told by its record (``cells/NAME.json`` with the run's cell key), not by its
claim: the holder releases (removes) its claim after the record is written. A process that finds a
cell claimed by a live lease moves on to the next; one that finds every remaining cell claimed
waits for those leases to end (finished, or expired and taken over).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

CLAIMS_DIR = ".claims"
#: Seconds a claim lives without being renewed (the holder renews four times per lease);
#: ``LLM_DIT_LEASE_S`` sets another (tests kill a worker and wait for its lease).
LEASE_S = float(os.environ.get("LLM_DIT_LEASE_S", "") or 120.0)
#: Seconds between looks at cells other processes hold.
POLL_S = min(0.25, LEASE_S / 8)


@dataclass(frozen=True)
class Claim:
    """A claim file as found: cell ``name`` at generation ``gen``, touched ``age`` seconds ago."""

    name: str
    gen: int
    age: float
    holder: dict  # what the claimer wrote: worker, host, pid

    def expired(self, lease_s: float) -> bool:
        """Untouched for a lease, or its holder, on this host, has ended (killed: nothing to wait for)."""
        return self.age > lease_s or self._holder_ended()

    def _holder_ended(self) -> bool:
        pid = self.holder.get("pid")
        return self.holder.get("host") == host_name() and isinstance(pid, int) and pid_ended(pid)


def pid_ended(pid: int) -> bool:
    """Whether process ``pid`` of this host has ended."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: alive
        return False
    return False


def host_name() -> str:
    """This host's name: ``LLM_DIT_HOST`` when set (hosts whose names collide; tests simulating
    several hosts on one machine), else the machine's."""
    return os.environ.get("LLM_DIT_HOST") or socket.gethostname()


def worker_id() -> str:
    """``HOST:PID``: unique among the processes sharing a folder at one time."""
    return f"{host_name()}:{os.getpid()}"


class CellClaims:
    """This process's claims on the cells of the run folder ``out``.

    ``claim(name)`` takes a cell (or says it is taken); ``release(name)`` lets it go once its record
    is written; a thread renews what is held (``start()``/``stop()``, or ``with``)."""

    def __init__(self, out: Path, lease_s: float = LEASE_S, worker: str | None = None,
                 host: str | None = None) -> None:
        self.dir = Path(out) / CLAIMS_DIR
        self.lease_s = float(lease_s)
        self.worker = worker or worker_id()
        self.host = host or host_name()
        self.held: dict[str, int] = {}  # cell name -> generation held
        self._lost: set[str] = set()
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading -----------------------------------------------------------------------------------

    def _files(self) -> dict[str, list[int]]:
        """``{cell name: [generations present]}`` under the claims folder."""
        found: dict[str, list[int]] = {}
        try:
            entries = os.listdir(self.dir)
        except FileNotFoundError:
            return found
        for entry in entries:
            gen, dot, name = entry.partition(".")
            if dot and gen.isdigit() and name:
                found.setdefault(name, []).append(int(gen))
        return found

    def current(self, name: str, gens: list[int] | None = None) -> Claim | None:
        """The newest claim on ``name``, or None (never claimed, or released)."""
        if gens is None:
            gens = self._files().get(name, [])
        for gen in sorted(gens, reverse=True):
            path = self.dir / f"{gen}.{name}"
            try:
                age = time.time() - path.stat().st_mtime
                holder = json.loads(path.read_text(encoding="utf-8") or "{}")
            except FileNotFoundError:  # released (or its generation superseded and removed) meanwhile
                continue
            except (OSError, ValueError):  # being written this instant: its creator holds it
                age, holder = 0.0, {}
            return Claim(name, gen, max(age, 0.0), holder if isinstance(holder, dict) else {})
        return None

    # -- claiming ----------------------------------------------------------------------------------

    def claim(self, name: str) -> bool:
        """Take cell ``name``: True if this process now holds it (new, or taken over from an expired
        lease), False if a live lease of another process holds it."""
        if not name or "/" in name or os.sep in name or name in (".", ".."):  # stays inside the claims folder
            raise ValueError(f"a claim's name is a file name, not {name!r}")
        with self._mutex:
            if name in self.held:
                return True
        self.dir.mkdir(parents=True, exist_ok=True)
        now = self.current(name)
        if now is not None and not now.expired(self.lease_s):
            return False
        gen = 0 if now is None else now.gen + 1
        path = self.dir / f"{gen}.{name}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # another process won this generation
            return False
        try:
            os.write(fd, json.dumps({"worker": self.worker, "host": self.host, "pid": os.getpid(),
                                     "took_over": None if now is None else now.holder.get("worker")}).encode())
        finally:
            os.close(fd)
        with self._mutex:
            self.held[name] = gen
        if now is not None:  # the expired generation: its holder is gone, or will see ours
            _remove(self.dir / f"{now.gen}.{name}")
        return True

    def release(self, name: str) -> None:
        """Let cell ``name`` go (its record is written, or this process gives it up)."""
        with self._mutex:
            gen = self.held.pop(name, None)
            self._lost.discard(name)
        if gen is not None:
            _remove(self.dir / f"{gen}.{name}")

    def owns(self, name: str) -> bool:
        """Whether this process still holds ``name`` (no newer generation took it over)."""
        with self._mutex:
            gen = self.held.get(name)
        if gen is None:
            return False
        now = self.current(name)
        return now is not None and now.gen == gen

    def lost(self) -> set[str]:
        """The cells this process held whose lease another process took over (seen when renewing)."""
        with self._mutex:
            return set(self._lost)

    # -- the lease ---------------------------------------------------------------------------------

    def renew(self) -> None:
        """Touch every held claim; one whose file is gone or superseded is lost."""
        with self._mutex:
            held = dict(self.held)
        files = self._files()
        for name, gen in held.items():
            newest = max(files.get(name, [gen]))
            try:
                if newest != gen:
                    raise FileNotFoundError
                os.utime(self.dir / f"{gen}.{name}")
            except FileNotFoundError:
                with self._mutex:
                    if self.held.get(name) == gen:
                        self.held.pop(name)
                        self._lost.add(name)

    def start(self) -> CellClaims:
        """Renew on a daemon thread every quarter lease until :meth:`stop`."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name="llm-dit-claims", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop renewing and release every claim still held."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for name in list(self.held):
            self.release(name)

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                self.renew()
            except OSError:  # the folder briefly unreachable (NFS): the next beat tries again
                pass

    def __enter__(self) -> CellClaims:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
