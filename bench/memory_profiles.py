"""Benchmark 4: peak GPU memory and time of a whole VL experiment, per memory class (profile).

The experiment is ``vl_only_vs_qwen3`` at 1024 x 1024 (4 cells: pure Qwen3-4B text, pure VL text
tokens, pure VL full sequence, a 30/70 blend): Qwen3-VL loaded, one extraction of the reference and
prompt, Qwen3-VL freed, Z-Image loaded, the prompt encoded, 4 pictures (DiT + VAE decode), the report.
Each row runs in a fresh process (``--one``), so each peak is its own. ``torch.cuda.max_memory_allocated``
is read at the edges of each phase: the VL stage (loading, extraction), Z-Image's loading, the text
encoder's passes, the DiT's steps, the VAE's decodes. A row with a cap runs under
``torch.cuda.set_per_process_memory_fraction(cap)``: the caching allocator refuses to hold more than the
cap, so the run finishing proves the class fits its card, not only that its peak reads lower.

Seconds: the whole run from the command's start (model loading from the page cache included), and
without the model loading. Fidelity: the mean absolute difference (0..255) of each row's 4 pictures
to the ``default`` row's (bfloat16, eager).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import torch

#: (label, profile, overrides, cap GiB or None). The class rows are the shipped profiles under their
#: caps; the others show what each lever gives alone.
CASES = [
    ("default", "default", {}, None),
    ("24 GB: rtx4090", "rtx4090", {}, 18.0),
    ("16 GB: 16gb", "16gb", {}, 13.5),
    ("12 GB: 12gb", "12gb", {}, 10.0),
    ("8 GB: low_vram", "low_vram", {}, 6.0),
    ("rtx4090, offload none", "rtx4090", {"runtime.offload": "none"}, None),
    ("16gb, bf16 weights", "16gb", {"runtime.precision": "dtype"}, 13.5),
    ("low_vram, bf16 weights", "low_vram", {"runtime.precision": "dtype"}, None),
]


class Phases:
    """Peak allocated memory per phase: :meth:`mark` closes the phase running since the last mark."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self.on = torch.cuda.is_available()

    def mark(self, phase: str) -> None:
        if self.on:
            self.peaks[phase] = max(self.peaks.get(phase, 0.0), common.gib(torch.cuda.max_memory_allocated()))
            torch.cuda.reset_peak_memory_stats()

    def watch(self, module, inside: str, before: str) -> None:
        """Close ``before`` when ``module``'s forward starts and ``inside`` when it ends."""
        module.register_forward_pre_hook(lambda *a: self.mark(before))
        module.register_forward_hook(lambda *a: self.mark(inside))


def one(args, profile: str, overrides: dict, cap: float | None, out: str) -> dict:
    """Run the experiment once in this process; its peaks and times."""
    from llm_dit.experiments import runner
    from llm_dit.experiments.specs import experiment_spec

    if cap is not None and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(cap * 2**30 / torch.cuda.get_device_properties(0).total_memory)
    cfg = common.config(args, profile, **{"metrics.vqa": "off", **overrides})
    if args.tiny:  # the CPU smoke run has no memory policy
        cfg = cfg.replace(**{"runtime.offload": "none", "runtime.keep_models": "all"})
    spec, cfg = experiment_spec("vl_only_vs_qwen3", [str(common.EXAMPLE)], common.PROMPT, cfg)
    phases = Phases()
    real_extract, real_load = runner.extract, runner.load_z_image

    def extract(ctx, models, jobs, backend):  # the VL stage ends with its extraction
        result = real_extract(ctx, models, jobs, backend)
        if backend == "vl":
            phases.mark("VL stage")
        return result

    def load_z_image(ctx, models):
        model = real_load(ctx, models)
        phases.mark("Z-Image loading")
        phases.watch(model.pipe.text_encoder, "text encoder", "other")
        phases.watch(model.pipe.vae.decoder, "VAE decode", "DiT steps")
        return model

    runner.extract, runner.load_z_image = extract, load_z_image
    t0 = time.perf_counter()
    try:
        summary = runner.run(spec, cfg, out, echo=lambda m: None, progress=False)
    except Exception as e:  # out of memory under the cap, say: the peaks up to there still tell
        phases.mark("other")
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300],
                "phases_gib": phases.peaks}
    common.sync()
    seconds = time.perf_counter() - t0
    phases.mark("other")
    if summary.generated != 4 or summary.failed:
        return {"error": f"{summary.generated} pictures, failed cells {summary.failed}: {cell_errors(out)}"[:300],
                "phases_gib": phases.peaks}
    stages = summary.stages
    loading = stages.get("load_vl", 0.0) + stages.get("load_z_image", 0.0)
    peak = max(phases.peaks.values(), default=0.0)
    return {"seconds": seconds, "without_loading": seconds - loading, "stages": stages, "phases_gib": phases.peaks,
            "peak_gib": peak, "cap_gib": cap, "runtime": cfg.runtime.model_dump(mode="json")}


