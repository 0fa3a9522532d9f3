"""Atomic file writing: the one way this project puts a file where a later reader will trust it."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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


def load_tensors(path: str | os.PathLike, key: str, what: str) -> tuple[dict, dict]:
    """``(metadata, tensors)`` of a file written by :func:`save_tensors`; one-line errors otherwise."""
    from safetensors import safe_open

    from .errors import InputError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} {p} does not exist")
    try:
        with safe_open(str(p), "pt") as f:
            meta = json.loads(f.metadata()[key])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # not safetensors, or not ours
        raise InputError(f"{p} is not an llm-dit {what} file ({type(e).__name__}: {e})") from None
    return meta, tensors
