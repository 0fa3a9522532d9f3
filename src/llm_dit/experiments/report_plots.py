"""The report's three plots: their data taken from a run's metadata, and drawn here or in worker
processes.

* ``std_per_cell.png``: the std (over all elements) of the text, VL and blended embedding per cell;
* ``metrics.png``: one panel per image metric (the experiment's "look at" metrics first), built around
  what the cells vary: the metric against the first numeric parameter (alpha, layer, steps, caption
  length, ...) as lines, one line per value of the other parameters; without a numeric parameter, one
  dot per cell. The text-only baseline is a dashed reference line; each panel states whether higher
  or lower is better; with several trials each point is a mean with its 95 % interval;
* ``per_dim_ratio.png``: per hidden dimension, log10(std VL / std text) and log10(std blended /
  std text) of the first 12 VL cells, the 3 largest of each labelled.

Drawing takes most of a report's time (matplotlib: about 1 s for a 13-cell run, its import
included). A run on a GPU starts :class:`PlotWorkers` beside its pictures: worker processes that
import matplotlib while the GPU works, then draw the three plots at once while the run writes the
grids. Processes, not threads: a thread drawing would hold the interpreter lock that the thread
queuing the GPU's work needs (measured: it slowed the pictures as much as it saved).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

Job = tuple[str, str, dict]  # (plot kind, file, data): plain lists and numbers, cheap to send to a process


def plot_jobs(out: Path, results: list[dict], stats: dict[str, dict], look_at: tuple[str, ...] = ()) -> list[Job]:
    """What to draw for the finished cells of ``results``; ``stats``: per-dimension std tensors of
    the cells that have them (``{"text_std", "vl_std", "blended_std"}``); ``look_at``: the metrics
    to show first."""
    from ..analysis.metric_info import METRIC_INFO

    done = [r for r in results if r["status"] == "done"]
    if not done:
        return []
    names = [r["name"] for r in done]
    plots = out / "plots"
    jobs: list[Job] = [("std_per_cell", str(plots / "std_per_cell.png"), {"names": names, "series": {
        "text_std": [r["conditioning"].get("text_std") for r in done],
        "vl_std": [r.get("vl_std") for r in done], "blended_std": [r.get("blended_std") for r in done]}})]
    keys = [k for k in look_at if any(k in r.get("metrics", {}) for r in done)]
    keys += [k for k in METRIC_INFO if k not in keys and any(k in r.get("metrics", {}) for r in done)]
    if keys:
        values = {k: {r["name"]: [r["metrics"][k], None, None] for r in done if _is_number(r["metrics"].get(k))}
                  for k in keys}
        jobs.append(metrics_job(str(plots / "metrics.png"), done, values))
    ratios: dict[str, list[list[float]]] = {}
    for name in names:
        s = stats.get(name)
        if s is None or "vl_std" not in s or len(ratios) == 12:
            continue
        text = s["text_std"].clamp_min(1e-12)
        ratios[name] = [(s[k].clamp_min(1e-12) / text).log10().tolist() for k in ("vl_std", "blended_std")]
    if ratios:
        jobs.append(("per_dim_ratio", str(plots / "per_dim_ratio.png"), {"ratios": ratios}))
    return jobs


def draw(kind: str, path: str, data: dict) -> str:
    """Draw one plot of :func:`plot_jobs` into ``path`` (in this process or a worker's)."""
    from ..analysis.plots import pyplot, save_figure

    drawers: dict[str, Callable[..., Any]] = {"std_per_cell": _std_per_cell, "metrics": _metrics,
                                              "per_dim_ratio": _per_dim_ratio}
    fig = drawers[kind](pyplot(), **data)
    return str(save_figure(fig, path, durable=False))  # a report file: made again by `llm-dit report`


def _finite(v) -> float:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else 0.0


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: Numeric parameters that make the x axis of the metrics plot, most telling first.
X_AXES = ("alpha", "layer", "hidden_layer", "steps", "caption_tokens", "budget", "token_budget", "target_std",
          "vl_intra_blend_ratio", "style_alpha", "image_layer", "text_layer", "seed")


def metrics_job(path: str, cells: list[dict], values: dict[str, dict[str, list]]) -> Job:
    """The metrics plot of ``cells`` (records: name, params, pure_text) with ``values[metric][cell] =
    [mean, low, high]`` (low/high None without intervals): its axis, lines and baseline chosen here."""
    from .cells import fmt
    from .grid import varied

    # the cells the experiment varies (an alpha-0 cell is pure text, and a point of its line); the
    # text-only baseline that a run adds has no parameters and is the dashed line
    vl = [c for c in cells if c.get("params")] or [c for c in cells if not c.get("pure_text")]
    keys = varied([c.get("params") or {} for c in vl])
    numeric = [k for k in keys if all(_is_number(c["params"][k]) for c in vl if k in (c.get("params") or {}))]
    x = next((k for k in X_AXES if k in numeric), numeric[0] if numeric else None)
    lines: dict[str, list[str]] = {}
    for c in vl:
        p = c.get("params") or {}
        label = ", ".join(f"{k} {fmt(p[k])}" for k in keys if k != x and k in p) if x and x in p else c["name"]
        lines.setdefault(label if x and x in p else "", []).append(c["name"])
    plotted = {c["name"] for c in vl}
    base = {m: next((v[c["name"]][0] for c in cells if c.get("pure_text") and c["name"] in v
                     and c["name"] not in plotted), None) for m, v in values.items()}
    xs = {c["name"]: c["params"][x] for c in vl if x and x in (c.get("params") or {})}
    return ("metrics", path, {"x": x, "xs": xs, "lines": lines, "values": values, "baseline": base,
                              "order": [c["name"] for c in vl]})


def _std_per_cell(plt, names: list[str], series: dict[str, list]):
    """Horizontal bars (the cells' names read across), the legend outside the data."""
    fig, ax = plt.subplots(figsize=(9.5, max(2.6, 0.36 * len(names) + 1.2)))
    for i, (label, vals) in enumerate(series.items()):
        ax.barh([j + (i - 1) * 0.27 for j in range(len(names))], [v or 0.0 for v in vals], height=0.27, label=label)
    finite = [v for vals in series.values() for v in vals if v]
    if finite and max(finite) / max(min(finite), 1e-12) > 50:
        ax.set_xscale("log")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("std over all elements")
    ax.set_title("embedding std per cell (text, VL, blended)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    w, h = fig.get_size_inches()
    left = 0.25 + 0.065 * max((len(n) for n in names), default=0)
    fig.subplots_adjust(left=min(0.5, left / w), right=1 - 1.4 / w, top=1 - 0.45 / h, bottom=0.55 / h)
    return fig


def _metrics(plt, x: str | None, xs: dict, lines: dict[str, list[str]], values: dict, baseline: dict,
             order: list[str]):
    """One panel per metric: lines over ``x`` (or one dot per cell), the baseline dashed; the legend
    to the right of every panel, outside the data."""
    from matplotlib.ticker import MaxNLocator

    from .report_tables import direction

    n = len(values)
    cols = 2 if n > 1 else 1
    rows = (n + cols - 1) // cols
    height = 2.8 if x else max(2.6, 0.28 * len(order) + 1.2)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols + 2.6, height * rows + 0.8), squeeze=False)
    handles: dict[str, object] = {}
    # a grid of rows x cols panels holds n metrics; the spare panel (odd n) is hidden below
    for ax, (metric, vals) in zip(axes.flat, values.items(), strict=False):
        if x:
            for name, members in lines.items():
                pts = sorted((xs[c], *vals[c]) for c in members if c in vals and c in xs)
                if not pts:
                    continue
                px, py = [p[0] for p in pts], [p[1] for p in pts]
                h = ax.plot(px, py, marker="o", markersize=6, linewidth=1.6, label=name or "cells")[0]
                err = [(p[1] - p[2], p[3] - p[1]) for p in pts if p[2] is not None]
                if len(err) == len(pts):
                    ax.errorbar(px, py, yerr=list(zip(*err, strict=True)), fmt="none", ecolor=h.get_color(), capsize=3)
                handles.setdefault(name or "cells", h)
            ax.set_xlabel(x)
        else:
            ys = list(range(len(order)))
            means = [vals[c][0] if c in vals else float("nan") for c in order]
            h = ax.plot(means, ys, "o", markersize=7, label="cells")[0]
            err = [(vals[c][0] - vals[c][1], vals[c][2] - vals[c][0]) for c in order
                   if c in vals and vals[c][1] is not None]
            if err and len(err) == len(order):
                ax.errorbar(means, ys, xerr=list(zip(*err, strict=True)), fmt="none", ecolor=h.get_color(), capsize=3)
            ax.set_yticks(ys, order if ax in axes[:, 0] else [""] * len(order), fontsize=8)
            ax.invert_yaxis()
        if baseline.get(metric) is not None:
            ref = (ax.axhline if x else ax.axvline)(baseline[metric], color="0.45", linestyle="--", linewidth=1.2,
                                                    label="text-only baseline")
            handles.setdefault("text-only baseline", ref)
        ax.set_title(f"{metric}: {direction(metric) or 'similarity to the text-only picture'}", fontsize=9)
        (ax.yaxis if x else ax.xaxis).set_major_locator(MaxNLocator(5))  # value ticks that do not touch
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if handles:
        corner = (1 - 2.4 / fig.get_figwidth(), 1 - 0.5 / fig.get_figheight())  # right of the panels
        fig.legend(list(handles.values()), list(handles), loc="upper left", bbox_to_anchor=corner, fontsize=8,
                   frameon=False)
    w, h = fig.get_size_inches()
    left = (0.25 + 0.065 * max((len(c) for c in order), default=0)) if not x else 0.7
    fig.subplots_adjust(left=min(0.45, left / w), right=1 - 2.6 / w, top=1 - 0.5 / h, bottom=0.55 / h + 0.05,
                        hspace=0.55, wspace=0.35 if x else 0.08)
    return fig


