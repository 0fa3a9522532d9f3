"""Evidence across trials: per-cell means with bootstrap intervals, and paired differences.

A *trial* is one run of the same cells on one reference image with one seed (``llm-dit compare
--images A B C --seeds 2``: six trials). For a cell and a metric with values ``x_1..x_n`` (one per
trial where the cell finished):

* ``mean = (1/n) sum_t x_t``;
* the 95 % interval is the percentile bootstrap of the mean: ``B`` resamples of ``n`` trials drawn
  with replacement (``numpy.random.default_rng(SEED)``, indices ``[B, n]``), their means, and the
  2.5th and 97.5th percentiles of those (numpy's linear interpolation). With one trial there is no
  interval (``low = high = None``): one image, one seed is an anecdote.

A difference between cells ``a`` and ``b`` is *paired*: ``d_t = x_t(a) - x_t(b)`` over the trials
where both have the metric, then the same mean and interval. It *exceeds the noise* when its
interval excludes 0 (``low > 0`` or ``high < 0``); with fewer than :data:`MIN_TRIALS` trials it never
does (a bootstrap over two or three values says little).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Bootstrap resamples and the generator's seed (fixed: the same folder gives the same report).
RESAMPLES = 10_000
SEED = 0
#: Fewest trials for a difference to be called larger than the noise.
MIN_TRIALS = 4
#: Up to this many cells every pair is compared; past it, each VL cell with its baseline only.
MAX_ALL_PAIRS = 24


def bootstrap_interval(values: list[float], level: float = 0.95) -> tuple[float | None, float | None]:
    """The percentile-bootstrap interval of the mean of ``values`` (None, None for fewer than 2)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return None, None
    idx = np.random.default_rng(SEED).integers(0, x.size, size=(RESAMPLES, x.size))
    means = x[idx].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def summarize(values: list[float]) -> dict[str, Any]:
    """``{"n", "mean", "low", "high", "values"}`` of one cell's metric over its trials."""
    low, high = bootstrap_interval(values)
    return {"n": len(values), "mean": float(np.mean(values)) if values else None, "low": low, "high": high,
            "values": [float(v) for v in values]}


def exceeds_noise(s: dict) -> bool:
    return s["n"] >= MIN_TRIALS and s["low"] is not None and (s["low"] > 0 or s["high"] < 0)


def _numbers(record: dict) -> dict[str, float]:
    """The numeric metrics of a finished cell's record."""
    if record.get("status", "done") != "done" or not record.get("success"):
        return {}
    return {k: float(v) for k, v in (record.get("metrics") or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}


def baseline_of(results: list[dict]) -> dict[str, str]:
    """``{cell: its group's text-only baseline}`` for the VL cells of one trial (same prompt and
    generation settings)."""
    def group(r):
        return r.get("caption_tokens"), tuple(sorted((r.get("generation") or {}).items()))

    done = [r for r in results if r.get("status") == "done" and r.get("success")]
    bases = {group(r): r["name"] for r in done if r.get("pure_text")}
    return {r["name"]: bases[group(r)] for r in done if not r.get("pure_text") and group(r) in bases}


def aggregate(trials: list[dict]) -> dict[str, Any]:
    """Per-cell summaries and paired differences over ``trials`` (each a run's metadata.json, with
    the same cells).

    Returns ``{"trials": n, "cells": [names], "baselines": {cell: baseline}, "metrics": {cell:
    {metric: summary}}, "differences": [{"a", "b", "metric", **summary, "exceeds_noise"}]}``: ``a - b``
    for every pair with ``a`` after ``b`` in plan order (each VL cell minus its baseline among them);
    past :data:`MAX_ALL_PAIRS` cells, each VL cell minus its baseline only.
    """
    cells = list(dict.fromkeys(r["name"] for t in trials for r in t["results"]))
    per_trial = [{r["name"]: _numbers(r) for r in t["results"]} for t in trials]
    metrics: dict[str, dict] = {}
    for c in cells:
        keys = list(dict.fromkeys(k for t in per_trial for k in t.get(c, {})))
        metrics[c] = {k: summarize([t[c][k] for t in per_trial if k in t.get(c, {})]) for k in keys}
    baselines = baseline_of(trials[0]["results"]) if trials else {}
    pairs = [(a, b) for j, a in enumerate(cells) for b in cells[:j]] if len(cells) <= MAX_ALL_PAIRS else \
        list(baselines.items())
    differences = []
    for a, b in pairs:
        for k in metrics[a]:
            paired = [t[a][k] - t[b][k] for t in per_trial if k in t.get(a, {}) and k in t.get(b, {})]
            if paired:
                s = summarize(paired)
                differences.append({"a": a, "b": b, "metric": k, **s, "exceeds_noise": exceeds_noise(s)})
    return {"trials": len(trials), "cells": cells, "baselines": baselines, "metrics": metrics,
            "differences": differences}


def difference(evidence: dict, a: str, b: str, metric: str) -> dict | None:
    """The paired difference ``a - b`` of ``metric`` (negated from ``b - a`` when stored that way)."""
    for d in evidence["differences"]:
        if d["metric"] != metric:
            continue
        if (d["a"], d["b"]) == (a, b):
            return d
        if (d["a"], d["b"]) == (b, a):
            low, high = d["low"], d["high"]
            return {**d, "a": a, "b": b, "mean": -d["mean"], "values": [-v for v in d["values"]],
                    "low": None if high is None else -high, "high": None if low is None else -low}
    return None
