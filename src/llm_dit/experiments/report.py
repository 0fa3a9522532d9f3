"""From a run folder's records to what a researcher reads: metadata.json, grids, plots, report.html.

Everything here reads only the folder (``run.json``, ``cells/*.json``, ``stats/*``, the PNGs), so
``llm-dit report DIR`` rebuilds it for a finished, partial or interrupted run without any model.
``report.html`` refers to the images by relative paths: it opens from disk, anywhere the folder goes.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import write_json, write_text
from . import folder
from .cells import fmt
from .grid import Panel, layout, render
from .presets import EXPERIMENTS, GridSpec
from .report_tables import warnings_block

SEED_FIELDS = ("vl_shape", "vl_std", "token_selection", "normalization_mode", "blended_std", "generation_time",
               "alpha", "hidden_layer")


def _model(spec: str, kind: str) -> str:
    from ..models.loading import resolve_model_path

    try:
        return resolve_model_path(spec, kind)
    except Exception:
        return spec


#: The fields of run.json's plan (besides the config) that metadata.json repeats, so that it alone
#: re-runs the run (:func:`~llm_dit.experiments.specs.spec_from_metadata`).
PLAN_FIELDS = ("name", "quick", "images", "prompt", "given_caption", "details", "cells", "grids")


def build_metadata(out: Path) -> dict:
    """The run-level fields and one entry per planned cell (``status``: done, failed or pending)."""
    run = folder.read_json(out / folder.RUN_FILE)
    if not isinstance(run, dict) or "cells" not in run:
        raise InputError(f"{out} holds no llm-dit run (no readable {folder.RUN_FILE})")
    cfg = run["config"]
    g = cfg["generation"]
    recs = folder.records(out, [c["name"] for c in run["cells"]])
    results = []
    for c in run["cells"]:
        rec = recs.get(c["name"])
        if rec is None:
            results.append({"name": c["name"], "status": "pending", "success": None, "params": c["params"],
                            "recipe": c["recipe"]})
        else:
            results.append({**rec, "status": "done" if rec.get("success") else "failed"})
    captions = {}
    for p in sorted((out / "captions").glob("caption*.txt")):
        captions[p.stem.removeprefix("caption")] = p.read_text(encoding="utf-8").strip()
    sessions = run.get("sessions", [])
    last = sessions[-1] if sessions else {}
    counts = {s: sum(r["status"] == s for r in results) for s in ("done", "failed", "pending")}
    from .checks import degenerate

    return {
        "experiment": run["name"],
        "quick": run.get("quick", False),
        "image": run["images"][0] if run["images"] else None,
        "images": run["images"],
        "prompt": run["prompt"],
        "captions": captions,
        "seed": g["seed"],
        "steps": g["steps"],
        "width": g["width"],
        "height": g["height"],
        "models": {"z_image": _model(cfg["models"]["z_image"], "z_image"), "vl": _model(cfg["models"]["vl"], "vl")},
        "versions": last.get("versions"),
        "git_revision": last.get("git_revision"),
        "config": cfg,
        "details": run.get("details", {}),
        # what `llm-dit compare --from metadata.json` re-runs: run.json's plan, the config above aside
        "plan": {k: run.get(k) for k in PLAN_FIELDS},
        "run_key": run["run_key"],
        "sessions": sessions,
        "counts": counts,
        "warnings": degenerate(results),  # comparisons that compare nothing (see checks.py)
        "results": results,
    }


def _matches(params: dict, where: dict) -> bool:
    return all(k in params and fmt(params[k]) == fmt(v) for k, v in where.items())


def _panel(out: Path, r: dict) -> Panel:
    from PIL import Image

    if r["status"] == "done":
        try:
            with Image.open(out / r["file"]) as im:
                return Panel(r["name"], im.convert("RGB"))
        except Exception:
            return Panel(r["name"], None, "unreadable")
    return Panel(r["name"], None, r["status"])


def _title(meta: dict) -> str:
    if meta["prompt"]:
        return f"{meta['experiment']}: {meta['prompt']}"
    caps = meta["captions"]
    return f"{meta['experiment']}: caption " + (next(iter(caps.values())) if caps else "(not written yet)")


def write_grids(out: Path, meta: dict, specs: list[GridSpec], thumbnails: dict | None = None) -> list[Path]:
    """``comparison_grid.png`` and one grid per spec; ``thumbnails``: ``{cell: grid.thumbnail(picture)}``
    made while the run wrote its cells (the others are read from their PNGs)."""
    from PIL import Image

    from ..images import save_png

    thumbnails = thumbnails or {}
    panels = {r["name"]: Panel(r["name"], thumbnails[r["name"]]) if r["status"] == "done" and r["name"] in thumbnails
              else _panel(out, r) for r in meta["results"]}  # each picture read once, for every grid
    lead = []
    for i in range(len(meta["images"])):
        p = out / folder.reference_name(i)
        if p.is_file():
            with Image.open(p) as im:
                lead.append(Panel("reference" if i == 0 else f"reference {i + 1}", im.convert("RGB")))
    written = []
    for spec in [GridSpec("comparison_grid.png"), *specs]:
        cells = [(r["params"], panels[r["name"]]) for r in meta["results"] if _matches(r["params"], spec.where)]
        if not cells:
            continue
        title = _title(meta) + (f"  [{spec.title}]" if spec.title else "")
        grid = render(layout(title, lead, cells, spec.rows, spec.cols))
        # written last, at every run's end; like every report file, made again by `llm-dit report DIR`
        written.append(save_png(grid, out / spec.file, compress_level=1, durable=False))
    return written


# -- plots ------------------------------------------------------------------------------------------


def _stats(out: Path, name: str) -> dict | None:
    from ..io import load_tensors

    p = out / "stats" / f"{name}.safetensors"
    if not p.is_file():
        return None
    try:
        return load_tensors(p, "llm_dit_cell_stats", "cell statistics")[1]
    except InputError:
        return None


def _start_plots(out: Path, meta: dict, workers) -> tuple[list, list]:
    """The report's plots (see :mod:`report_plots`) handed to ``workers``
    (:class:`report_plots.PlotWorkers`) when given: ``(jobs, replies)``; :func:`_collect` waits."""
    from .report_plots import plot_jobs

    stats = {r["name"]: s for r in meta["results"] if r["status"] == "done" and (s := _stats(out, r["name"]))}
    jobs = plot_jobs(out, meta["results"], stats)
    try:
        return jobs, workers.submit(jobs) if workers is not None else []
    except Exception:  # workers shut down or broken: drawn here
        return jobs, []


def _collect(started: tuple[list, list]) -> list[Path]:
    """The plots' files; a plot no worker drew (none given, or one that failed or died) drawn here."""
    from .report_plots import draw

    jobs, replies = started
    paths = []
    for i, job in enumerate(jobs):
        try:
            path = replies[i].result() if replies else draw(*job)
        except Exception:
            path = draw(*job)
        paths.append(Path(path))
    return paths