def _per_dim_ratio(plt, ratios: dict[str, list[list[float]]]):
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    for name, pair in ratios.items():
        for ax, ratio in zip((ax1, ax2), pair, strict=True):  # pair: the vl_std and blended_std ratios
            ax.plot(range(len(ratio)), ratio, ".", markersize=1.5, linestyle="none", label=name)
            for d in sorted(range(len(ratio)), key=lambda i: -abs(ratio[i]))[:3]:
                ax.annotate(str(d), (d, ratio[d]), fontsize=7)
    ax1.set_ylabel("log10(std VL / std text)")
    ax2.set_ylabel("log10(std blended / std text)")
    ax2.set_xlabel("hidden dimension")
    ax1.set_title("per-dimension std ratios (the 3 largest of each cell labelled)")
    ax1.legend(markerscale=5, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.subplots_adjust(left=0.08, right=0.78, top=0.93, bottom=0.08, hspace=0.12)
    return fig


def _ready() -> None:
    """A worker's start: matplotlib imported and its fonts loaded, so the plots later start at once."""
    from ..analysis.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.set_title("ready")
    fig.canvas.draw()
    plt.close(fig)


def _serve() -> None:
    """A worker's loop: one job per line of JSON on stdin, one line of JSON on stdout per job."""
    import json
    import sys

    _ready()
    for line in sys.stdin:
        kind, path, data = json.loads(line)
        try:
            reply = {"path": draw(kind, path, data)}
        except Exception as e:  # told to the parent, which draws it itself
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), flush=True)


