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

import shutil
import tempfile
from pathlib import Path

import common

ALPHAS = [0.1, 0.25, 0.4, 0.55, 0.7, 0.85]
LAYERS = [-2, -6]


def main() -> None:
    args = common.parser(__doc__).parse_args()
    from llm_dit.conditioning.recipe import Recipe
    from llm_dit.conditioning.run import generate_from_recipe
    from llm_dit.experiments.runner import run
    from llm_dit.experiments.specs import sweep_spec
    from llm_dit.models.pool import ModelPool

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

    def sweep():
        out = scratch / f"run{next(runs)}"
        summary = run(spec, cfg, out, echo=lambda m: None, progress=False, models=pool)
        assert summary.generated == pictures and not summary.failed
        shutil.rmtree(out)

    def naive():
        for cell in spec.cells:
            generate_from_recipe(cfg, cell.recipe, common.PROMPT, models=pool, log=lambda m: None)

    args.warmup = min(args.warmup, 1)  # the models are warm already; each call is 13 pictures
    t = common.medians({"bare": bare, "sweep": sweep, "naive": naive}, args)
    shutil.rmtree(scratch, ignore_errors=True)
    b = t["bare"]["median"]
    rows = [[f"{pictures} bare ZImage.generate calls", b, 1.0, "-"],
            ["llm-dit sweep (runner, loaded models)", t["sweep"]["median"], t["sweep"]["median"] / b,
             f"{100 * (t['sweep']['median'] / b - 1):+.1f} %"],
            ["naive loop: extract + encode + generate per cell", t["naive"]["median"], t["naive"]["median"] / b,
             f"{100 * (t['naive']['median'] / b - 1):+.1f} %"]]
    notes = (f"Cells: alpha {ALPHAS} x layer {LAYERS} at {cfg.generation.width}x{cfg.generation.height}, "
             f"{cfg.generation.steps} steps, caption of {emb.shape[0]} tokens; naive loop / llm-dit sweep = "
             f"**{t['naive']['median'] / t['sweep']['median']:.2f}x**.")
    common.write(args, "experiment_overhead", "Benchmark 3: a 12-cell sweep (+ its baseline) against bare generations",
                 ["path", "seconds (median)", "ratio to bare", "overhead"], rows,
                 {"times": t, "tokens": emb.shape[0]}, notes)


if __name__ == "__main__":
    main()
