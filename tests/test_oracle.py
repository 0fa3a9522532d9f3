"""The oracle of every run: each cell made again alone, through the single-cell path.

For every named experiment and for sweeps over every kind of axis, each cell is recomputed by
``generate_from_recipe`` with the cell's recipe, prompt and configuration: its own extraction, no
extraction cache, no request merging, no batching, one process. What that hands the pipeline (the
caption embedding of every step) must be bit-identical to what the run handed it for the cell, and
the picture must give the same PNG bytes (a cell made in a batch: the same pixels up to one level
on fewer than 1 % of them, the rounding of diffusers' batched kernels; its conditioning is still
bit-identical).

The digests are the oracle's own formula (tests/oracle.py), computed from what
``ZImage.generate_batch`` receives: a run whose records name one conditioning while it generates from
another fails too. The named experiments are the runs test_experiments.py checks too (one session
fixture, ``experiment_runs``, each in its quick form where it has one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from oracle import check_against_single_cells, handed_to_pipeline
from run_args import PROMPT, SMALL

from llm_dit.cli import main
from llm_dit.experiments.presets import EXPERIMENTS
from llm_dit.pool import ModelPool


@pytest.fixture(scope="module")
def pool():
    p = ModelPool(keep="all")
    yield p
    p.release()


def _run(args: list[str]) -> list[dict]:
    with handed_to_pipeline() as handed:
        assert main([*args, "--no-progress"] if "--no-progress" not in args else args) == 0
    return handed


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_named_experiment_equals_its_cells_made_alone(name, experiment_runs, pool):
    rc, out, _, err, handed = experiment_runs[name]
    assert rc == 0, err
    assert check_against_single_cells(out, pool, handed) >= 2


@pytest.fixture(scope="module")
def stats_and_adapter(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("files")
    for layer in (-2, -6):
        assert main(["stats", "reference", "--profile", "tiny", "--layer", str(layer),
                     "--out", str(d / f"ref{layer}.safetensors")]) == 0
    prompts = d / "prompts.txt"
    prompts.write_text("\n".join(f"a {c} house by a {w}" for c in ("red", "blue", "green", "tall", "small", "old")
                                 for w in ("lake", "road", "forest", "hill")) + "\n")
    assert main(["stats", "adapter", "--profile", "tiny", "--prompts", str(prompts),
                 "--out", str(d / "adapter.safetensors")]) == 0
    return {"ref-2": str(d / "ref-2.safetensors"), "ref-6": str(d / "ref-6.safetensors"),
            "adapter": str(d / "adapter.safetensors")}


def _sweeps(refs: list[str], files: dict[str, str]) -> dict[str, list[str]]:
    a, b = refs
    one = ["--image", a, "--prompt", PROMPT]
    return {
        # backends x token selections x layers, two pictures a pipeline call
        "backends": [*one, "--backends", "vl,splice,text", "--tokens", "full,image_no_markers,user_text",
                     "--layers=-2,-6", "--alphas", "0.6", "--batch-size", "2"],
        # outlier masks at a threshold that masks dimensions, normalization with reference statistics
        "masks": [*one, "--masks", "none,zero,clamp,scale,restore", "--vary", "outlier_threshold=2,10",
                  "--norms", "global,per_dim", "--vary", f"reference_stats={files['ref-6']}",
                  "--tokens", "image_no_markers", "--alphas", "1"],
        "norms": [*one, "--norms", "none,global,per_dim,hybrid,whiten,cross", "--target-stds", "text,50",
                  "--tokens", "image_only", "--alphas", "0.5", "--batch-size", "2"],
        "adapters": [*one, "--vary", f"adapter={files['adapter']},none", "--alphas", "0.3,1", "--layers=-6"],
        # a content and a style reference, style blends and their alpha
        "style": ["--image", a, "--role", "content", "--image", b, "--role", "style", "--prompt", PROMPT,
                  "--vary", "style_blend=adain_per_dim,style_mean,style_gem,style_svd", "--vary", "style_alpha=0.3,0.7",
                  "--alphas", "0.4"],
        "style_delta": [*one, "--blends", "style_delta,interpolate,adain,concat,replace", "--alphas", "0,0.5"],
        "schedules": [*one, "--schedules", "linear:0.8:0", "--schedules", "cosine:0.8:0", "--schedules",
                      "step:0.8:0:0.5", "--schedules", "constant:0.3", "--schedules", "list:0.9,0.6,0.3,0",
                      "--batch-size", "2"],
        "captions": ["--image", a, "--caption-tokens", "24", "--methods", "caption,generic", "--alphas", "0,0.5,1"],
        "multi_reference": ["--image", a, "--weight", "3", "--image", b, "--weight", "1", "--prompt", PROMPT,
                            "--budgets", "8,32", "--vary", "budget_mode=pool,interpolate,truncate"],
        "intra_dual_multi": [*one, "--intra-ratios", "0.3,0.7", "--vary", "dual_extraction=true,false",
                             "--vary", "image_layer=-2,-6", "--vary", "text_layer=-6", "--batch-size", "2"],
        "generation": [*one, "--alphas", "0.3", "--vary", "steps=3,4", "--vary", "seed=1,2", "--vary",
                       "vl_text={prompt},Describe this image."],
    }


SWEEPS = ["backends", "masks", "norms", "adapters", "style", "style_delta", "schedules", "captions",
          "multi_reference", "intra_dual_multi", "generation"]


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_kind_of_sweep_axis_equals_its_cells_made_alone(sweep, refs, stats_and_adapter, pool, tmp_path):
    out = tmp_path / sweep
    handed = _run(["sweep", *_sweeps(refs, stats_and_adapter)[sweep], "--out", str(out), *SMALL])
    assert check_against_single_cells(out, pool, handed) >= 4


def test_two_worker_processes_equal_their_cells_made_alone(refs, stats_and_adapter, pool, tmp_path):
    """Two processes (torchrun), each with one thread: the oracle runs with one thread too, so the
    same arithmetic decides every bit."""
    out = tmp_path / "two"
    args = ["sweep", *_sweeps(refs, stats_and_adapter)["backends"], "--out", str(out), *SMALL]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "llm_dit", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads((out / "run.json").read_text())
    assert sorted(p["process"] for p in run["sessions"]) == [0, 1]  # each pulled cells and wrote its session
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert check_against_single_cells(out, pool) >= 12
    finally:
        torch.set_num_threads(threads)
