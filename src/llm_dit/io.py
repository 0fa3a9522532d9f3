"""Atomic file writing: the one way this project puts a file where a later reader will trust it."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: The grammar of every name that becomes a file or folder name (a cell, a grid, a trial, a run of the
#: web app): letters, digits and ``._+-``, not starting with a dot or a dash, at most 120 characters.
#: No separator, no ``..``, never hidden: a name read from an edited record cannot leave its folder.
NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+-]{0,119}")

#: The folder every write of this context must stay in (:func:`confined`); None: anywhere.
_ROOT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("llm_dit_write_root", default=None)


def check_name(name: object, what: str, field: str | None = None) -> str:
    """``name`` when it matches :data:`NAME`, else an InputError naming ``what`` (``"a cell"``)."""
    from .errors import InputError

    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InputError(f"{what} cannot be named {name!r}: names take letters, digits and ._+- (not first: . -), "
                         "at most 120 characters", field=field)
    return name


@contextlib.contextmanager
def confined(root: str | os.PathLike) -> Iterator[Path]:
    """Within this block (this thread, and threads started with its context), every write through
    :func:`atomic_path` must land inside ``root``, links resolved: what a name check missed is still
    never written elsewhere."""
    token = _ROOT.set(Path(root).resolve())
    try:
        yield Path(root)
    finally:
        _ROOT.reset(token)


def confining() -> Callable[[], None]:
    """A thread initializer (``ThreadPoolExecutor(initializer=confining())``): the pool's threads
    confine their writes as this thread does (a new thread starts with no confinement)."""
    root = _ROOT.get()

    def enter() -> None:
        _ROOT.set(root)

    return enter


def check_inside(path: Path) -> None:
    """Refuse (WriteError) a write to ``path`` outside the folder of :func:`confined`, if any."""
    root = _ROOT.get()
    if root is None:
        return
    target = path.parent.resolve() / path.name  # the folder's links resolved; the file itself is replaced
    if root != target and root not in target.parents:
        from .errors import WriteError

        raise WriteError(f"refusing to write {path}: it lies outside the folder {root}")


def cache_root() -> Path:
    """Where llm-dit keeps built and cached things: ``$LLM_DIT_CACHE``, else
    ``$XDG_CACHE_HOME/llm-dit``, else ``~/.cache/llm-dit``."""
    if os.environ.get("LLM_DIT_CACHE"):
        return Path(os.environ["LLM_DIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llm-dit"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` in one step.

    A crash or exception leaves the old file (or nothing) at ``path`` and no temporary behind.
    ``durable``: flushed to the disk before the rename (``fsync``: tens of ms on some disks), so that
    even a power cut leaves the old file or the whole new one; files that can be made again from the
    others (a run's report) skip it, and are still whole after a killed process.
    """
    p = Path(path)
    check_inside(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; outputs are meant to be shared
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_input(path: str | os.PathLike, digests: dict[str, str] | None = None) -> bytes:
    """The bytes of an input file, read once; with ``digests``, their SHA-256 (hex) is recorded under
    ``str(path)``: a run's keys then cover the very bytes its pictures were made from, even when the
    file is replaced while the run starts."""
    data = Path(path).read_bytes()
    if digests is not None:
        digests[str(path)] = hashlib.sha256(data).hexdigest()
    return data


def write_text(path: str | os.PathLike, text: str, durable: bool = True) -> Path:
    with atomic_path(path, durable) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: str | os.PathLike, data: Any, durable: bool = True) -> Path:
    """Standard JSON (NaN and infinities become null, which every reader accepts), in insertion
    order: records read in the order they were written (name first, the recipe last)."""
    return write_text(path, json.dumps(_finite(data), indent=2, default=str, allow_nan=False) + "\n", durable)


def save_tensors(path: str | os.PathLike, tensors: dict, key: str, metadata: dict, durable: bool = True) -> Path:
    """safetensors file with ``metadata`` as JSON under ``key``, written atomically (``durable``: see
    :func:`atomic_path`).

    Tensors are stored contiguous; each gets its own storage (safetensors refuses shared ones).
    """
    from safetensors.torch import save_file

    with atomic_path(path, durable) as tmp:
        save_file({k: v.contiguous().clone() for k, v in tensors.items()}, str(tmp),
                  metadata={key: json.dumps(metadata, default=str)})
    return Path(path)


def load_tensors(path: str | os.PathLike, key: str, what: str,
                 digests: dict[str, str] | None = None) -> tuple[dict, dict]:
    """``(metadata, tensors)`` of a file written by :func:`save_tensors`, read once (``digests``: see
    :func:`read_input`); one-line errors otherwise.

    safetensors layout: 8 bytes (little-endian u64) ``n``, then ``n`` bytes of JSON header whose
    ``__metadata__`` holds our metadata as JSON under ``key``, then the tensors' bytes."""
    from safetensors.torch import load

    from .errors import InputError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} {p} does not exist")
    try:
        data = read_input(p, digests)
        n = int.from_bytes(data[:8], "little")
        meta = json.loads(json.loads(data[8:8 + n])["__metadata__"][key])
        tensors = load(data)
    except Exception as e:  # not safetensors, or not ours
        raise InputError(f"{p} is not an llm-dit {what} file ({type(e).__name__}: {e})") from None
    return meta, tensors
