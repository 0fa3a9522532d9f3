"""The experiment runner end to end on the tiny models: every named experiment, its files, grids,
model loading, reports and the seed scripts (resuming: test_resume.py; sweeps: test_sweep.py)."""

from __future__ import annotations

import json
import logging
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from run_args import PROMPT, SMALL, compare_args

from llm_dit.cli import main
from llm_dit.experiments.presets import EXPERIMENTS, Inputs

SEED_FIELDS = ("vl_shape", "vl_std", "token_selection", "normalization_mode", "blended_std", "generation_time",
               "alpha", "hidden_layer")


@pytest.fixture(scope="module")
def runs(experiment_runs):
    """Every named experiment, quick, on the tiny profile: {name: (rc, folder, stdout, stderr)} (the
    session's runs, which test_oracle.py also makes again cell by cell)."""
    return {name: run[:4] for name, run in experiment_runs.items()}


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_named_experiment_runs_quick_and_writes_its_folder(runs, refs, name):
    rc, folder, out, err = runs[name]
    assert rc == 0, err
    assert f"report: {folder / 'report.html'}" in out
    exp = EXPERIMENTS[name]
    cells = exp.cells(Inputs(refs[: exp.images], True))
    meta = json.loads((folder / "metadata.json").read_text())
    # run-level fields
    assert meta["experiment"] == name and meta["seed"] == 42 and meta["steps"] == 4
    assert (meta["width"], meta["height"]) == (64, 64)
    assert meta["image"] == refs[0] and meta["prompt"] == (None if exp.caption else PROMPT)
    assert set(meta["models"]) == {"z_image", "vl"} and meta["models"]["z_image"].endswith("z-image")
    assert {"torch", "diffusers", "transformers"} <= set(meta["versions"])
    assert "git_revision" in meta and meta["config"]["profile"] == "tiny"
    # one record per cell, in plan order, each with its picture
    assert [r["name"] for r in meta["results"]] == [c.name for c in cells]
    assert meta["counts"] == {"done": len(cells), "failed": 0, "pending": 0}
    for r in meta["results"]:
        assert r["success"] and r["status"] == "done"
        assert set(SEED_FIELDS) <= set(r) and r["recipe"] and "generate" in r["timings"] or r["same_picture_as"]
        assert {"grid_artifact", "ssim_ref", "color_hist_ref", "vqa_yes"} <= set(r["metrics"])
        with Image.open(folder / r["file"]) as im:
            assert im.size == (64, 64)
        if not r["pure_text"]:
            assert "ssim_text" in r["metrics"]  # compared with its group's pure-text picture
    # grid, report, plots
    with Image.open(folder / "comparison_grid.png") as g:
        assert g.width > 256 * 2
    html = (folder / "report.html").read_text()
    assert 'src="comparison_grid.png"' in html and "<table class=runcells>" in html
    assert all(f'src="{c.name}.png"' in html for c in cells)
    assert (folder / "plots" / "std_per_cell.png").is_file() and (folder / "plots" / "metrics.png").is_file()
    assert not list(folder.rglob(".*.tmp"))
    if exp.caption:
        assert list((folder / "captions").glob("caption*.txt")) and meta["captions"]


def test_the_pure_text_cell_equals_stock_diffusers(runs, stock_pipe):
    _, folder, _, _ = runs["vl_only_vs_qwen3"]
    got = np.asarray(Image.open(folder / "pure_qwen3_4b.png"))
    ref = stock_pipe(prompt=PROMPT, num_inference_steps=4, width=64, height=64, guidance_scale=0.0,
                     generator=torch.Generator("cpu").manual_seed(42), output_type="np").images[0]
    assert np.array_equal(got, (ref * 255).round().astype(np.uint8))
    # and the VL cells are not that picture
    assert not np.array_equal(got, np.asarray(Image.open(folder / "pure_vl_full_seq.png")))


