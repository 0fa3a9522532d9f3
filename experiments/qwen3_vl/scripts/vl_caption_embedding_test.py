#!/usr/bin/env python3
"""Seed 004's caption test, forwarded to ``llm-dit sweep``: caption the image, then the caption alone,
caption-aligned VL and generic VL, each blended at one alpha and layer.

    python experiments/qwen3_vl/scripts/vl_caption_embedding_test.py -i IMG -o DIR \
        [--caption-tokens 1024] [--vl-alpha 0.5] [--vl-hidden-layer -6] [--steps 9] [--seed 42]
"""

from __future__ import annotations

from _forward import parser, run


def build(args: list[str]) -> list[str]:
    p = parser("Caption-aligned vs generic VL conditioning (seed 004).")
    p.add_argument("-i", "--image", required=True)
    p.add_argument("-o", "--output-dir", default="experiments/results/caption_embedding_test")
    p.add_argument("--caption-tokens", type=int, default=1024)
    p.add_argument("--vl-alpha", default="0.5")
    p.add_argument("--vl-hidden-layer", default="-6")
    p.add_argument("--vl-model-path")
    p.add_argument("--z-image-path")
    p.add_argument("-v", "--verbose", action="store_true", help="(kept for the notes' commands; no effect)")
    a, rest = p.parse_known_args(args)
    argv = ["sweep", "--image", a.image, "--caption-tokens", str(a.caption_tokens), "--methods", "caption,generic",
            "--alphas", a.vl_alpha, f"--layers={a.vl_hidden_layer}", "--out", a.output_dir]
    if a.vl_model_path:
        argv += ["--vl-model", a.vl_model_path]
    if a.z_image_path:
        argv += ["--z-image", a.z_image_path]
    return argv + rest


if __name__ == "__main__":
    raise SystemExit(run(build))
