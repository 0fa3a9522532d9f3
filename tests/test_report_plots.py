"""The report's plots drawn by worker processes (what a GPU run does) equal those drawn in-process."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from run_args import compare_args

from llm_dit.cli import main
from llm_dit.experiments import report, report_plots

PLOTS = ("std_per_cell", "metrics", "per_dim_ratio")


@pytest.fixture(scope="module")
def run_dir(refs, tmp_path_factory):
    out = tmp_path_factory.mktemp("plots") / "r"
    assert main(compare_args("alpha_sweep", refs, out)) == 0
    return out


def pixels(out) -> dict[str, np.ndarray]:
    return {n: np.asarray(Image.open(out / "plots" / f"{n}.png").convert("RGB")) for n in PLOTS}


def test_workers_draw_the_same_plots(run_dir, monkeypatch):
    here = pixels(run_dir)
    for p in (run_dir / "plots").glob("*.png"):
        p.unlink()
    workers = report_plots.PlotWorkers(2)

    def not_here(*a):
        raise AssertionError("drawn in the parent process")

    monkeypatch.setattr(report_plots, "draw", not_here)  # the workers' own module is not patched
    try:
        report.write_report(run_dir, workers=workers)
    finally:
        workers.close()
    there = pixels(run_dir)
    assert all(np.array_equal(here[n], there[n]) for n in PLOTS)
    html = (run_dir / "report.html").read_text()
    assert html.index("std_per_cell.png") < html.index("metrics.png") < html.index("per_dim_ratio.png")


def test_closed_workers_fall_back_to_drawing_here(run_dir):
    for p in (run_dir / "plots").glob("*.png"):
        p.unlink()
    workers = report_plots.PlotWorkers(1)
    workers.close()
    report.write_report(run_dir, workers=workers)
    assert all((run_dir / "plots" / f"{n}.png").is_file() for n in PLOTS)


def test_plot_data_follow_the_records(run_dir):
    meta = report.build_metadata(run_dir)
    jobs = {kind: data for kind, _, data in report_plots.plot_jobs(run_dir, meta["results"], {})}
    done = [r for r in meta["results"] if r["status"] == "done"]
    assert jobs["std_per_cell"]["names"] == [r["name"] for r in done]
    assert jobs["std_per_cell"]["series"]["blended_std"] == [r["blended_std"] for r in done]
    assert "per_dim_ratio" not in jobs  # no statistics given


def test_a_run_with_plot_workers_leaves_none_behind(refs, tmp_path, monkeypatch):
    from llm_dit.experiments import runner

    started = []
    real = report_plots.PlotWorkers.__init__

    def spy(self, n=3):
        real(self, n)
        started.extend(self.procs)

    def not_here(*a):
        raise AssertionError("drawn in the run's own process")

    monkeypatch.setattr(runner, "plots_beside", lambda model: True)  # as on a GPU
    monkeypatch.setattr(report_plots.PlotWorkers, "__init__", spy)
    monkeypatch.setattr(report_plots, "draw", not_here)  # the workers run their own copy
    out = tmp_path / "r"
    assert main(compare_args("alpha_sweep", refs, out)) == 0
    assert all((out / "plots" / f"{n}.png").is_file() for n in PLOTS)  # so drawn by the workers
    assert len(started) == 3 and all(p.poll() is not None for p in started)  # and every worker ended


def test_a_plot_worker_draws_every_plot_without_torch(run_dir, tmp_path):
    """The workers get ready beside a GPU run and draw its plots once the last picture is made: a plot
    that imports torch there (1-2 s) keeps the report waiting (BENCHMARKS.md, section 3)."""
    import json
    import subprocess
    import sys

    meta = report.build_metadata(run_dir)
    stats = {r["name"]: s for r in meta["results"] if (s := report._stats(run_dir, r["name"]))}
    jobs = [(kind, str(tmp_path / f"{kind}.png"), data)
            for kind, _, data in report_plots.plot_jobs(run_dir, meta["results"], stats)]
    assert {kind for kind, _, _ in jobs} == set(PLOTS)
    code = ("import json, sys\nfrom llm_dit.experiments.report_plots import _ready, draw\n_ready()\n"
            "for job in json.loads(sys.stdin.read()):\n    draw(*job)\n"
            "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(jobs), capture_output=True, text=True,
                          check=True)
    assert json.loads(done.stdout) == [] and all((tmp_path / f"{n}.png").is_file() for n in PLOTS)
