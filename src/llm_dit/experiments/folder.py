"""The run folder: what is in it, what can be trusted, and how a cell is written.

::

    DIR/
      run.json                 the plan: every cell's recipe, the run key, one entry per session
      reference.png            the reference image(s) as the models saw them (reference_2.png, ...)
      captions/captionN.txt    captions of caption experiments (reused on resume), with captionN.json
      NAME.png                 one image per cell
      cells/NAME.json          its record (written after the image: a record means a finished cell)
      stats/NAME.safetensors   per-dimension std of the text, VL and blended embeddings
      embeddings/NAME.safetensors   the embeddings themselves (--save-embeddings)
      metadata.json, comparison_grid.png, grid_*.png, plots/, report.html    built from the above

Every file is written to a temporary name and renamed. A cell counts as finished only when its
record says so, carries this run's key, and its PNG opens (every chunk's checksum verified); anything
else is redone. Temporary files left by a killed process are removed when a run starts. So a cell's
files (PNG, record, statistics) are not flushed to the disk one by one (``fsync``, which stalled the
end of a run on the GPU machines): a killed process leaves them whole, and after a power cut a
picture or record that did not reach the disk fails that check and its cell is made again. The plan
(run.json as a run starts) and saved embeddings, which nothing checks, are flushed.

This module owns the format: the runner writes through it, and the report, the web app and resume
read through :func:`read_run` / :func:`read_trials` (a trials folder holds ``trials.json`` and one
run folder per trial). Statuses, one vocabulary for everyone:

* a cell (:data:`CELL_STATUSES`): ``done`` (its record says it finished), ``failed`` (its record says
  it failed), ``pending`` (no readable record yet);
* a run or a trials folder (:data:`RUN_STATUSES`): ``running`` (a job of this server runs it),
  ``failed`` (a cell failed), ``complete`` (every planned cell done), ``incomplete`` (the rest).
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import InputError, WriteError
from ..io import WRITE_ERRNOS, parse_json, target_of, write_json

RUN_FILE = "run.json"
TRIALS_FILE = "trials.json"
CAPTIONS = "captions"
CELL_STATUSES = ("done", "failed", "pending")
RUN_STATUSES = ("running", "failed", "complete", "incomplete")
RESERVED = {"metadata", "run", "report", "comparison_grid", "reference"}
#: Runtime settings that decide how fast or in how much memory a picture is made, not the picture:
#: outside the run key (``plan.run_key``), and not named when a folder is refused.
RUNTIME_NOT_IN_KEY = ("offload", "keep_models", "compile", "attention", "batch_size")


def reference_name(i: int) -> str:
    return "reference.png" if i == 0 else f"reference_{i + 1}.png"


def check_cell_names(names: list[str]) -> None:
    for n in names:
        if n in RESERVED or n.startswith(("grid_", "reference_")):
            raise InputError(f"a cell cannot be named {n!r}: the run folder uses that name")


def read_json(path: Path) -> Any | None:
    """The JSON at ``path``, or None when it is missing or unreadable (never trusted half-read; nested
    deeper than ``llm_dit.io.MAX_NESTING`` is unreadable too)."""
    try:
        return parse_json(path.read_text(encoding="utf-8"), str(path))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _key_view(plan: dict) -> dict:
    """The part of a run's plan that its run key covers (see ``plan.run_key``): not the grids, the
    metrics, the speed and memory settings, the cache or which GPU of the machine."""
    view = {k: v for k, v in plan.items() if k not in ("grids", "run_key", "sessions")}
    cfg = copy.deepcopy(view.get("config") or {})
    cfg.pop("metrics", None)
    runtime = cfg.get("runtime") or {}
    for key in RUNTIME_NOT_IN_KEY:
        runtime.pop(key, None)
    if isinstance(runtime.get("device"), str):
        runtime["device"] = runtime["device"].split(":")[0]
    (cfg.get("vl") or {}).pop("cache_gb", None)
    view["config"] = cfg
    return view


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _differences(old: Any, new: Any, path: str) -> Iterator[str]:
    """Dotted paths where ``old`` and ``new`` differ, with both values (``config.generation.steps: 9 -> 4``);
    list items that carry a ``name`` (cells) are named by it."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in [*old, *(k for k in new if k not in old)]:
            at = f"{path}.{k}" if path else str(k)
            if k not in new or k not in old:
                yield f"{at}: {_short(old.get(k))} -> {_short(new.get(k))}"
            else:
                yield from _differences(old[k], new[k], at)
    elif isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            yield f"{path}: {len(old)} -> {len(new)} entries"
            return
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            name = a.get("name") if isinstance(a, dict) and a.get("name") == (b or {}).get("name") else None
            yield from _differences(a, b, f"{path}[{name}]" if name else f"{path}.{i}")
    elif old != new:
        yield f"{path}: {_short(old)} -> {_short(new)}"


