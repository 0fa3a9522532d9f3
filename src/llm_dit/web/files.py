"""The runs folder as the web app sees it: safe paths, uploads, and run folders read for the page.

Everything the server writes or serves lies inside ``--runs``::

    RUNS/
      uploads/ID.png           uploaded reference images, validated and re-encoded (ID: content hash)
      generated/STAMP-JOB.png  pictures of the generate page, each with its .json sidecar
      NAME/                    run folders of sweeps and experiments (see llm_dit.experiments.folder)

A path from a request is resolved inside ``RUNS`` or not at all (:func:`inside`): absolute paths,
``..`` parts, hidden names and links that lead outside or to a hidden name give ``None``, which the routes answer 404.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from ..errors import InputError
from ..experiments import folder

UPLOADS = "uploads"
GENERATED = "generated"
_UPLOAD_ID = re.compile(r"[0-9a-f]{24}")


def inside(root: Path, rel: str) -> Path | None:
    """``root / rel`` when it is a plain path inside ``root`` (no ``..``, not absolute, no hidden
    part, no link out), else None."""
    if not rel or "\\" in rel or "\x00" in rel:
        return None
    parts = PurePosixPath(rel).parts
    if PurePosixPath(rel).is_absolute() or any(p in ("..", ".") or p.startswith(".") for p in parts):
        return None
    path = root.joinpath(*parts)
    try:
        real = path.resolve().relative_to(root.resolve())
    except (ValueError, OSError, RuntimeError):
        return None
    if any(p.startswith(".") for p in real.parts):  # a link to a hidden file (the jobs record) inside
        return None
    return path


def url(runs: Path, path: Path) -> str:
    """The URL of a file inside the runs folder."""
    return "/api/files/" + path.relative_to(runs).as_posix()


# -- uploads ----------------------------------------------------------------------------------


def save_upload(runs: Path, data: bytes, filename: str) -> dict:
    """Validate an uploaded image as the CLI validates a file (same gate, same sentences), store it
    re-encoded as PNG under ``uploads/`` and describe it. Nothing is kept when it is refused."""
    from ..images import load_image, save_png
    from ..vl.chat import check_aspect_ratio

    name = Path(filename or "upload").name
    if not data:
        raise InputError(f"the uploaded file {name!r} is empty", field="file")
    upload_id = hashlib.sha256(data).hexdigest()[:24]
    target = runs / UPLOADS / f"{upload_id}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".upload-", suffix=".tmp", dir=target.parent)  # hidden: never served
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            image = load_image(tmp, "uploaded image")
            check_aspect_ratio(image, f"uploaded image {tmp}")
        except InputError as e:
            raise InputError(str(e).replace(str(tmp), repr(name)), field="file") from None
        if not target.exists():
            save_png(image, target, {"uploaded_as": name})
    finally:
        tmp.unlink(missing_ok=True)
    return {"id": upload_id, "name": name, "width": image.width, "height": image.height,
            "url": url(runs, target)}


def upload_path(runs: Path, upload_id: object, where: str) -> str:
    """The stored file of an upload id (what a recipe's reference names on the web)."""
    if not isinstance(upload_id, str) or not _UPLOAD_ID.fullmatch(upload_id):
        raise InputError(f"{where} must be the id of an uploaded image (got {upload_id!r})", field=where)
    path = runs / UPLOADS / f"{upload_id}.png"
    if not path.is_file():
        raise InputError(f"{where}: no uploaded image has the id {upload_id}; upload it again", field=where)
    return str(path.resolve())


# -- run folders ------------------------------------------------------------------------------


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _modified(d: Path) -> float:
    """When the run folder last changed (its plan, a record)."""
    return max(d.stat().st_mtime, (d / folder.RUN_FILE).stat().st_mtime,
               (d / "cells").stat().st_mtime if (d / "cells").is_dir() else 0)


def _running(d: Path, active: set[str]) -> bool:
    """A job of this server runs the folder, or another process (a command) holds its lock."""
    from ..experiments import lock

    return d.name in active or lock.holder(d) is not None


def list_runs(runs: Path, active: set[str]) -> list[dict]:
    """Every run folder and trials folder directly under ``runs``, newest first."""
    out: list[dict] = []
    if not runs.is_dir():
        return out
    for d in runs.iterdir():
        if not d.is_dir() or d.name.startswith("."):
            continue
        try:
            if (d / folder.TRIALS_FILE).is_file():
                if (entry := _trials_entry(runs, d, active)) is not None:
                    out.append(entry)
                continue
            run = folder.read_run(d)
        except folder.DamagedRun as e:  # listed, marked, with what is wrong; the others still listed
            out.append(_damaged_entry(runs, d, str(e)))
            continue
        if run is None:
            continue
        counts, modified = run.counts(), _modified(d)
        grid = d / "comparison_grid.png"
        out.append({
            "name": d.name, "experiment": run.plan.get("name"), "prompt": run.plan.get("prompt"),
            "quick": run.plan.get("quick"), "cells": len(run.cells), "done": counts["done"],
            "failed": counts["failed"], "status": run.status(_running(d, active)),
            "modified": _iso(modified), "_t": modified,
            "grid": url(runs, grid) if grid.is_file() else None,
            "report": url(runs, d / "report.html") if (d / "report.html").is_file() else None,
        })
    out.sort(key=lambda r: r.pop("_t"), reverse=True)
    return out


def _damaged_entry(runs: Path, d: Path, problem: str) -> dict:
    """A folder that holds a run (or trials) no one can read: its name, ``damaged``, and why."""
    modified = d.stat().st_mtime
    return {"name": d.name, "experiment": "(cannot be read)", "prompt": problem, "quick": None, "cells": 0, "done": 0,
            "failed": 0, "status": "damaged", "error": problem, "modified": _iso(modified), "_t": modified,
            "grid": None, "report": None}


def _trials_entry(runs: Path, d: Path, active: set[str]) -> dict | None:
    """A trials folder (``--images`` / ``--seeds``) in the list: its trials' cells counted together
    (a trial not started yet counts no cells and keeps the folder incomplete)."""
    found = folder.read_trials(d)
    if found is None:
        return None
    plan, trials = found
    started = [t for t in trials.values() if t is not None]
    counts = {s: sum(t.counts()[s] for t in started) for s in folder.CELL_STATUSES}
    if len(started) < len(plan["trials"]):
        counts["pending"] += 1  # cells not planned yet
    modified = (d / folder.TRIALS_FILE).stat().st_mtime
    grid = d / "summary_grid.png"
    return {"name": d.name, "experiment": f"{plan.get('name')} ({len(plan['trials'])} trials)",
            "prompt": started[-1].plan.get("prompt") if started else None, "quick": None,
            "cells": sum(len(t.cells) for t in started), "done": counts["done"], "failed": counts["failed"],
            "status": folder.run_status(counts, _running(d, active)),
            "modified": _iso(modified), "_t": modified, "grid": url(runs, grid) if grid.is_file() else None,
            "report": url(runs, d / "report.html") if (d / "report.html").is_file() else None}


def _trials_detail(runs: Path, d: Path, name: str, active: set[str]) -> dict:
    """A trials folder's page: its summary (the trials report's), grids and plot; no cells of its own."""
    from ..errors import LlmDitError
    from ..experiments.report_html import PARTS_CSS
    from ..experiments.trials_report import build_trials_metadata, trials_summary

    entry = _trials_entry(runs, d, active) or {}
    try:
        meta = build_trials_metadata(d)[0]
        summary = f"<style>{PARTS_CSS}</style>" + trials_summary(meta)
    except (LlmDitError, OSError, KeyError, TypeError, ValueError):
        summary = ""
    grids = [p for p in [d / "summary_grid.png", *sorted(d.glob("grid_image*.png"))] if p.is_file()]
    plots = [p for p in [d / "plots" / "metrics.png"] if p.is_file()]
    return {"name": name, "kind": "trials", "experiment": entry.get("experiment"), "prompt": entry.get("prompt"),
            "quick": None, "status": entry.get("status", "incomplete"), "cells": [], "summary": summary,
            "grids": [url(runs, p) for p in grids], "plots": [url(runs, p) for p in plots], "references": [],
            "report": url(runs, d / "report.html") if (d / "report.html").is_file() else None,
            "metadata": url(runs, d / "metadata.json") if (d / "metadata.json").is_file() else None,
            "captions": {}, "details": {}, "config": None, "sessions": []}


def _summary(runs: Path, d: Path, run: folder.RunFolder) -> str:
    """The run's warnings, answers and cell table as its report shows them (the same reader and the
    same HTML), or "" when the folder cannot be read as a run yet."""
    from ..errors import LlmDitError
    from ..experiments.report import build_metadata
    from ..experiments.report_html import PARTS_CSS, summary

    try:
        return f"<style>{PARTS_CSS}</style>" + summary(build_metadata(d, run), lambda f: url(runs, d / f))
    except (LlmDitError, OSError, KeyError, TypeError, ValueError):
        return ""


def run_detail(runs: Path, name: str, active: set[str]) -> dict | None:
    """What the run page shows: the plan, every cell with its record, grids, plots, report."""
    d = inside(runs, name)
    if d is None or "/" in name or not d.is_dir():
        return None
    try:
        if (d / folder.TRIALS_FILE).is_file():
            return _trials_detail(runs, d, name, active)
        run = folder.read_run(d)
    except folder.DamagedRun as e:
        entry = {k: v for k, v in _damaged_entry(runs, d, str(e)).items() if k != "_t"}
        return {**entry, "kind": "run", "summary": "", "grids": [], "plots": [],
                "references": [], "metadata": None, "captions": {}, "details": {}, "config": None,
                "sessions": [], "cells": []}
    if run is None:
        return None
    cells = []
    for c in run.cells:
        png = d / f"{c.name}.png"
        cells.append({"name": c.name, "params": c.params, "status": c.status,
                      "image": url(runs, png) if c.status == "done" and png.is_file() else None,
                      "error": c.record.get("error") if c.record else None, "record": c.record})
    grids = sorted(p for p in d.glob("*.png") if p.name == "comparison_grid.png" or p.name.startswith("grid_"))
    plots = sorted((d / "plots").glob("*.png")) if (d / "plots").is_dir() else []
    refs = sorted(d.glob("reference*.png"))
    plan = run.plan
    return {
        "summary": _summary(runs, d, run),
        "name": name, "experiment": plan.get("name"), "prompt": plan.get("prompt"), "quick": plan.get("quick"),
        "status": run.status(_running(d, active)),
        "cells": cells, "grids": [url(runs, p) for p in sorted(grids, key=lambda p: p.name != "comparison_grid.png")],
        "plots": [url(runs, p) for p in plots], "references": [url(runs, p) for p in refs],
        "report": url(runs, d / "report.html") if (d / "report.html").is_file() else None,
        "metadata": url(runs, d / "metadata.json") if (d / "metadata.json").is_file() else None,
        "captions": run.captions, "details": plan.get("details", {}), "config": plan.get("config"),
        "sessions": plan.get("sessions", []),
    }
