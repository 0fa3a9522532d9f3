"""The combined report of a trials folder (:mod:`trials`): metadata.json, grids, report.html.

Read from the folder alone (``trials.json`` and each trial's run folder), so ``llm-dit report OUT``
rebuilds it, and each trial's own report, without any model.
"""

from __future__ import annotations

import html
from pathlib import Path

from ..errors import InputError
from ..io import write_json, write_text
from . import folder
from .answers import answers
from .evidence import aggregate
from .findings import write_findings
from .grid import Panel, layout, render
from .report import _panel, build_metadata, write_report
from .report_tables import evidence_table, metric_order, warnings_block


def build_trials_metadata(out: Path) -> tuple[dict, dict[str, dict]]:
    """The combined metadata and each started trial's, by trial name (rebuilt from its folder; a
    trial not started yet is left out of the evidence and counted as pending)."""
    found = folder.read_trials(out)
    if found is None:
        raise InputError(f"{out} holds no llm-dit trials (no readable {folder.TRIALS_FILE})")
    plan, runs = found
    by_name: dict[str, dict] = {}
    trials = []
    for t in plan["trials"]:
        run = runs.get(t["name"])
        meta = build_metadata(out / t["name"], run) if run is not None else None
        trials.append({**t, "folder": t["name"], "counts": meta["counts"] if meta else None,
                       "warnings": meta["warnings"] if meta else []})
        if meta is not None:
            by_name[t["name"]] = meta
    metas = list(by_name.values())
    if not metas:
        raise InputError(f"{out}: no trial has started yet")
    evidence = aggregate(metas)
    first = metas[0]
    params = {r["name"]: r.get("params") or {} for m in metas for r in m["results"]}
    combined = {
        "experiment": plan["name"], "kind": "trials", "prompt": first["prompt"], "steps": first["steps"],
        "width": first["width"], "height": first["height"], "models": first["models"], "config": first["config"],
        "images": list(dict.fromkeys(t["image"] for t in plan["trials"])),
        "seeds": list(dict.fromkeys(t["seed"] for t in plan["trials"])),
        "trials": trials,
        "warnings": [{**w, "trial": t["name"]} for t in trials for w in t["warnings"]],
        "answers": answers(plan["name"], evidence, params),
        "evidence": evidence,
    }
    return combined, by_name


def write_trial_grids(out: Path, meta: dict, metas: dict[str, dict]) -> list[Path]:
    """``grid_imageK.png`` (the cells across, a row per seed) and ``summary_grid.png`` (a row per
    image, first seed)."""
    from PIL import Image

    from ..images import save_png

    cells = meta["evidence"]["cells"]
    by_trial = {t["name"]: t for t in meta["trials"]}
    written = []

    def grid(file: str, title: str, axis: str, rows: list[tuple[str, str]], lead: list[Panel]) -> None:
        """``rows``: (the row's value of ``axis``, trial name)."""
        placed = []
        for label, name in rows:
            recs = {r["name"]: r for r in metas[name]["results"]} if name in metas else {}
            placed += [({axis: label, "cell": c},
                        _panel(out / name, recs[c]) if c in recs else Panel(c, None, "missing")) for c in cells]
        written.append(save_png(render(layout(title, lead, placed, axis, "cell")), out / file, compress_level=1,
                                durable=False))

    for k, image in enumerate(meta["images"], 1):
        names = [t["name"] for t in meta["trials"] if t["image"] == image]
        ref = Panel(f"reference {k}", None, "missing")
        try:
            with Image.open(image) as im:
                ref = Panel(f"reference {k}", im.convert("RGB"))
        except Exception:
            pass
        grid(f"grid_image{k}.png", f"{meta['experiment']}: image {k} ({Path(image).name}), a row per seed", "seed",
             [(str(by_trial[n]["seed"]), n) for n in names], [ref])
    firsts = [next(t["name"] for t in meta["trials"] if t["image"] == im) for im in meta["images"]]
    grid("summary_grid.png", f"{meta['experiment']}: a row per image (seed {meta['seeds'][0]})", "image",
         [(f"{k} ({Path(im).name})", n) for k, (im, n) in enumerate(zip(meta["images"], firsts, strict=True), 1)], [])
    return written


