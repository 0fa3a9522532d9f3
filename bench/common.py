"""What every benchmark shares: flags, the models, timing, the machine, and the result tables.

Every script runs two ways:

* on a GPU (the real measurement): random-weight models at the real sizes, built once into
  ``--models`` (default ``$LLM_DIT_BENCH_MODELS`` or ``/tmp/llm-dit-full``; about 29 GB, written in a
  minute or two on a GPU), in bfloat16 at 1024 x 1024;
* with ``--tiny``: the tiny models on the CPU at 128 x 128, a smoke run that shows the script works
  (the test suite runs it; its numbers mean nothing).

Timing: CUDA events around each call (host clock after a synchronize on the CPU), warm-up calls
first, then the median of ``--repeats`` calls. Results go to ``--out`` as ``NAME.json`` and
``NAME.md`` (the table for BENCHMARKS.md); the table is also printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

PROMPT = "A cozy wooden cabin by a frozen lake at dusk, warm light in the windows, snow on the pine trees"
HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "house.png"


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny models on the CPU: a smoke run, not a measurement")
    p.add_argument("--models", default=os.environ.get("LLM_DIT_BENCH_MODELS", "/tmp/llm-dit-full"),
                   help="folder of the full-size random-weight models (built there when missing)")
    p.add_argument("--out", default="bench-results", help="folder for NAME.json and NAME.md")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    return p


def models(args) -> Path:
    """The folder holding ``z-image/`` and ``qwen3-vl/``: the tiny models, or the full-size ones."""
    from llm_dit.models.tiny import FULL, build_tiny_models, ensure_tiny_models

    if args.tiny:
        return ensure_tiny_models()
    root = Path(args.models)
    if not (root / "qwen3-vl" / "config.json").is_file():
        t0 = time.perf_counter()
        print(f"building full-size random-weight models into {root} ...", file=sys.stderr, flush=True)
        build_tiny_models(root, FULL, device="cuda")
        torch.cuda.empty_cache()
        print(f"built in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return root


def config(args, profile: str = "default", **overrides):
    """The profile with the benchmark's models; ``--tiny``: on the CPU in float32 at 128 x 128."""
    from llm_dit.config import resolve_config

    root = models(args)
    base = {"models.z_image": str(root / "z-image"), "models.vl": str(root / "qwen3-vl"), "vl.cache_gb": 0.0}
    if args.tiny:
        base.update({"runtime.device": "cpu", "runtime.dtype": "float32", "runtime.offload": "none",
                     "generation.width": 128, "generation.height": 128, "vl.max_pixels": 65536})
    return resolve_config(profile, overrides={**base, **overrides})


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_call(fn) -> float:
    """Seconds of one call of ``fn``: CUDA events on a GPU, the host clock around a sync otherwise."""
    if torch.cuda.is_available():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def medians(fns: dict, args) -> dict[str, dict]:
    """Warm each of ``fns`` up, then time them in turns (A B A B ...) so that drift of the clock or
    the temperature hits all alike; ``{name: {"median": s, "all": [...]}}``."""
    for fn in fns.values():
        for _ in range(args.warmup):
            fn()
    sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.repeats):
        for k, fn in fns.items():
            times[k].append(time_call(fn))
    return {k: {"median": statistics.median(v), "all": [round(x, 4) for x in v]} for k, v in times.items()}


def matmul_rate() -> float | None:
    """Measured bf16 matrix-product rate in FLOP/s (8192^3, median of 20): the roof for FLOP floors."""
    if not torch.cuda.is_available():
        return None
    n = 8192
    a, b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16), torch.randn(n, n, device="cuda",
                                                                              dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    times = [time_call(lambda: a @ b) for _ in range(20)]
    return 2 * n**3 / statistics.median(times)


def count_flops(fn) -> int:
    """FLOPs of one call of ``fn`` (PyTorch's FlopCounterMode: matrix products and attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def gib(n_bytes: float) -> float:
    return round(n_bytes / 2**30, 2)


def machine(args) -> dict:
    from llm_dit.provenance import provenance

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    if torch.cuda.is_available() and torch.cuda.device_count() > 1:
        device = f"{torch.cuda.device_count()} x {device}"
    return {"device": device, "date": date.today().isoformat(), "tiny": args.tiny, **provenance()}


def write(args, name: str, title: str, header: list[str], rows: list[list], data: dict, notes: str = "") -> None:
    """``NAME.json`` (all numbers) and ``NAME.md`` (the table) under ``--out``; the table is printed."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine(args)
    command = "python bench/" + Path(sys.argv[0]).name + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    data = {"benchmark": name, "command": command, **info, **data, "table": {"header": header, "rows": rows}}
    (out / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    v = info["versions"]
    lines = [f"### {title}", "", f"`{command}` on {info['device']}, {info['date']}; torch {v['torch']}, "
             f"diffusers {v['diffusers']}, transformers {v['transformers']}" + (" (TINY SMOKE RUN)" if args.tiny
                                                                                  else ""), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    if notes:
        lines += ["", notes]
    text = "\n".join(lines) + "\n"
    (out / f"{name}.md").write_text(text)
    print(text)


def _cell(c) -> str:
    if isinstance(c, float):
        return f"{c:.3g}" if abs(c) < 1000 else f"{c:.0f}"
    return str(c)