def test_seed000_metadata_loop(runs, capsys):
    """Seed 000's loop over ``results`` as docs/notes.md prints it: pure-text cells hold an honest
    ``vl_std`` of null (no VL embedding), skipped with a dash; every VL cell has its number."""
    _, folder, _, _ = runs["vl_only_vs_qwen3"]
    with open(folder / "metadata.json") as f:
        data = json.load(f)
    for result in data["results"]:
        vl_std = "-" if result["vl_std"] is None else f"{result['vl_std']:.2f}"
        print(f"{result['name']}: vl_std={vl_std}, blended_std={result['blended_std']:.2f}")
    times = [(r["name"], r["generation_time"]) for r in data["results"]]
    assert all(isinstance(t, float) for _, t in times)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("pure_qwen3_4b: vl_std=-, blended_std=")
    assert all("vl_std=-" not in ln for ln in lines[1:]) and len(lines) == 4


def test_cells_that_must_match_are_generated_once(runs):
    _, folder, out, _ = runs["caption_alignment"]
    meta = json.loads((folder / "metadata.json").read_text())
    alpha0 = [r for r in meta["results"] if r["params"].get("alpha") == 0]
    assert len(alpha0) == 4 and all(r["same_picture_as"] == "text_only" and r["pure_text"] for r in alpha0)
    assert "13 cells: 0 already done, 9 picture(s) generated" in out
    base = np.asarray(Image.open(folder / "text_only.png"))
    assert all(np.array_equal(base, np.asarray(Image.open(folder / r["file"]))) for r in alpha0)
    # caption-aligned and generic differ in the VL text only; both blend with the caption's encoding
    cap = next(r for r in meta["results"] if r["name"] == "layer-6_alpha0.5_caption")
    gen = next(r for r in meta["results"] if r["name"] == "layer-6_alpha0.5_generic")
    assert cap["recipe"]["vl_text"] == "{prompt}" and gen["recipe"]["vl_text"] == "Describe this image."
    assert cap["prompt"] == gen["prompt"] == meta["captions"]["256"]
    for f in ("grid_method_caption.png", "grid_layer-6.png", "grid_alpha0.5.png"):
        assert (folder / f).is_file()


def test_grids_are_2d_when_two_parameters_vary(runs):
    from llm_dit.experiments.grid import layout

    _, folder, _, _ = runs["vl_layer_by_token"]
    meta = json.loads((folder / "metadata.json").read_text())
    lay = layout("t", [], [(r["params"], r["name"]) for r in meta["results"]])
    assert (lay.row_title, lay.col_title) == ("tokens", "layer")
    assert lay.row_labels == ["image", "text"] and lay.col_labels == ["-2", "-10"]
    assert lay.rows[1][0] == "text_tokens_layer-2" and lay.lead == ["text_only"]  # the baseline leads
    one_d = layout("t", [], [({}, "a"), ({}, "b")])
    assert not one_d.row_labels and one_d.rows == [["a", "b"]]


def test_backends_differ_per_backend_and_record_dopsds_defaults(runs):
    rc, folder, _, err = runs["backends"]
    assert rc == 0, err
    results = json.loads((folder / "metadata.json").read_text())["results"]
    vl_cells = [r for r in results if not r["pure_text"]]
    assert sorted({r["backend"] for r in vl_cells}) == ["dopsd", "splice", "vl"]
    assert len({r["fingerprint"] for r in vl_cells}) == len(vl_cells) == 6  # 3 backends x 2 layers, image tokens
    for r in vl_cells:
        settings = r["conditioning"].get("backend_settings")
        assert (settings == {"defaults": {"layer": -2, "min_pixels": 512 * 512, "max_pixels": 768 * 768,
                                          "max_tokens": 1024}}) == (r["backend"] == "dopsd"), r["name"]
        assert r["recipe"]["max_pixels"] == 768 * 768 and r["hidden_layer"] == r["params"]["layer"]


def test_splice_borrows_the_loaded_vision_tower(refs, tmp_path, monkeypatch):
    import llm_dit.vl.extract as X

    def no_second_copy(*a, **k):
        raise AssertionError("the vision tower was loaded a second time")

    monkeypatch.setattr(X, "load_vision_tower", no_second_copy)
    assert main([*compare_args("splice_vs_vl", refs, tmp_path / "s"), "--vqa", "on"]) == 0
    meta = json.loads((tmp_path / "s" / "metadata.json").read_text())
    assert meta["counts"]["done"] == 5


