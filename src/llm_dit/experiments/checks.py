"""Comparisons that compare nothing, found in a run's records (each finished cell's record carries the
fingerprint of the caption embeddings handed to the DiT and the digest of its picture's pixels).

One warning per finding, each a sentence naming its cells:

* ``same_conditioning``: cells whose recipes differ (different generation keys) but whose
  conditioning is bit-identical (same fingerprint): whatever their labels say, they are one picture;
* ``equals_baseline``: a VL cell conditioned exactly as its group's text-only baseline: its VL part
  changed nothing;
* ``same_picture``: cells conditioned differently whose pictures are pixel-identical;
* ``mask_noop``: an outlier mask that masked 0 dimensions (the unmasked conditioning by another name);
* ``alpha_ignored``: cells labelled by an alpha (or a schedule) under a blend that ignores alpha.

Cells that give one picture by construction (a pure-text cell and the alpha-0 cells of its group:
same generation key) are not findings: the runner makes that picture once and says so in
``same_picture_as``.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Blends whose result does not depend on alpha.
ALPHA_IGNORED = ("replace",)


def _names(records: Iterable[dict]) -> str:
    names = [r["name"] for r in records]
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]


def _by(records: list[dict], key: str, with_generation: bool = False) -> dict[tuple, list[dict]]:
    """Records by ``record[key]`` (and their generation settings: the same conditioning under another
    seed or step count is another picture on purpose)."""
    out: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get(key):
            gen = tuple(sorted((r.get("generation") or {}).items())) if with_generation else ()
            out.setdefault((r[key], gen), []).append(r)
    return out


def _masked(source: dict) -> int | None:
    """Dimensions the outlier mask zeroed, clamped or rescaled in one source (None: no mask)."""
    parts = [source.get("image_part"), source.get("text_part")] if "image_part" in source else [source]
    counts = [len(p["outliers"]["masked_dimensions"]) for p in parts if p and "outliers" in p]
    return sum(counts) if counts else None


def degenerate(results: list[dict]) -> list[dict]:
    """``[{"kind", "cells", "text"}]`` for the finished cells among ``results`` (metadata.json's)."""
    done = [r for r in results if r.get("status") == "done" and r.get("success")]
    found: list[dict] = []

    def add(kind: str, cells: list[dict], text: str) -> None:
        found.append({"kind": kind, "cells": [r["name"] for r in cells], "text": text})

    for (fp, _), cells in _by(done, "fingerprint", with_generation=True).items():
        if len({r.get("generation_key") for r in cells}) < 2:
            continue  # one picture by construction
        base = next((r for r in cells if r.get("pure_text")), None)
        others = [r for r in cells if r is not base and r.get("generation_key") != (base or {}).get("generation_key")]
        if base is not None:
            add("equals_baseline", others,
                f"{_names(others)}: conditioned exactly as the text-only baseline {base['name']} "
                f"(fingerprint {fp}); the VL part changed nothing")
        else:
            add("same_conditioning", cells,
                f"{_names(cells)}: different recipes, bit-identical conditioning (fingerprint {fp}); "
                "they are one picture whatever their labels say")
    for cells in _by(done, "picture_digest").values():
        prints = {r.get("fingerprint") for r in cells}
        if len(prints) > 1:
            add("same_picture", cells, f"{_names(cells)}: pixel-identical pictures from different conditionings")
    noop: dict[float, list[dict]] = {}
    for r in done:
        mask = (r.get("recipe") or {}).get("outlier_mask", "none")
        if mask == "none" or r.get("pure_text"):
            continue
        counts = [c for s in (r.get("conditioning") or {}).get("sources") or [] if (c := _masked(s)) is not None]
        if counts and sum(counts) == 0:
            noop.setdefault(r["recipe"].get("outlier_threshold"), []).append(r)
    for threshold, cells in noop.items():
        add("mask_noop", cells, f"{_names(cells)}: the outlier mask masked 0 dimensions at threshold "
                                f"{threshold:g}, so it is no mask (try a lower outlier threshold)")
    ignored = [r for r in done if (r.get("recipe") or {}).get("blend") in ALPHA_IGNORED and not r.get("pure_text")
               and ({"alpha", "schedule"} & set(r.get("params") or {}) or "alpha" in r["name"])]
    for blend in dict.fromkeys(r["recipe"]["blend"] for r in ignored):
        cells = [r for r in ignored if r["recipe"]["blend"] == blend]
        add("alpha_ignored", cells, f"{_names(cells)}: the {blend} blend ignores alpha; "
                                    "the alpha in their labels changes nothing")
    return found
