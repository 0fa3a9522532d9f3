"""Benchmark 3: a 12-cell experiment (alpha x layer sweep) end to end, from loaded models.

The sweep's 12 VL cells come with their pure-text baseline (a sweep adds it): 13 pictures.

* **13 bare generations**: ``ZImage.generate`` 13 times on one ready conditioning of the
  cells' length: the work no runner can avoid;
* **llm-dit sweep**: the runner on the same loaded models (a :class:`ModelPool`): one Qwen3-VL
  forward pass for all cells (the layers of one chat are read together), one text encoding,
  then per cell the blend, the picture, its metrics (SSIM, colour, grid artifact; VQA off), PNG,
  record and statistics, and at the end metadata.json, the grids, the plots and report.html.
  Target: <= 5 % over the bare generations;
* **naive loop** (as the upstream research code did): per cell, extract + encode + blend + generate
  (``generate_from_recipe`` on the loaded models, extraction cache off).
"""

from __future__ import annotations

import gc
import json
import shutil
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import common


class Inline(futures.Executor):
    """An executor that runs each task at once on the calling thread (the diagnostic variant)."""

    def __init__(self, *a, **k):
        pass

    def submit(self, fn, *args, **kwargs):
        f = futures.Future()
        f.set_result(fn(*args, **kwargs))
        return f