def test_the_grid_draws_without_a_scalable_font(monkeypatch):
    from PIL import ImageFont

    from llm_dit.experiments.grid import Panel, layout, render

    real = ImageFont.load_default

    def bitmap_only(size=None):
        if size is not None:
            raise OSError("no FreeType")
        return real()

    monkeypatch.setattr(ImageFont, "load_default", bitmap_only)
    img = Image.new("RGB", (64, 64), (200, 0, 0))
    grid = render(layout("a prompt\nwith a newline", [Panel("reference", img)],
                         [({"a": 1, "b": 2}, Panel("x", img)), ({"a": 2, "b": 2}, Panel("y", None, "failed"))]))
    assert grid.size[0] > 2 * 256 and grid.getpixel((10, grid.height - 20)) != (0, 0, 0)


def test_each_model_loads_once_and_one_forward_pass_serves_every_layer(refs, tmp_path, monkeypatch):
    from llm_dit.generate import ZImage
    from llm_dit.vl import VLEmbeddingExtractor

    calls = {"vl": 0, "z": 0, "forward": 0}
    real_from_config, real_load, real_extract = (VLEmbeddingExtractor.from_config.__func__, ZImage.load.__func__,
                                                 VLEmbeddingExtractor.extract)

    def from_config(cls, *a, **k):
        calls["vl"] += 1
        return real_from_config(cls, *a, **k)

    def load(cls, *a, **k):
        calls["z"] += 1
        return real_load(cls, *a, **k)

    def extract(self, *a, **k):
        calls["forward"] += 1
        return real_extract(self, *a, **k)

    monkeypatch.setattr(VLEmbeddingExtractor, "from_config", classmethod(from_config))
    monkeypatch.setattr(ZImage, "load", classmethod(load))
    monkeypatch.setattr(VLEmbeddingExtractor, "extract", extract)
    # image and text tokens at layers -2 and -10: four cells, one chat
    assert main(compare_args("vl_layer_by_token", refs, tmp_path / "r")) == 0
    assert calls == {"vl": 1, "z": 1, "forward": 1}


