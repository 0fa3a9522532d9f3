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
      .lock                    held (flock) by the process writing the run, which it names (:mod:`lock`)

Every file is written to a temporary name and renamed. A cell counts as finished only when its
record says so, carries this run's key, and its PNG opens (every chunk's checksum verified); anything
else is redone. Temporary files left by a killed process are removed when a run starts. So a cell's
files (PNG, record, statistics) are not flushed to the disk one by one (``fsync``, which stalled the
end of a run on the GPU machines): a killed process leaves them whole, and after a power cut a
picture or record that did not reach the disk fails that check and its cell is made again. The plan
(run.json as a run starts) and saved embeddings, which nothing checks, are flushed.

This module owns the format: the runner writes through it, and the report, the web app and resume
read through :func:`read_run` / :func:`read_trials` (a trials folder holds ``trials.json``, its own
``.lock`` and one run folder per trial). One process writes a folder at a time: the runner takes its
lock (:mod:`lock`) before :func:`prepare` writes or removes anything. Statuses, one vocabulary for everyone:

* a cell (:data:`CELL_STATUSES`): ``done`` (its record says it finished), ``failed`` (its record says
  it failed), ``pending`` (no readable record yet);
* a run or a trials folder (:data:`RUN_STATUSES`): ``running`` (a job of this server runs it),
  ``failed`` (a cell failed), ``complete`` (every planned cell done), ``incomplete`` (the rest),
  ``damaged`` (its ``run.json`` cannot be read as a run: :class:`DamagedRun` says why).

Everything read back is checked before it is used, since a folder may be damaged (a power cut) or
edited (a folder shared by someone else): names that become paths must match
:data:`~llm_dit.io.NAME`, a record counts only when whole (:func:`whole`; else its cell is made
again), and a ``run.json`` that is not a whole plan (:func:`plan_problem`) is named in one sentence.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from PIL import Image

from ..errors import InputError, WriteError
from ..io import NAME, WRITE_ERRNOS, parse_json, target_of, write_json
from . import lock

RUN_FILE = "run.json"
TRIALS_FILE = "trials.json"
CAPTIONS = "captions"
CELL_STATUSES = ("done", "failed", "pending")
RUN_STATUSES = ("running", "failed", "complete", "incomplete", "damaged")
RESERVED = {"metadata", "run", "report", "comparison_grid", "reference"}
#: Runtime settings that decide how fast or in how much memory a picture is made, not the picture:
#: outside the run key (``plan.run_key``), and not named when a folder is refused.
RUNTIME_NOT_IN_KEY = ("offload", "keep_models", "compile", "attention", "batch_size")


def reference_name(i: int) -> str:
    return "reference.png" if i == 0 else f"reference_{i + 1}.png"


class DamagedRun(InputError):
    """A run folder whose ``run.json`` is there but cannot be read as a run (cut short by a power cut,
    zeroed, edited): one sentence naming the file and what is wrong with it."""


#: The fields of a finished cell's record that readers index (the report, resume, the web app).
DONE_FIELDS = {"name": str, "success": bool, "file": str, "params": dict, "recipe": dict, "metrics": dict,
               "conditioning": dict, "generation": dict, "timings": dict, "generation_key": str, "cell_key": str}
FAILED_FIELDS = {"name": str, "success": bool, "error": str, "params": dict, "recipe": dict}


def whole(rec: Any, name: str) -> TypeGuard[dict]:
    """Whether ``rec`` is a whole record of the cell ``name``: every field its readers index, of its
    type, its picture the cell's own ``NAME.png``, its metrics numbers. Anything else (a record cut
    short, hand-edited, of another version) counts as no record: the cell is made again."""
    if not isinstance(rec, dict) or not isinstance(rec.get("success"), bool):
        return False
    fields = DONE_FIELDS if rec["success"] else FAILED_FIELDS
    if any(not isinstance(rec.get(k), kind) for k, kind in fields.items()) or rec["name"] != name:
        return False
    if rec["success"]:
        return rec["file"] == f"{name}.png" and "fingerprint" in rec and all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in rec["metrics"].values())
    return True


