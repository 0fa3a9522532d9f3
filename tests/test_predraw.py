"""The report's conditioning plots, drawn while the last pictures are made: kept when the run ends
as expected, drawn again from what the folder holds when it does not."""

from __future__ import annotations

import json

from llm_dit.cli import main
from run_args import compare_args


def drawn_cells(monkeypatch) -> list[list[str]]:
    """The cell names of each drawing of the conditioning plots, as they happen."""
    import llm_dit.experiments.report as report

    calls: list[list[str]] = []
    real = report._draw_conditioning

    def spy(out, inputs):
        calls.append([row[0] for row in inputs[0]])
        return real(out, inputs)

    monkeypatch.setattr(report, "_draw_conditioning", spy)
    return calls


def test_plots_drawn_before_the_end_are_kept(refs, tmp_path, monkeypatch):
    calls = drawn_cells(monkeypatch)
    out = tmp_path / "r"
    assert main(compare_args("alpha_sweep", refs, out)) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert calls == [[r["name"] for r in meta["results"]]]  # once, before the end, with every cell
    for name in ("std_per_cell", "per_dim_ratio", "metrics"):
        assert (out / "plots" / f"{name}.png").is_file()
    html = (out / "report.html").read_text()
    assert html.index("std_per_cell.png") < html.index("metrics.png") < html.index("per_dim_ratio.png")


def test_a_picture_that_fails_gets_the_plots_drawn_again(refs, tmp_path, monkeypatch):
    import llm_dit.experiments.pictures as P

    calls = drawn_cells(monkeypatch)
    real = P.Pictures._images

    def last_fails(self, steps, generation):
        images = real(self, steps, generation)
        self.pictures_made = getattr(self, "pictures_made", 0) + len(images)
        return [RuntimeError("simulated")] if self.pictures_made == 4 else images

    monkeypatch.setattr(P.Pictures, "_images", last_fails)
    out = tmp_path / "r"
    assert main(compare_args("alpha_sweep", refs, out)) == 1
    meta = json.loads((out / "metadata.json").read_text())
    done = [r["name"] for r in meta["results"] if r["status"] == "done"]
    assert meta["counts"]["failed"] == 1 and len(done) == 3
    assert len(calls) == 2 and len(calls[0]) == 4 and calls[1] == done  # the guess, then the truth
