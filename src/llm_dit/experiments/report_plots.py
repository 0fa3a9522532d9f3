"""The report's three plots: their data taken from a run's metadata, and drawn here or in worker
processes.

* ``std_per_cell.png``: the std (over all elements) of the text, VL and blended embedding per cell;
* ``metrics.png``: one bar chart per image metric, per cell;
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
from pathlib import Path

Job = tuple[str, str, dict]  # (plot kind, file, data): plain lists and numbers, cheap to send to a process


def plot_jobs(out: Path, results: list[dict], stats: dict[str, dict]) -> list[Job]:
    """What to draw for the finished cells of ``results``; ``stats``: per-dimension std tensors of
    the cells that have them (``{"text_std", "vl_std", "blended_std"}``)."""
    from ..analysis.metrics import METRIC_INFO

    done = [r for r in results if r["status"] == "done"]
    if not done:
        return []
    names = [r["name"] for r in done]
    plots = out / "plots"
    jobs: list[Job] = [("std_per_cell", str(plots / "std_per_cell.png"), {"names": names, "series": {
        "text_std": [r["conditioning"].get("text_std") for r in done],
        "vl_std": [r.get("vl_std") for r in done], "blended_std": [r.get("blended_std") for r in done]}})]
    keys = [k for k in METRIC_INFO if any(k in r.get("metrics", {}) for r in done)]
    if keys:
        values = {k: [_finite(r.get("metrics", {}).get(k)) for r in done] for k in keys}
        jobs.append(("metrics", str(plots / "metrics.png"), {"names": names, "values": values,
                                                             "info": {k: METRIC_INFO[k] for k in keys}}))
    ratios = {}
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

    fig = {"std_per_cell": _std_per_cell, "metrics": _metrics, "per_dim_ratio": _per_dim_ratio}[kind](pyplot(),
                                                                                                     **data)
    return str(save_figure(fig, path, durable=False))  # a report file: made again by `llm-dit report`


def _finite(v) -> float:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else 0.0


def _margins(fig, names: list[str], hspace: float = 0.45) -> None:
    """Room for the axis labels and for ``names`` as x tick labels turned 60 degrees (fixed arithmetic
    instead of ``tight_layout``, which measures every text and took a third of the report's time)."""
    w, h = fig.get_size_inches()
    below = 0.45 + 0.058 * max((len(n) for n in names), default=0)  # inches: 8-pt characters at 60 degrees
    fig.subplots_adjust(left=0.9 / w, right=1 - 0.2 / w, top=1 - 0.45 / h, bottom=min(0.6, below / h), hspace=hspace)


def _width(n: int) -> float:
    return max(7.0, 0.45 * n + 2)


def _std_per_cell(plt, names: list[str], series: dict[str, list]):
    fig, ax = plt.subplots(figsize=(_width(len(names)), 4.5))
    for i, (label, vals) in enumerate(series.items()):
        ax.bar([j + (i - 1) * 0.27 for j in range(len(names))], [v or 0.0 for v in vals], width=0.27, label=label)
    finite = [v for vals in series.values() for v in vals if v]
    if finite and max(finite) / max(min(finite), 1e-12) > 50:
        ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("std over all elements")
    ax.set_title("embedding std per cell")
    ax.legend()
    _margins(fig, names)
    return fig


def _metrics(plt, names: list[str], values: dict[str, list[float]], info: dict[str, tuple[str, bool]]):
    fig, axes = plt.subplots(len(values), 1, figsize=(_width(len(names)), 2.3 * len(values) + 1), sharex=True,
                             squeeze=False)
    for ax, (k, vals) in zip(axes[:, 0], values.items()):
        ax.bar(range(len(names)), vals)
        label, higher = info[k]
        ax.set_ylabel(k, fontsize=8)
        ax.set_title(f"{label} ({'higher' if higher else 'lower'} = closer)", fontsize=9)
    axes[-1, 0].set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    _margins(fig, names)
    return fig


def _per_dim_ratio(plt, ratios: dict[str, list[list[float]]]):
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    for name, pair in ratios.items():
        for ax, ratio in zip((ax1, ax2), pair):
            ax.plot(range(len(ratio)), ratio, ".", markersize=1.5, linestyle="none", label=name)
            for d in sorted(range(len(ratio)), key=lambda i: -abs(ratio[i]))[:3]:
                ax.annotate(str(d), (d, ratio[d]), fontsize=7)
    ax1.set_ylabel("log10(std VL / std text)")
    ax2.set_ylabel("log10(std blended / std text)")
    ax2.set_xlabel("hidden dimension")
    ax1.set_title("per-dimension std ratios (the 3 largest of each cell labelled)")
    ax1.legend(markerscale=5, fontsize=7, ncol=3)
    _margins(fig, [], hspace=0.12)
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

        import llm_dit

        env = dict(os.environ)  # the workers import this very llm-dit, installed or not
        src = str(Path(llm_dit.__file__).resolve().parents[1])
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
                    f.close()


if __name__ == "__main__":
    _serve()
