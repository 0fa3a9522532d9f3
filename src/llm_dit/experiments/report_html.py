"""``report.html`` of one run: what a researcher reads first comes first.

Order: a banner when the pictures come from the tiny random-weight models, the comparisons that
compare nothing (:mod:`checks`), the answers to the research notes' questions (:mod:`answers`), the
cell table (the experiment's "look at" metrics first, with their direction and units; the cell name
stays in view while the table scrolls), the grids, the plots, then how the run was made.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..analysis.metric_info import METRIC_INFO
from ..io import write_text
from .presets import EXPERIMENTS
from .report_tables import direction, fmt_number, look_at_first, ranks, warnings_block

JS = """
document.querySelectorAll('table.runcells th').forEach((th, i) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const dir = th.dataset.dir = th.dataset.dir === 'asc' ? 'desc' : 'asc';
  const key = r => { const c = r.cells[i]; const t = c.dataset.v !== undefined ? c.dataset.v : c.textContent;
                     const n = parseFloat(t); return isNaN(n) ? t : n; };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
    const c = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
    return dir === 'asc' ? c : -c; }).forEach(r => body.appendChild(r));
}));
"""

#: The styles of what :func:`summary` writes (the web app's run page uses them too).
PARTS_CSS = """
table.runcells{border-collapse:collapse;font-size:12px}
table.runcells th{cursor:pointer;background:#eee;position:sticky;top:0;white-space:normal;vertical-align:bottom;
  min-width:56px;max-width:110px}