class _Reply:
    """The answer a worker will give to one job (``result()`` waits for it)."""

    def __init__(self, proc):
        self.proc = proc

    def result(self) -> str:
        import json

        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("a plot worker ended")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["path"]


class PlotWorkers:
    """``n`` worker processes (``python -m llm_dit.experiments.report_plots``) that get ready at once
    and later draw :func:`plot_jobs` in parallel, one job per line of JSON. Plain subprocesses rather
    than multiprocessing: those would import the caller's main script again in every worker.
    :meth:`close` when the run ends."""

    def __init__(self, n: int = 3):
        import os
        import subprocess
        import sys

        env = dict(os.environ)  # the workers import this very llm-dit, installed or not
        src = str(Path(__file__).resolve().parents[2])  # .../src of src/llm_dit/experiments/this file
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        self.procs = [subprocess.Popen([sys.executable, "-m", "llm_dit.experiments.report_plots"], env=env,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                       text=True) for _ in range(n)]

    def submit(self, jobs: list[Job]) -> list[_Reply]:
        """Each job to the next worker in turn; each reply, in order."""
        import json

        replies = []
        for i, job in enumerate(jobs):
            proc = self.procs[i % len(self.procs)]
            assert proc.stdin is not None, "the workers are started with stdin=PIPE"
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
            replies.append(_Reply(proc))
        return replies

    def close(self) -> None:
        """End the workers now: their replies are in (or given up), and letting each interpreter shut
        down with matplotlib loaded kept the run waiting ~0.3 s on the GPU machines."""
        for proc in self.procs:
            with contextlib.suppress(OSError):
                proc.kill()
        for proc in self.procs:
            proc.wait()
            for f in (proc.stdin, proc.stdout):
                with contextlib.suppress(OSError):
                    if f is not None:  # both are pipes (see __init__)
                        f.close()


if __name__ == "__main__":
    _serve()