def test_report_rebuilds_a_partial_run(runs, tmp_path, capsys):
    import shutil

    _, folder, _, _ = runs["adain"]
    copy = tmp_path / "adain"
    shutil.copytree(folder, copy)
    for f in ("report.html", "metadata.json", "comparison_grid.png"):
        (copy / f).unlink()
    (copy / "cells" / "adain_alpha0.5.json").unlink()  # as if killed before this record
    assert main(["report", str(copy)]) == 0
    assert f"report: {copy / 'report.html'}" in capsys.readouterr().out
    meta = json.loads((copy / "metadata.json").read_text())
    assert meta["counts"] == {"done": 4, "failed": 0, "pending": 1}
    assert (copy / "comparison_grid.png").is_file() and "pending" in (copy / "report.html").read_text()
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_experiments_lists_every_experiment(capsys):
    assert main(["experiments"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == list(EXPERIMENTS)
    assert len(EXPERIMENTS) == 19


SCRIPTS = Path(__file__).resolve().parents[1] / "experiments" / "qwen3_vl" / "scripts"


def _script(name: str):
    import importlib.util

    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(SCRIPTS))
    return mod


def test_seed_scripts_forward_to_the_cli(refs, tmp_path, capsys):
    rc = _script("run_comparison").run(_script("run_comparison").build, [
        "--image", refs[0], "--prompt", PROMPT, "--experiment", "vl_only_vs_qwen3", "--output-dir",
        str(tmp_path / "rc"), "--quick", *SMALL])
    assert rc == 0 and (tmp_path / "rc" / "pure_vl_text_tokens.png").is_file()
    assert "llm-dit compare --experiment vl_only_vs_qwen3" in capsys.readouterr().err

    mod = _script("compare_embedding_stats")
    assert mod.run(mod.build, ["--image", refs[0], "--output-dir", str(tmp_path / "st"), "--profile", "tiny"]) == 0
    stats = json.loads((tmp_path / "st" / "stats.json").read_text())
    assert set(stats["layers"]) == {"-2", "-6"} and stats["prompt"] == mod.DEFAULT_PROMPT

    mod = _script("sweep_caption_alignment")
    assert mod.run(mod.build, ["-i", refs[0], "-o", str(tmp_path / "sw"), "--hidden-layers=-2,-6", "--alphas", "0",
                               "1", "--caption-tokens", "32", *SMALL]) == 0
    assert (tmp_path / "sw" / "layer-6_alpha1_caption.png").is_file()
    assert (tmp_path / "sw" / "grid_method_generic.png").is_file() and (tmp_path / "sw" / "grid_alpha1.png").is_file()
    capsys.readouterr()

    mod = _script("run_comparison")
    assert mod.run(mod.build, ["--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "required: -i/--image, -e/--experiment/--sweep" in err and len(err.strip().splitlines()) == 1


def test_run_comparison_takes_the_notes_other_spelling(refs, tmp_path, capsys):
    # seed 003: --sweep NAME -o DIR, as --experiment NAME --output-dir DIR
    mod = _script("run_comparison")
    assert mod.run(mod.build, ["--image", refs[0], "--prompt", "Homer Simpson eating spaghetti", "--sweep",
                               "vl_only_vs_qwen3", "-o", str(tmp_path / "vs"), "--quick", *SMALL]) == 0
    assert (tmp_path / "vs" / "pure_qwen3_4b.png").is_file() or (tmp_path / "vs" / "metadata.json").is_file()
    first = capsys.readouterr().err.splitlines()[0]
    assert shlex.split(first)[:6] == ["llm-dit", "compare", "--experiment", "vl_only_vs_qwen3", "--out",
                                      str(tmp_path / "vs")]


def test_forwarded_commands_paste_back(monkeypatch, capsys):
    # the printed line is shell-quoted: shlex.split gives back the argv that ran (values with a leading
    # minus, spaces and quotes included)
    ran = []
    monkeypatch.setattr("llm_dit.cli.main", lambda argv: ran.append(list(argv)) or 0)
    cases = [("compare_embedding_stats", ["--image", "my pic.png", "--prompt", "Homer's \"red\" roof", "-o", "o"]),
             ("sweep_caption_alignment", ["-i", "a b.png", "--hidden-layers=-2,-6", "--alphas", "0", "1", "-o", "o"]),
             ("run_comparison", ["--image", "x.png", "--prompt", "a house; rm -rf /", "--sweep", "adain", "-o", "o"])]
    for name, args in cases:
        mod = _script(name)
        assert mod.run(mod.build, args) == 0
        assert shlex.split(capsys.readouterr().err.strip()) == ["llm-dit", *ran[-1]]
    assert "--layers=-2,-6" in " ".join(ran[1]) or "hidden_layer=-2,-6" in " ".join(ran[1])
    assert "--caption-tokens" in ran[1] and ran[1][ran[1].index("--caption-tokens") + 1] == "1024"  # seed 004's


NOTES_004 = '[vl]\nhidden_layer = -6       # Most stable\nalpha = 0.5             # Balanced blend\n' \
    'method = "caption"      # More diverse outputs\ncaption_tokens = 1024   # Detailed description\n'


def test_seed_004_caption_test_writes_the_notes_files(refs, tmp_path, monkeypatch, capsys):
    # seed 004's command as written (smaller numbers: tiny generates 2500 caption tokens in minutes),
    # with its notes-format config.toml and --profile tiny added
    monkeypatch.chdir(tmp_path)
    Path("config.toml").write_text(NOTES_004)
    mod = _script("vl_caption_embedding_test")
    args = ["-i", refs[0], "-o", "results", "--caption-tokens", "32", "--max-tokens", "40", "--vl-alpha", "0.5",
            "--vl-hidden-layer", "-6", "--steps", "2", "--seed", "42", "--config", "config.toml", "--profile",
            "default", "-v", "--profile", "tiny", "--width", "64", "--height", "64", "--no-progress"]
    assert mod.run(mod.build, args, after=mod.layout) == 0
    err = capsys.readouterr().err
    from llm_dit.cli.logs import split_verbosity

    ran = shlex.split(err.splitlines()[0])[1:]  # -v goes on to llm-dit: its logger at debug level
    assert "-v" in ran and split_verbosity(ran)[1] == logging.DEBUG
    [stamp] = Path("results").iterdir()
    assert re.fullmatch(r"\d{8}_\d{6}", stamp.name)
    files = {p.name for p in stamp.iterdir()}
    assert files == {"input.png", "caption.txt", "raw_output.txt", "result_vl_aligned.png", "result_vl_generic.png",
                     "result_text_only.png", "comparison_grid.png", "metadata.json", "run"}  # Instruct: no thinking
    meta = json.loads((stamp / "metadata.json").read_text())
    s = meta["settings"]
    assert (s["vl_alpha"], s["vl_hidden_layer"], s["caption_tokens"], s["max_tokens"], s["steps"], s["seed"]) == \
        (0.5, -6, 32, 40, 2, 42)
    assert s["config_method"] == "caption" and shlex.split(s["command"])[1] == "sweep"
    assert set(meta["results"]) == {"vl_aligned", "vl_generic", "text_only"}
    assert meta["results"]["vl_aligned"]["cell"] == "caption" and meta["caption"]["model_variant"] == "instruct"
    for r in meta["results"].values():
        assert (stamp / r["file"]).read_bytes() == (stamp / r["run_file"]).read_bytes()
    assert (stamp / "caption.txt").read_text() == (stamp / "run" / "captions" / "caption32.txt").read_text()
    # a Thinking model's caption record: thinking.txt holds its thinking block
    from llm_dit.experiments.caption_test import write_caption_test

    record = stamp / "run" / "captions" / "caption32.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "thinking": "a house, so...",
                                  "model_variant": "thinking"}))
    written = {p.name for p in write_caption_test(stamp / "run", tmp_path / "again")}
    assert "thinking.txt" in written and (tmp_path / "again" / "thinking.txt").read_text() == "a house, so...\n"
    # the config's [vl] gives the defaults where no flag does
    Path("c2.toml").write_text('[vl]\nhidden_layer = -4\nalpha = 0.25\ncaption_tokens = 16\n')
    argv = mod.build(["-i", refs[0], "-o", "r2", "--config", "c2.toml"])
    assert argv[argv.index("--caption-tokens") + 1] == "16" and argv[argv.index("--alphas") + 1] == "0.25"
    assert "--layers=-4" in argv


