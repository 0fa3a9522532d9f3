"""The experiment runner end to end on the tiny models: every named experiment, sweeps, resume, reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llm_dit.cli import main
from llm_dit.experiments.presets import EXPERIMENTS, Inputs

PROMPT = "A simple cartoon house with a red roof"
SMALL = ["--profile", "tiny", "--steps", "4", "--width", "64", "--height", "64", "--no-progress"]
SEED_FIELDS = ("vl_shape", "vl_std", "token_selection", "normalization_mode", "blended_std", "generation_time",
               "alpha", "hidden_layer")


@pytest.fixture(scope="module")
def refs(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("refs")
    rng = np.random.default_rng(0)
    a, b = d / "a.png", d / "b.png"
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(a)
    Image.new("RGB", (128, 128), (30, 120, 220)).save(b)
    return [str(a), str(b)]


def compare_args(name: str, refs: list[str], out: Path) -> list[str]:
    exp = EXPERIMENTS[name]
    args = ["compare", "--experiment", name, "--out", str(out), "--quick", *SMALL]
    for im in refs[: exp.images]:
        args += ["--image", im]
    return args + ([] if exp.caption else ["--prompt", PROMPT])


@pytest.fixture(scope="module")
def runs(refs, tmp_path_factory):
    """Every named experiment, quick, on the tiny profile: {name: (rc, folder, stdout, stderr)}."""
    out = {}
    root = tmp_path_factory.mktemp("runs")
    for name in EXPERIMENTS:
        folder = root / name
        capture = _Capture()
        with capture:
            rc = main(compare_args(name, refs, folder))
        out[name] = (rc, folder, capture.out, capture.err)
    return out


class _Capture:
    """stdout/stderr of an in-process CLI call (capsys is function-scoped)."""

    def __enter__(self):
        import io

        self._old = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
        return self

    def __exit__(self, *exc):
        self.out, self.err = sys.stdout.getvalue(), sys.stderr.getvalue()
        sys.stdout, sys.stderr = self._old


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
    assert 'src="comparison_grid.png"' in html and "<table class=cells>" in html
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


def test_rerun_skips_finished_cells_and_refuses_a_different_run(refs, tmp_path, capsys):
    out = tmp_path / "r"
    args = compare_args("alpha_sweep", refs, out)
    assert main(args) == 0
    capsys.readouterr()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png") if not p.name.startswith(("comparison",))}
    assert main(args) == 0
    assert "4 cells: 4 already done, 0 picture(s) generated" in capsys.readouterr().out
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("*.png") if p.name in stamps}
    assert main([*args, "--seed", "7"]) == 2
    assert "holds a different run" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(compare_args("alpha_sweep", refs, tmp_path / "other")) == 2
    assert "not empty and holds no llm-dit run" in capsys.readouterr().err


def test_a_failing_cell_is_recorded_and_the_run_goes_on(refs, tmp_path, capsys, monkeypatch):
    import llm_dit.experiments.runner as R

    real = R.build_conditioning

    def flaky(recipe, *a, **k):
        if recipe.alpha == 0.5:
            raise RuntimeError("simulated failure")
        return real(recipe, *a, **k)

    monkeypatch.setattr(R, "build_conditioning", flaky)
    out = tmp_path / "r"
    assert main(compare_args("alpha_sweep", refs, out)) == 1
    cap = capsys.readouterr()
    errors = [ln for ln in cap.err.splitlines() if ln.startswith("llm-dit: error")]
    assert len(errors) == 1 and "1 of 4 cells failed (alpha0.5)" in errors[0] and "Traceback" not in cap.err
    assert "alpha0.5: FAILED: RuntimeError: simulated failure" in cap.err  # said when it happened
    meta = json.loads((out / "metadata.json").read_text())
    failed = [r for r in meta["results"] if r["status"] == "failed"]
    assert [r["name"] for r in failed] == ["alpha0.5"] and "simulated failure" in failed[0]["error"]
    assert meta["counts"] == {"done": 3, "failed": 1, "pending": 0} and not (out / "alpha0.5.png").exists()
    monkeypatch.setattr(R, "build_conditioning", real)
    assert main(compare_args("alpha_sweep", refs, out)) == 0  # the failed cell is retried
    assert "4 cells: 3 already done, 1 picture(s) generated" in capsys.readouterr().out


def _count(folder: Path) -> int:
    return len(list((folder / "cells").glob("*.json"))) if (folder / "cells").is_dir() else 0


def test_killed_mid_run_then_resumed_every_cell_exactly_once(refs, tmp_path, capsys):
    """SIGKILL once cells have started to finish; the rerun completes the rest and redoes nothing."""
    out = tmp_path / "killed"
    args = ["compare", "--experiment", "alpha_sweep", "--image", refs[0], "--prompt", PROMPT, "--out", str(out),
            *SMALL]  # the full sweep: 11 cells
    proc = subprocess.Popen([sys.executable, "-m", "llm_dit", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 120
    while _count(out) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.stem for p in (out / "cells").glob("*.json")}
    assert 3 <= len(finished) < 11, "the kill came too late to test resuming"
    before = {n: (out / f"{n}.png").read_bytes() for n in finished}
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert f"11 cells: {len(finished)} already done, {11 - len(finished)} picture(s) generated" in stdout
    meta = json.loads((out / "metadata.json").read_text())
    names = [r["name"] for r in meta["results"]]
    assert len(names) == len(set(names)) == 11 and meta["counts"]["done"] == 11
    assert sorted(p.stem for p in (out / "cells").glob("*.json")) == sorted(names)
    for r in meta["results"]:
        with Image.open(out / r["file"]) as im:
            im.verify()
    assert all((out / f"{n}.png").read_bytes() == b for n, b in before.items())  # finished cells untouched
    assert not list(out.rglob(".*.tmp"))


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


def test_resume_keeps_baseline_metrics_and_sees_changed_files(refs, tmp_path, capsys, extractor, zimage):
    from llm_dit.vl.adapter import fit_adapter

    adapter = tmp_path / "ad.safetensors"
    fit_adapter(extractor, zimage.pipe.tokenizer, zimage.pipe.text_encoder, ["a cat", "a red house", "a boat"],
                -6, -2).save(adapter)
    out = tmp_path / "r"
    args = ["sweep", "--image", refs[0], "--prompt", PROMPT, "--vary", f"adapter=none,{adapter}", "--blends",
            "replace", "--out", str(out), *SMALL]
    assert main(args) == 0
    (out / "cells" / "adapter-none.json").unlink()  # as if killed before this record
    assert main(args) == 0
    assert "3 cells: 2 already done, 1 picture(s) generated" in capsys.readouterr().out
    rec = json.loads((out / "cells" / "adapter-none.json").read_text())
    assert "ssim_text" in rec["metrics"]  # the baseline of an earlier session still counts
    fit_adapter(extractor, zimage.pipe.tokenizer, zimage.pipe.text_encoder, ["a dog", "a tree"], -6, -2).save(adapter)
    assert main(args) == 0
    assert "3 cells: 2 already done, 1 picture(s) generated" in capsys.readouterr().out  # the refitted one
    assert main([*args, "--save-embeddings"]) == 0  # finished cells without their embeddings are redone
    assert len(list((out / "embeddings").glob("*.safetensors"))) == 3


def test_a_mistake_in_the_models_writes_nothing_and_blocks_nothing(refs, tmp_path, capsys):
    out = tmp_path / "r"
    assert main([*compare_args("alpha_sweep", refs, out), "--vl-model", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err and not out.exists()
    assert main([*compare_args("alpha_sweep", refs, out), "--device", "mps"]) == 2
    assert not out.exists()
    assert main(compare_args("alpha_sweep", refs, out)) == 0


@pytest.mark.parametrize("args, message", [
    (["compare", "--experiment", "alpha_swep"], "unknown experiment 'alpha_swep'; did you mean alpha_sweep?"),
    (["compare", "--experiment", "alpha_sweep", "--image", "{a}"], "alpha_sweep needs --prompt"),
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
    (["sweep", "--image", "{a}", "--prompt", "x", "--methods", "caption"], "give --caption-tokens"),
    (["sweep", "--image", "{a}", "--prompt", "x", "--grid", "{grid}"], "'recipe' must be a table"),
])
def test_run_errors_are_one_line(refs, tmp_path, capsys, args, message):
    grid = tmp_path / "g.toml"
    grid.write_text("recipe = 3\n")
    args = [a.replace("{a}", refs[0]).replace("{grid}", str(grid)) for a in args]
    rc = main([*args, "--out", str(tmp_path / "o"), *SMALL])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()  # nothing written before the checks pass


def test_experiments_lists_every_experiment(capsys):
    assert main(["experiments"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == list(EXPERIMENTS)
    assert len(EXPERIMENTS) == 18


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

    mod = _script("vl_caption_embedding_test")
    assert mod.run(mod.build, ["-i", refs[0], "-o", str(tmp_path / "cap"), "--caption-tokens", "32", *SMALL]) == 0
    names = {r["name"] for r in json.loads((tmp_path / "cap" / "metadata.json").read_text())["results"]}
    assert names == {"text_only_caption32", "caption", "generic"}

    mod = _script("sweep_caption_alignment")
    assert mod.run(mod.build, ["-i", refs[0], "-o", str(tmp_path / "sw"), "--hidden-layers=-2,-6", "--alphas", "0",
                               "1", "--caption-tokens", "32", *SMALL]) == 0
    assert (tmp_path / "sw" / "layer-6_alpha1_caption.png").is_file()
    assert (tmp_path / "sw" / "grid_method_generic.png").is_file() and (tmp_path / "sw" / "grid_alpha1.png").is_file()
    capsys.readouterr()

    mod = _script("run_comparison")
    assert mod.run(mod.build, ["--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "required: -i/--image, -e/--experiment" in err and len(err.strip().splitlines()) == 1
