"""extract, caption and stats from the command line: outputs and one-line errors."""

import json

import pytest
import torch
from PIL import Image

from llm_dit.cli import main
from llm_dit.vl import ReferenceStats, VLExtractionResult


def run(args, capsys):
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, [ln for ln in cap.err.replace("\r", "\n").splitlines() if ln.strip() and "|" not in ln]


@pytest.fixture
def img(tmp_path):
    p = tmp_path / "ref.png"
    Image.new("RGB", (160, 96), (30, 90, 200)).save(p)
    return p


def test_extract_writes_a_loadable_result(tmp_path, img, capsys):
    out = tmp_path / "e.safetensors"
    rc, stdout, err = run(["extract", "--profile", "tiny", "--image", str(img), "--image", str(img),
                           "--text", "A blue sky", "--layers=-6,-2", "--tokens", "image_only", "--pool", "2",
                           "--out", str(out)], capsys)
    assert rc == 0, err
    r = VLExtractionResult.load(out)
    assert r.layers == [-6, -2] and r.token_selection == "image_only" and r.pool == 2 and r.num_images == 2
    assert r.vl_text == "A blue sky" and r.backend == "vl"
    assert r.record["config"]["vl"]["pool"] == 2 and r.record["config"]["profile"] == "tiny"
    assert "torch" in r.record["versions"] and r.record["images"] == [str(img), str(img)]
    line = stdout.splitlines()[0]
    assert f"{r.num_tokens} tokens (image_only)" in line and "image grid" in line and "L-6:" in line


def test_extract_splice_and_no_text(tmp_path, img, capsys):
    out = tmp_path / "s.safetensors"
    rc, stdout, err = run(["extract", "--profile", "tiny", "--image", str(img), "--no-text", "--backend", "splice",
                           "--out", str(out)], capsys)
    assert rc == 0, err
    r = VLExtractionResult.load(out)
    assert r.backend == "splice" and r.vl_text is None and r.layers == [-6]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--image", "{d}/missing.png"], "image {d}/missing.png does not exist"),
        (["--no-text", "--text", "x", "--image", "{img}"], "--text and --no-text exclude each other"),
        (["--no-text"], "nothing to extract"),
        (["--text", "x", "--tokens", "image_only"], "'image_only' is empty: the chat has no image"),
        (["--image", "{img}", "--layers=99"], "hidden layer 99 is out of range"),
        (["--image", "{img}", "--layers=x"], "expected integers"),
        (["--image", "{img}", "--pool", "0"], "'vl.pool'"),
        (["--image", "{img}", "--backend", "clip"], "'vl.backend'"),
        (["--image", "{img}", "--tokens", "all"], "'vl.token_selection'"),
        (["--image", "{img}", "--max-pixels", "10"], "'vl.max_pixels'"),
        (["--image", "{img}", "--vl-model", "{d}/nowhere"], "does not exist"),
        (["--image", "{long}"], "too elongated"),
        (["--image", "{img}", "--no-text", "--tokens", "user_text"], "'user_text' is empty: the chat has no text"),
    ],
)
def test_extract_errors(tmp_path, img, capsys, extra, needle):
    out = tmp_path / "out" / "e.safetensors"
    long = tmp_path / "long.png"
    Image.new("RGB", (8, 2000)).save(long)
    args = ["extract", "--profile", "tiny", "--out", str(out)] + [a.format(d=tmp_path, img=img, long=long)
                                                                  for a in extra]
    rc, _, err = run(args, capsys)
    assert rc == 2 and len(err) == 1 and needle.format(d=tmp_path) in err[0], err
    assert not out.exists()


def test_extract_output_suffix(tmp_path, img, capsys):
    rc, _, err = run(["extract", "--profile", "tiny", "--image", str(img), "--out", str(tmp_path / "e.pt")], capsys)
    assert rc == 2 and "must end in .safetensors" in err[0]


def test_caption_writes_caption_and_raw(tmp_path, img, capsys):
    out = tmp_path / "caption.txt"
    rc, stdout, err = run(["caption", "--profile", "tiny", "--image", str(img), "--max-new-tokens", "6",
                           "--temperature", "0", "--out", str(out)], capsys)
    assert rc == 0, err
    assert out.read_text().strip() and (tmp_path / "caption.raw.txt").is_file()
    meta = json.loads((tmp_path / "caption.json").read_text())
    assert meta["model_variant"] == "instruct" and meta["config"]["profile"] == "tiny"
    rc, _, err = run(["caption", "--profile", "tiny", "--image", str(img), "--temperature", "-1",
                      "--out", str(tmp_path / "c3.txt")], capsys)
    assert rc == 2 and "--temperature" in err[0]
    rc, _, err = run(["caption", "--profile", "tiny", "--image", str(img), "--min-tokens", "500",
                      "--max-new-tokens", "4", "--temperature", "0", "--out", str(tmp_path / "c2.txt")], capsys)
    assert rc == 2 and "no usable caption" in err[-1] and not (tmp_path / "c2.txt").exists()
    # progress first, the error last
    assert err[0].startswith("caption: attempt 1/3") and err[-1].startswith("llm-dit: error: ")