ALPHAS = [0.1, 0.25, 0.4, 0.55, 0.7, 0.85]
LAYERS = [-2, -6]


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--profile", action="store_true", help="also print a cProfile of one sweep's main thread")
    p.add_argument("--diagnostics", action="store_true",
                   help="also time the sweep with cells finished inline, and with a 1 ms GIL switch interval")
    args = p.parse_args()
    from llm_dit.conditioning.recipe import Recipe
    from llm_dit.conditioning.run import generate_from_recipe
    from llm_dit.experiments.runner import run
    from llm_dit.experiments.specs import sweep_spec
    from llm_dit.pool import ModelPool

    cfg = common.config(args, **{"metrics.vqa": "off"})
    image = str(common.EXAMPLE)
    spec, cfg = sweep_spec([{"image": image}], common.PROMPT, {}, {"alpha": ALPHAS, "hidden_layer": LAYERS}, cfg)
    pictures = len(spec.cells)  # 12 VL cells and the pure-text baseline
    pool = ModelPool(keep="all")
    model = pool.z_image(cfg)
    model.pipe.set_progress_bar_config(disable=True)
    pool.vl(cfg)
    recipe = Recipe(references=[{"image": image}], alpha=0.4)
    warm = generate_from_recipe(cfg, recipe, common.PROMPT, models=pool, log=lambda m: None)
    emb = warm.conditioning.at(0.4)  # one cell's conditioning: the bare generations' input
    scratch = Path(tempfile.mkdtemp(prefix="bench-exp-"))
    runs = iter(range(10**6))

    def bare():
        for _ in range(pictures):
            model.generate(emb)

    stages: dict[str, dict] = {}
    unstaged: dict[str, list] = {}  # per sweep: seconds outside the run's timed stages, and in garbage collection

    def sweep(variant: str = "threaded"):
        out = scratch / f"run{next(runs)}"
        collections = []  # (generation, seconds) of the interpreter's garbage collections during the sweep

        def clock(phase, info, began=[0.0]):  # noqa: B006 (the start time, kept between calls)
            if phase == "start":
                began[0] = time.perf_counter()
            else:
                collections.append((info["generation"], time.perf_counter() - began[0]))

        gc.callbacks.append(clock)
        t0 = time.perf_counter()
        try:
            summary = run(spec, cfg, out, echo=lambda m: None, progress=False, models=pool)
        finally:
            wall = time.perf_counter() - t0
            gc.callbacks.remove(clock)
        assert summary.generated == pictures and not summary.failed
        session = json.loads((out / "run.json").read_text())["sessions"][-1]
        staged = sum(v for k, v in session["stages"].items() if k != "finish_cells")  # finish_cells: beside
        stages[variant] = {**session["stages"], "run_call": round(wall, 3), "not_in_a_stage": round(wall - staged, 3),
                           "gc": round(sum(s for _, s in collections), 3),
                           "gc_oldest": round(sum(s for g, s in collections if g == 2), 3)}
        unstaged.setdefault(variant, []).append({k: stages[variant][k] for k in ("not_in_a_stage", "gc", "gc_oldest")})
        shutil.rmtree(out)

    def sweep_inline():  # diagnostic: cells finished on the generating thread, one after the other
        from llm_dit.experiments import pictures as stage

        real = stage.ThreadPoolExecutor
        stage.ThreadPoolExecutor = Inline  # the picture stage's finishing and PNG threads
        try:
            sweep("inline")
        finally:
            stage.ThreadPoolExecutor = real

    def sweep_switch():  # diagnostic: the interpreter hands the GIL over every 1 ms instead of 5 ms
        before = sys.getswitchinterval()
        sys.setswitchinterval(0.001)
        try:
            sweep("switch_1ms")
        finally:
            sys.setswitchinterval(before)

    def naive():
        for cell in spec.cells:
            generate_from_recipe(cfg, cell.recipe, common.PROMPT, models=pool, log=lambda m: None)

    if args.profile:  # where the main thread spends a sweep's time, beyond the pictures
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(sweep, "profiled")
        pstats.Stats(prof).sort_stats("cumulative").print_stats(r"llm_dit|PIL|safetensors|matplotlib", 40)
    args.warmup = min(args.warmup, 1)  # the models are warm already; each call is 13 pictures
    fns = {"bare": bare, "sweep": sweep, "naive": naive}
    if args.diagnostics:
        fns.update(sweep_inline=sweep_inline, sweep_switch=sweep_switch)
    t = common.medians(fns, args)
    shutil.rmtree(scratch, ignore_errors=True)
    b = t["bare"]["median"]
    rows = [[f"{pictures} bare ZImage.generate calls", b, 1.0, "-"],
            ["llm-dit sweep (runner, loaded models)", t["sweep"]["median"], t["sweep"]["median"] / b,
             f"{100 * (t['sweep']['median'] / b - 1):+.1f} %"],
            ["naive loop: extract + encode + generate per cell", t["naive"]["median"], t["naive"]["median"] / b,
             f"{100 * (t['naive']['median'] / b - 1):+.1f} %"]]
    for k, label in (("sweep_inline", "diagnostic: sweep, cells finished inline (no thread)"),
                     ("sweep_switch", "diagnostic: sweep, GIL switch interval 1 ms"),):
        if k in t:
            rows.append([label, t[k]["median"], t[k]["median"] / b, f"{100 * (t[k]['median'] / b - 1):+.1f} %"])
    notes = (f"Cells: alpha {ALPHAS} x layer {LAYERS} at {cfg.generation.width}x{cfg.generation.height}, "
             f"{cfg.generation.steps} steps, caption of {emb.shape[0]} tokens; naive loop / llm-dit sweep = "
             f"**{t['naive']['median'] / t['sweep']['median']:.2f}x**. The runner's stages (seconds, last run): "
             + "; ".join(f"{variant}: " + ", ".join(f"{k} {v:.2f}" for k, v in st.items())
                         for variant, st in stages.items())
             + " (finish_cells: metrics, PNG and record of each cell, on a thread beside the GPU's work).")
    common.write(args, "experiment_overhead", "Benchmark 3: a 12-cell sweep (+ its baseline) against bare generations",
                 ["path", "seconds (median)", "ratio to bare", "overhead"], rows,
                 {"times": t, "tokens": emb.shape[0], "runner_stages": stages, "not_in_a_stage": unstaged}, notes)


if __name__ == "__main__":
    main()
