"""The research notes' questions, answered from a run's numbers (seed 000's decision trees).

Each answer names the question, the branch the evidence points to, the numbers it rests on, and how
strong that evidence is:

* one trial (one image, one seed): "anecdotal": the branch follows the point estimates;
* two or three trials: "weak": the branch follows the means; intervals over so few values say little;
* at least :data:`~llm_dit.experiments.evidence.MIN_TRIALS`: a difference counts only when its paired
  95 % interval excludes 0; when none does the answer says "no difference detected over N trials",
  which is not a proof of equality.

A difference smaller than :data:`SMALLEST` (in the metric's own units) counts as none at any number
of trials: a P(Yes) 0.00003 lower is no loss of prompt adherence, however consistent.

No answer is given where its metric was not scored (``vqa_yes`` needs Qwen3-VL: ``metrics.vqa``).
"""

from __future__ import annotations

from .evidence import MIN_TRIALS, difference
from .report_tables import interval

#: The smallest difference that counts, per metric: 1 point of P(Yes), 0.01 of SSIM, 0.01 of the
#: grid-artifact score (a log10 ratio: 2.3 %), 0.5 dB of PSNR, 0.01 of the histogram distance.
SMALLEST = {"vqa_yes": 0.01, "ssim_ref": 0.01, "ssim_text": 0.01, "grid_artifact": 0.01, "psnr_ref": 0.5,
            "psnr_text": 0.5, "color_hist_ref": 0.01}


def strength(n: int) -> str:
    if n <= 1:
        return "anecdotal: one image, one seed"
    if n < MIN_TRIALS:
        return f"weak: {n} trials (intervals need at least {MIN_TRIALS})"
    return f"{n} trials"


def _mean(ev: dict, cell: str, metric: str) -> float | None:
    s = ev["metrics"].get(cell, {}).get(metric)
    return None if s is None else s["mean"]


def _shows(d: dict, sign: int, n: int) -> bool:
    """Whether the paired difference ``d`` points to ``sign`` (+1 / -1): at least :data:`SMALLEST`,
    and by its interval with enough trials, else by its mean."""
    if abs(d["mean"]) < SMALLEST.get(d["metric"], 0.0):
        return False
    if n >= MIN_TRIALS:
        return d["exceeds_noise"] and (d["low"] > 0 if sign > 0 else d["high"] < 0)
    return d["mean"] * sign > 0


def _verdict(d: dict, bad: int, n: int) -> str:
    """``worse`` (``d`` moves the ``bad`` way by at least :data:`SMALLEST`), ``fine`` (it does not:
    the point estimate with few trials, the whole interval with enough) or ``undecided``."""
    small = SMALLEST.get(d["metric"], 0.0)
    if _shows(d, bad, n):
        return "worse"
    if n < MIN_TRIALS:
        return "fine"
    edge = d["high"] if bad > 0 else -d["low"]  # how far the interval reaches the bad way
    return "fine" if edge < small else "undecided"


def _diff_line(d: dict, metric: str, n: int) -> str:
    small = SMALLEST.get(metric, 0.0)
    tail = f" (smaller than {small:g}: negligible)" if abs(d["mean"]) < small and n < MIN_TRIALS else ""
    if n >= MIN_TRIALS:
        tail = " (exceeds the noise)" if d["exceeds_noise"] else " (within the noise)"
        if max(abs(d["low"]), abs(d["high"])) < small:
            tail = f" (all of it smaller than {small:g}: negligible)"
    return f"{metric}: {d['a']} - {d['b']} = {'+' if d['mean'] >= 0 else ''}{interval(d)}{tail}"


def _missing(metric: str) -> str:
    return {"vqa_yes": "vqa_yes was not scored (it needs Qwen3-VL: metrics.vqa on or auto)"}.get(
        metric, f"{metric} was not scored")


def vl_only_vs_qwen3(ev: dict) -> dict:
    q = "Does pure_vl_text_tokens match pure_qwen3_4b quality?"
    a, b, n = "pure_vl_text_tokens", "pure_qwen3_4b", ev["trials"]
    lines: list[str] = []
    worse: list[str] = []
    undecided: list[str] = []
    unknown: list[str] = []
    ssim = ev["metrics"].get(a, {}).get("ssim_text")
    if ssim is not None:
        lines.append(f"ssim_text (SSIM of {a} to {b}; 1 = the same picture): {interval(ssim)}")
    for metric, bad, what in (("grid_artifact", +1, "more grid artifacts"), ("vqa_yes", -1, "lower prompt adherence")):
        d = difference(ev, a, b, metric)
        if d is None:
            unknown.append(_missing(metric))
            continue
        lines.append(_diff_line(d, metric, n))
        {"worse": worse, "undecided": undecided}.get(_verdict(d, bad, n), []).append(what)
    if len(unknown) == 2:
        return {"question": q, "branch": None, "why": "; ".join(unknown), "evidence": lines, "strength": strength(n)}
    if worse:
        branch = "NO: still need Qwen3-4B blending. Next: vl_layer_by_token to optimize the layer."
        why = f"{a} shows {' and '.join(worse)} than {b}"
    elif undecided:
        branch = None
        why = (f"the intervals neither rule out nor show {' or '.join(undecided)} beyond the smallest difference "
               "that counts; more trials would decide")
    else:
        branch = ("YES: VL text tokens may replace Qwen3-4B. Next: vl_prompt_variations to optimize the VL text."
                  if n < MIN_TRIALS else f"YES: over {n} trials the intervals rule out more grid artifacts and lower "
                  "prompt adherence beyond the smallest difference that counts. Next: vl_prompt_variations.")
        why = f"{a} shows neither more grid artifacts nor lower prompt adherence than {b}"
    if unknown:
        why += f" ({'; '.join(unknown)})"
    return {"question": q, "branch": branch, "why": why, "evidence": lines, "strength": strength(n)}


