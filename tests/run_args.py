"""Shared by the experiment-runner tests: the run flags and the reference images."""

from __future__ import annotations

from pathlib import Path

from llm_dit.experiments.presets import EXPERIMENTS

PROMPT = "A simple cartoon house with a red roof"
SMALL = ["--profile", "tiny", "--steps", "4", "--width", "64", "--height", "64", "--no-progress"]


def compare_args(name: str, refs: list[str], out: Path) -> list[str]:
    exp = EXPERIMENTS[name]
    args = ["compare", "--experiment", name, "--out", str(out), "--quick", *SMALL]
    for im in refs[: exp.images]:
        args += ["--image", im]
    return args + ([] if exp.caption else ["--prompt", PROMPT])
