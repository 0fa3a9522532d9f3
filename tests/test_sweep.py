"""Sweeps: products of recipe fields, grid files, typed values, local CLIP scores, one-line errors."""

from __future__ import annotations

import json

import pytest
from run_args import PROMPT, SMALL, compare_args

from llm_dit.cli import main


def test_sweep_product_names_baselines_and_grids(refs, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sweep", "--image", refs[0], "--prompt", PROMPT, "--alphas", "0,0.5", "--layers=-2,-6",
                 "--tokens", "full,text_only", "--blends", "adain", "--out", str(out), *SMALL]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    names = [r["name"] for r in meta["results"]]
    assert len(names) == 8 and "alpha0.5_layer-6_text_only" in names
    assert all(r["recipe"]["blend"] == "adain" for r in meta["results"])  # one value: a fixed field
    assert meta["results"][0]["params"] == {"alpha": 0.0, "hidden_layer": -2, "token_selection": "full"}
    assert "8 cells: 0 already done, 5 picture(s) generated" in capsys.readouterr().out  # alpha 0: one picture
    assert (out / "grid_alpha0.5.png").is_file() and (out / "grid_layer-6.png").is_file()


def test_a_local_clip_adds_its_score_to_every_cell(refs, tmp_path, tiny_clip_dir):
    out = tmp_path / "c"
    assert main([*compare_args("vl_only_vs_qwen3", refs, out), "--clip", str(tiny_clip_dir), "--vqa", "off"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert all(-1 <= r["metrics"]["clip"] <= 1 and "vqa_yes" not in r["metrics"] for r in meta["results"])
    assert meta["sessions"][-1]["metric_notes"][0] == \
        "siglip: skipped (set metrics.siglip to a local folder; no model hub is used)"


def test_sweep_from_a_grid_file_and_generation_axes(refs, tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text('[recipe]\nblend = "interpolate"\n[axes]\nalpha = [0.3, 0.6]\n"generation.steps" = [2, 3]\n')
    out = tmp_path / "s"
    assert main(["sweep", "--image", refs[0], "--prompt", PROMPT, "--grid", str(grid), "--out", str(out), *SMALL]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    by = {r["name"]: r for r in meta["results"]}
    assert set(by) == {"text_only_steps2", "text_only_steps3", "alpha0.3_steps2", "alpha0.3_steps3",
                       "alpha0.6_steps2", "alpha0.6_steps3"}
    assert by["alpha0.3_steps3"]["generation"]["steps"] == 3 and by["alpha0.3_steps2"]["generation"]["steps"] == 2
    assert "ssim_text" in by["alpha0.6_steps2"]["metrics"]


def test_sweep_values_are_typed_per_field(refs, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["sweep", "--image", refs[0], "--prompt", PROMPT, "--masks", "none,zero", "--norms", "none,global",
                 "--out", str(out), *SMALL]) == 0
    names = {r["name"] for r in json.loads((out / "metadata.json").read_text())["results"]}
    assert {"norm-none_mask-none", "norm-global_mask-zero", "text_only"} <= names
    recipe = tmp_path / "r.toml"
    recipe.write_text("alpha = 0.5\n")
    out = tmp_path / "s"
    assert main(["sweep", "--image", refs[0], "--prompt", PROMPT, "--recipe", str(recipe), "--schedules", "0",
                 "--schedules", "linear:1:0", "--vary", "adapter=none", "--out", str(out), *SMALL]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    by = {r["name"]: r for r in meta["results"]}
    # a constant-0 schedule is the pure-text picture (so no baseline is added), and says alpha 0
    assert set(by) == {"constant-0", "linear-1-0"} and by["constant-0"]["pure_text"]
    assert by["constant-0"]["alpha"] == 0.0 and by["constant-0"]["conditioning"]["alpha"] == 0.0
    assert by["linear-1-0"]["alpha"] == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])
    assert by["linear-1-0"]["recipe"]["alpha"] == 0.5 and by["linear-1-0"]["recipe"]["adapter"] is None
    # standard JSON: the infinite PSNR of an identical picture is null
    json.loads((out / "metadata.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    capsys.readouterr()
    out = tmp_path / "t"
    assert main(["sweep", "--image", refs[0], "--prompt", PROMPT, "--tokens", "image_only,text_only", "--out", str(out),
                 *SMALL]) == 0
    assert [r["name"] for r in json.loads((out / "metadata.json").read_text())["results"]] == \
        ["pure_text", "image_only", "text_only"]


def test_caption_tokens_is_an_axis_and_the_caption_budget_is_recorded(refs, tmp_path):
    # seed 004 phase 4 as a sweep: one caption per length, a pure-text baseline per length; and the
    # caption's generation budget (seed 004's --max-tokens) reaches Qwen3-VL and the records
    out = tmp_path / "c"
    assert main(["sweep", "--image", refs[0], "--vary", "caption_tokens=8,16", "--alphas", "0.5",
                 "--caption-max-new-tokens", "24", "--out", str(out), *SMALL]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    by = {r["name"]: r for r in meta["results"]}
    assert set(by) == {"text_only_caption8", "caption8", "text_only_caption16", "caption16"}
    assert by["caption16"]["caption_tokens"] == 16 and by["caption16"]["params"] == {"caption_tokens": 16}
    assert meta["plan"]["caption_max_new_tokens"] == 24 and set(meta["captions"]) == {"8", "16"}
    for n in (8, 16):
        assert json.loads((out / "captions" / f"caption{n}.json").read_text())["max_new_tokens"] == 24
    # --from repeats the budget: the same run key, every cell kept
    again = tmp_path / "again"
    assert main(["compare", "--from", str(out / "metadata.json"), "--out", str(again), "--no-progress"]) == 0
    assert json.loads((again / "metadata.json").read_text())["run_key"] == meta["run_key"]
    # one value is a fixed caption length, as --caption-tokens N
    out = tmp_path / "one"
    assert main(["sweep", "--image", refs[0], "--vary", "caption_tokens=8", "--methods", "caption,generic",
                 "--out", str(out), *SMALL]) == 0
    names = {r["name"] for r in json.loads((out / "metadata.json").read_text())["results"]}
    assert names == {"text_only_caption8", "caption", "generic"}


@pytest.mark.parametrize("args, message", [
    (["compare", "--experiment", "alpha_swep"], "unknown experiment 'alpha_swep'; did you mean alpha_sweep?"),
    (["compare", "--experiment", "alpha_sweep", "--image", "{a}"], "alpha_sweep needs a prompt"),
    (["compare", "--experiment", "caption_alignment", "--image", "{a}", "--prompt", "x"], "writes its own prompts"),
    (["compare", "--experiment", "multi_reference", "--image", "{a}", "--prompt", "x"],
     "multi_reference takes 2 reference images"),
    (["compare", "--experiment", "alpha_sweep", "--image", "/no/such.png", "--prompt", "x"], "does not exist"),
    (["sweep", "--image", "{a}", "--prompt", "x"], "nothing to sweep"),
    (["sweep", "--image", "{a}", "--prompt", "x", "--vary", "colour=1,2"], "cannot sweep 'colour'"),
    (["sweep", "--image", "{a}", "--prompt", "x", "--vary", "alpha"], "--vary takes FIELD=V1,V2"),
    (["sweep", "--image", "{a}", "--prompt", "x", "--alphas", "0.3,1.5"], "alpha"),
    (["sweep", "--image", "{a}", "--prompt", "x", "--alphas", "0.3,0.3"], "repeats a value"),
    (["sweep", "--image", "{a}", "--prompt", "x", "--layers=-2,-40"], "out of range"),
    (["sweep", "--image", "{a}", "--prompt", "x", "--methods", "caption"], "give caption tokens"),
    (["sweep", "--image", "{a}", "--prompt", "x", "--grid", "{grid}"], "'recipe' must be a table"),
    (["sweep", "--image", "{a}", "--vary", "caption_tokens=8,x", "--alphas", "0.5"],
     "the sweep list for 'caption_tokens' holds 'x', not a whole number in 1..1504"),
    (["sweep", "--image", "{a}", "--vary", "caption_tokens=8,2000", "--alphas", "0.5"], "in 1..1504"),
    (["sweep", "--image", "{a}", "--prompt", "x", "--vary", "caption_tokens=8,16"], "not both"),
    (["sweep", "--image", "{a}", "--caption-tokens", "8", "--vary", "caption_tokens=8,16"], "not both"),
    (["sweep", "--image", "{a}", "--prompt", "x", "--alphas", "0,1", "--caption-max-new-tokens", "9"],
     "a caption budget (max new tokens) applies to runs that caption the image"),
    (["compare", "--experiment", "alpha_sweep", "--image", "{a}", "--prompt", "x", "--caption-max-new-tokens", "9"],
     "alpha_sweep writes no captions"),
    (["sweep", "--image", "{a}", "--caption-tokens", "8", "--alphas", "0,1", "--caption-max-new-tokens", "0"],
     "--caption-max-new-tokens must be"),
])
def test_run_errors_are_one_line(refs, tmp_path, capsys, args, message):
    grid = tmp_path / "g.toml"
    grid.write_text("recipe = 3\n")
    args = [a.replace("{a}", refs[0]).replace("{grid}", str(grid)) for a in args]
    rc = main([*args, "--out", str(tmp_path / "o"), *SMALL])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()  # nothing written before the checks pass
