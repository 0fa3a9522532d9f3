"""Multi-GPU: a 16-cell sweep on 1 GPU against 2 GPUs of one host, and resume across process counts.

The sweep: alpha (0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1) x layer (-2, -6) at 1024 x 1024, 9 steps
(16 cells, 15 pictures: both alpha-0 cells are the pure-text picture). Each run is the real command
in fresh processes:

    python -m llm_dit sweep ...                                             # 1 process, GPU 0
    accelerate launch --multi_gpu --num_processes 2 -m llm_dit sweep ...    # 2 processes, GPUs 0 and 1

Each process loads its own models; the first merges run.json, metadata.json and the report.
Every model file is read once first, so both runs load from the page cache, and a 4-cell run goes
first, so that neither timed run pays first-use costs (the first process on a machine took 3.4 s for
its Qwen3-VL pass, the later ones 0.08 s). Reported: the wall
time of each command, and the cells' time (the run's time without model loading, the slowest
process): each process loads its own models at the same time, so loading does not shrink with more
GPUs while the cells' work does. Then resume: a 2-process run killed (SIGKILL to every process)
once some cells are finished, completed by a 1-process run; every cell must exist exactly once and
the pictures must equal those of the 1-GPU run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import common
import numpy as np
from PIL import Image

ALPHAS = "0,0.15,0.3,0.45,0.6,0.75,0.9,1"


def sweep_args(args, out: Path, alphas: str = ALPHAS) -> list[str]:
    root = common.models(args)
    a = ["sweep", "--image", str(common.EXAMPLE), "--prompt", common.PROMPT, "--alphas", alphas, "--layers=-2,-6",
         "--z-image", str(root / "z-image"), "--vl-model", str(root / "qwen3-vl"), "--vqa", "off", "--no-progress",
         "--out", str(out)]
    return a + (["--profile", "tiny", "--steps", "4", "--width", "64", "--height", "64"] if args.tiny else [])


def launch(args, n: int, out: Path, wait: bool = True, alphas: str = ALPHAS):
    if n == 1:
        cmd = [sys.executable, "-m", "llm_dit"]
    elif args.tiny:  # CPU processes: torchrun (accelerate launch --cpu runs them as one)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m",
               "llm_dit"]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", f"--num_processes={n}",
               "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", "-m", "llm_dit"]
    env = {**os.environ, "LLM_DIT_CACHE": os.environ.get("LLM_DIT_CACHE", "/tmp/llm-dit-cache")}
    if n == 1 and not args.tiny:
        env["CUDA_VISIBLE_DEVICES"] = "0"
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cmd, *sweep_args(args, out, alphas)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    if not wait:
        return proc
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    return seconds, stdout


def cells_seconds(out: Path) -> float:
    """The run's time without model loading: the slowest process."""
    session = json.loads((out / "run.json").read_text())["sessions"][-1]
    parts = session.get("processes", [session])
    return max(p["seconds"] - p["stages"].get("load_vl", 0) - p["stages"].get("load_z_image", 0) for p in parts)


def session(out: Path) -> dict:
    """The run's last session in run.json: its stages, and each process's part."""
    return json.loads((out / "run.json").read_text())["sessions"][-1]


def pictures(out: Path) -> dict:
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["counts"]["done"] == 16 and len({r["name"] for r in meta["results"]}) == 16, meta["counts"]
    return {r["name"]: np.asarray(Image.open(out / r["file"]), dtype=np.int16) for r in meta["results"]}


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it (torchrun starts its workers in sessions of their own)."""
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


def read_once(root: Path) -> float:
    """Read every model file once, so that both runs load from the page cache (seconds taken)."""
    t0 = time.perf_counter()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            with open(f, "rb") as fh:
                while fh.read(1 << 26):
                    pass
    return time.perf_counter() - t0


def main() -> None:
    args = common.parser(__doc__).parse_args()
    work = Path(args.out) / "multi_gpu_runs"
    work.mkdir(parents=True, exist_ok=True)
    for d in work.iterdir():
        subprocess.run(["rm", "-rf", str(d)])
    cache_seconds = read_once(common.models(args))
    launch(args, 1, work / "warm-up", alphas="0,1")  # first-use caches (CUDA's kernel cache on disk) for both runs
    t1, _ = launch(args, 1, work / "one")
    t2, out2 = launch(args, 2, work / "two")
    assert "16 cells: 0 already done, 15 picture(s) generated, 0 failed" in out2, out2
    one, two = pictures(work / "one"), pictures(work / "two")
    diff = max(int(np.abs(one[k] - two[k]).max()) for k in one)
    c1, c2 = cells_seconds(work / "one"), cells_seconds(work / "two")

    # resume: two processes killed part-way, one process finishes
    proc = launch(args, 2, work / "resume", wait=False)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and len(list((work / "resume" / "cells").glob("*.json"))
                                                                  if (work / "resume" / "cells").is_dir() else []) < 5:
        time.sleep(0.05)
    kill_tree(proc.pid)
    proc.communicate()
    killed_at = len(list((work / "resume" / "cells").glob("*.json")))
    _, out3 = launch(args, 1, work / "resume")
    resumed = pictures(work / "resume")
    rdiff = max(int(np.abs(one[k] - resumed[k]).max()) for k in one)
    rows = [["1 process, 1 GPU", t1, c1, 1.0, 1.0, "-"],
            ["2 processes, 2 GPUs (accelerate launch)" if not args.tiny else "2 CPU processes (torchrun)", t2, c2,
             t1 / t2, c1 / c2, diff]]
    notes = (f"Resume across process counts: the 2-process run was killed with {killed_at} cell records on disk; "
             f"a 1-process run finished it (\"{[ln for ln in out3.splitlines() if 'cells:' in ln][0]}\"): 16 cells, "
             f"each once; largest pixel difference to the 1-GPU run: {rdiff}.")
    common.write(args, "multi_gpu", "Multi-GPU: a 16-cell sweep on 1 and 2 GPUs",
                 ["run", "wall seconds (command)", "seconds without model loading", "speed-up (wall)",
                  "speed-up (without loading)", "max pixel diff to 1 GPU"], rows,
                 {"wall": [t1, t2], "cells": [c1, c2], "page_cache_read_seconds": cache_seconds, "pixel_diff": diff,
                  "sessions": [session(work / "one"), session(work / "two")],
                  "resume": {"killed_with": killed_at, "pixel_diff": rdiff}}, notes)


if __name__ == "__main__":
    main()
