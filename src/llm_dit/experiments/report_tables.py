"""HTML pieces shared by a run's report and a trials report: the warnings, and the evidence table
(every cell's metrics as mean and 95 % interval over the trials, and its paired difference with the
baseline; see :mod:`evidence`)."""

from __future__ import annotations

import html
import math

from ..analysis.metric_info import METRIC_INFO

#: Higher or lower is better, per metric (``None``: neither, e.g. a distance to the text picture,
#: which a VL cell is meant to move away from).
BETTER: dict[str, str | None] = {k: ("higher" if up else "lower") for k, (_, up) in METRIC_INFO.items()}
BETTER.update({"ssim_text": None, "psnr_text": None})


def direction(metric: str) -> str:
    """"higher = better", "lower = better" or "" (a similarity to the baseline: read, not ranked)."""
    b = BETTER.get(metric)
    return f"{b} = better" if b else ""


def look_at_first(found: list[str], experiment: str) -> list[str]:
    """``found`` (metric names) with the experiment's "look at" metrics first."""
    from .presets import EXPERIMENTS

    first = [k for k in (EXPERIMENTS[experiment].look_at if experiment in EXPERIMENTS else ()) if k in found]
    return first + [k for k in found if k not in first]


def metric_order(evidence: dict, experiment: str) -> list[str]:
    """The metrics in the evidence, the experiment's "look at" metrics first."""
    return look_at_first(list(dict.fromkeys(k for m in evidence["metrics"].values() for k in m)), experiment)


def warnings_block(warnings: list[dict]) -> str:
    if not warnings:
        return ""
    items = "".join(f"<li>{html.escape(w['text'])}</li>" for w in warnings)
    return f"<div class=warn><b>Comparisons that compare nothing</b><ul>{items}</ul></div>"


def fmt_number(v: float | None, digits: int = 3) -> str:
    if v is None:
        return ""
    if math.isinf(v):
        return "inf"
    return f"{v:.{digits}g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.{digits - 1}e}"


def interval(s: dict, digits: int = 3) -> str:
    """``0.52 [0.48, 0.57]``, or the value alone for one trial."""
    if s.get("mean") is None:
        return ""
    if s.get("low") is None:
        return fmt_number(s["mean"], digits)
    return f"{fmt_number(s['mean'], digits)} [{fmt_number(s['low'], digits)}, {fmt_number(s['high'], digits)}]"


def ranks(evidence: dict, metric: str) -> tuple[str | None, str | None]:
    """The best and the worst cell by mean (baselines excluded; None when the metric has no direction
    or fewer than 3 cells have it)."""
    b = BETTER.get(metric)
    means = {c: m[metric]["mean"] for c, m in evidence["metrics"].items()
             if metric in m and c in evidence["baselines"] and m[metric]["mean"] is not None}
    if not b or len(means) < 3:
        return None, None
    order = sorted(means, key=lambda c: means[c], reverse=(b == "higher"))
    return order[0], order[-1]


def evidence_table(evidence: dict, metrics: list[str]) -> str:
    """One row per cell; per metric its mean [95 % interval] and, for a VL cell, the paired difference
    with its baseline (bold where it exceeds the noise). Best and worst marked per metric."""
    from .evidence import difference

    e = html.escape
    n = evidence["trials"]
    marks = {k: ranks(evidence, k) for k in metrics}
    head = "".join(f"<th>{e(k)}<br><small>{e(direction(k) or 'similarity to the baseline')}</small></th>"
                   for k in metrics)
    rows = []
    for c in evidence["cells"]:
        base = evidence["baselines"].get(c)
        tds = []
        for k in metrics:
            s = evidence["metrics"].get(c, {}).get(k)
            if s is None:
                tds.append("<td class=base>baseline</td>" if c not in evidence["baselines"] else "<td></td>")
                continue
            mark = " ★" if marks[k][0] == c else (" ▼" if marks[k][1] == c else "")
            text = e(fmt_number(s["mean"])) + mark  # three short lines: the column stays narrow
            if s["low"] is not None:
                text += f"<br><small>[{e(fmt_number(s['low']))}, {e(fmt_number(s['high']))}]</small>"
            d = difference(evidence, c, base, k) if base else None
            if d is not None:
                cls = " class=sig" if d["exceeds_noise"] else ""
                text += f"<br><small{cls}>Δ {'+' if d['mean'] >= 0 else ''}{e(interval(d, 2))}</small>"
            sort = f' data-v="{s["mean"]}"' if s["mean"] is not None else ""
            tds.append(f"<td{sort}>{text}</td>")
        label = e(c) + (" <small>(baseline)</small>" if c not in evidence["baselines"] else "")
        rows.append(f"<tr><td class=name>{label}</td>{''.join(tds)}</tr>")
    note = (f"<p>Mean over {n} trials [95 % bootstrap interval]; under each VL cell, Δ: its paired difference "
            "with its baseline [interval], <b>bold</b> where the interval excludes 0 (at least 4 trials). "
            "★ best, ▼ worst.</p>"
            if n > 1 else "<p>One image, one seed: every number below is one observation (anecdotal); "
            "run with several images and seeds (--images, --seeds) for intervals. ★ best, ▼ worst.</p>")
    return (note + "<div class=scroll><table class=runcells><thead><tr><th class=name>cell</th>" + head
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>")
