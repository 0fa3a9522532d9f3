#!/usr/bin/env python3
"""The research notes' experiment runner (seeds 000-003), forwarded to ``llm-dit compare``.

    python experiments/qwen3_vl/scripts/run_comparison.py --image IMG --prompt TEXT \
        --experiment vl_only_vs_qwen3 --output-dir DIR [--quick] [any llm-dit compare flag]
    python experiments/qwen3_vl/scripts/run_comparison.py --image IMG --prompt TEXT --sweep vl_only_vs_qwen3 -o DIR
"""

from __future__ import annotations

from _forward import default_dir, parser, run


def build(args: list[str]) -> list[str]:
    p = parser("Run a named experiment (llm-dit experiments lists them).")
    p.add_argument("-i", "--image", action="append", required=True)
    p.add_argument("-p", "--prompt")
    p.add_argument("-e", "--experiment", "--sweep", dest="experiment", required=True,
                   help="the named experiment (--sweep: the notes' other name for it)")
    p.add_argument("-o", "--output-dir")
    p.add_argument("--quick", action="store_true")
    a, rest = p.parse_known_args(args)
    argv = ["compare", "--experiment", a.experiment, "--out", a.output_dir or default_dir(a.experiment)]
    for im in a.image:
        argv += ["--image", im]
    if a.prompt is not None:
        argv += ["--prompt", a.prompt]
    return argv + (["--quick"] if a.quick else []) + rest


if __name__ == "__main__":
    raise SystemExit(run(build))
