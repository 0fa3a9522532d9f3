"""What a researcher reads and sends: answers, findings.md and its notes, the single-file report,
several folders on one page, and grids whose rows follow the axes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from run_args import PROMPT, SMALL, compare_args

from llm_dit.cli import main
from llm_dit.experiments.findings import NOTES_MARK
from llm_dit.experiments.grid import Panel, layout


@pytest.fixture(scope="module")
def run(refs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("share") / "vl_only"
    assert main(compare_args("vl_only_vs_qwen3", refs, out)) == 0
    return out


@pytest.fixture(scope="module")
def sweep(refs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("share") / "sweep"
    assert main(["sweep", "--image", refs[0], "--prompt", PROMPT, "--alphas", "0.3,0.6", "--layers=-2,-6",
                 "--out", str(out), *SMALL]) == 0
    return out


def test_the_report_opens_with_the_answer_and_says_tiny(run):
    meta = json.loads((run / "metadata.json").read_text())
    [answer] = meta["answers"]
    assert answer["question"] == "Does pure_vl_text_tokens match pure_qwen3_4b quality?"
    assert answer["strength"] == "anecdotal: one image, one seed"
    recs = {r["name"]: r for r in meta["results"]}
    diff = recs["pure_vl_text_tokens"]["metrics"]["grid_artifact"] - recs["pure_qwen3_4b"]["metrics"]["grid_artifact"]
    assert f"grid_artifact: pure_vl_text_tokens - pure_qwen3_4b = {'+' if diff >= 0 else ''}{diff:.3g}" in \
        " ".join(answer["evidence"])
    # the branch follows the point estimates (one trial), a difference under 0.01 counting as none
    worse = diff >= 0.01 or recs["pure_qwen3_4b"]["metrics"]["vqa_yes"] - recs["pure_vl_text_tokens"]["metrics"][
        "vqa_yes"] >= 0.01
    assert answer["branch"].startswith("NO" if worse else "YES")
    html = (run / "report.html").read_text()
    assert html.index("Tiny random-weight models") < html.index("Answers") < html.index("<h2>Cells") \
        < html.index("comparison grid")
    # the look-at metrics lead the table, with their direction; the baseline says so instead of blanks
    head = re.findall(r"<th[^>]*>([a-z_]+)", html[html.index("<table"):])
    assert head[:5] == ["cell", "picture", "ssim_text", "grid_artifact", "vqa_yes"]
    assert "lower = better" in html and "<td class=base>baseline</td>" in html


def test_findings_notes_survive_regeneration(run, capsys):
    findings = run / "findings.md"
    text = findings.read_text()
    assert text.startswith("# Findings: vl_only_vs_qwen3") and "## Answers" in text and "![comparison_grid.png]" in text
    assert text.rstrip().endswith(NOTES_MARK)
    mine = "\nThe text-token picture keeps the roof; the full sequence loses it.\n\n- try layer -8 next\n"
    findings.write_text(text + mine)
    assert main(["report", str(run)]) == 0
    again = findings.read_text()
    assert again.endswith(text.split(NOTES_MARK)[1] + mine) and again.count(NOTES_MARK) == 1
    assert main(["report", str(run)]) == 0  # and again: nothing doubled
    assert findings.read_text() == again


def test_a_hand_written_findings_file_is_kept_as_the_notes(sweep):
    (sweep / "findings.md").write_text("my own notes, no mark\n")
    assert main(["report", str(sweep)]) == 0
    text = (sweep / "findings.md").read_text()
    assert text.startswith("# Findings: sweep") and text.endswith(NOTES_MARK + "\nmy own notes, no mark\n")


def test_the_single_file_report_opens_alone(run, tmp_path, capsys):
    assert main(["report", str(run), "--single-file"]) == 0
    assert f"single file: {run / 'report_single.html'}" in capsys.readouterr().out
    alone = tmp_path / "sent"
    alone.mkdir()
    shutil.copy(run / "report_single.html", alone / "r.html")  # no other file beside it
    html = (alone / "r.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs), [r[:40] for r in refs
                                                                                if not r.startswith("data:")]
    assert html.count("<img") == len(re.findall(r'<img[^>]*src="data:image/png;base64,', html))
    n = len(json.loads((run / "metadata.json").read_text())["results"])
    assert len(re.findall(r"<img class=thumb", html)) == n  # every cell's picture, embedded
    assert "comparison_grid" in html and "Answers" in html


def test_the_single_file_embeds_nothing_from_outside_the_run_folder(tmp_path):
    from llm_dit.experiments.report_share import embed

    run, outside = tmp_path / "run", tmp_path / "secret.png"
    run.mkdir()
    from PIL import Image

    for p in (run / "a.png", outside):
        Image.new("RGB", (8, 8), (200, 0, 0)).save(p)
    text = embed('<img src="a.png"><img src="../secret.png">', run, [run])
    assert text.count("data:image/png;base64,") == 1 and 'data-local="../secret.png"' in text


def test_several_folders_on_one_page(run, sweep, tmp_path, capsys):
    page = tmp_path / "both.html"
    assert main(["report", str(run), str(sweep), "--out", str(page)]) == 0
    html = page.read_text()
    assert "2 runs compared" in html and "vl_only: vl_only_vs_qwen3" in html and "sweep: sweep" in html
    assert html.count("<img class=grid") == 2 and "Cells, folder by folder" in html
    for rel in re.findall(r'src="([^"]+)"', html):
        assert (tmp_path / rel).resolve().is_file()
    capsys.readouterr()
    assert main(["report", str(run), str(sweep)]) == 2
    assert "give --out FILE.html" in capsys.readouterr().err
    assert main(["report", str(run), str(sweep), "--out", str(tmp_path / "x.txt")]) == 2


def test_grid_rows_follow_the_axes():
    def p(name):
        return Panel(name)

    # one varied parameter: the baseline (no parameters) beside the reference, not inside the row
    lay = layout("t", [p("reference")], [({}, p("text_only")), ({"alpha": 0.3}, p("alpha0.3")),
                                          ({"alpha": 0.6}, p("alpha0.6"))])
    assert [x.label for x in lay.lead] == ["reference", "text_only"]
    assert [[x.label for x in row] for row in lay.rows] == [["alpha0.3", "alpha0.6"]]
    # two: a table, the baseline again outside it; panels keep their cells' names
    lay = layout("t", [], [({}, p("text_only")), *(({"alpha": a, "layer": k}, p(f"a{a}_l{k}")) for a in (0.3, 0.6)
                                                   for k in (-2, -6, -8))])
    assert (lay.row_title, lay.col_title) == ("alpha", "layer") and [x.label for x in lay.lead] == ["text_only"]
    assert [[x.label for x in row] for row in lay.rows] == [["a0.3_l-2", "a0.3_l-6", "a0.3_l-8"],
                                                            ["a0.6_l-2", "a0.6_l-6", "a0.6_l-8"]]


def test_a_slice_title_comes_before_a_long_caption():
    from PIL import Image, ImageDraw

    from llm_dit.experiments.grid import _fit_text, _font
    from llm_dit.experiments.presets import GridSpec
    from llm_dit.experiments.report import grid_title

    meta = {"experiment": "caption_alignment", "prompt": None, "captions": {"256": "a very long caption " * 40}}
    title = grid_title(meta, GridSpec("grid_layer-2.png", "layer -2: alpha x method", {"layer": -2}, "alpha", "method"))
    shown = _fit_text(ImageDraw.Draw(Image.new("RGB", (10, 10))), title, _font(18), 900)
    assert shown.startswith("[layer -2: alpha x method] caption_alignment: caption a very long") and shown.endswith("…")
