#!/usr/bin/env python3
"""Seed 004's sweep, forwarded to ``llm-dit sweep``: layers x alphas x {caption, generic} plus the
caption alone, with grid_method_*.png, grid_layer*.png and grid_alpha*.png.

    python experiments/qwen3_vl/scripts/sweep_caption_alignment.py -i IMG \
        --hidden-layers="-2,-3,-4,-5,-6" --alphas 0.0 0.25 0.5 0.75 1.0 --steps 9 --seed 42 -o DIR
"""

from __future__ import annotations

from _forward import parser, run


def build(args: list[str]) -> list[str]:
    p = parser("Caption-alignment sweep: layers x alphas x methods (seed 004).")
    p.add_argument("-i", "--input", "--image", dest="image", required=True)
    p.add_argument("-o", "--output", "--output-dir", dest="out", default="experiments/results/caption_alignment_sweep")
    p.add_argument("--hidden-layers", default="-2,-3,-4,-5,-6")
    p.add_argument("--alphas", nargs="+", default=["0.0", "0.25", "0.5", "0.75", "1.0"])
    p.add_argument("--caption-tokens", type=int, default=1024)  # seed 004's caption length
    p.add_argument("--vl-model-path")
    a, rest = p.parse_known_args(args)
    # --vary keeps this order in the file names: layer-6_alpha0.5_caption.png, as in the notes
    argv = ["sweep", "--image", a.image, "--caption-tokens", str(a.caption_tokens),
            "--vary", f"hidden_layer={a.hidden_layers}", "--vary", "alpha=" + ",".join(a.alphas),
            "--vary", "method=caption,generic", "--out", a.out]
    if a.vl_model_path:
        argv += ["--vl-model", a.vl_model_path]
    return argv + rest


if __name__ == "__main__":
    raise SystemExit(run(build))