def _kinds(table: dict, fields: dict[str, tuple]) -> str | None:
    for k, kinds in fields.items():
        if not isinstance(table.get(k), kinds):
            return k
    return None


def plan_problem(plan: Any) -> str | None:
    """What makes ``plan`` (a ``run.json``'s content) unreadable as a run, in a few words; None when it
    is whole. The fields checked are those the report, resume and the web app read."""
    if not isinstance(plan, dict):
        return "is not a run's plan (empty, cut short or overwritten)"
    missing = _kinds(plan, {"name": (str,), "run_key": (str,), "images": (list,), "cells": (list,),
                            "config": (dict,), "prompt": (str, type(None)), "details": (dict, type(None)),
                            "grids": (list, type(None)), "sessions": (list, type(None))})
    if missing is not None:
        return f"has no valid {missing!r} ({'none' if missing not in plan else 'it is ' + _short(plan[missing])})"
    if not all(isinstance(x, dict) for x in plan.get("sessions") or []):
        return "has sessions that are not tables"
    if not all(isinstance(im, str) for im in plan["images"]):
        return "lists an image that is not a path"
    cfg = plan["config"]
    if _kinds(cfg, {"generation": (dict,), "models": (dict,)}) or _kinds(
            cfg["generation"], {k: (int,) for k in ("seed", "steps", "width", "height")}) or _kinds(
            cfg["models"], {"z_image": (str,), "vl": (str,)}):
        return "has no valid config (generation seed, steps, size; models)"
    names = set()
    for c in plan["cells"]:
        if not isinstance(c, dict) or _kinds(c, {"name": (str,), "params": (dict,), "recipe": (dict,)}):
            return "lists a cell that is not a table with a name, params and a recipe"
        if not NAME.fullmatch(c["name"]) or c["name"] in names:
            return f"lists a cell named {c['name'][:60]!r}, not a file name of its own"
        names.add(c["name"])
    for g in plan.get("grids") or []:
        if not isinstance(g, dict) or not isinstance(g.get("file"), str) or not NAME.fullmatch(g["file"]):
            return "lists a grid whose file is not a file name"
    return None


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


def _foreign_records(out: Path, cell_keys: dict[str, str]) -> list[str]:
    """Names of the records in ``out/cells`` that are not of this run's cells (``{name: cell key}``)."""
    found = []
    for p in sorted((out / "cells").glob("*.json")) if (out / "cells").is_dir() else []:
        rec = read_json(p)
        if not isinstance(rec, dict) or cell_keys.get(p.stem) != rec.get("cell_key"):
            found.append(p.stem)
    return found


def check_out(out: Path, plan_file: str = RUN_FILE, what: str = "run") -> None:
    """Refuse an output that is no place for a run (``plan_file``: trials too): a file, or a folder
    of files but no llm-dit plan or cell records (its lock and temporary files aside: a run just
    starting). Reads only, so it comes before the folder's lock is taken (and again under it, in
    :func:`prepare`); a plan that is there but damaged is :func:`prepare`'s to judge."""
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder")
    if out.is_dir() and not (out / plan_file).exists() and not (out / "cells").is_dir() and any(
            not lock.is_ours(p.name) for p in out.iterdir()):
        raise InputError(f"{out} is not empty and holds no llm-dit {what}; give a new or empty folder")


