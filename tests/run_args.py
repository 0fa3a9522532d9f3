"""Shared by the experiment-runner tests: the run flags and the reference images."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from llm_dit.experiments.presets import EXPERIMENTS

PROMPT = "A simple cartoon house with a red roof"
SMALL = ["--profile", "tiny", "--steps", "4", "--width", "64", "--height", "64", "--no-progress"]


def compare_args(name: str, refs: list[str], out: Path) -> list[str]:
    exp = EXPERIMENTS[name]
    args = ["compare", "--experiment", name, "--out", str(out), "--quick", *SMALL]
    for im in refs[: exp.images]:
        args += ["--image", im]
    return args + ([] if exp.caption else ["--prompt", PROMPT])


def check_complete(out: Path, n: int) -> dict:
    """A finished run folder of ``n`` cells: every cell exactly once, every PNG whole, metadata.json
    valid and in agreement with the records and the files, no temporary left; its metadata."""
    meta = json.loads((out / "metadata.json").read_text())
    names = [r["name"] for r in meta["results"]]
    assert len(names) == len(set(names)) == n and meta["counts"] == {"done": n, "failed": 0, "pending": 0}
    assert sorted(p.stem for p in (out / "cells").glob("*.json")) == sorted(names)
    for r in meta["results"]:
        rec = json.loads((out / "cells" / f"{r['name']}.json").read_text())
        assert rec["success"] and rec["file"] == r["file"] and rec["cell_key"] == r["cell_key"]
        with Image.open(out / r["file"]) as im:
            im.verify()
    pictures = {p.name for p in out.glob("*.png") if not p.name.startswith(("comparison_grid", "grid_", "reference"))}
    assert pictures == {r["file"] for r in meta["results"]}
    assert not list(out.rglob(".*.tmp"))
    return meta
