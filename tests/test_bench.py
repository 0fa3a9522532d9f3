"""CPU smoke runs of every benchmark script (tiny models), so that none of them can rot.

The numbers mean nothing here; what is checked is that each script runs to its table and that the
facts each one reports on the way hold on the tiny models too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def bench(name: str, tmp_path: Path) -> dict:
    proc = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--tiny", "--out", str(tmp_path),
                           "--repeats", "1", "--warmup", "1"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / f"{name}.json").read_text())
    table = (tmp_path / f"{name}.md").read_text()
    assert data["tiny"] and data["table"]["rows"] and "TINY SMOKE RUN" in table
    assert f"python bench/{name}.py --tiny" in data["command"] and data["versions"]["torch"]
    assert all(len(r) == len(data["table"]["header"]) for r in data["table"]["rows"])
    return data


def test_single_image(tmp_path):
    data = bench("single_image", tmp_path)
    assert data["same_pixels"]  # llm-dit's path gives stock diffusers' pixels
    assert data["dit_forward_flops"] > 0 and data["caption_tokens"] > 0
    assert all(v["forward_rel_error"] < 1e-4 for v in data["variants"].values())  # float32 on the CPU


def test_vl_extraction(tmp_path):
    data = bench("vl_extraction", tmp_path)
    assert data["exact"]  # the early exit keeps transformers' hidden_states[-6] exactly
    assert data["logits_shape"][-1] > 100


def test_experiment_overhead(tmp_path):
    data = bench("experiment_overhead", tmp_path)
    assert set(data["times"]) == {"bare", "sweep", "naive"}


def test_batch_throughput(tmp_path):
    data = bench("batch_throughput", tmp_path)
    assert set(data["generate_batch"]) == {"128_1", "128_2", "128_4"} and set(data["sweep"]) == {"1", "4"}


def test_memory_profiles(tmp_path):
    data = bench("memory_profiles", tmp_path)
    assert "error" not in data["results"]["default"]


def test_fp8(tmp_path):
    data = bench("fp8", tmp_path)
    shipped = data["layer_study"]["shipped FP8_LAYERS"]
    assert shipped["layers"] == 28 and shipped["compute"] == "fp8_weights"  # no FP8 products on the CPU
    assert 0 < data["variants"]["fp8_weights, eager"]["forward_rel_error"] < 0.05


@pytest.mark.timeout(600)
def test_multi_gpu(tmp_path):
    """The 1- and 2-worker sweeps (CPU processes), and a process killed mid-run: the same pictures."""
    data = bench("multi_gpu", tmp_path)
    assert set(data["wall"]) == {"1", "2"} and all(d == 0 for d in data["pixel_diff"].values())
    kill = data["killed"]  # one of two processes SIGKILLed part-way: the other finished the run alone
    assert kill["pixel_diff"] == 0 and kill["sessions"] == 1 and 2 <= kill["recorded_at_kill"] < kill["total"]
    assert len(data["per_worker"]) == 2 and data["fixed"]["to_first_picture"] > 0


def test_cli_startup(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "cli_startup.py"), "--repeats", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "cli_startup.json").read_text())
    assert [r[0] for r in data["rows"]] == ["python -c pass", "llm-dit --help", "llm-dit --version",
                                           "llm-dit experiments", "llm-dit profiles", "llm-dit config"]
    assert all(float(v) > 0 for r in data["rows"] for v in r[1:])
