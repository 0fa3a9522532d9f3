"""Seed 004's caption test folder, the files its notes list, made from a finished run folder.

``experiments/qwen3_vl/scripts/vl_caption_embedding_test.py`` runs ``llm-dit sweep`` (caption tokens N,
methods ``caption`` and ``generic`` at one alpha and layer) into ``DIR/YYYYMMDD_HHMMSS/run/``, then
:func:`write_caption_test` writes the notes' layout beside that run folder, in ``DIR/YYYYMMDD_HHMMSS/``::

    input.png               the reference image (the run's reference.png)
    caption.txt             the caption, without thinking (the run's captions/captionN.txt)
    thinking.txt            the thinking block, only when the model reasoned (a Thinking model)
    raw_output.txt          Qwen3-VL's whole generation
    result_vl_aligned.png   the cell ``caption``: VL text = the caption, blended with the caption's text embedding
    result_vl_generic.png   the cell ``generic``: VL text = "Describe this image."
    result_text_only.png    the caption alone (the run's pure-text baseline)
    comparison_grid.png     the run's grid of the three
    metadata.json           the settings, the caption and the three results (from the run's records)

Nothing is computed here: every file is a copy of, or read from, what the run wrote (its pictures,
records, captions and grid), so ``llm-dit report DIR/.../run`` and the run folder stay the record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import atomic_path, write_json, write_text
from . import folder

#: The cell of each result picture: the sweep's method, or None for the pure-text baseline.
RESULTS = {"vl_aligned": "caption", "vl_generic": "generic", "text_only": None}
#: What a result record keeps (the rest is in the run's cells/NAME.json).
RESULT_FIELDS = ("vl_shape", "vl_std", "blended_std", "generation_time", "alpha", "hidden_layer", "caption_tokens",
                 "fingerprint", "metrics")


def _copy(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise InputError(f"{src} is missing: the run did not finish (run the printed llm-dit command again to "
                         "resume it)")
    with atomic_path(dst) as tmp:
        tmp.write_bytes(src.read_bytes())


def _cells(run: folder.RunFolder) -> dict[str, folder.CellState]:
    """``{result: its cell}``, each finished."""
    found: dict[str, folder.CellState] = {}
    for result, method in RESULTS.items():
        for c in run.cells:
            is_text = c.recipe.get("backend") == "text"
            if (method is None and is_text) or (method is not None and c.params.get("method") == method):
                found[result] = c
                break
        else:
            raise InputError(f"{run.path} is no caption test run: it has no {result} cell")
        if found[result].status != "done":
            raise InputError(f"{run.path}: the cell {found[result].name} did not finish (its error is in its "
                             "record; run the printed llm-dit command again to resume)")
    return found


def write_caption_test(run_dir: str | Path, dest: str | Path, extra: dict[str, Any] | None = None) -> list[Path]:
    """Seed 004's files in ``dest`` from the finished run folder ``run_dir`` (a sweep of the methods
    ``caption`` and ``generic`` with caption tokens); ``extra``: more to record under ``settings``.
    Returns the files written."""
    run_dir, dest = Path(run_dir), Path(dest)
    run = folder.read_run(run_dir)
    if run is None:
        raise InputError(f"{run_dir} holds no run")
    cells = _cells(run)
    plan_cells = {c["name"]: c for c in run.plan["cells"]}
    n = plan_cells[cells["vl_aligned"].name].get("caption")
    if not isinstance(n, int):
        raise InputError(f"{run_dir} is no caption test run: its cells have no caption")
    cap_txt = folder.caption_path(run_dir, n)
    cap_meta = folder.read_json(cap_txt.with_suffix(".json")) or {}
    written = []

    def put(name: str, write) -> None:
        write(dest / name)
        written.append(dest / name)

    put("input.png", lambda p: _copy(run_dir / folder.reference_name(0), p))
    put("caption.txt", lambda p: _copy(cap_txt, p))
    if cap_meta.get("thinking") is not None:  # "(if present)": an Instruct model writes no thinking
        put("thinking.txt", lambda p: write_text(p, str(cap_meta["thinking"]) + "\n"))
    if cap_meta.get("raw") is not None:  # a generated caption (a given one has no generation)
        put("raw_output.txt", lambda p: write_text(p, str(cap_meta["raw"]) + "\n"))
    results: dict[str, Any] = {}
    for result, cell in cells.items():
        rec = cell.record or {}
        put(f"result_{result}.png", lambda p, rec=rec: _copy(run_dir / rec["file"], p))
        results[result] = {"file": f"result_{result}.png", "cell": cell.name,
                           "run_file": f"{run_dir.name}/{rec['file']}", **{k: rec.get(k) for k in RESULT_FIELDS}}
    put("comparison_grid.png", lambda p: _copy(run_dir / "comparison_grid.png", p))

    config = run.plan["config"]
    aligned = cells["vl_aligned"].recipe
    layer = aligned.get("hidden_layer")
    settings = {
        "vl_alpha": aligned.get("alpha"),
        "vl_hidden_layer": layer if layer is not None else config["vl"]["layers"][0],
        "caption_tokens": n,
        "max_tokens": cap_meta.get("max_new_tokens", run.plan.get("caption_max_new_tokens")),
        "steps": config["generation"]["steps"],
        "seed": config["generation"]["seed"],
        "width": config["generation"]["width"],
        "height": config["generation"]["height"],
        "profile": config.get("profile"),
        **(extra or {}),
    }
    caption = {"file": "caption.txt", "thinking_file": "thinking.txt" if cap_meta.get("thinking") is not None else None,
               **{k: cap_meta.get(k) for k in ("target_tokens", "tokens", "generated_tokens", "max_new_tokens",
                                               "model_variant", "source", "request", "attempts")}}
    meta = {"experiment": "vl_caption_embedding_test (seed 004)", "input_image": run.plan["images"][0],
            "settings": settings, "caption": caption, "results": results,
            "run": run_dir.name, "run_key": run.plan.get("run_key"), "config": config}
    put("metadata.json", lambda p: write_json(p, meta))
    return written
