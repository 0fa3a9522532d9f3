"""Sweeps at scale: a 64-cell sweep on 1, 2, 4, 8 GPUs of one host, workers pulling cells from one folder.

    PYTHONPATH=src:bench python bench/multi_gpu.py [--tiny] [--gpus 1,2,4,8] [--out DIR]

The sweep: alpha (0.1 ... 0.9, 9 values) x layer (-2, -4, ..., -14, 7 values) at 1024 x 1024, 9
steps: 63 cells and the pure-text baseline, 64 pictures. Each run is the real command in a fresh
process, ``llm-dit sweep ... --workers N`` (one worker process per GPU, each pulling the next cell
none holds; ``--workers 1`` is one process), timed from the command's start to its end (the report
written). Every model file is read once first, so every run loads from the page cache, and a small
run goes first, so that none pays first-use costs.

Reported:

* per process count: the command's wall time, its speed-up over one GPU, and the largest pixel
  difference of any cell to the one-GPU run's picture;
* the fixed cost of a process, from the one-GPU run: from the command's start to its first picture
  on disk, with the run's stages (run.json), and the interpreter's imports timed alone;
* the bound that fixed cost puts on the speed-up: with ``fixed`` (the wall time less the pictures'
  time, first PNG to last plus one picture) and ``work`` (that pictures' time), N GPUs take at
  least ``fixed + work / N``;
* each worker's stages in the largest run;
* a worker killed mid-run: the same command started twice by hand (two processes, on two GPUs, or
  sharing one), a 10 s lease, one SIGKILLed once a few cells are recorded; the other makes the
  cell it held after the lease: every cell once, the pictures those of the one-GPU run.
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

ALPHAS = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"
LAYERS = "-2,-4,-6,-8,-10,-12,-14"
TINY_ALPHAS, TINY_LAYERS = "0.2,0.4,0.6", "-2,-6"  # 7 cells: a smoke run
#: The run's stages reported per worker (run.json's ``stages``).
STAGES = ["setup", "load_vl", "extract_vl", "load_z_image", "encode", "generate", "finish_cells", "wait_thread"]


def sweep_args(args, out: Path, alphas: str, layers: str) -> list[str]:
    root = common.models(args)
    a = ["sweep", "--image", str(common.EXAMPLE), "--prompt", common.PROMPT, "--alphas", alphas, f"--layers={layers}",
         "--z-image", str(root / "z-image"), "--vl-model", str(root / "qwen3-vl"), "--vqa", "off", "--no-progress",
         "--out", str(out)]
    return a + (["--profile", "tiny", "--steps", "4", "--width", "64", "--height", "64"] if args.tiny else [])


def environment(args, **extra: str) -> dict[str, str]:
    env = {**os.environ, "LLM_DIT_CACHE": os.environ.get("LLM_DIT_CACHE", "/tmp/llm-dit-cache"), **extra}
    if args.tiny:  # the same threads in every process: the CPU's sums depend on them
        env["OMP_NUM_THREADS"] = "1"
    return env


def command(args, out: Path, workers: int, alphas: str, layers: str) -> tuple[float, float, str]:
    """``llm-dit sweep ... --workers N`` in a fresh process: (wall seconds, its start as epoch seconds,
    stdout)."""
    start = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "llm_dit", *sweep_args(args, out, alphas, layers),
                           "--workers", str(workers)], capture_output=True, text=True, env=environment(args))
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"the {workers}-worker sweep failed:\n{proc.stderr[-3000:]}")
    return seconds, start, proc.stdout


def pictures(out: Path, n: int) -> dict[str, np.ndarray]:
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["counts"]["done"] == n and len({r["name"] for r in meta["results"]}) == n, meta["counts"]
    return {r["name"]: np.asarray(Image.open(out / r["file"]), dtype=np.int16) for r in meta["results"]}


def pixel_diff(a: dict, b: dict) -> int:
    return max(int(np.abs(a[k] - b[k]).max()) for k in b)


def sessions(out: Path) -> list[dict]:
    return json.loads((out / "run.json").read_text())["sessions"]


def png_times(out: Path) -> list[float]:
    """When each picture reached the disk (epoch seconds, sorted)."""
    meta = json.loads((out / "metadata.json").read_text())
    return sorted({(out / r["file"]).stat().st_mtime for r in meta["results"]})


def import_seconds() -> dict[str, float]:
    """A fresh interpreter: ``python -c pass``, and the imports a run makes before its first picture."""
    code = ("import time; t = time.perf_counter(); import llm_dit.cli.experiments, llm_dit.experiments.runner, "
            "llm_dit.generate, torch, transformers; from diffusers import ZImagePipeline; "
            "print(time.perf_counter() - t)")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    bare = time.perf_counter() - t0
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {"interpreter": round(bare, 3), "imports": round(float(out.stdout.strip()), 3)}


def fixed_cost(wall: float, start: float, out: Path) -> dict:
    """The one-GPU run's fixed cost against its pictures' time (see the module docstring)."""
    times = png_times(out)
    per_picture = (times[-1] - times[0]) / max(1, len(times) - 1)
    work = times[-1] - times[0] + per_picture
    s = sessions(out)[-1]
    return {"to_first_picture": round(times[0] - start, 3), "per_picture": round(per_picture, 3),
            "work": round(work, 3), "fixed": round(wall - work, 3), "stages": s["stages"],
            "run_seconds": s["seconds"]}


def read_once(root: Path) -> float:
    """Read every model file once, so that every run loads from the page cache (seconds taken)."""
    t0 = time.perf_counter()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            with open(f, "rb") as fh:
                while fh.read(1 << 26):
                    pass
    return time.perf_counter() - t0


def killed_worker(args, out: Path, alphas: str, layers: str, gpus: list[str], n: int) -> dict:
    """The same command started twice by hand, one process SIGKILLed once 2 cells are recorded."""
    env = environment(args, LLM_DIT_LEASE_S="10")
    procs = []
    for i in range(2):
        e = {**env, "CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} if gpus else env
        procs.append(subprocess.Popen([sys.executable, "-m", "llm_dit", *sweep_args(args, out, alphas, layers)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e))
    deadline = time.time() + 900
    while time.time() < deadline and procs[1].poll() is None and (
            len(list((out / "cells").glob("*.json"))) if (out / "cells").is_dir() else 0) < 2:
        time.sleep(0.02)
    held = [p.name.split(".", 1)[1] for p in (out / ".claims").iterdir()] if (out / ".claims").is_dir() else []
    recorded = len(list((out / "cells").glob("*.json")))
    procs[1].send_signal(signal.SIGKILL)
    procs[1].communicate()
    stdout, stderr = procs[0].communicate()
    if procs[0].returncode:
        raise SystemExit(f"the surviving process failed:\n{stderr[-3000:]}")
    left = sessions(out)
    return {"recorded_at_kill": recorded, "claims_at_kill": len(held), "total": n,
            "sessions": len(left), "pictures_by_survivor": sum(s["pictures_generated"] for s in left)}


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--gpus", default="1,2,4,8", help="the process counts to run (those beyond the visible GPUs "
                                                     "are left out; with --tiny, CPU processes)")
    p.add_argument("--no-kill", action="store_true", help="leave out the run with a worker killed")
    args = p.parse_args()
    import torch

    alphas, layers = (TINY_ALPHAS, TINY_LAYERS) if args.tiny else (ALPHAS, LAYERS)
    n_cells = len(alphas.split(",")) * len(layers.split(",")) + 1
    visible = torch.cuda.device_count()
    gpus = [str(i) for i in range(visible)]
    # on the CPU (--tiny) 1 and 2 processes: a smoke run of the pull queue, not a measurement
    counts = [int(c) for c in args.gpus.split(",") if int(c) <= (2 if args.tiny else max(1, visible))]
    work = Path(args.out) / "multi_gpu_runs"
    work.mkdir(parents=True, exist_ok=True)
    for d in work.iterdir():
        subprocess.run(["rm", "-rf", str(d)])
    cache_seconds = read_once(common.models(args))
    command(args, work / "warm-up", 1, "0.5,1", "-2")  # first-use caches (CUDA's kernel cache on disk)
    imports = import_seconds()
    walls: dict[int, float] = {}
    diffs: dict[int, int] = {}
    fixed: dict = {}
    one: dict = {}
    for n in counts:
        out = work / f"workers-{n}"
        walls[n], start, stdout = command(args, out, n, alphas, layers)
        assert f"{n_cells} cells: 0 already done, {n_cells} picture(s) generated, 0 failed" in stdout, stdout
        made = pictures(out, n_cells)
        if n == counts[0]:
            one, fixed = made, fixed_cost(walls[n], start, out)
        diffs[n] = pixel_diff(one, made)
        assert sum(s["pictures_generated"] for s in sessions(out)) == n_cells  # every cell once
    kill: dict = {}
    if not args.no_kill:
        kill = killed_worker(args, work / "killed", alphas, layers, gpus, n_cells)
        kill["pixel_diff"] = pixel_diff(one, pictures(work / "killed", n_cells))
    base = walls[counts[0]]
    bound = {n: round(base / (fixed["fixed"] + fixed["work"] / n), 2) for n in (1, 2, 4, 8)}
    rows = [[f"{n} worker(s)" + (" (CPU)" if args.tiny else ""), round(walls[n], 1), round(base / walls[n], 2),
             bound[n] if n in bound else "-", diffs[n]] for n in counts]
    biggest = counts[-1]
    per_worker = [[s["worker"], s["seconds"], s["pictures_generated"], *(s["stages"].get(k, 0) for k in STAGES)]
                  for s in sessions(work / f"workers-{biggest}")]
    notes = (f"Fixed cost (one worker): {fixed['to_first_picture']} s from the command's start to its first picture "
             f"on disk; imports alone {imports['imports']} s (the bare interpreter {imports['interpreter']} s); the "
             f"run's stages {fixed['stages']}. Pictures {fixed['per_picture']} s each, {fixed['work']} s in all; "
             f"fixed {fixed['fixed']} s of the {round(base, 1)} s. Bound on the speed-up from that fixed cost: "
             f"{bound}. "
             f"Killed worker: {kill}. Each worker of the {biggest}-worker run: {per_worker}.")
    common.write(args, "multi_gpu", f"Sweeps at scale: a {n_cells}-cell sweep, workers pulling cells",
                 ["run", "wall seconds (command to report)", "speed-up", "bound from the fixed cost",
                  "max pixel diff to 1 worker"], rows,
                 {"wall": walls, "pixel_diff": diffs, "fixed": fixed, "imports": imports, "bound": bound,
                  "page_cache_read_seconds": cache_seconds, "killed": kill, "stages": STAGES,
                  "per_worker": per_worker}, notes)


if __name__ == "__main__":
    main()