def trials_summary(meta: dict) -> str:
    """What a trials page opens with: the banner, every trial's warnings (named), the answers and the
    cells over the trials (the web app's page for a trials folder shows this same HTML)."""
    from .report_html import answers_block, tiny_banner

    ev = meta["evidence"]
    return (tiny_banner(meta)
            + warnings_block([{**w, "text": f"[{w['trial']}] {w['text']}"} for w in meta["warnings"]])
            + answers_block(meta["answers"]) + "<h2>Cells over the trials</h2>"
            + evidence_table(ev, metric_order(ev, meta["experiment"])))


def write_trials_html(out: Path, meta: dict, grids: list[Path], plots: list[Path]) -> Path:
    from .report_html import CSS, JS

    e = html.escape
    ev = meta["evidence"]
    title = f"{meta['experiment']}: {meta['prompt'] or 'captions of each reference'}"
    info = {
        "trials": f"{len(meta['trials'])} ({len(meta['images'])} image(s) x {len(meta['seeds'])} seed(s)); "
                  f"{ev['trials']} with results",
        "images": ", ".join(meta["images"]),
        "seeds": ", ".join(map(str, meta["seeds"])),
        "steps / size": f"{meta['steps']} / {meta['width']}x{meta['height']}",
        "models": f"Z-Image {meta['models']['z_image']}; Qwen3-VL {meta['models']['vl']}",
    }
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{e(title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{e(title)}</h1>", trials_summary(meta),
             "<h2>How it was run</h2><dl>"]
    parts += [f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in info.items()]
    parts.append("</dl>")
    for g in grids:
        parts.append(f'<h2>{e(g.stem.replace("_", " "))}</h2><a href="{e(g.name)}"><img class=grid '
                     f'src="{e(g.name)}"></a>')
    for p in plots:
        parts.append(f'<h2>{e(p.stem)} over the trials</h2><img class=grid src="plots/{e(p.name)}">')
    parts.append("<h2>Trials</h2><ul>")
    for t in meta["trials"]:
        counts = ", ".join(f"{v} {k}" for k, v in (t["counts"] or {}).items()) or "not started"
        link = f'<a href="{e(t["folder"])}/report.html">{e(t["name"])}</a>' if t["counts"] else e(t["name"])
        parts.append(f"<li>{link}: {e(counts)}</li>")
    parts.append(f"</ul><script>{JS}</script></body></html>\n")
    return write_text(out / "report.html", "\n".join(parts), durable=False)


def write_trials_report(out: str | Path, rebuild_trials: bool = False) -> Path:
    """The combined metadata.json, grids and report.html of the trials in ``out`` (``rebuild_trials``:
    each trial's own report first, as ``llm-dit report`` does)."""
    from ..io import confined

    out = Path(out)
    with confined(out):  # whatever trials.json says, the report writes only inside the folder
        if rebuild_trials:
            found = folder.read_trials(out)
            for name, run in (found[1] if found else {}).items():
                if run is not None:
                    write_report(out / name)
        meta, by_name = build_trials_metadata(out)
        write_json(out / "metadata.json", meta, durable=False)
        grids = write_trial_grids(out, meta, by_name)
        write_findings(out, meta, meta["evidence"], "summary_grid.png")
        return write_trials_html(out, meta, grids, write_trials_plot(out, meta, next(iter(by_name.values()))))


def write_trials_plot(out: Path, meta: dict, first: dict) -> list[Path]:
    """``plots/metrics.png``: each metric's mean and 95 % interval over the trials, built around what
    the cells vary (see :mod:`report_plots`); ``first``: a trial's metadata (the cells' parameters)."""
    from .report_plots import draw, metrics_job
    from .report_tables import metric_order

    ev = meta["evidence"]
    metrics = metric_order(ev, meta["experiment"])
    if not metrics:
        return []
    values = {m: {c: [s["mean"], s["low"], s["high"]] for c, cm in ev["metrics"].items()
                  if (s := cm.get(m)) is not None} for m in metrics}
    cells = [r for r in first["results"] if r["name"] in ev["metrics"]]
    return [Path(draw(*metrics_job(str(out / "plots" / "metrics.png"), cells, values)))]