def differing(existing: dict, plan: dict, limit: int = 3) -> str:
    """What differs between the run a folder holds and this one, for the refusal: the first ``limit``
    settings (``config.generation.steps: 9 -> 4, prompt: 'a cat' -> 'a dog'``), else the files."""
    found = list(_differences(_key_view(existing), _key_view(plan), ""))
    if not found:  # the same settings: the run key covers the reference images' bytes as well
        return "the same settings, but the reference images' contents differ"
    more = f" and {len(found) - limit} more" if len(found) > limit else ""
    return "settings that differ: " + ", ".join(found[:limit]) + more


def prepare(out: Path, run_key: str, plan: dict) -> dict:
    """Make ``out`` ready for this run; refuse a folder that holds something else.

    Returns the run file's content (with its earlier sessions when resuming)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder")
    existing = read_json(out / RUN_FILE) if out.is_dir() else None
    if existing is not None and existing.get("run_key") != run_key:
        if any((out / "cells").glob("*.json")):
            what = existing.get("name", "another run")
            raise InputError(f"{out} holds a different run ({what}; {differing(existing, plan)}); give a new --out "
                             "or remove it")
        existing = None  # a run that finished no cell (it failed to start): replaced, its references too
        for ref in out.glob("reference*.png"):
            ref.unlink()
    elif existing is None and out.is_dir() and any(out.iterdir()):
        raise InputError(f"{out} is not empty and holds no llm-dit run; give a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    for tmp in out.rglob(".*.tmp"):  # left by a process killed mid-write: never trusted, now removed
        with contextlib.suppress(OSError):
            tmp.unlink()
    run = {**plan, "run_key": run_key, "sessions": (existing or {}).get("sessions", [])}
    write_json(out / RUN_FILE, run)
    return run


def record_path(out: Path, name: str) -> Path:
    return out / "cells" / f"{name}.json"


def png_opens(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:
        return False


def finished(out: Path, name: str, cell_key: str) -> dict | None:
    """The record of a finished cell with this key, else None. A record without the fingerprint of its
    conditioning was written before it was recorded, by a version whose runs could give a ``vl`` cell
    the ``splice`` extraction of the same chat: never trusted, the cell is made again."""
    rec = read_json(record_path(out, name))
    if not isinstance(rec, dict) or not rec.get("success") or rec.get("cell_key") != cell_key \
            or "fingerprint" not in rec:
        return None
    return rec if png_opens(out / rec.get("file", f"{name}.png")) else None


def write_record(out: Path, name: str, record: dict) -> None:
    write_json(record_path(out, name), record, durable=False)  # checked on resume (module docstring)


def records(out: Path, names: list[str]) -> dict[str, dict]:
    """Every readable record among ``names`` (finished or failed)."""
    out_records = {}
    for n in names:
        rec = read_json(record_path(out, n))
        if isinstance(rec, dict):
            out_records[n] = rec
    return out_records


def write_error(e: BaseException, out: Path) -> WriteError | None:
    """One sentence for a failed write (see :data:`WRITE_ERRNOS`) during a run into ``out``, or None
    for any other error."""
    if not isinstance(e, OSError) or e.errno not in WRITE_ERRNOS:
        return None
    why = e.strerror or str(e)
    where = target_of(e.filename) if e.filename else None  # a temporary: the file it stood for
    if where is None or out.resolve() in where.resolve().parents:
        file = f": {where.resolve().relative_to(out.resolve())}" if where else ""
        return WriteError(f"cannot write into the run folder {out} ({why}{file}); the cells finished so far are "
                          "kept: free space or make the folder writable, then run the same command again to resume")
    return WriteError(f"cannot write {where} ({why}); the run folder {out} keeps the cells finished so far: fix "
                      "that, then run the same command again to resume")


# -- reading a run folder ------------------------------------------------------------------------


def caption_path(out: Path, tokens: int) -> Path:
    """Where a caption of target ``tokens`` is kept (its metadata beside it, ``.json``)."""
    return out / CAPTIONS / f"caption{tokens}.txt"


def read_captions(out: Path) -> dict[str, str]:
    """``{target tokens: caption}`` of the captions in ``out`` (keys as JSON keys: ``"64"``)."""
    found = {}
    for p in sorted((out / CAPTIONS).glob("caption*.txt")):
        key = p.stem.removeprefix("caption")
        if key.isdigit():
            found[key] = p.read_text(encoding="utf-8", errors="replace").strip()
    return found


@dataclass(frozen=True)
class CellState:
    """A planned cell as the folder has it: its plan entry and its record (None: none yet)."""

    name: str
    params: dict
    recipe: dict
    record: dict | None

    @property
    def status(self) -> str:
        """One of :data:`CELL_STATUSES`."""
        if self.record is None:
            return "pending"
        return "done" if self.record.get("success") else "failed"


@dataclass(frozen=True)
class RunFolder:
    """What a run folder holds: the plan (``run.json``), each planned cell with its record, captions."""

    path: Path
    plan: dict
    cells: tuple[CellState, ...]
    captions: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Cells by status (every one of :data:`CELL_STATUSES`, zeros included)."""
        return {s: sum(c.status == s for c in self.cells) for s in CELL_STATUSES}

    def status(self, running: bool = False) -> str:
        """One of :data:`RUN_STATUSES`; ``running``: a job is running it now."""
        return run_status(self.counts(), running)


