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


_IMAGES: dict[tuple, np.ndarray] = {}


def image_for(refdir, flags: list[str]) -> np.ndarray:
    """The image of one flag set (cached per module run)."""
    key = tuple(flags)
    if key not in _IMAGES:
        out = refdir / f"cache{len(_IMAGES)}.png"
        assert main(["generate", *BASE, *[f.format(d=refdir) for f in flags], "--out", str(out)]) == 0
        _IMAGES[key] = np.asarray(Image.open(out))
    return _IMAGES[key]


@pytest.fixture(scope="module")
def text_only(refdir):
    return image_for(refdir, [])


DEFAULT = ["--image", "{d}/a.png", "--vl-alpha", "0.6"]
NORM_NONE = ["--image", "{d}/a.png", "--norm", "none", "--vl-alpha", "0.6"]

# name: (flags, the recipe fields they must set, the flags of an image this one must differ from)
MODES = {
    **{f"blend-{m}": (["--blend", m, "--vl-alpha", "0.6"], {"blend": m, "alpha": 0.6}, DEFAULT) for m in (
        "linear", "concat", "replace", "adain", "adain_per_dim", "style_delta", "style_mean", "style_gem",
        "style_svd")},
    "area-resample": (["--resample", "area", "--vl-alpha", "0.6"], {"resample": "area"}, DEFAULT),
    "match-rms": (["--magnitude", "match_rms", "--vl-alpha", "0.6"], {"magnitude": "match_rms"}, DEFAULT),
    "tokens-image-only": (["--tokens", "image_only", "--blend", "replace"], {"token_selection": "image_only"},
                          ["--image", "{d}/a.png", "--blend", "replace"]),
    "tokens-text-only": (["--tokens", "text_only", "--blend", "replace"], {"token_selection": "text_only"},
                         ["--image", "{d}/a.png", "--blend", "replace"]),
    "layer-2": (["--vl-layer", "-2", "--vl-alpha", "0.6"], {"hidden_layer": -2}, DEFAULT),
    "pool": (["--pool", "2", "--blend", "replace"], {"pool": 2}, ["--image", "{d}/a.png", "--blend", "replace"]),
    "intra": (["--intra-ratio", "0.3", "--blend", "replace"], {"vl_intra_blend_ratio": 0.3},
              ["--image", "{d}/a.png", "--blend", "replace", "--tokens", "text_only"]),
    "dual": (["--intra-ratio", "0.3", "--dual", "--blend", "replace"],
             {"vl_intra_blend_ratio": 0.3, "dual_extraction": True},
             ["--image", "{d}/a.png", "--intra-ratio", "0.3", "--blend", "replace"]),
    "multi-layer": (["--intra-ratio", "0.3", "--image-layer", "-2", "--text-layer", "-6", "--blend", "replace"],
                    {"image_layer": -2, "text_layer": -6},
                    ["--image", "{d}/a.png", "--intra-ratio", "0.3", "--blend", "replace"]),
    "norm-none": (["--norm", "none", "--vl-alpha", "0.6"], {"normalization_mode": "none"}, DEFAULT),
    "norm-std": (["--norm", "global", "--target-std", "0.5", "--vl-alpha", "0.6"], {"target_std": 0.5}, DEFAULT),
    **{f"norm-{m}": (["--norm", m, "--vl-alpha", "0.6"], {"normalization_mode": m}, DEFAULT)
       for m in ("per_dim", "hybrid", "whiten")},
    **{f"outliers-{m}": (["--norm", "none", "--outlier-mask", m, "--outlier-threshold", "1.5", "--vl-alpha", "0.6"],
                         {"outlier_mask": m, "outlier_threshold": 1.5}, NORM_NONE)
       for m in ("zero", "clamp", "scale", "restore")},
    "budget": (["--token-budget", "4", "--budget-mode", "attention_pool", "--blend", "replace"],
               {"token_budget": 4, "budget_mode": "attention_pool"}, ["--image", "{d}/a.png", "--blend", "replace"]),
    **{f"schedule-{s.split(':')[0]}": (["--schedule", s], {"schedule": None}, DEFAULT) for s in (
        "linear:1:0", "cosine:0.9:0.1", "step:1:0:0.5", "list:1,0.5,0")},
    "splice": (["--backend", "splice", "--vl-alpha", "0.6"], {"backend": "splice"}, DEFAULT),
    "vl-no-text": (["--no-vl-text", "--vl-alpha", "0.6"], {"vl_text": ""}, DEFAULT),
    "vl-text": (["--vl-text", "Describe: {{prompt}}", "--vl-alpha", "0.6"], {"vl_text": "Describe: {prompt}"}, DEFAULT),
}


