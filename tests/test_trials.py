"""Trials: the same cells over several reference images and seeds, with intervals and paired
differences (``--images``, ``--seeds``)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from itertools import combinations_with_replacement
from pathlib import Path

import numpy as np
import pytest
from oracle import check_against_single_cells
from run_args import PROMPT, SMALL, check_complete

from llm_dit.cli import main
from llm_dit.experiments.evidence import RESAMPLES, bootstrap_interval, summarize
from llm_dit.pool import ModelPool


def _exact_bootstrap(values: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Every resample of ``n`` values drawn with replacement, as (mean, probability): the multisets of
    indices, each with its multinomial probability ``n! / prod(c_i!) / n^n``."""
    n = len(values)
    means, probs = [], []
    for combo in combinations_with_replacement(range(n), n):
        counts = np.bincount(combo, minlength=n)
        means.append(sum(values[i] for i in combo) / n)
        probs.append(math.factorial(n) / math.prod(math.factorial(c) for c in counts) / n**n)
    order = np.argsort(means)
    return np.asarray(means)[order], np.cumsum(np.asarray(probs)[order])


def _quantile(means: np.ndarray, cdf: np.ndarray, q: float) -> float:
    return float(means[np.searchsorted(cdf, q)])


@pytest.mark.parametrize("values", [[0.51, 0.48, 0.62, 0.55, 0.47, 0.58], [3.0, -1.0, 2.5, 0.0, 7.0],
                                    [1.0, 1.0, 1.0, 1.0]])
def test_the_interval_is_the_bootstrap_of_the_mean(values):
    assert math.comb(2 * len(values) - 1, len(values)) < 1000  # small enough to enumerate every resample
    means, cdf = _exact_bootstrap(values)
    assert abs(cdf[-1] - 1) < 1e-12
    low, high = bootstrap_interval(values)
    # the Monte Carlo percentiles (10 000 resamples) sit inside the exact distribution's 1.5-3.5 %
    # and 96.5-98.5 % quantiles: ~6 standard errors of an empirical quantile at that sample size
    assert RESAMPLES >= 10_000
    assert _quantile(means, cdf, 0.015) <= low <= _quantile(means, cdf, 0.035)
    assert _quantile(means, cdf, 0.965) <= high <= _quantile(means, cdf, 0.985)
    s = summarize(values)
    assert s["mean"] == pytest.approx(sum(values) / len(values), abs=1e-15) and s["n"] == len(values)
    assert summarize([0.3]) == {"n": 1, "mean": 0.3, "low": None, "high": None, "values": [0.3]}