@pytest.mark.parametrize("text, message", [
    ('[default.encoder]\nhidden_layer = -6\nmax_length = 1400\n[default.vl]\ndevice = "cpu"\n',
     "[default.vl] device is not an llm-dit setting: llm-dit runs Qwen3-VL on runtime.device"),
    ('[vl]\nalpha = 2\n', "[vl] key 'alpha'"),
])
def test_a_notes_config_llm_dit_cannot_follow_is_one_line(refs, tmp_path, capsys, text, message):
    (tmp_path / "config.toml").write_text(text)
    mod = _script("vl_caption_embedding_test")
    rc = mod.run(mod.build, ["-i", refs[0], "-o", str(tmp_path / "r"), "--config", str(tmp_path / "config.toml"),
                             *SMALL], after=mod.layout)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and message in err[-1] and "Traceback" not in "".join(err) and err[-1].startswith("llm-dit: error:")


def test_commands_that_do_not_read_the_notes_vl_table_refuse_it(refs, tmp_path, capsys):
    (tmp_path / "config.toml").write_text(NOTES_004)
    assert main(["generate", "--profile", "tiny", "--config", str(tmp_path / "config.toml"), "--prompt", "x",
                 "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("[vl] alpha = 0.5 is a default of llm-dit sweep and the notes' caption scripts only; this "
                        "command would not use it (llm-dit generate takes --vl-alpha A)") and "\n" not in err
    assert not (tmp_path / "x.png").exists()