def test_the_default_blend_is_interpolate(refdir):
    assert np.array_equal(image_for(refdir, DEFAULT),
                          image_for(refdir, [*DEFAULT, "--blend", "interpolate", "--resample", "linear"]))


@pytest.mark.parametrize("name", list(MODES))
def test_every_mode_end_to_end(name, refdir, text_only, tmp_path, capsys):
    flags, fields, baseline = MODES[name]
    out = tmp_path / f"{name}.png"
    rc = main(["generate", *BASE, "--image", str(refdir / "a.png"), *[f.format(d=refdir) for f in flags],
               "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert f"wrote {out} and {name}.json" in cap.out
    meta = json.loads(out.with_suffix(".json").read_text())
    assert SEED_FIELDS <= set(meta) and meta["recipe"]["references"][0]["image"] == str(refdir / "a.png")
    assert meta["config"]["profile"] == "tiny" and meta["backend"] in ("vl", "splice")
    for key, value in fields.items():
        if key == "schedule":
            assert meta["recipe"]["schedule"]["kind"] == name.split("-")[1]
        else:
            assert meta["recipe"][key] == value, key
    assert np.isfinite(meta["blended_std"]) and meta["blended_shape"][0] <= 1504
    img = np.asarray(Image.open(out))
    assert img.shape == (64, 64, 3)
    assert not np.array_equal(img, text_only), "the reference did not reach the image"
    assert not np.array_equal(img, image_for(refdir, baseline)), "the flag made no difference"
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


def test_caption_as_prompt(refdir, tmp_path, capsys):
    """Seed 004's caption method: the prompt (and the VL chat's text) is Qwen3-VL's caption of the reference."""
    from llm_dit.config import resolve_config
    from llm_dit.vl import VLEmbeddingExtractor
    from llm_dit.vl.caption import make_caption

    small = [a for a in BASE if a not in ("--prompt", "a red house")]
    out = tmp_path / "cap.png"
    rc = main(["generate", *small, "--image", str(refdir / "a.png"), "--caption-tokens", "16", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    meta = json.loads(out.with_suffix(".json").read_text())
    cfg = resolve_config("tiny")
    vl = VLEmbeddingExtractor.from_config(cfg)
    from llm_dit.images import load_image

    expected, _ = make_caption(vl, load_image(refdir / "a.png"), 16, cfg)  # the oracle: the caption on its own
    assert meta["prompt"] == expected and meta["caption"]["tokens"] <= 16
    assert meta["config"]["encoder"]["max_length"] == 1504
    for args, words in ((["--prompt", "x", "--caption-tokens", "16", "--image", str(refdir / "a.png")],
                         "give a prompt or caption tokens, not both"),
                        (["--caption-tokens", "16"], "caption the first reference image: give one")):
        rc = main(["generate", *small, *args, "--out", str(tmp_path / "bad.png")])
        err = capsys.readouterr().err
        assert rc == 2 and words in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "bad.png").exists()


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


def test_saved_recipes_and_sidecars_rerun_from_another_folder(refdir, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    Image.open(refdir / "a.png").save(work / "ref.png")
    monkeypatch.chdir(work)
    assert main(["generate", *BASE, "--image", "ref.png", "--blend", "adain", "--out", "out/x.png",
                 "--save-recipe", "out/x.toml"]) == 0
    first = np.asarray(Image.open(work / "out/x.png"))
    monkeypatch.chdir(tmp_path)
    for recipe in ("work/out/x.toml", "work/out/x.json"):
        assert main(["generate", *BASE, "--recipe", recipe, "--out", "again.png"]) == 0
        assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png")), first)
    # --vl-alpha over a recipe with a schedule: the constant alpha wins
    assert main(["generate", *BASE, "--image", str(refdir / "a.png"), "--schedule", "linear:1:0", "--out", "s.png",
                 "--save-recipe", "s.toml"]) == 0
    assert main(["generate", *BASE, "--recipe", "s.toml", "--vl-alpha", "0.6", "--out", "c.png"]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["alpha"] == 0.6
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
