#!/usr/bin/env python3
"""Seed 001's statistics check, forwarded to ``llm-dit stats compare``: per-dimension std of the
text encoder vs Qwen3-VL image and text tokens, at layers -2 and -6 unless ``--layers`` says otherwise.

    python experiments/qwen3_vl/scripts/compare_embedding_stats.py --image IMG [--prompt TEXT]
"""

from __future__ import annotations

from _forward import default_dir, parser, run

DEFAULT_PROMPT = "Homer Simpson eating spaghetti"  # the prompt of the notes' runs


def build(args: list[str]) -> list[str]:
    p = parser("Compare embedding statistics of the text encoder and Qwen3-VL.")
    p.add_argument("-i", "--image", required=True)
    p.add_argument("-p", "--prompt", default=DEFAULT_PROMPT)
    p.add_argument("-o", "--output-dir")
    a, rest = p.parse_known_args(args)
    argv = ["stats", "compare", "--image", a.image, "--prompt", a.prompt,
            "--out", a.output_dir or default_dir("embedding_stats")]
    if not any(r == "--layers" or r.startswith("--layers=") for r in rest):
        argv.append("--layers=-2,-6")
    return argv + rest


if __name__ == "__main__":
    raise SystemExit(run(build))
