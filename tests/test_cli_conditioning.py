"""``llm-dit generate`` with vision: every mode end to end on the tiny profile, the metadata sidecar,
recipe files, and staged model loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from llm_dit.cli import main

SEED_FIELDS = {"vl_shape", "vl_std", "token_selection", "normalization_mode", "blended_std", "generation_time",
               "alpha", "hidden_layer"}
BASE = ["--profile", "tiny", "--prompt", "a red house", "--width", "64", "--height", "64", "--steps", "3"]


@pytest.fixture(scope="module")
def refdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("refs")
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(d / "a.png")
    Image.new("RGB", (64, 64), (30, 60, 220)).save(d / "b.png")
    return d


@pytest.fixture(scope="module")
def text_only(refdir):
    out = refdir / "text.png"
    assert main(["generate", *BASE, "--out", str(out)]) == 0
    return np.asarray(Image.open(out))


MODES = {
    **{f"blend-{m}": ["--blend", m, "--vl-alpha", "0.6"] for m in (
        "interpolate", "linear", "concat", "replace", "adain", "adain_per_dim", "style_delta", "style_mean",
        "style_gem", "style_svd")},
    "area-resample": ["--resample", "area", "--vl-alpha", "0.6"],
    "match-rms": ["--magnitude", "match_rms", "--vl-alpha", "0.6"],
    "tokens-image-only": ["--tokens", "image_only", "--vl-alpha", "1", "--blend", "replace"],
    "tokens-text-only": ["--tokens", "text_only", "--vl-alpha", "1", "--blend", "replace"],
    "layer-2-pool": ["--vl-layer", "-2", "--pool", "2", "--vl-alpha", "0.6"],
    "intra": ["--intra-ratio", "0.3", "--vl-alpha", "1", "--blend", "replace"],
    "dual": ["--intra-ratio", "0.5", "--dual", "--vl-alpha", "1", "--blend", "replace"],
    "multi-layer": ["--intra-ratio", "0.5", "--image-layer=-2", "--text-layer=-6", "--vl-alpha", "0.8"],
    "norm-none": ["--norm", "none", "--vl-alpha", "0.6"],
    "norm-std": ["--norm", "global", "--target-std", "0.5", "--vl-alpha", "0.6"],
    "norm-per_dim": ["--norm", "per_dim", "--vl-alpha", "0.6"],
    "norm-hybrid": ["--norm", "hybrid", "--vl-alpha", "0.6"],
    "norm-whiten": ["--norm", "whiten", "--vl-alpha", "0.6"],
    **{f"outliers-{m}": ["--norm", "none", "--outlier-mask", m, "--outlier-threshold", "1.5", "--vl-alpha", "0.6"]
       for m in ("zero", "clamp", "scale", "restore")},
    "budget": ["--token-budget", "4", "--budget-mode", "attention_pool", "--blend", "replace", "--vl-alpha", "1"],
    **{f"schedule-{s.split(':')[0]}": ["--schedule", s] for s in (
        "linear:1:0", "cosine:0.9:0.1", "step:1:0:0.5", "list:1,0.5,0")},
    "splice": ["--backend", "splice", "--vl-alpha", "0.6"],
    "vl-no-text": ["--no-vl-text", "--vl-alpha", "0.6"],
    "vl-text": ["--vl-text", "Describe: {prompt}", "--vl-alpha", "0.6"],
}


@pytest.mark.parametrize("name", list(MODES))
def test_every_mode_end_to_end(name, refdir, text_only, tmp_path, capsys):
    out = tmp_path / f"{name}.png"
    rc = main(["generate", *BASE, "--image", str(refdir / "a.png"), *MODES[name], "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert f"wrote {out} and {name}.json" in cap.out
    meta = json.loads(out.with_suffix(".json").read_text())
    assert SEED_FIELDS <= set(meta) and meta["recipe"]["references"][0]["image"] == str(refdir / "a.png")
    assert meta["config"]["profile"] == "tiny" and meta["backend"] in ("vl", "splice")
    assert np.isfinite(meta["blended_std"]) and meta["blended_shape"][0] <= 1504
    img = np.asarray(Image.open(out))
    assert img.shape == (64, 64, 3)
    assert not np.array_equal(img, text_only), "the reference did not reach the image"
    if name.startswith("schedule"):
        assert isinstance(meta["alpha"], list) and len(meta["alpha"]) == 3
        assert len(meta["schedule"]["blended_std_per_step"]) == 3


def test_multi_reference_with_roles_and_weights(refdir, tmp_path, capsys):
    out = tmp_path / "multi.png"
    rc = main(["generate", *BASE, "--image", str(refdir / "a.png"), "--image", str(refdir / "b.png"),
               "--weight", "2", "--weight", "1", "--role", "content", "--role", "style", "--style-alpha", "0.4",
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads(out.with_suffix(".json").read_text())
    assert [(s["role"], s["weight"]) for s in meta["sources"]] == [("content", 2.0), ("style", 1.0)]
    assert meta["style_shape"][1] == meta["vl_shape"][1]


def test_alpha_zero_is_the_text_image_and_a_recipe_file_reproduces_a_run(refdir, text_only, tmp_path, capsys):
    out = tmp_path / "zero.png"
    assert main(["generate", *BASE, "--image", str(refdir / "a.png"), "--vl-alpha", "0", "--out", str(out),
                 "--save-recipe", str(tmp_path / "r.toml")]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), text_only)
    first = tmp_path / "first.png"
    assert main(["generate", *BASE, "--image", str(refdir / "a.png"), "--blend", "adain", "--vl-alpha", "0.7",
                 "--out", str(first), "--save-recipe", str(tmp_path / "adain.toml")]) == 0
    again = tmp_path / "again.png"
    assert main(["generate", *BASE, "--recipe", str(tmp_path / "adain.toml"), "--out", str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
    from_meta = tmp_path / "meta.png"  # a sidecar is a recipe file too
    assert main(["generate", *BASE, "--recipe", str(first.with_suffix(".json")), "--out", str(from_meta)]) == 0
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(from_meta)))
    capsys.readouterr()


def test_models_are_loaded_in_stages(refdir, tmp_path, monkeypatch):
    from llm_dit.generate import ZImage
    from llm_dit.vl.extract import VLEmbeddingExtractor

    events = []
    real_load, real_vl, real_unload = ZImage.load.__func__, VLEmbeddingExtractor.from_pretrained.__func__, \
        VLEmbeddingExtractor.unload
    monkeypatch.setattr(ZImage, "load", classmethod(lambda c, cfg: events.append("z-image load") or real_load(c, cfg)))
    monkeypatch.setattr(VLEmbeddingExtractor, "from_pretrained", classmethod(
        lambda c, *a, **k: events.append(f"vl load {k.get('backend')}") or real_vl(c, *a, **k)))
    monkeypatch.setattr(VLEmbeddingExtractor, "unload", lambda self: events.append("vl unload") or real_unload(self))
    assert main(["generate", *BASE, "--image", str(refdir / "a.png"), "--out", str(tmp_path / "x.png")]) == 0
    assert events == ["vl load vl", "vl unload", "z-image load"]
    events.clear()
    assert main(["generate", *BASE, "--image", str(refdir / "a.png"), "--backend", "splice",
                 "--out", str(tmp_path / "y.png")]) == 0
    assert events == ["z-image load", "vl load splice", "vl unload"]
