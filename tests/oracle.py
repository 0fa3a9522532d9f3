"""The oracle of the runner tests (tests/test_oracle.py): what a run handed the pipeline, and each
cell made again alone through the single-cell path.

The digests are this file's own formula (SHA-256 over dtype, shape and raw bytes; per step when the
steps differ), computed from what ``ZImage.generate_batch`` receives: a run whose records name one
conditioning while it generates from another fails too.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from llm_dit.conditioning.run import generate_from_recipe
from llm_dit.experiments.specs import spec_from_run
from llm_dit.generate import ZImage, img2img_steps
from llm_dit.images import read_png_parameters, save_png
from llm_dit.pool import ModelPool


def _digest(x: torch.Tensor) -> str:
    h = hashlib.sha256(f"{x.dtype}:{tuple(x.shape)}:".encode())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _fingerprint(steps: list[torch.Tensor]) -> dict:
    per_step = [_digest(x) for x in steps]
    if len(set(per_step)) == 1:
        return {"fingerprint": per_step[0]}
    return {"fingerprint": hashlib.sha256(",".join(per_step).encode()).hexdigest()[:16],
            "fingerprints_per_step": per_step}


@contextmanager
def handed_to_pipeline():
    """The fingerprint of every conditioning given to ``ZImage.generate_batch`` meanwhile: what the
    pipeline receives at each step that runs (``c(i, n)`` for a per-step conditioning)."""
    handed: list[dict] = []
    real = ZImage.generate_batch

    def spy(self, conditionings, generation=None, init_image=None, *args, **kwargs):
        g = generation or self.config.generation
        n = g.steps if init_image is None else img2img_steps(g.steps, g.strength)
        for c in conditionings:
            handed.append(_fingerprint([c(i, n) for i in range(n)] if callable(c) else [c]))
        return real(self, conditionings, generation, init_image, *args, **kwargs)

    ZImage.generate_batch = spy
    try:
        yield handed
    finally:
        ZImage.generate_batch = real


def _prints(record: dict) -> dict:
    cond = record["conditioning"]
    return {k: cond[k] for k in ("fingerprint", "fingerprints_per_step") if k in cond}


def check_against_single_cells(out: Path, pool: ModelPool, handed: list[dict] | None = None) -> int:
    """Every cell of the finished run ``out`` made again by ``generate_from_recipe``; the cells checked."""
    spec, config = spec_from_run(out)
    config = config.replace(**{"vl.cache_gb": 0.0, "runtime.batch_size": 1})  # no cache, no batch
    meta = json.loads((out / "metadata.json").read_text())
    records = {r["name"]: r for r in meta["results"]}
    assert meta["counts"]["failed"] == 0 and len(records) == len(spec.cells)
    for cell in spec.cells:
        rec = records[cell.name]
        if handed is not None:  # the record names a conditioning the run really gave the pipeline
            assert _prints(rec) in handed, cell.name
        prompt = spec.prompt if cell.caption is None else \
            (out / "captions" / f"caption{cell.caption}.txt").read_text(encoding="utf-8").strip()
        with handed_to_pipeline() as alone:
            made = generate_from_recipe(cell.config(config), cell.recipe, prompt, models=pool)
        assert alone == [_prints(rec)], f"{cell.name}: the run's conditioning differs from the cell made alone"
        owner = records[rec["same_picture_as"] or cell.name]
        if owner["timings"].get("batch", 1) > 1:
            # made in a batch: diffusers' batched DiT and VAE kernels round differently from a batch
            # of one (measured on the CPU: latents 5e-7 apart, decoded pixels 3e-6), which moves a
            # pixel that sits on a rounding boundary by one level
            with Image.open(out / rec["file"]) as im:
                diff = np.abs(np.asarray(im, dtype=np.int16) - np.asarray(made.image, dtype=np.int16))
            assert diff.max() <= 1 and (diff > 0).mean() < 0.01, f"{cell.name}: the picture differs ({diff.max()})"
            continue
        # the same writer and text chunk as the run's: equal pixels give equal bytes, and only they do
        png = save_png(made.image, out.parent / f"{out.name}-oracle.png", read_png_parameters(out / rec["file"]),
                       compress_level=1)
        assert png.read_bytes() == (out / rec["file"]).read_bytes(), \
            f"{cell.name}: the PNG differs from the cell made alone"
    return len(spec.cells)
