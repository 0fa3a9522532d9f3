"""Files: atomic writing (the one way this project puts a file where a later reader will trust it),
the one sentence for a write that failed, and the one way a TOML or JSON file a person hands us is
parsed (its nesting bounded)."""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import InputError, LlmDitError, WriteError
from .interrupt import writing

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, published as tomli before it joined the standard library
    import tomli as tomllib

#: What a write can fail with that no retry of the same write fixes: a full disk or quota, a read-only
#: file system, no permission, a file too large.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
#: The deepest nesting of tables and lists a TOML or JSON file may have. llm-dit's own files nest 4 or 5
#: deep; Python's parsers and every recursive step after them (merging, copying, validating) would
#: end in a RecursionError somewhere below 1000.
MAX_NESTING = 64

#: The grammar of every name that becomes a file or folder name (a cell, a grid, a trial, a run of the
#: web app): letters, digits and ``._+-``, not starting with a dot or a dash, at most 120 characters.
#: No separator, no ``..``, never hidden: a name read from an edited record cannot leave its folder.
NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+-]{0,119}")

#: The folder every write of this context must stay in (:func:`confined`); None: anywhere.
_ROOT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("llm_dit_write_root", default=None)


def check_name(name: object, what: str, field: str | None = None) -> str:
    """``name`` when it matches :data:`NAME`, else an InputError naming ``what`` (``"a cell"``)."""
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
    with writing():  # a Ctrl-C in the command line quits once the file is in place (llm_dit.interrupt)
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


def target_of(filename: str | os.PathLike) -> Path:
    """The file a temporary of :func:`atomic_path` stands for (``DIR/.x.png.k2j3.tmp`` -> ``DIR/x.png``);
    any other path as it is."""
    p = Path(filename)
    if p.name.startswith(".") and p.name.endswith(".tmp") and p.name.count(".") >= 3:
        return p.with_name(p.name[1:].rsplit(".", 2)[0])
    return p


def write_failure(e: OSError, path: str | os.PathLike) -> WriteError:
    """One sentence for ``e``, met while writing ``path``: the file and the reason (the folder or file
    the system names, when that is another one: a parent that is a file, a read-only folder)."""
    why = e.strerror or str(e) or type(e).__name__
    named = target_of(e.filename) if e.filename else None
    if named is not None and named != Path(path):
        why = f"{why}: {named}"
    return WriteError(f"cannot write {path} ({why})")


def write_together(files: Sequence[tuple[str | os.PathLike, Callable[[Path], object]]],
                   durable: bool = True) -> list[Path]:
    """Write files that describe one thing (a picture and its sidecar) so that no reader ever sees
    the last of them beside the others of another write; ``files``: ``(path, write(temporary))``.

    Every file is written to a temporary first (:func:`atomic_path`) and, when ``durable``, flushed to
    the disk; a failure there (a full disk shows in a write or in the flush) changes nothing on disk.
    Then the last path (the one a reader trusts: "a PNG means its sidecar is complete") is
    removed, the others are renamed into place, and the last one last. Two renames cannot be one
    step, so a crash between them leaves the new sidecar without a picture (or the old sidecar
    without its picture), never a picture with the sidecar of another: removing first is the choice
    that makes a picture on disk always agree with its sidecar, at the price of an old pair losing
    its picture when the new write dies between the two renames. A failed write is a
    :class:`~llm_dit.errors.WriteError` naming the file and the reason.
    """
    paths = [Path(p) for p, _ in files]
    at: Path | None = paths[-1]
    try:
        with contextlib.ExitStack() as stack:
            tmps: dict[Path, Path] = {}
            for p in reversed(paths):  # entered last first: renamed last
                at = p
                tmps[p] = stack.enter_context(atomic_path(p, durable=False))  # flushed here, before any rename
            for p, write in zip(paths, (w for _, w in files), strict=True):
                at = p
                write(tmps[p])
                if durable:
                    with open(tmps[p], "rb+") as f:
                        os.fsync(f.fileno())
            at = paths[-1]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(paths[-1])
            at = None  # the renames: the error names the temporary, hence the file
    except OSError as e:
        where = at or (target_of(e.filename) if e.filename else " and ".join(str(p) for p in paths))
        raise write_failure(e, where) from None
    return paths


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