def prepare(out: Path, run_key: str, plan: dict, cell_keys: dict[str, str] | None = None) -> dict:
    """Make ``out`` ready for this run; refuse a folder that holds something else. The caller holds
    the folder's lock (:mod:`lock`): this rewrites run.json and removes temporary files.

    ``cell_keys``: ``{cell name: cell key}`` of this run; when ``run.json`` is gone or damaged, records
    that all carry this run's keys say the folder is this run's (it is resumed and ``run.json`` written
    again); a record of anything else refuses the folder. Returns the run file's content (with its
    earlier sessions when resuming)."""
    check_out(out)
    existing = read_json(out / RUN_FILE) if out.is_dir() else None
    readable = is_plan(existing)
    if is_plan(existing) and existing["run_key"] != run_key:
        if any((out / "cells").glob("*.json")):
            raise InputError(f"{out} holds a different run ({existing['name']}; {differing(existing, plan)}); give a "
                             "new --out or remove it")
        existing = None  # a run that finished no cell (it failed to start): replaced, its references too
        for ref in out.glob("reference*.png"):
            ref.unlink()
    elif not readable and ((out / RUN_FILE).exists() or (out / "cells").is_dir()):
        # run.json damaged (a power cut, an edit) or removed: this run's if every record says so
        foreign = _foreign_records(out, cell_keys or {})
        if foreign:
            state = "damaged" if (out / RUN_FILE).exists() else "missing"
            raise InputError(f"{out} holds a run whose {RUN_FILE} is {state} and whose cells ("
                             f"{', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}) are not this "
                             "command's; give a new --out, or run the command that made it")
        existing = None  # written again below; the sessions it listed are lost
    out.mkdir(parents=True, exist_ok=True)
    for tmp in out.rglob(".*.tmp"):  # left by a process killed mid-write: never trusted, now removed
        with contextlib.suppress(OSError):
            tmp.unlink()
    run = {**plan, "run_key": run_key, "sessions": (existing or {}).get("sessions") or []}
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
    if not whole(rec, name) or not rec["success"] or rec["cell_key"] != cell_key:
        return None
    return rec if png_opens(out / rec["file"]) else None


def failed_since(out: Path, name: str, cell_key: str, since: float) -> bool:
    """Whether the cell ``name`` has a failure record of this run written at or after ``since``
    (seconds since the epoch: a failure older than that is retried, as on a resume)."""
    path = record_path(out, name)
    rec = read_json(path)
    if not whole(rec, name) or rec["success"] or rec.get("cell_key") != cell_key:
        return False
    try:
        return path.stat().st_mtime >= since
    except OSError:
        return False


def write_record(out: Path, name: str, record: dict) -> None:
    write_json(record_path(out, name), record, durable=False)  # checked on resume (module docstring)


def records(out: Path, names: list[str]) -> dict[str, dict]:
    """Every whole record (:func:`whole`) among ``names`` (finished or failed)."""
    out_records = {}
    for n in names:
        rec = read_json(record_path(out, n))
        if whole(rec, n):
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


def damaged(out: Path, problem: str) -> DamagedRun:
    return DamagedRun(f"{out / RUN_FILE} {problem}; run the command that made the run again with the same --out "
                      "to resume it (its whole cells are kept), or give another folder")


def is_plan(plan: Any) -> TypeGuard[dict]:
    """Whether ``plan`` is a whole run plan (:func:`plan_problem` finds nothing)."""
    return plan_problem(plan) is None


def read_run(out: Path) -> RunFolder | None:
    """The run in ``out``; None when it holds none. A ``run.json`` that is not a whole plan
    (:func:`plan_problem`), or missing beside cell records, raises :class:`DamagedRun`; records that
    are not whole count as none."""
    if not (out / RUN_FILE).is_file():
        if (out / "cells").is_dir():  # cells without their plan: a run whose run.json was lost
            raise damaged(out, "is missing")
        return None
    plan = read_json(out / RUN_FILE)
    if not is_plan(plan):
        raise damaged(out, plan_problem(plan) or "")
    recs = records(out, [c["name"] for c in plan["cells"]])
    cells = tuple(CellState(c["name"], c["params"], c["recipe"], recs.get(c["name"])) for c in plan["cells"])
    return RunFolder(out, plan, cells, read_captions(out))


def read_trials(out: Path) -> tuple[dict, dict[str, RunFolder | None]] | None:
    """A trials folder: its plan (``trials.json``) and each trial's run by name (None: not started);
    None when ``out`` holds no readable trials plan."""
    plan = read_json(out / TRIALS_FILE) if out.is_dir() else None
    if not isinstance(plan, dict) or not isinstance(plan.get("trials"), list):
        return None
    if not all(isinstance(t, dict) and isinstance(t.get("name"), str) and NAME.fullmatch(t["name"])
               for t in plan["trials"]):  # a trial's name is a folder of ``out``: never a path
        raise DamagedRun(f"{out / TRIALS_FILE} lists a trial whose name is not a folder name; run the command "
                         "that made it again with the same --out, or give another folder")
    return plan, {t["name"]: read_run(out / t["name"]) for t in plan["trials"]}