def _best(ev: dict, cells: list[str], metric: str, higher: bool) -> tuple[str | None, str | None]:
    """The best cell by mean and the runner-up."""
    means = {c: m for c in cells if (m := _mean(ev, c, metric)) is not None}
    order = sorted(means, key=lambda c: means[c], reverse=higher)
    return (order[0] if order else None), (order[1] if len(order) > 1 else None)


def _separated(ev: dict, best: str, second: str | None, metric: str, higher: bool) -> tuple[str, bool]:
    """A line on how far ``best`` is from ``second``, and whether that exceeds the noise."""
    if second is None:
        return "", False
    d = difference(ev, best, second, metric)
    n = ev["trials"]
    clear = d is not None and _shows(d, +1 if higher else -1, n) and n >= MIN_TRIALS
    return (_diff_line(d, metric, n) if d else ""), clear


def vl_layer_by_token(ev: dict, params: dict[str, dict]) -> dict:
    q = "Do image tokens and text tokens have different optimal layers?"
    n = ev["trials"]
    picks, lines, unknown = {}, [], []
    # seed 000: image tokens are judged by style retention, text tokens by prompt adherence
    for kind, metric in (("image", "ssim_ref"), ("text", "vqa_yes")):
        cells = [c for c, p in params.items() if p.get("tokens") == kind and c in ev["metrics"]]
        best, second = _best(ev, cells, metric, True)
        if best is None:
            unknown.append(f"{kind} tokens: " + _missing(metric))
            continue
        sep, clear = _separated(ev, best, second, metric, True)
        picks[kind] = (params[best]["layer"], clear)
        lines.append(f"{kind} tokens, best by {metric}: layer {params[best]['layer']} ({best}, "
                     f"{interval(ev['metrics'][best][metric])})" + (f"; runner-up {sep}" if sep else ""))
    if len(picks) < 2:
        return {"question": q, "branch": None, "why": "; ".join(unknown), "evidence": lines, "strength": strength(n)}
    (li, _), (lt, _) = picks["image"], picks["text"]
    unclear = [k for k, (_, clear) in picks.items() if not clear]
    if n >= MIN_TRIALS and unclear:
        branch = None
        why = (f"the best layer for {' and '.join(unclear)} tokens is within the noise of its runner-up "
               f"(image: {li}, text: {lt}); more trials, or more distinct layers, would decide")
    else:
        why = "each best layer is ahead of its runner-up beyond the noise" if n >= MIN_TRIALS else "by the best means"
        branch = (f"YES: image tokens at layer {li}, text tokens at layer {lt}. Next: multi-layer extraction "
                  "(layer_multi)." if li != lt else f"NO: layer {li} is best for both. Keep one layer for both.")
    return {"question": q, "branch": branch, "why": why, "evidence": lines, "strength": strength(n)}


def vl_prompt_variations(ev: dict, params: dict[str, dict]) -> dict:
    q = "Which VL text gives text tokens the best prompt adherence, and does it matter?"
    n = ev["trials"]
    cells = [c for c, p in params.items() if p.get("tokens") == "text" and c in ev["metrics"]]
    best, _ = _best(ev, cells, "vqa_yes", True)
    if best is None:
        return {"question": q, "branch": None, "why": _missing("vqa_yes"), "evidence": [], "strength": strength(n)}
    worst = _best(ev, cells, "vqa_yes", False)[0]
    lines = [f"vqa_yes of {c}: {interval(ev['metrics'][c]['vqa_yes'])}" for c in cells]
    d = difference(ev, best, worst, "vqa_yes") if worst is not None and worst != best else None
    matters = d is not None and _shows(d, +1, n)
    if d is not None:
        lines.append(_diff_line(d, "vqa_yes", n))
    label = params[best].get("vl_text")
    if matters:
        branch = f"YES: the VL text matters; best: {label} ({best}). Next: use it in later experiments."
    else:
        branch = ("NO: any VL text works (no difference detected over " f"{n} trials). Keep the exact prompt."
                  if n >= MIN_TRIALS else f"NO: the VL texts score alike; best: {label}. Keep the exact prompt.")
    return {"question": q, "branch": branch, "why": f"best {best}, worst {worst}", "evidence": lines,
            "strength": strength(n)}


def answers(experiment: str, evidence: dict, params: dict[str, dict]) -> list[dict]:
    """The decision-tree answers of ``experiment`` (``[]`` for experiments without one);
    ``params``: ``{cell: its params}``."""
    if not evidence["cells"]:
        return []
    if experiment == "vl_only_vs_qwen3":
        return [vl_only_vs_qwen3(evidence)]
    if experiment == "vl_layer_by_token":
        return [vl_layer_by_token(evidence, params)]
    if experiment == "vl_prompt_variations":
        return [vl_prompt_variations(evidence, params)]
    return []