def json_text(data: Any) -> str:
    """Standard JSON (NaN and infinities become null, which every reader accepts), in insertion
    order: records read in the order they were written (name first, the recipe last)."""
    return json.dumps(_finite(data), indent=2, default=str, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, data: Any, durable: bool = True) -> Path:
    """:func:`json_text` of ``data``, written atomically."""
    return write_text(path, json_text(data), durable)


def expand_user(path: str | os.PathLike, what: str = "path") -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded; a user that does not exist (or no home to
    expand to) is an :class:`~llm_dit.errors.InputError` naming ``what`` (``Path.expanduser`` raises a
    bare RuntimeError)."""
    p = Path(path)
    try:
        return p.expanduser()
    except RuntimeError:
        user = str(path).split("/", 1)[0]
        raise InputError(f"{what} {path}: cannot expand {user} (no such user, or no home folder)") from None


# -- TOML and JSON a person hands us ---------------------------------------------------------------


def nesting(data: Any) -> int:
    """How deep tables (dicts) and lists nest in ``data`` (``1`` for ``{"a": 1}``, ``0`` for ``1``);
    without recursion, so any depth is measured."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_NESTING:  # deep enough to refuse: the rest need not be walked
            return depth
        stack.extend((c, depth + 1) for c in children)
    return deepest


def _bounded(parse: Callable[[str], Any], text: str, where: str, error: type[LlmDitError]) -> Any:
    too_deep = error(f"{where} nests deeper than {MAX_NESTING} levels")
    try:
        data = parse(text)
    except RecursionError:
        raise too_deep from None
    if nesting(data) > MAX_NESTING:
        raise too_deep
    return data


def parse_toml(text: str, where: str, error: type[LlmDitError] = InputError) -> Any:
    """The table of a TOML text; a text nested deeper than :data:`MAX_NESTING` (``[a.b.c...]``,
    ``x = {a = {a = ...}}``) raises ``error("WHERE nests deeper than 64 levels")``; invalid TOML
    raises ``tomllib.TOMLDecodeError`` (a ValueError) as before, for the caller's sentence."""
    return _bounded(tomllib.loads, text, where, error)


def parse_json(text: str, where: str, error: type[LlmDitError] = InputError) -> Any:
    """The value of a JSON text, with :func:`parse_toml`'s bound on nesting; invalid JSON raises
    ``json.JSONDecodeError`` (a ValueError)."""
    return _bounded(json.loads, text, where, error)


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


def save_npz(path: str | os.PathLike, arrays: dict[str, Any], durable: bool = True) -> Path:
    """A NumPy ``.npz`` archive of ``arrays`` (numbers, strings or arrays), written atomically."""
    import numpy as np

    with atomic_path(path, durable) as tmp, open(tmp, "wb") as f:
        savez: Any = np.savez  # typed as if an array could be named allow_pickle
        savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
    return Path(path)


def load_npz(path: str | os.PathLike, what: str, digests: dict[str, str] | None = None) -> dict[str, Any]:
    """The arrays of a ``.npz`` file, read once (``digests``: see :func:`read_input`), without pickles
    (an archive holding Python objects is refused: unpickling runs code)."""
    import io as _io

    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} {p} does not exist")
    data = read_input(p, digests)
    try:
        with np.load(_io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # not an archive, or one holding pickles
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{p} is not a readable .npz {what} file ({why})") from None


def load_tensors(path: str | os.PathLike, key: str, what: str,
                 digests: dict[str, str] | None = None) -> tuple[dict, dict]:
    """``(metadata, tensors)`` of a file written by :func:`save_tensors`, read once (``digests``: see
    :func:`read_input`); one-line errors otherwise.

    safetensors layout: 8 bytes (little-endian u64) ``n``, then ``n`` bytes of JSON header whose
    ``__metadata__`` holds our metadata as JSON under ``key``, then the tensors' bytes."""
    from safetensors.torch import load

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