table.runcells td,table.runcells th{border:1px solid #ddd;padding:3px 5px;text-align:right}
table.runcells td{white-space:nowrap} table.runcells td.l,table.runcells td.name,table.runcells th.name{text-align:left}
table.runcells th small{font-weight:400;color:#555} table.runcells td small{color:#555}
td.failed{color:#b00} td.pending{color:#888} img.thumb{width:48px;height:48px;display:block}
td.base{color:#777;font-style:italic;text-align:center}
.warn{background:#fff4d6;border:1px solid #e0b040;padding:8px 14px;margin:12px 0}
.tiny{background:#e8eefc;border:1px solid #7d9be0;padding:8px 14px;margin:12px 0}
.answer{background:#fff;border:1px solid #bbb;border-left:5px solid #3a7;padding:8px 14px;margin:10px 0}
.answer.open{border-left-color:#c90} .answer p{margin:4px 0} .answer ul{margin:4px 0 4px 18px;padding:0}
.scroll{max-width:100%;overflow-x:auto}
td.name,th.name{position:sticky;left:0;background:#f4f4f4;text-align:left;z-index:2}
small.sig{font-weight:700;color:#064}
"""

CSS = PARTS_CSS + """
body{font-family:system-ui,sans-serif;margin:24px;background:#fafafa;color:#222;max-width:1360px}
h1{font-size:22px} h2{font-size:18px;margin-top:28px} img.grid{max-width:100%;border:1px solid #ccc}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px} dt{font-weight:600}
dd{margin:0;overflow-wrap:anywhere} .cap{max-width:900px}
"""

#: Run fields shown per cell after the metrics: (record key, header, unit).
FIELDS = (("alpha", "alpha", ""), ("hidden_layer", "VL layer", ""), ("token_selection", "tokens", ""),
          ("normalization_mode", "norm", ""), ("vl_std", "vl_std", "std"), ("blended_std", "blended_std", "std"),
          ("generation_time", "time", "s"))


def tiny_banner(meta: dict) -> str:
    """A line saying the pictures are noise, when the run used the built-in tiny models."""
    models = meta.get("config", {}).get("models", {})
    if "tiny" not in (models.get("z_image"), models.get("vl")):
        return ""
    return ("<div class=tiny><b>Tiny random-weight models.</b> These pictures come from the built-in tiny "
            "models (random weights): they are coloured noise, and every number below measures noise. "
            "The folder, grids, table and plots are those of a real run.</div>")


def precision_banner(meta: dict) -> str:
    """A line saying the DiT ran with FP8 weights, when it did (``runtime.precision``): its pictures
    differ from bfloat16 ones by more than rounding, so they compare only with runs of the same precision
    (a run folder keeps one: precision is part of its key)."""
    precision = meta.get("config", {}).get("runtime", {}).get("precision", "dtype")
    if precision == "dtype":
        return ""
    from ..models.fp8 import FIDELITY, FIDELITY_SOURCE

    f = FIDELITY.get(precision, {})
    return (f"<div class=tiny><b>FP8 DiT (precision {html.escape(precision)}).</b> Every picture here was made "
            "with the DiT's attention and feed-forward weights in float8: they differ from bfloat16 pictures by "
            f"about {f.get('pixel_diff')} grey levels on average (one DiT forward: {f.get('forward_rel_error')} "
            f"relative; {html.escape(FIDELITY_SOURCE)}). Compare them with runs of the same precision.</div>")


def answers_block(answers: list[dict]) -> str:
    if not answers:
        return ""
    e = html.escape
    parts = ["<h2>Answers</h2>"]
    for a in answers:
        branch = a["branch"] or "Not decided by these numbers"
        items = "".join(f"<li>{e(line)}</li>" for line in a["evidence"])
        parts.append(f"<div class='answer{'' if a['branch'] else ' open'}'><p><b>{e(a['question'])}</b></p>"
                     f"<p>{'Points to: ' if a['branch'] else ''}{e(branch)}</p>"
                     f"<p><small>Why: {e(a['why'])}. Evidence: {e(a['strength'])}.</small></p>"
                     f"<ul>{items}</ul></div>")
    return "".join(parts)


def _value(v: Any) -> str:
    if isinstance(v, float):
        return fmt_number(v)
    if v is None:
        return ""
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def _td(v: Any, left: bool = False, mark: str = "") -> str:
    number = isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))
    sort = f' data-v="{html.escape(str(v))}"' if number else ""
    return f'<td{sort}{" class=l" if left else ""}>{html.escape(_value(v) + mark)}</td>'


def _header(metric: str) -> str:
    what = METRIC_INFO.get(metric, (metric, None))[0]
    unit = " (dB)" if "psnr" in metric else ""
    return (f'<th title="{html.escape(what)}">{html.escape(metric)}{unit}<br><small>'
            f"{html.escape(direction(metric) or 'similarity to the baseline')}</small></th>")


def cell_table(meta: dict, link: Callable[[str], str] = str) -> str:
    """Every cell: name (kept in view), thumbnail, metrics (look-at first), parameters, fields;
    ``link(file)``: the address of a file of the run folder (relative in report.html)."""
    e = html.escape
    results = meta["results"]
    metrics = look_at_first(list(dict.fromkeys(k for r in results for k in (r.get("metrics") or {}))),
                            meta["experiment"])
    params = list(dict.fromkeys(k for r in results for k in r.get("params", {})))
    marks = {k: ranks(meta["evidence"], k) for k in metrics} if meta.get("evidence") else {}
    same = {"hidden_layer": ("layer", "hidden_layer"), "alpha": ("alpha",), "token_selection": ("tokens",
            "token_selection"), "normalization_mode": ("norm", "normalization_mode")}
    fields = [f for f in FIELDS if not set(same.get(f[0], ())) & set(params)]  # a varied parameter: once
    head = ['<th class=name>cell</th>', "<th>picture</th>", *(_header(k) for k in metrics),
            *(f"<th>{e(k)}</th>" for k in params),
            *(f"<th>{e(h)}{f'<br><small>{e(u)}</small>' if u else ''}</th>" for _, h, u in fields)]
    rows = []
    for r in results:
        base = bool(r.get("pure_text"))
        name = e(r["name"]) + (" <small>(baseline)</small>" if base else "")
        if r["status"] != "done":
            status = r["status"] if r["status"] != "failed" else f"failed: {r.get('error', '')}"
            rows.append(f"<tr><td class=name>{name}</td><td class='l {r['status']}' colspan={len(head) - 1}>"
                        f"{e(status)}</td></tr>")
            continue
        src = e(link(r["file"]))
        img = f'<a href="{src}"><img class=thumb src="{src}" loading=lazy></a>'
        cells = [f"<td class=name>{name}</td>", f"<td>{img}</td>"]
        for k in metrics:
            v = (r.get("metrics") or {}).get(k)
            best, worst = marks.get(k, (None, None))
            mark = " ★" if r["name"] == best else (" ▼" if r["name"] == worst else "")
            cells.append("<td class=base>baseline</td>" if v is None and base else _td(v, mark=mark))
        cells += ["<td class=base>baseline</td>" if base and k not in r.get("params", {}) else
                  _td(r.get("params", {}).get(k), True) for k in params]
        cells += ["<td class=base>baseline</td>" if base and r.get(k) is None else
                  _td(r.get(k), isinstance(r.get(k), str)) for k, _, _ in fields]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return ("<div class=scroll><table class=runcells><thead><tr>" + "".join(head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></div>")


def summary(meta: dict, link: Callable[[str], str] = str) -> str:
    """What a run page opens with: the banner, the warnings, the answers and the cell table (the web
    app's run page shows this same HTML)."""
    return (tiny_banner(meta) + precision_banner(meta) + warnings_block(meta.get("warnings") or [])
            + answers_block(meta.get("answers") or [])
            + "<h2>Cells</h2><p>One image and one seed: each number is one observation (★ best, ▼ worst of the "
            "VL cells where a metric has a direction). Click a column to sort; hover a metric's name for what it "
            "measures (docs/reading-results.md).</p>"
            + cell_table(meta, link))


def _runtime(rt: dict) -> str:
    return (f"dtype {rt.get('dtype', '?')}, precision {rt.get('precision', 'dtype')}, offload {rt.get('offload', '?')}"
            + (", compiled" if rt.get("compile") else ""))


def title(meta: dict) -> str:
    if meta["prompt"]:
        return f"{meta['experiment']}: {meta['prompt']}"
    caps = meta["captions"]
    return f"{meta['experiment']}: caption " + (next(iter(caps.values())) if caps else "(not written yet)")


def write_html(out: Path, meta: dict, grids: list[Path], plots: list[Path]) -> Path:
    e = html.escape
    exp = EXPERIMENTS.get(meta["experiment"])
    info = {
        "experiment": meta["experiment"] + (" (quick)" if meta["quick"] else ""),
        "what it compares": exp.summary if exp else json.dumps(meta.get("details", {})),
        "prompt": meta["prompt"] or "(captions of the reference, below)",
        "reference image(s)": ", ".join(meta["images"]),
        "seed / steps / size": f"{meta['seed']} / {meta['steps']} / {meta['width']}x{meta['height']}",
        "models": f"Z-Image {meta['models']['z_image']}; Qwen3-VL {meta['models']['vl']}",
        "precision / memory": _runtime(meta.get("config", {}).get("runtime", {})),
        "cells": ", ".join(f"{v} {k}" for k, v in meta["counts"].items()),
        "versions": ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items()),
        "git revision": meta.get("git_revision") or "",
        "metric notes": "; ".join((meta["sessions"][-1].get("metric_notes") or []) if meta["sessions"] else []),
    }
    if meta.get("details", {}).get("recipe"):
        info["set in every VL cell"] = json.dumps(meta["details"]["recipe"])
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{e(title(meta))}</title>",
             f"<style>{CSS}</style></head><body>", f"<h1>{e(title(meta))}</h1>", summary(meta)]
    for n, text in meta["captions"].items():
        parts.append(f"<h2>Caption ({e(n)} tokens)</h2><p class=cap>{e(text)}</p>")
    for g in grids:
        parts.append(f'<h2>{e(g.stem.replace("_", " "))}</h2><a href="{e(g.name)}"><img class=grid src="{e(g.name)}">'
                     "</a>")
    for p in plots:
        rel = p.relative_to(out).as_posix()
        parts.append(f'<h2>{e(p.stem.replace("_", " "))}</h2><img class=grid src="{e(rel)}">')
    parts.append("<h2>How this run was made</h2><dl>")
    parts += [f"<dt>{e(k)}</dt><dd>{e(str(v))}</dd>" for k, v in info.items()]
    parts.append(f"</dl><script>{JS}</script></body></html>\n")
    return write_text(out / "report.html", "\n".join(parts), durable=False)