@pytest.fixture(scope="module")
def trials(refs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trials") / "t"
    house = Path(__file__).resolve().parent.parent / "examples" / "house.png"
    assert main(["compare", "--experiment", "vl_only_vs_qwen3", "--images", *refs, str(house), "--seeds", "2",
                 "--prompt", PROMPT, "--out", str(out), *SMALL]) == 0
    return out


def _records(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (folder / "cells").glob("*.json")}


def test_three_images_two_seeds_give_intervals_and_paired_differences(trials, refs):
    plan = json.loads((trials / "trials.json").read_text())
    names = [t["name"] for t in plan["trials"]]
    assert names == ["1-a_seed42", "1-a_seed43", "2-b_seed42", "2-b_seed43", "3-house_seed42", "3-house_seed43"]
    for t in plan["trials"]:  # each trial a whole run, on its image with its seed
        meta = check_complete(trials / t["name"], 4)
        assert meta["image"] == t["image"] and meta["seed"] == t["seed"]
    meta = json.loads((trials / "metadata.json").read_text())
    ev = meta["evidence"]
    assert ev["trials"] == 6 and ev["baselines"] == {c: "pure_qwen3_4b" for c in
                                                    ("pure_vl_text_tokens", "pure_vl_full_seq", "blend_30_vl_70_qwen3")}
    recs = [_records(trials / n) for n in names]
    for cell in ev["cells"]:
        for metric, s in ev["metrics"][cell].items():
            values = [r[cell]["metrics"][metric] for r in recs]
            assert s["values"] == values and s["n"] == 6 and s["mean"] == pytest.approx(np.mean(values))
            assert (s["low"], s["high"]) == bootstrap_interval(values) and s["low"] <= s["mean"] <= s["high"]
    diffs = {(d["a"], d["b"], d["metric"]): d for d in ev["differences"]}
    d = diffs[("pure_vl_full_seq", "pure_qwen3_4b", "grid_artifact")]
    paired = [r["pure_vl_full_seq"]["metrics"]["grid_artifact"] - r["pure_qwen3_4b"]["metrics"]["grid_artifact"]
              for r in recs]
    assert d["values"] == pytest.approx(paired) and d["exceeds_noise"] == (d["low"] > 0 or d["high"] < 0)
    html = (trials / "report.html").read_text()
    s = ev["metrics"]["pure_vl_text_tokens"]["ssim_text"]
    assert "Mean over 6 trials [95 % bootstrap interval]" in html
    def num(v: float, digits: int = 3) -> str:  # the report's numbers: significant digits, tiny ones in e-notation
        return f"{v:.{digits}g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.{digits - 1}e}"

    assert f"{num(s['mean'])}<br><small>[{num(s['low'])}, {num(s['high'])}]</small>" in html  # the table
    assert f"ssim_text (SSIM of pure_vl_text_tokens to pure_qwen3_4b; 1 = the same picture): {num(s['mean'])} " \
           f"[{num(s['low'])}, {num(s['high'])}]" in html  # the answer
    sign = "+" if d["mean"] >= 0 else ""
    assert f"Δ {sign}{num(d['mean'], 2)} [{num(d['low'], 2)}, {num(d['high'], 2)}]</small>" in html
    for f in ("grid_image1.png", "grid_image2.png", "grid_image3.png", "summary_grid.png", "plots/metrics.png"):
        assert (trials / f).is_file() and f in html
    for n in names:
        assert f'href="{n}/report.html"' in html


def test_trials_resume_and_report_again(trials, refs, capsys):
    house = Path(__file__).resolve().parent.parent / "examples" / "house.png"
    before = (trials / "metadata.json").read_text()
    assert main(["compare", "--experiment", "vl_only_vs_qwen3", "--images", *refs, str(house), "--seeds", "2",
                 "--prompt", PROMPT, "--out", str(trials), *SMALL]) == 0
    assert "24 cells: 24 already done, 0 picture(s) generated, 0 failed" in capsys.readouterr().out
    (trials / "report.html").unlink()
    assert main(["report", str(trials)]) == 0
    assert (trials / "report.html").is_file()
    assert json.loads((trials / "metadata.json").read_text())["evidence"] == json.loads(before)["evidence"]


def test_each_trial_equals_its_cells_made_alone(trials):
    pool = ModelPool(keep="all")
    try:
        assert check_against_single_cells(trials / "2-b_seed43", pool) == 4
    finally:
        pool.release()


def test_one_image_and_one_seed_is_a_plain_run(refs, tmp_path):
    out = tmp_path / "one"
    assert main(["compare", "--experiment", "vl_only_vs_qwen3", "--images", refs[0], "--prompt", PROMPT,
                 "--out", str(out), *SMALL]) == 0
    assert (out / "run.json").is_file() and not (out / "trials.json").exists()
    check_complete(out, 4)


@pytest.mark.parametrize("args, message", [
    (["--experiment", "multi_reference", "--images", "{a}", "{b}"], "--images runs trials of one-image runs"),
    (["--experiment", "alpha_sweep", "--image", "{a}", "--images", "{b}"], "give --image or --images, not both"),
    (["--experiment", "alpha_sweep", "--image", "{a}", "--seeds", "0"], "--seeds takes a count in 1..200"),
    (["--experiment", "alpha_sweep", "--image", "{a}", "--seeds", "x"], "--seeds takes a count or a comma list"),
    (["--experiment", "alpha_sweep", "--image", "{a}", "--seeds", "3,3"], "a seed is repeated"),
    (["--experiment", "alpha_sweep", "--images", "{d}/empty"], "holds no images"),
    (["--experiment", "alpha_sweep", "--images", "{d}/missing.png", "{a}"], "does not exist"),
])
def test_bad_trials_are_refused_in_one_line(refs, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    args = [a.format(a=refs[0], b=refs[1], d=tmp_path) for a in args]
    assert main(["compare", *args, "--prompt", PROMPT, "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_trials_do_not_go_into_a_run_folder(refs, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["sweep", "--image", refs[0], "--prompt", PROMPT, "--alphas", "0.3,0.6", "--out", str(out),
                 *SMALL]) == 0
    assert main(["sweep", "--images", *refs, "--prompt", PROMPT, "--alphas", "0.3,0.6", "--out", str(out), *SMALL]) == 2
    assert "holds a single run; give a new --out for trials" in capsys.readouterr().err


def test_two_processes_share_every_trial(refs, tmp_path):
    out = tmp_path / "two"
    args = ["sweep", "--image", refs[0], "--prompt", PROMPT, "--alphas", "0.3,0.6", "--seeds", "2", "--out", str(out),
            *SMALL]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "llm_dit", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("picture(s) generated") == 1
    for name in ("1-a_seed42", "1-a_seed43"):
        check_complete(out / name, 3)
        parts = json.loads((out / name / "run.json").read_text())["sessions"][-1]["processes"]
        assert [p["process"] for p in parts] == [0, 1]
    assert json.loads((out / "metadata.json").read_text())["evidence"]["trials"] == 2
