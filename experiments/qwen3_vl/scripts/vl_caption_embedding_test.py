#!/usr/bin/env python3
"""Seed 004's caption test, forwarded to ``llm-dit sweep``: caption the image, then the caption alone,
caption-aligned VL and generic VL, each blended at one alpha and layer; then seed 004's files.

    python experiments/qwen3_vl/scripts/vl_caption_embedding_test.py -i IMG -o DIR \
        [--caption-tokens 1024] [--max-tokens 2500] [--vl-alpha 0.5] [--vl-hidden-layer -6] \
        [--steps 9] [--seed 42] [--config config.toml] [--profile default] [-v]

Writes ``DIR/YYYYMMDD_HHMMSS/`` with the notes' files (input.png, caption.txt, thinking.txt when the
model reasoned, raw_output.txt, result_vl_aligned.png, result_vl_generic.png, result_text_only.png,
comparison_grid.png, metadata.json) beside ``run/``, the llm-dit run folder they come from
(:mod:`llm_dit.experiments.caption_test`). Defaults: the flag, else the ``[vl]`` table of
``--config`` (hidden_layer, alpha, caption_tokens), else the notes' (-6, 0.5, 1024).
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from _forward import parser, run

NOTES_DEFAULTS = {"hidden_layer": -6, "alpha": 0.5, "caption_tokens": 1024}
RUN = "run"  # the llm-dit run folder inside the timestamped one


def stamped(root: str) -> Path:
    """``root/YYYYMMDD_HHMMSS`` (``_2``, ``_3``, ... when that second is taken)."""
    base = Path(root) / datetime.now().strftime("%Y%m%d_%H%M%S")
    out, i = base, 1
    while out.exists():
        i += 1
        out = base.with_name(f"{base.name}_{i}")
    return out


def build(args: list[str]) -> list[str]:
    from llm_dit.config import notes_vl

    p = parser("Caption-aligned vs generic VL conditioning (seed 004).")
    p.add_argument("-i", "--image", required=True)
    p.add_argument("-o", "--output-dir", default="experiments/results/caption_embedding_test")
    p.add_argument("--caption-tokens", type=int)
    p.add_argument("--max-tokens", type=int, help="the caption's generation budget, thinking included "
                                                  "(llm-dit sweep --caption-max-new-tokens)")
    p.add_argument("--vl-alpha")
    p.add_argument("--vl-hidden-layer")
    p.add_argument("--vl-model-path")
    p.add_argument("--z-image-path")
    p.add_argument("--config", help="a config file: profiles, and the notes' [vl] table for the defaults")
    p.add_argument("-v", "--verbose", action="store_true", help="debug messages (llm-dit -v)")
    a, rest = p.parse_known_args(args)
    notes = notes_vl(a.config)

    def pick(flag, key: str) -> str:
        value = flag if flag is not None else getattr(notes, key)
        return str(NOTES_DEFAULTS[key] if value is None else value)

    out = stamped(a.output_dir) / RUN
    argv = ["sweep", "--image", a.image, "--caption-tokens", pick(a.caption_tokens, "caption_tokens"),
            "--methods", "caption,generic", "--alphas", pick(a.vl_alpha, "alpha"),
            "--layers=" + pick(a.vl_hidden_layer, "hidden_layer"), "--out", str(out)]
    if a.max_tokens is not None:
        argv += ["--caption-max-new-tokens", str(a.max_tokens)]
    if a.config:
        argv += ["--config", a.config]
    if a.vl_model_path:
        argv += ["--vl-model", a.vl_model_path]
    if a.z_image_path:
        argv += ["--z-image", a.z_image_path]
    return argv + (["-v"] if a.verbose else []) + rest


def layout(argv: list[str]) -> int:
    """Seed 004's files beside the finished run folder."""
    from llm_dit.config import notes_vl
    from llm_dit.experiments.caption_test import write_caption_test

    out = Path(argv[argv.index("--out") + 1])
    config = argv[argv.index("--config") + 1] if "--config" in argv else None
    from _forward import command

    extra = {"config_file": config, "command": command(argv)}
    method = notes_vl(config).method
    if method is not None:  # recorded: this test always shows both methods
        extra["config_method"] = method
    write_caption_test(out, out.parent, extra)
    print(f"seed 004 files: {out.parent}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(build, after=layout))
