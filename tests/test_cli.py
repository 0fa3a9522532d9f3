"""The command line: every user error is one line on stderr, a non-zero exit, and no output file."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from llm_dit.cli import main


def run(args, capsys):
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def messages(stderr):
    """stderr without progress bars (tqdm lines of model loading and denoising)."""
    return [ln for ln in stderr.replace("\r", "\n").splitlines() if ln.strip() and "|" not in ln]


@pytest.fixture(scope="module")
def ref_stats(tmp_path_factory):
    d = tmp_path_factory.mktemp("stats")
    for layer in (-2, -6):
        assert main(["stats", "reference", "--profile", "tiny", "--layer", str(layer),
                     "--out", str(d / f"ref{layer}.safetensors")]) == 0
    return d


@pytest.fixture
def files(tmp_path, ref_stats):
    (tmp_path / "text.png").write_text("this is not an image")
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "bad.toml").write_text("[tiny\n")
    for f in ref_stats.iterdir():
        (tmp_path / f.name).symlink_to(f)
    return tmp_path


CASES = [
    (["--init-image", "{d}/missing.png"], "init image {d}/missing.png does not exist"),
    (["--init-image", "{d}/text.png"], "is not an image file"),
    (["--init-image", "{d}/truncated.png"], "could not be decoded"),
    (["--init-image", "{d}/empty.png"], "is empty (0 bytes)"),
    (["--image", "{d}/missing.png"], "reference image 1 {d}/missing.png does not exist"),
    (["--image", "{d}/ok.png", "--image", "{d}/text.png"], "reference image 2"),
    (["--image", "{d}/ok.png", "--vl-alpha", "1.5"], "recipe field 'alpha': input should be less than or equal to 1"),
    (["--image", "{d}/ok.png", "--vl-alpha", "-0.2"], "recipe field 'alpha'"),
    (["--image", "{d}/ok.png", "--image", "{d}/ok.png", "--weight", "1", "--weight", "-1"],
     "the weights of the content references sum to zero"),
    (["--image", "{d}/ok.png", "--weight", "1", "--weight", "2"], "give one --weight per --image"),
    (["--image", "{d}/ok.png", "--role", "layout"], "'content' or 'style'"),
    (["--image", "{d}/ok.png", "--blend", "mix"], "'interpolate', 'linear', 'concat', 'replace', 'adain'"),
    (["--image", "{d}/ok.png", "--norm", "zscore"], "'none', 'global', 'per_dim', 'hybrid', 'whiten' or 'cross'"),
    (["--image", "{d}/ok.png", "--outlier-mask", "cut"], "'none', 'zero', 'clamp', 'scale' or 'restore'"),
    (["--image", "{d}/ok.png", "--schedule", "list:0.5,0.4"], "lists 2 values but the run has 9 steps"),
    (["--image", "{d}/ok.png", "--schedule", "ramp:1:0"], "unknown schedule 'ramp'"),
    (["--image", "{d}/ok.png", "--backend", "text"], "backend 'text' takes no reference images"),
    (["--image", "{d}/ok.png", "--dual"], "set vl_intra_blend_ratio too"),
    (["--blend", "adain", "--vl-alpha", "0.5"], "vision settings (alpha, blend) need --image REF"),
    (["--backend", "vl", "--blend", "style_delta"], "style_delta blend needs a reference image"),
    (["--backend", "vl", "--intra-ratio", "0.5"], "give a reference image"),
    (["--image", "{d}/ok.png", "--no-vl-text", "--tokens", "user_text"], "token selection 'user_text' is empty"),
    (["--backend", "vl", "--no-vl-text"], "the VL chat would be empty"),
    (["--vl-model", "tiny"], "vision settings (vl_model) need --image REF"),
    (["--image", "{d}/ok.png", "--vl-alpha", "0.5", "--schedule", "linear:1:0"], "give --vl-alpha or --schedule"),
    (["--image", "{d}/ok.png", "--vl-layer", "99"], "hidden layer 99 is out of range for a vl model with 16 layers"),
    (["--image", "{d}/ok.png", "--backend", "splice", "--vl-layer", "-20"], "out of range for a splice model"),
    (["--image", "{d}/ok.png", "--intra-ratio", "0.5", "--text-layer", "20"], "hidden layer 20 is out of range"),
    (["--image", "{d}/ok.png", "--target-std", "inf"], "--target-std must be a finite number or 'text' (got inf)"),
    (["--image", "{d}/ok.png", "--norm", "per_dim", "--reference-stats", "{d}/ref-2.safetensors"],
     "reference statistics are for layer 15 of 16, the embeddings for layer 11 of 16"),
    (["--image", "{d}/ok.png", "--norm", "whiten", "--reference-stats", "{d}/ref-6.safetensors"],
     "whiten needs reference statistics with a covariance"),
    (["--backend", "vl", "--tokens", "image_only"], "token selection 'image_only' is empty: the chat has no image"),
    (["--image", "{d}/ok.png", "--no-vl-text", "--intra-ratio", "0.5", "--text-tokens", "user_text"],
     "token selection 'user_text' is empty"),
    (["--image", "{d}/ok.png", "--norm", "per_dim", "--reference-stats", "{d}/none.safetensors"], "does not exist"),
    (["--image", "{d}/ok.png", "--recipe", "{d}/none.toml"], "recipe file {d}/none.toml does not exist"),
    (["--image", "{d}/ok.png", "--outlier-threshold", "0.5"], "recipe field 'outlier_threshold'"),
    (["--image", "{d}/ok.png", "--save-recipe", "{d}/r.json"], "must end in .toml"),
    (["--width", "100"], "config key 'generation.width': must be a multiple of 16 (got 100; nearest: 96)"),
    (["--profile", "nope"], "unknown profile 'nope'"),
    (["--z-image", "{d}/no/such/folder"], "does not exist"),
    (["--z-image", "{d}"], "is not a diffusers Z-Image folder: it has no model_index.json"),
    (["--prompt", ""], "the prompt is empty"),
    (["--prompt", "  "], "the prompt is empty"),
    (["--steps", "abc"], "invalid int value: 'abc'"),
    (["--steps", "0"], "'generation.steps'"),
    (["--config", "{d}/bad.toml"], "not valid TOML"),
    (["--config", "{d}/missing.toml"], "does not exist"),
    (["--strength", "0.5"], "--strength needs --init-image"),
    (["--hidden-layer", "99"], "hidden layer 99 is out of range"),
    (["--long-prompt-mode", "squash"], "'encoder.long_prompt_mode'"),
    (["--device", "cuda:0"] if not __import__("torch").cuda.is_available() else ["--device", "tpu"], "runtime.device"),
]


@pytest.mark.reliability('bad input', "generate with bad flags and files: missing, text, truncated and empty images; "
                         "bad recipe fields, schedules and weights; layers out of range; sizes not multiples of 16; "
                         "steps 0 and 'abc'; invalid and missing TOML; unknown profile; missing model folders; "
                         "empty prompts",
                         'one line on stderr, non-zero exit, no traceback, nothing written')
@pytest.mark.parametrize("extra, needle", CASES, ids=[c[1][:40] for c in CASES])
def test_user_errors_are_one_line_and_write_nothing(files, capsys, extra, needle):
    out = files / "out" / "result.png"
    args = ["generate", "--profile", "tiny", "--prompt", "a cat", "--out", str(out)]
    args += [a.format(d=files) for a in extra]
    rc, stdout, stderr = run(args, capsys)
    assert rc != 0
    lines = messages(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("llm-dit: error: ")
    assert needle.format(d=files) in lines[0]
    assert "Traceback" not in stderr
    assert not out.exists() and not (files / "out").exists()


def test_output_must_be_png(tmp_path, capsys):
    rc, _, err = run(["generate", "--profile", "tiny", "--prompt", "a", "--out", str(tmp_path / "a.jpg")], capsys)
    assert rc == 2 and "must end in .png" in err


def test_missing_required_flag(capsys):
    rc, _, err = run(["generate", "--profile", "tiny"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "required" in err


def test_img2img_from_the_cli(files, capsys):
    out = files / "i2i.png"
    rc, stdout, _ = run(["generate", "--profile", "tiny", "--prompt", "a red house", "--out", str(out),
                         "--init-image", str(files / "ok.png"), "--strength", "0.8", "--width", "64", "--height", "64"],
                        capsys)
    assert rc == 0 and out.exists()
    from llm_dit.images import read_png_parameters

    p = read_png_parameters(out)
    assert p["mode"] == "img2img" and p["config"]["generation"]["strength"] == 0.8


def test_no_temporary_files_left_behind(files, capsys):
    out = files / "clean" / "x.png"
    assert run(["generate", "--profile", "tiny", "--prompt", "a", "--out", str(out), "--width", "32",
                "--height", "32", "--steps", "2"], capsys)[0] == 0
    assert sorted(os.listdir(out.parent)) == ["x.json", "x.png"]


def test_models_tiny_command(tmp_path, capsys):
    rc, out, _ = run(["models", "tiny", "--out", str(tmp_path / "m")], capsys)
    assert rc == 0 and (tmp_path / "m/z-image/model_index.json").is_file()
    assert (tmp_path / "m/qwen3-vl/config.json").is_file()
    rc, _, err = run(["models", "tiny", "--out", str(tmp_path / "m")], capsys)
    assert rc == 2 and "not empty" in err


def test_profiles_and_config_commands(capsys, tmp_path):
    rc, out, _ = run(["profiles"], capsys)
    profiles = out.split("\n\n")[0]
    assert rc == 0 and [line.split()[0] for line in profiles.splitlines()] == ["12gb", "16gb", "default", "low_vram",
                                                                              "rtx4090", "tiny"]
    rc, out, _ = run(["config", "--profile", "tiny", "--steps", "3"], capsys)
    import json

    assert rc == 0 and json.loads(out)["generation"]["steps"] == 3


def _cli(*args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    exe = os.path.join(os.path.dirname(sys.executable), "llm-dit")
    return subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=300)


def test_installed_entry_point_and_an_unreachable_hub_id(tmp_path):
    out = tmp_path / "x.png"
    r = _cli("generate", "--prompt", "a cat", "--out", str(out), "--z-image", "no-such-org/no-such-model",
             env_extra={"HF_HUB_OFFLINE": "1"})
    assert r.returncode != 0
    lines = messages(r.stderr)
    assert len(lines) == 1 and "could not load Z-Image from 'no-such-org/no-such-model'" in lines[0], r.stderr
    assert not out.exists()
    assert _cli("--help").returncode == 0


def test_debug_shows_the_traceback(tmp_path):
    r = _cli("generate", "--profile", "tiny", "--prompt", "", "--out", str(tmp_path / "x.png"), "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_models_tiny_refuses_a_file_and_leaves_nothing_half_built(tmp_path, capsys, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    rc, _, err = run(["models", "tiny", "--out", str(f)], capsys)
    assert rc == 2 and "is a file" in err
    import llm_dit.models.tiny as tiny

    def boom(out, thinking=False):
        raise OSError("disk full")

    monkeypatch.setattr(tiny, "build_tiny_qwen3_vl", boom)
    rc, _, err = run(["models", "tiny", "--out", str(tmp_path / "m")], capsys)
    assert rc != 0 and not (tmp_path / "m").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.reliability("bad input", "prompts of about 2000 tokens (over the 1504 limit) with each long-prompt mode, "
                         "and one of 4400 tokens to compress", "fitted to 1504 tokens by the mode and recorded (tokens "
                         "before and after, the mode); the one past the encoder's 4096 positions refused in one line")
@pytest.mark.parametrize("mode", ["truncate", "interpolate", "pool", "attention_pool"])
def test_long_prompts_are_fitted_and_recorded(tmp_path, capsys, mode):
    out = tmp_path / "long.png"
    prompt = " ".join(["a red house by a lake"] * 180)  # about 2000 tokens
    rc, _, err = run(["generate", "--profile", "tiny", "--steps", "2", "--prompt", prompt, "--max-length", "1504",
                      "--long-prompt-mode", mode, "--out", str(out)], capsys)
    assert rc == 0, err
    enc = json.loads(out.with_suffix(".json").read_text())["text_encoding"]
    assert enc["prompt_tokens"] > 1504 and enc["num_tokens"] == 1504 and enc["long_prompt_mode"] == mode
    assert enc["truncated"] == (mode == "truncate") and enc["compressed"] == (mode != "truncate")
    rc, _, err = run(["generate", "--profile", "tiny", "--prompt", " ".join(["a red house by a lake"] * 400),
                      "--long-prompt-mode", "pool", "--out", str(tmp_path / "x.png")], capsys)
    assert rc == 2 and len(messages(err)) == 1 and "accepts at most 4096" in err and not (tmp_path / "x.png").exists()


@pytest.mark.reliability("bad input", "a prompt with control characters (NUL, BEL, an ANSI escape, CR LF)",
                         "generated; the prompt recorded verbatim in the sidecar and the PNG")
def test_control_characters_in_a_prompt(tmp_path, capsys):
    from llm_dit.images import read_png_parameters

    prompt = "a cat\x00 on a\x07 mat \x1b[31mred\x1b[0m\r\nat night"
    out = tmp_path / "c.png"
    rc, _, err = run(["generate", "--profile", "tiny", "--steps", "2", "--prompt", prompt, "--out", str(out)], capsys)
    assert rc == 0, err
    assert json.loads(out.with_suffix(".json").read_text())["prompt"] == prompt
    assert read_png_parameters(out)["prompt"] == prompt


@pytest.mark.reliability("reproducibility", "the same generate command twice (text only, and with a reference)",
                         "byte-identical PNGs on the CPU")
@pytest.mark.parametrize("extra", [[], ["--image", "examples/house.png", "--vl-alpha", "0.5"]])
def test_the_same_command_twice_gives_byte_identical_pngs(tmp_path, capsys, extra):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    extra = [str(root / a) if a.startswith("examples/") else a for a in extra]
    outs = [tmp_path / "a.png", tmp_path / "b.png"]
    for out in outs:
        rc, _, err = run(["generate", "--profile", "tiny", "--steps", "3", "--prompt", "a red house", *extra,
                          "--out", str(out)], capsys)
        assert rc == 0, err
    assert outs[0].read_bytes() == outs[1].read_bytes()
