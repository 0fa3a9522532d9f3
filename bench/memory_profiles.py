"""Benchmark 4: peak GPU memory and time of a whole VL experiment, per profile.

The experiment is ``vl_only_vs_qwen3`` at 1024 x 1024 (4 cells: pure Qwen3-4B text, pure VL text
tokens, pure VL full sequence, a 30/70 blend): Qwen3-VL loaded, one extraction of the reference and
prompt, Qwen3-VL freed, Z-Image loaded, the prompt encoded, 4 pictures (DiT + VAE decode), the report.
Each profile runs in a fresh process (``--one``), so each peak is its own:
``torch.cuda.max_memory_allocated`` over the VL stage (loading, extraction) and over the Z-Image
stage (loading, encoding, generation, decoding). Seconds: the whole run from the command's start
(model loading from the page cache included), and without the model loading.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

import common
import torch

#: (label, profile, overrides) measured; the rtx4090 and low_vram rows are the shipped profiles.
CASES = [
    ("default", "default", {}),
    ("rtx4090", "rtx4090", {}),
    ("rtx4090 + offload encoder", "rtx4090", {"runtime.offload": "encoder"}),
    ("low_vram", "low_vram", {}),
]


def one(args, profile: str, overrides: dict) -> dict:
    """Run the experiment once in this process; its peaks and times."""
    from llm_dit.experiments import runner
    from llm_dit.experiments.specs import experiment_spec

    cfg = common.config(args, profile, **{"metrics.vqa": "off", **overrides})
    if args.tiny:  # the CPU smoke run has no memory policy
        cfg = cfg.replace(**{"runtime.offload": "none", "runtime.keep_models": "all"})
    spec, cfg = experiment_spec("vl_only_vs_qwen3", [str(common.EXAMPLE)], common.PROMPT, cfg)
    peaks = {}
    real_extract = runner.extract

    def extract(ctx, models, jobs, backend):  # the VL stage ends with its extraction: take its peak, start anew
        out = real_extract(ctx, models, jobs, backend)
        if backend == "vl" and torch.cuda.is_available():
            peaks["vl"] = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        return out

    runner.extract = extract
    t0 = time.perf_counter()
    summary = runner.run(spec, cfg, tempfile.mkdtemp(prefix="bench-mem-"), echo=lambda m: None, progress=False)
    common.sync()
    seconds = time.perf_counter() - t0
    assert summary.generated == 4 and not summary.failed, summary
    stages = summary.stages
    loading = stages.get("load_vl", 0.0) + stages.get("load_z_image", 0.0)
    if torch.cuda.is_available():
        peaks["z_image"] = torch.cuda.max_memory_allocated()
    return {"seconds": seconds, "without_loading": seconds - loading, "stages": stages,
            "peak_vl_gib": common.gib(peaks.get("vl", 0)), "peak_z_image_gib": common.gib(peaks.get("z_image", 0))}


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--cases", nargs="*", metavar="LABEL", help="measure only these rows (labels of CASES)")
    p.add_argument("--one", nargs=2, metavar=("PROFILE", "OVERRIDES_JSON"), help=argparse_hidden())
    args = p.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args, args.one[0], json.loads(args.one[1]))), flush=True)
        return
    common.models(args)  # built once, before the child processes
    results = {}
    cases = CASES[:1] if args.tiny else [c for c in CASES if not args.cases or c[0] in args.cases]
    for label, profile, overrides in cases:
        cmd = [sys.executable, *sys.argv, "--one", profile, json.dumps(overrides)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            results[label] = {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
            continue
        results[label] = json.loads(line[0][len("RESULT "):])
    base = results.get("default", {}).get("seconds")
    rows = []
    for label, r in results.items():
        if "error" in r:
            rows.append([label, "failed: " + r["error"][:100], "-", "-", "-", "-", "-"])
            continue
        rows.append([label, r["peak_vl_gib"], r["peak_z_image_gib"], max(r["peak_vl_gib"], r["peak_z_image_gib"]),
                     r["seconds"], round(r["seconds"] / base, 2) if base else "-", r["without_loading"]])
    common.write(args, "memory_profiles", "Benchmark 4: peak GPU memory of a whole VL experiment per profile",
                 ["profile", "peak GiB, VL stage", "peak GiB, Z-Image stage", "peak GiB", "seconds",
                  "time / default", "seconds without loading"], rows, {"results": results})


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