def run_status(counts: dict[str, int], running: bool = False) -> str:
    """The status of a run (or of trials, counts summed) from its cells' :meth:`RunFolder.counts`."""
    if running:
        return "running"
    if counts["failed"]:
        return "failed"
    return "complete" if counts["pending"] == 0 and counts["done"] else "incomplete"


def read_run(out: Path) -> RunFolder | None:
    """The run in ``out``, or None when it holds no readable ``run.json`` with a list of cells.

    Plan entries that are not a table with a string ``name`` are skipped (a hand-edited file)."""
    plan = read_json(out / RUN_FILE) if out.is_dir() else None
    if not isinstance(plan, dict) or not isinstance(plan.get("cells"), list):
        return None
    entries = [c for c in plan["cells"] if isinstance(c, dict) and isinstance(c.get("name"), str)]
    recs = records(out, [c["name"] for c in entries])
    cells = tuple(CellState(c["name"], c.get("params") or {}, c.get("recipe") or {}, recs.get(c["name"]))
                  for c in entries)
    return RunFolder(out, plan, cells, read_captions(out))


def read_trials(out: Path) -> tuple[dict, dict[str, RunFolder | None]] | None:
    """A trials folder: its plan (``trials.json``) and each trial's run by name (None: not started);
    None when ``out`` holds no readable trials plan."""
    plan = read_json(out / TRIALS_FILE) if out.is_dir() else None
    if not isinstance(plan, dict) or not isinstance(plan.get("trials"), list):
        return None
    names = [t["name"] for t in plan["trials"] if isinstance(t, dict) and isinstance(t.get("name"), str)]
    return plan, {n: read_run(out / n) for n in names}
