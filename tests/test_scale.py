"""Scaling out: cells generated in batches, and runs shared by several processes (torchrun)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from run_args import PROMPT, SMALL, check_complete

from llm_dit.cli import main


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it (torchrun starts its workers in sessions of their
    own), as a power cut would."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    todo = [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def sweep_args(refs, out: Path, alphas: str = "0,0.3,0.6") -> list[str]:
    return ["sweep", "--image", refs[0], "--prompt", PROMPT, "--alphas", alphas, "--layers=-2,-6", "--out", str(out),
            *SMALL]


def pictures(out: Path) -> dict[str, np.ndarray]:
    meta = json.loads((out / "metadata.json").read_text())
    return {r["name"]: np.asarray(Image.open(out / r["file"]), dtype=np.int16) for r in meta["results"]}


def same_pictures(a: Path, b: Path) -> None:
    pa, pb = pictures(a), pictures(b)
    assert sorted(pa) == sorted(pb)
    for name in pa:  # float32 rounding of batched kernels or other thread counts, nothing more
        assert np.abs(pa[name] - pb[name]).max() <= 1, name


@pytest.fixture(scope="module")
def one_at_a_time(refs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scale") / "single"
    assert main(sweep_args(refs, out)) == 0
    return out


def test_batched_cells_equal_cells_made_one_at_a_time(refs, one_at_a_time, tmp_path, capsys):
    out = tmp_path / "batched"
    assert main([*sweep_args(refs, out), "--batch-size", "3"]) == 0
    same_pictures(one_at_a_time, out)
    meta = check_complete(out, 6)
    batches = sorted(r["timings"].get("batch", 0) for r in meta["results"] if not r["same_picture_as"])
    assert batches == [1, 1, 3, 3, 3]  # the pure-text baseline alone, then 4 VL pictures as 3 + 1
    # the batch size decides the speed, not the pictures: the same run, already finished
    run = json.loads((out / "run.json").read_text())
    assert run["run_key"] == json.loads((one_at_a_time / "run.json").read_text())["run_key"]
    capsys.readouterr()
    assert main(sweep_args(refs, out)) == 0
    assert "6 cells: 6 already done, 0 picture(s) generated" in capsys.readouterr().out


def test_a_batch_that_fails_is_made_one_picture_at_a_time(refs, one_at_a_time, tmp_path, capsys, monkeypatch):
    from llm_dit.generate import ZImage

    real = ZImage.generate_batch

    def no_room(self, conditionings, *a, **k):
        if len(conditionings) > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(self, conditionings, *a, **k)

    monkeypatch.setattr(ZImage, "generate_batch", no_room)
    out = tmp_path / "fallback"
    assert main([*sweep_args(refs, out), "--batch-size", "4"]) == 0
    assert "a batch of 4 failed (out of GPU memory" in capsys.readouterr().err
    check_complete(out, 6)
    same_pictures(one_at_a_time, out)


def torchrun(n: int, args: list[str], **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "llm_dit", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


def test_two_processes_share_the_cells_and_write_one_run_folder(refs, one_at_a_time, tmp_path):
    out = tmp_path / "two"
    proc = torchrun(2, sweep_args(refs, out))
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-2000:]
    assert stdout.count("picture(s) generated") == 1  # one summary, from the first process
    assert "6 cells: 0 already done, 6 to run on 2 processes" in stderr and "Traceback" not in stderr
    meta = check_complete(out, 6)
    parts = meta["sessions"]  # one per process: they pulled the cells from the folder, no split
    assert sorted(p["process"] for p in parts) == [0, 1] and len({p["worker"] for p in parts}) == 2
    assert sum(p["cells_run"] for p in parts) == 6 and sum(p["pictures_generated"] for p in parts) == 5
    same_pictures(one_at_a_time, out)
    # scored against the baseline the other process made, as in a single process
    assert all("ssim_text" in r["metrics"] for r in meta["results"] if not r["pure_text"])
    assert (out / "report.html").is_file() and (out / "comparison_grid.png").is_file()


@pytest.mark.reliability('faults', 'a 2-process run SIGKILLed (launcher and workers), finished by 3 processes',
                         '22 cells, each once; finished PNGs unchanged')
def test_a_killed_multi_process_run_resumes_under_another_process_count(refs, tmp_path):
    out = tmp_path / "killed"
    # 22 cells, 21 pictures; more steps than elsewhere, so that a kill can come in the middle
    args = [*sweep_args(refs, out, alphas="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1"), "--steps", "30"]
    proc = torchrun(2, args, start_new_session=True)
    deadline = time.time() + 180
    count = 0
    while count < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
        count = len(list((out / "cells").glob("*.json"))) if (out / "cells").is_dir() else 0
    kill_tree(proc.pid)  # the launcher and both workers at once, as a power cut would
    proc.communicate()
    finished = {p.stem for p in (out / "cells").glob("*.json")}
    assert 4 <= len(finished) < 22, "the kill came too late to test resuming"
    before = {n: (out / f"{n}.png").read_bytes() for n in finished}
    proc = torchrun(3, args)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    assert f"22 cells: {len(finished)} already done" in stdout
    meta = check_complete(out, 22)
    assert len(meta["sessions"]) == 3  # the killed processes left no account
    assert sum(p["cells_run"] for p in meta["sessions"]) == 22 - len(finished)
    assert all((out / f"{n}.png").read_bytes() == b for n, b in before.items())  # finished cells untouched
    proc = subprocess.run([sys.executable, "-m", "llm_dit", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "22 cells: 22 already done, 0 picture(s) generated" in proc.stdout