def cell_errors(folder: str) -> list[str]:
    """The errors the failed cells' records hold (an out-of-memory under the cap, say)."""
    found = []
    for p in Path(folder).rglob("*.json"):
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get("success") is False and rec.get("error"):
            found.append(str(rec["error"])[:160])
    return sorted(set(found))


def pictures(folder: str) -> dict[str, np.ndarray]:
    from PIL import Image

    files = [p for p in sorted(Path(folder).glob("*.png")) if not p.name.startswith(("comparison", "reference"))]
    return {p.name: np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) for p in files}


def pixel_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float | None:
    both = [k for k in a if k in b]
    return round(float(np.mean([np.abs(a[k] - b[k]).mean() for k in both])), 3) if both else None


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--cases", nargs="*", metavar="LABEL", help="measure only these rows (labels of CASES)")
    p.add_argument("--no-caps", action="store_true", help="run the class rows without their memory caps")
    p.add_argument("--one", nargs=4, metavar=("PROFILE", "OVERRIDES_JSON", "CAP", "OUT"), help=argparse_hidden())
    args = p.parse_args()
    if args.one:
        profile, overrides, cap, out = args.one
        result = one(args, profile, json.loads(overrides), None if cap == "-" else float(cap), out)
        print("RESULT " + json.dumps(result), flush=True)
        return
    common.models(args)  # built once, before the child processes
    results, folders = {}, {}
    cases = CASES[:1] if args.tiny else [c for c in CASES if not args.cases or c[0] in args.cases]
    work = Path(tempfile.mkdtemp(prefix="bench-mem-"))
    for i, (label, profile, overrides, cap) in enumerate(cases):
        folders[label] = str(work / f"case{i}")
        cap_arg = "-" if cap is None or args.no_caps else str(cap)
        cmd = [sys.executable, *sys.argv, "--one", profile, json.dumps(overrides), cap_arg, folders[label]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            results[label] = {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
        else:
            results[label] = json.loads(line[0][len("RESULT "):])
        print(label, json.dumps(results[label])[:600], flush=True)
    base = results.get("default", {})
    reference = pictures(folders["default"]) if "default" in folders else {}
    rows = []
    for label, r in results.items():
        if "error" in r:
            rows.append([label, "failed: " + r["error"][:160], *["-"] * 9, json.dumps(r.get("phases_gib"))])
            continue
        r["pixel_diff_to_default"] = pixel_diff(pictures(folders[label]), reference)
        ph = r["phases_gib"]
        cap = f"{r['cap_gib']:g}" if r["cap_gib"] else "-"
        rows.append([label, r["runtime"]["offload"], r["runtime"]["precision"], cap,
                     ph.get("VL stage", 0.0), max(ph.get("text encoder", 0.0), ph.get("Z-Image loading", 0.0)),
                     max(ph.get("DiT steps", 0.0), ph.get("VAE decode", 0.0)), r["peak_gib"], r["seconds"],
                     round(r["seconds"] / base["seconds"], 2) if base.get("seconds") else "-",
                     round(r["without_loading"] / base["without_loading"], 2) if base.get("without_loading") else "-",
                     r["pixel_diff_to_default"]])
    common.write(args, "memory_profiles", "Benchmark 4: peak GPU memory of a whole VL experiment per memory class",
                 ["row", "offload", "precision", "cap GiB", "peak GiB, VL stage", "peak GiB, loading + text encoder",
                  "peak GiB, DiT + VAE", "peak GiB", "seconds", "time / default",
                  "time / default without loading", "mean abs pixel diff to default"], rows, {"results": results})


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
