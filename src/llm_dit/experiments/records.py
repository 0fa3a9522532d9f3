"""What a finished cell leaves in the run folder: its PNG, its record, its statistics.

The PNG is written first (:func:`write_picture`) and the record last (:func:`write_cell`), so a
record on disk means a finished cell (see :mod:`folder`). ``alpha`` in a record is what the cell
asked for: 0 for pure text, one number, or one per step under a schedule.
"""

from __future__ import annotations

from pathlib import Path

from ..images import save_png
from . import folder
from .cells import Cell
from .plan import Job


def declared_alpha(recipe, steps: int):
    """The alpha a cell asked for: 0 for pure text, one number, or one per step under a schedule."""
    if not recipe.uses_vl:
        return 0.0
    alphas = [recipe.alpha_at(i, steps) for i in range(steps)]
    return alphas[0] if len(set(alphas)) == 1 else alphas


def write_picture(out: Path, cell: Cell, job: Job, image) -> None:
    """The cell's PNG (with its recipe, seed and steps in a text chunk), before its record."""
    g = job.config.generation
    # zlib level 1: a third of the default's time for a 1024 x 1024 picture, in a somewhat larger file;
    # not flushed to disk one by one (see ``folder``)
    save_png(image, out / f"{cell.name}.png", {"cell": cell.name, "prompt": job.prompt,
                                               "recipe": cell.recipe.resolve(job.config).to_dict(),
                                               "seed": g.seed, "steps": g.steps}, compress_level=1, durable=False)


def picture_digest(image) -> str:
    """The first 16 hex digits of SHA-256 over a picture's size, mode and pixels: equal digests,
    pixel-identical pictures."""
    import hashlib

    h = hashlib.sha256(f"{image.mode}:{image.size}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()[:16]


def write_cell(out: Path, cell: Cell, job: Job, cond_record: dict, timings: dict, metrics: dict,
               same_as: str | None, cell_key: str, picture: str | None = None) -> None:
    """The record of a cell whose picture :func:`write_picture` wrote (``picture``: its
    :func:`picture_digest`)."""
    declared = cell.recipe.resolve(job.config)
    g = job.config.generation
    record = {
        "name": cell.name,
        "success": True,
        "file": f"{cell.name}.png",
        "params": cell.params,
        "prompt": job.prompt,
        "caption_tokens": cell.caption,
        # the seeds' fields (seed 000); the VL ones are null where no VL reached the DiT (pure text)
        "vl_shape": cond_record.get("vl_shape"),
        "vl_std": cond_record.get("vl_std"),
        "token_selection": declared.token_selection if declared.uses_vl else None,
        "normalization_mode": declared.normalization_mode if declared.uses_vl else None,
        "blended_std": cond_record.get("blended_std"),
        "generation_time": timings.get("generate", cond_record.get("generation_time")),
        "alpha": declared_alpha(declared, g.steps),
        "hidden_layer": declared.hidden_layer if declared.uses_vl else None,
        "backend": declared.backend,
        "blend_mode": declared.blend if declared.uses_vl else None,
        "fingerprint": cond_record.get("fingerprint"),  # of the caption embeddings handed to the DiT
        "picture_digest": picture,
        "same_picture_as": same_as,
        "pure_text": job.is_text,
        "generation": {k: getattr(g, k) for k in ("seed", "steps", "width", "height", "shift", "guidance_scale")},
        "timings": timings,
        "metrics": metrics,
        "recipe": declared.to_dict(),
        "conditioning": cond_record,
        "generation_key": job.key,
        "cell_key": cell_key,
    }
    folder.write_record(out, cell.name, record)


def write_failure(out: Path, cell: Cell, message: str, cell_key: str) -> None:
    folder.write_record(out, cell.name, {"name": cell.name, "success": False, "error": message, "params": cell.params,
                                         "cell_key": cell_key, "recipe": cell.recipe.to_dict()})


def save_stats(out: Path, job: Job, cond, alpha: float, embeddings: bool) -> None:
    """Per-dimension std of the text, VL and blended embeddings of each cell of ``job`` (and, with
    ``embeddings``, the embeddings themselves)."""
    from ..io import save_tensors

    y = cond.at(alpha)
    tensors = {"text_std": cond.text.std(0, unbiased=False), "blended_std": y.std(0, unbiased=False)}
    vl = cond.content if cond.content is not None else cond.style
    if vl is not None:
        tensors["vl_std"] = vl.std(0, unbiased=False)
    for cell in job.cells:
        save_tensors(out / "stats" / f"{cell.name}.safetensors", tensors, "llm_dit_cell_stats",
                     {"cell": cell.name, "alpha": alpha}, durable=False)  # a torn file: a plot less, no harm
        if embeddings:
            emb = {"blended": y, "text": cond.text}
            if cond.content is not None:
                emb["content"] = cond.content
            if cond.style is not None:
                emb["style"] = cond.style
            save_tensors(out / "embeddings" / f"{cell.name}.safetensors", emb, "llm_dit_cell_embeddings",
                         {"cell": cell.name, "alpha": alpha, "recipe": job.recipe.to_dict()})


def summary_line(cell: Cell, cond: dict, metrics: dict, seconds: float) -> str:
    parts = [f"{cell.name}: {seconds:.1f} s"]
    if cond.get("blended_std") is not None:
        parts.append(f"blended_std {cond['blended_std']:.4g}")
    for k in ("ssim_ref", "ssim_text", "grid_artifact", "vqa_yes"):
        if k in metrics:
            parts.append(f"{k} {metrics[k]:.3g}")
    return ", ".join(parts)