def test_stats_reference_in_the_notes_npz_layout(tmp_path, img, capsys):
    """``--out ref.npz`` writes the notes' qwen3_4b_stats.npz layout, which every --reference-stats reads."""
    import numpy as np

    ref = tmp_path / "qwen3_4b_stats.npz"
    rc, _, err = run(["stats", "reference", "--profile", "tiny", "--layer", "-6", "--prompts", str(_prompts(tmp_path)),
                      "--out", str(ref)], capsys)
    assert rc == 0, err
    z = np.load(ref)
    assert z["per_dim_std"].shape == (64,) and z["per_dim_mean"].shape == (64,) and int(z["layer"]) == 11
    picture = tmp_path / "masked.png"
    rc, _, err = run(["generate", "--profile", "tiny", "--prompt", "a house", "--image", str(img), "--vl-hidden-layer",
                      "-6", "--norm", "per_dim", "--reference-stats", str(ref), "--outlier-mask", "restore",
                      "--steps", "2", "--width", "64", "--height", "64", "--out", str(picture)], capsys)
    assert rc == 0, err
    assert picture.is_file()
    rc, _, err = run(["stats", "reference", "--profile", "tiny", "--out", str(tmp_path / "r.pt")], capsys)
    assert rc == 2 and err[0].endswith("must end in .safetensors or .npz")


def _prompts(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("a red house on a hill\na cat asleep on a blue sofa\n")
    return p


def test_stats_reference_and_compare(tmp_path, img, capsys):
    ref = tmp_path / "ref.safetensors"
    rc, stdout, err = run(["stats", "reference", "--profile", "tiny", "--layer", "-6", "--covariance",
                           "--out", str(ref)], capsys)
    assert rc == 0, err
    stats = ReferenceStats.load(ref)
    assert stats.layer == 11 and stats.num_layers == 16 and stats.covariance.shape == (64, 64)
    assert stats.num_prompts >= 40 and "tokens from" in stdout

    out = tmp_path / "cmp"
    rc, stdout, err = run(["stats", "compare", "--profile", "tiny", "--image", str(img), "--prompt", "A blue sky",
                           "--layers=-6,-2", "--out", str(out)], capsys)
    assert rc == 0, err
    report = json.loads((out / "stats.json").read_text())
    assert set(report["layers"]) == {"-6", "-2"}
    assert sorted(p.name for p in out.glob("*.png")) == ["leak.png", "std_per_dim_layer-2.png",
                                                          "std_per_dim_layer-6.png"]
    assert stdout.count("layer ") >= 2
    assert report["config"]["profile"] == "tiny" and report["max_pixels"] == 65536

    big = tmp_path / "big.png"
    Image.new("RGB", (512, 512), (9, 9, 9)).save(big)
    rc, _, err = run(["stats", "compare", "--profile", "tiny", "--image", str(big), "--prompt", "A blue sky",
                      "--max-pixels", "4096", "--pool", "2", "--layers=-2", "--out", str(tmp_path / "small")], capsys)
    assert rc == 0, err
    small = json.loads((tmp_path / "small" / "stats.json").read_text())
    assert small["token_grids"] == [[1, 1]] and small["max_pixels"] == 4096  # 2x2 tokens pooled by 2

    rc, _, err = run(["stats", "compare", "--profile", "tiny", "--image", str(img), "--prompt", "x",
                      "--threshold", "0", "--out", str(tmp_path / "c2")], capsys)
    assert rc == 2 and "greater than 1" in err[0]
    rc, _, err = run(["stats", "reference", "--profile", "tiny", "--layer", "-20", "--out",
                      str(tmp_path / "r2.safetensors")], capsys)
    assert rc == 2 and "out of range" in err[0]
    rc, _, err = run(["stats", "reference", "--profile", "tiny", "--prompts", str(tmp_path / "none.txt"),
                      "--out", str(tmp_path / "r3.safetensors")], capsys)
    assert rc == 2 and "does not exist" in err[0]


def test_extraction_uses_the_profile_cache(tmp_path, img, capsys, monkeypatch):
    # the tiny profile's cache lives under LLM_DIT_CACHE: a repeat request is served from disk
    from llm_dit.io import cache_root

    args = ["extract", "--profile", "tiny", "--image", str(img), "--text", "cache me", "--out",
            str(tmp_path / "a.safetensors")]
    assert run(args, capsys)[0] == 0
    entries = set((cache_root() / "extractions").glob("*.safetensors"))
    assert entries
    assert run(args[:-1] + [str(tmp_path / "b.safetensors")], capsys)[0] == 0
    assert set((cache_root() / "extractions").glob("*.safetensors")) == entries
    a, b = VLExtractionResult.load(tmp_path / "a.safetensors"), VLExtractionResult.load(tmp_path / "b.safetensors")
    assert torch.equal(a.embedding, b.embedding)
