"""``findings.md`` beside a report: what a researcher pastes into their notes, kept in step with the run.

It holds the setup, the comparisons that compare nothing, the answers with their numbers, the cells'
"look at" metrics, the grid, and a **Notes** section that is the researcher's own: everything after
:data:`NOTES_MARK` is kept when ``llm-dit report`` (or a resumed run) writes the file again. A
``findings.md`` without the mark (written by hand) is kept whole, as the notes.
"""

from __future__ import annotations

from pathlib import Path

from ..io import write_text
from .report_tables import direction, interval, metric_order

FILE = "findings.md"
NOTES_MARK = "<!-- your notes go below this line: `llm-dit report` keeps everything after it -->"


def notes_of(path: Path) -> str:
    """The researcher's part of an existing findings file ("" when there is none)."""
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace")
    return text.split(NOTES_MARK, 1)[1] if NOTES_MARK in text else "\n" + text


def _md(text: str) -> str:
    """One table cell: no pipes or line breaks."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_findings(out: Path, meta: dict, evidence: dict, grid: str | None) -> Path:
    """``out/findings.md`` for the run (or trials) ``meta`` with its ``evidence``; ``grid``: the grid
    file to show."""
    path = out / FILE
    notes = notes_of(path)
    lines = [f"# Findings: {meta['experiment']}", "", "## Setup", ""]
    setup = {
        "experiment": meta["experiment"] + (" (quick)" if meta.get("quick") else ""),
        "prompt": meta.get("prompt") or "captions of each reference",
        "reference image(s)": ", ".join(meta.get("images") or []),
        "trials": evidence["trials"],
        "seed(s)": ", ".join(map(str, meta.get("seeds") or [meta.get("seed")])),
        "steps / size": f"{meta['steps']} / {meta['width']}x{meta['height']}",
        "models": f"Z-Image {meta['models']['z_image']}; Qwen3-VL {meta['models']['vl']}",
    }
    lines += [f"- **{k}**: {v}" for k, v in setup.items()]
    models = meta.get("config", {}).get("models", {})
    if "tiny" in (models.get("z_image"), models.get("vl")):
        lines += ["", "> The tiny random-weight models made these pictures: every number measures noise."]
    if meta.get("warnings"):
        lines += ["", "## Comparisons that compare nothing", ""]
        lines += [f"- {('[' + w['trial'] + '] ') if 'trial' in w else ''}{w['text']}" for w in meta["warnings"]]
    if meta.get("answers"):
        lines += ["", "## Answers", ""]
        for a in meta["answers"]:
            lines += [f"### {a['question']}", "", f"**{a['branch'] or 'Not decided by these numbers'}**", "",
                      f"Why: {a['why']}. Evidence: {a['strength']}.", ""]
            lines += [f"- {e}" for e in a["evidence"]]
            lines.append("")
    metrics = metric_order(evidence, meta["experiment"])
    if metrics:
        lines += ["", "## Cells", "",
                  "Mean [95 % interval] over the trials." if evidence["trials"] > 1 else "One image, one seed.", "",
                  "| cell | " + " | ".join(f"{m} ({direction(m) or 'similarity to the baseline'})" for m in metrics)
                  + " |",
                  "|---" * (len(metrics) + 1) + "|"]
        for c in evidence["cells"]:
            row = [_md(interval(evidence["metrics"].get(c, {}).get(m, {})) or "") for m in metrics]
            lines.append(f"| {_md(c)}{' (baseline)' if c not in evidence['baselines'] else ''} | " + " | ".join(row)
                         + " |")
    if grid:
        lines += ["", "## Grid", "", f"![{grid}]({grid})"]
    lines += ["", "## Notes", "", NOTES_MARK]
    return write_text(path, "\n".join(lines) + (notes if notes else "\n\n"), durable=False)