# -- html -------------------------------------------------------------------------------------------

_JS = """
document.querySelectorAll('table.cells th').forEach((th, i) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const dir = th.dataset.dir = th.dataset.dir === 'asc' ? 'desc' : 'asc';
  const key = r => { const c = r.cells[i]; const t = c.dataset.v !== undefined ? c.dataset.v : c.textContent;
                     const n = parseFloat(t); return isNaN(n) ? t : n; };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
    const c = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
    return dir === 'asc' ? c : -c; }).forEach(r => body.appendChild(r));
}));
"""

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;background:#fafafa;color:#222}
h1{font-size:22px} h2{font-size:18px;margin-top:28px} img.grid{max-width:100%;border:1px solid #ccc}
table.cells{border-collapse:collapse;font-size:13px} table.cells th{cursor:pointer;background:#eee;position:sticky;top:0}
table.cells td,table.cells th{border:1px solid #ddd;padding:3px 6px;text-align:right;white-space:nowrap}
table.cells td.l{text-align:left} .failed{color:#b00} .pending{color:#888} img.thumb{width:64px;height:64px}
.warn{background:#fff4d6;border:1px solid #e0b040;padding:8px 14px;margin:12px 0;max-width:1100px}
.scroll{max-width:100%;overflow-x:auto} td.name,th.name{position:sticky;left:0;background:#f4f4f4;text-align:left;z-index:1}
small.sig{font-weight:700;color:#064} table.cells td small{color:#555}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px} dt{font-weight:600} .cap{max-width:900px}
"""


def _num(v: Any) -> str:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.4g}"
    if v is None:
        return ""
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def _td(v: Any, left: bool = False) -> str:
    sort = f' data-v="{html.escape(str(v))}"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
    return f'<td{sort}{" class=l" if left else ""}>{html.escape(_num(v))}</td>'


def write_html(out: Path, meta: dict, grids: list[Path], plots: list[Path]) -> Path:
    e = html.escape
    results = meta["results"]
    param_keys = list(dict.fromkeys(k for r in results for k in r.get("params", {})))
    metric_keys = list(dict.fromkeys(k for r in results for k in r.get("metrics", {}) or {}))
    head = ["cell", "image", "status", *param_keys, *SEED_FIELDS[1:], *metric_keys]
    rows = []
    for r in results:
        img = (f'<a href="{e(r["file"])}"><img class=thumb src="{e(r["file"])}" loading=lazy></a>'
               if r["status"] == "done" else "")
        status = r["status"] if r["status"] != "failed" else f"failed: {r.get('error', '')}"
        cells = [f'<td class=l>{e(r["name"])}</td>', f"<td>{img}</td>",
                 f'<td class="l {r["status"]}">{e(status)}</td>']
        cells += [_td(r.get("params", {}).get(k), True) for k in param_keys]
        cells += [_td(r.get(k), k in ("token_selection", "normalization_mode")) for k in SEED_FIELDS[1:]]
        cells += [_td((r.get("metrics") or {}).get(k)) for k in metric_keys]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    exp = EXPERIMENTS.get(meta["experiment"])
    info = {
        "experiment": meta["experiment"] + (" (quick)" if meta["quick"] else ""),
        "what it compares": exp.summary if exp else json.dumps(meta.get("details", {})),
        "prompt": meta["prompt"] or "(captions of the reference, below)",
        "reference image(s)": ", ".join(meta["images"]),
        "seed / steps / size": f"{meta['seed']} / {meta['steps']} / {meta['width']}x{meta['height']}",
        "models": f"Z-Image {meta['models']['z_image']}; Qwen3-VL {meta['models']['vl']}",
        "cells": ", ".join(f"{v} {k}" for k, v in meta["counts"].items()),
        "versions": ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items()),
        "git revision": meta.get("git_revision") or "",
        "metric notes": "; ".join((meta["sessions"][-1].get("metric_notes") or []) if meta["sessions"] else []),
    }
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{e(_title(meta))}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(_title(meta))}</h1>"]
    parts.append(warnings_block(meta.get("warnings") or []))
    parts.append("<dl>")
    parts += [f"<dt>{e(k)}</dt><dd>{e(str(v))}</dd>" for k, v in info.items()]
    parts.append("</dl>")
    for n, text in meta["captions"].items():
        parts.append(f"<h2>Caption ({e(n)} tokens)</h2><p class=cap>{e(text)}</p>")
    for g in grids:
        parts.append(f'<h2>{e(g.stem.replace("_", " "))}</h2><a href="{e(g.name)}"><img class=grid src="{e(g.name)}">'
                     "</a>")
    parts.append("<h2>Cells</h2><p>Click a column to sort. Metrics: see the README, 'How to read a run folder'.</p>")
    parts.append('<table class=cells><thead><tr>' + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>")
    parts += rows
    parts.append("</tbody></table>")
    for p in plots:
        rel = p.relative_to(out).as_posix()
        parts.append(f'<h2>{e(p.stem.replace("_", " "))}</h2><img class=grid src="{e(rel)}">')
    parts.append(f"<script>{_JS}</script></body></html>\n")
    return write_text(out / "report.html", "\n".join(parts), durable=False)


def write_report(out: str | Path, thumbnails: dict | None = None, workers=None) -> Path:
    """metadata.json, the grids, the plots and report.html of the run in ``out`` (``thumbnails``: see
    :func:`write_grids`; ``workers``: see :func:`_start_plots`; they draw while the grids are written)."""
    out = Path(out)
    meta = build_metadata(out)
    write_json(out / "metadata.json", meta, durable=False)
    specs = [GridSpec(**g) for g in meta["plan"]["grids"] or []]
    plots = _start_plots(out, meta, workers)
    grids = write_grids(out, meta, specs, thumbnails)
    plots = _collect(plots)
    return write_html(out, meta, grids, plots)
