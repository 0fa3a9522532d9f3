"""Z-Image from single files (ComfyUI's): key maps, pixels equal to the diffusers folder's, the splice
backend's text encoder, scaled fp8 within its stated tolerance, and one line for each bad input.

The fixtures are the tiny models written as ComfyUI single files (``llm_dit.models.tiny_comfy``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import llm_dit
from llm_dit.cli import main
from llm_dit.errors import ModelLoadError

SRC = Path(llm_dit.__file__).resolve().parents[1]
SMALL = ["--width", "64", "--height", "64", "--steps", "2", "--prompt", "a red house on a hill"]


@pytest.fixture(scope="session")
def comfy(tiny_cache) -> Path:
    from llm_dit.models.tiny_comfy import ensure_tiny_comfy

    return ensure_tiny_comfy()


def _files(comfy: Path, kind: str = "fp32") -> list[str]:
    if kind == "fp32":
        dit, te = "fp32/z_image_turbo_fp32.safetensors", "fp32/qwen_3_4b_fp32.safetensors"
    elif kind == "fp8":
        dit, te = "fp8/z_image_turbo_fp8_scaled.safetensors", "fp8/qwen_3_4b_fp8_mixed.safetensors"
    else:  # plain fp8 DiT, no scales
        dit, te = "fp8/z_image_turbo_fp8_e4m3fn.safetensors", "fp32/qwen_3_4b_fp32.safetensors"
    return ["--dit", str(comfy / dit), "--text-encoder", str(comfy / te), "--vae", str(comfy / "fp32/ae.safetensors"),
            "--tokenizer", str(comfy / "configs")]


def _generate(tmp_path: Path, name: str, *args: str) -> tuple[np.ndarray, dict]:
    out = tmp_path / f"{name}.png"
    assert main(["generate", "--profile", "tiny", *SMALL, "--out", str(out), *args]) == 0
    with Image.open(out) as im:
        pixels = np.asarray(im.convert("RGB"))
    return pixels, json.loads(out.with_suffix(".json").read_text())


def _refused(args: list[str], capsys) -> str:
    """The CLI refuses with exit code 2 and one line (progress bars aside)."""
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and "|" not in ln]
    assert len(lines) == 1 and lines[0].startswith("llm-dit: error: "), err
    assert "Traceback" not in err
    return lines[0].removeprefix("llm-dit: error: ")


# -- key maps ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls_name, file, sub", [
    ("ZImageTransformer2DModel", "fp32/z_image_turbo_fp32.safetensors", "transformer"),  # model.diffusion_model.
    ("ZImageTransformer2DModel", "models/diffusion_models/z_image_turbo_bf16.safetensors", "transformer"),
    ("AutoencoderKL", "fp32/ae.safetensors", "vae"),
])
def test_the_comfy_key_maps_round_trip_through_diffusers(comfy, tiny_z_image_dir, cls_name, file, sub):
    """tiny_comfy's diffusers -> ComfyUI maps are the exact inverse of diffusers' converters."""
    import diffusers

    cls = getattr(diffusers, cls_name)
    model = cls.from_single_file(str(comfy / file), config=str(tiny_z_image_dir), subfolder=sub,
                                 local_files_only=True, dtype=torch.float32)
    ref = load_file(str(tiny_z_image_dir / sub / "diffusion_pytorch_model.safetensors"))
    if "bf16" in file:
        ref = {k: v.to(torch.bfloat16).float() for k, v in ref.items()}
    state = model.state_dict()
    assert set(state) == set(ref)
    assert all(torch.equal(state[k], ref[k]) for k in ref)


def test_the_file_kinds_are_read_from_the_headers(comfy):
    from llm_dit.models.file_header import kind_of, quantisation, read_header

    kinds = {f: kind_of(read_header(comfy / f))[0] for f in (
        "models/diffusion_models/z_image_turbo_bf16.safetensors", "fp32/z_image_turbo_fp32.safetensors",
        "models/text_encoders/qwen_3_4b.safetensors", "models/vae/ae.safetensors",
        "fp8/z_image_turbo_fp8_scaled.safetensors", "fp8/qwen_3_4b_fp8_mixed.safetensors")}
    assert list(kinds.values()) == ["dit", "dit", "text_encoder", "vae", "dit", "text_encoder"]
    assert quantisation(read_header(comfy / "fp8/z_image_turbo_fp8_scaled.safetensors")) == "scaled_fp8"
    assert quantisation(read_header(comfy / "fp8/z_image_turbo_fp8_e4m3fn.safetensors")) == "fp8"
    assert quantisation(read_header(comfy / "models/vae/ae.safetensors")) == "none"


def test_the_shipped_configs_have_the_published_sizes():
    """Z-Image-Turbo's 6.15B DiT, the FLUX VAE, Qwen3-4B: what a user with three files needs."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
    from transformers import AutoConfig, Qwen3Model

    from llm_dit.models.single_file import shipped_configs

    d = str(shipped_configs())
    with init_empty_weights():
        dit = ZImageTransformer2DModel.from_config(ZImageTransformer2DModel.load_config(d, subfolder="transformer"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(d, subfolder="vae"))
        text = Qwen3Model(AutoConfig.from_pretrained(d, subfolder="text_encoder"))
    assert round(sum(p.numel() for p in dit.parameters()) / 1e9, 2) == 6.15
    assert dit.config.cap_feat_dim == text.config.hidden_size == 2560 and text.config.num_hidden_layers == 36
    assert round(sum(p.numel() for p in vae.parameters()) / 1e6) == 84 and vae.config.latent_channels == 16
    assert round(sum(p.numel() for p in text.parameters()) / 1e9, 2) == 4.02  # tied: no lm_head
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(d, subfolder="scheduler")
    assert sched.config.shift == 3.0 and not sched.config.use_dynamic_shifting


# -- the same pixels --------------------------------------------------------------------------------


def test_individual_files_give_the_folders_pixels(comfy, tmp_path):
    folder, _ = _generate(tmp_path, "folder")
    files, record = _generate(tmp_path, "files", *_files(comfy))
    assert folder.tobytes() == files.tobytes()
    assert record["config"]["models"]["dit"].endswith("z_image_turbo_fp32.safetensors")
    assert record["z_image_files"]["dit"] == str((comfy / "fp32/z_image_turbo_fp32.safetensors").resolve())
    assert record["z_image_files"]["tokenizer"] == str((comfy / "configs").resolve())


def test_one_file_replaces_one_part_of_a_diffusers_folder(comfy, tmp_path):
    """--z-image FOLDER --dit FILE: the DiT from the file, the rest (and the configs) from the folder."""
    folder, _ = _generate(tmp_path, "folder")
    mixed, record = _generate(tmp_path, "mixed", "--dit", str(comfy / "fp32/z_image_turbo_fp32.safetensors"))
    assert folder.tobytes() == mixed.tobytes()
    assert set(record["z_image_files"]) == {"dit", "z_image"} and record["z_image_files"]["z_image"] == "tiny"


def test_a_comfy_models_folder_gives_the_folders_pixels(comfy, tmp_path):
    """The bf16 ComfyUI files against a diffusers folder of the same bf16-rounded weights."""
    folder, _ = _generate(tmp_path, "folder", "--z-image", str(comfy / "z-image-bf16"))
    files, record = _generate(tmp_path, "comfy", "--z-image", str(comfy / "models"),
                              "--tokenizer", str(comfy / "configs"))
    assert folder.tobytes() == files.tobytes()
    assert record["config"]["models"]["z_image"] == str(comfy / "models")
    used = record["z_image_files"]
    assert used["dit"].endswith("diffusion_models/z_image_turbo_bf16.safetensors")
    assert used["text_encoder"].endswith("text_encoders/qwen_3_4b.safetensors")
    assert used["vae"].endswith("vae/ae.safetensors")


def test_three_files_leave_no_hub_id_in_the_record():
    from llm_dit.config import resolve_config

    cfg = resolve_config("default", overrides={"models.dit": "a", "models.text_encoder": "b", "models.vae": "c"})
    assert cfg.models.z_image == "" and "Tongyi-MAI" not in json.dumps(cfg.to_dict())
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
    one = resolve_config("default", overrides={"models.dit": "a"})  # the other parts still come from the hub id
    assert one.models.z_image == "Tongyi-MAI/Z-Image-Turbo"


def test_the_splice_text_encoder_from_a_file_equals_the_folders(comfy, tiny_z_image_dir):
    from llm_dit.conditioning.run import _num_layers
    from llm_dit.config import resolve_config
    from llm_dit.vl.extract import load_text_encoder

    cpu = torch.device("cpu")
    ref, ref_tok = load_text_encoder(str(tiny_z_image_dir), cpu, torch.float32)
    cfg = resolve_config("tiny", overrides={"models.text_encoder": str(comfy / "fp32/qwen_3_4b_fp32.safetensors"),
                                             "models.tokenizer": str(comfy / "configs")})
    enc, tok = load_text_encoder(cfg.models, cpu, torch.float32)
    assert type(enc) is type(ref)
    a, b = ref.state_dict(), enc.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    ids = tok("a red house", return_tensors="pt")
    assert ids["input_ids"].tolist() == ref_tok("a red house", return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        ha = ref(**ids, output_hidden_states=True).hidden_states
        hb = enc(**ids, output_hidden_states=True).hidden_states
    assert all(torch.equal(x, y) for x, y in zip(ha, hb, strict=True))
    assert _num_layers(cfg, "splice") == ref.config.num_hidden_layers


# -- fp8 ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("file, scaled", [
    ("fp8/z_image_turbo_fp8_scaled.safetensors", True),  # scaled_fp8 + <layer>.scale_weight
    ("fp8/qwen_3_4b_fp8_mixed.safetensors", True),  # <layer>.weight_scale + <layer>.comfy_quant
    ("fp8/z_image_turbo_fp8_e4m3fn.safetensors", False),  # plain fp8
])
def test_fp8_weights_dequantise_within_e4m3_rounding(comfy, tiny_z_image_dir, file, scaled):
    """e4m3fn keeps 3 mantissa bits: a weight rounded to the nearest one is off by at most half a unit
    in the last place, 2^-4 of its value, in the normal range; below it (subnormals, steps of 2^-9 of
    the scale) by at most 2^-10 x scale. The dequantised weight ``q * scale`` obeys
    ``|w' - w| <= max(2^-4 |w|, 2^-10 scale)``, scale = max|w| / 448 (1 for plain fp8). Measured:
    at most 0.0589 |w| (the bound is 0.0625), 0.9998 of the bound. Weights kept in bf16 are equal to
    the bf16 rounding of the originals."""
    from llm_dit.models.file_header import load_tensors, read_header
    from llm_dit.models.tiny_comfy import checkpoint_state, dit_to_comfy

    if "qwen" in file:
        ref = checkpoint_state(tiny_z_image_dir / "text_encoder", "model")
    else:
        ref = dit_to_comfy(load_file(str(tiny_z_image_dir / "transformer/diffusion_pytorch_model.safetensors")))
    h = read_header(comfy / file)
    got = load_tensors(h, torch.float32)
    assert set(got) == set(ref)
    quantised = 0
    for k, w in ref.items():
        if h.dtypes[k].startswith("F8"):
            quantised += 1
            scale = w.abs().max() / 448 if scaled else torch.tensor(1.0)
            bound = torch.maximum(w.abs() * 2**-4, scale * 2**-10)
            assert ((got[k] - w).abs() <= bound).all(), k
        else:
            assert torch.equal(got[k], w.to(torch.bfloat16).float()), k
    assert quantised >= 20


@pytest.mark.parametrize("kind", ["fp8", "fp8plain"])
def test_fp8_files_give_nearly_the_same_picture(comfy, tmp_path, kind):
    """Measured on this 64x64 picture: PSNR 49.7 dB (scaled DiT + text encoder, max difference 6 of
    255) and 51.4 dB (plain fp8 DiT, max 3); the test holds PSNR >= 40 dB and max <= 16."""
    ref, _ = _generate(tmp_path, "fp32", *_files(comfy))
    got, _ = _generate(tmp_path, kind, *_files(comfy, kind))
    diff = ref.astype(float) - got.astype(float)
    mse = float((diff**2).mean())
    psnr = 10 * math.log10(255**2 / mse) if mse else math.inf
    assert psnr >= 40 and np.abs(diff).max() <= 16, (psnr, np.abs(diff).max())


def test_a_quantisation_that_is_not_fp8_is_refused(tmp_path):
    from llm_dit.models.file_header import load_tensors, read_header

    conf = torch.tensor(list(json.dumps({"format": "nvfp4"}).encode()), dtype=torch.uint8)
    path = tmp_path / "q.safetensors"
    save_file({"layers.0.w.weight": torch.zeros(4, 4, dtype=torch.uint8), "layers.0.w.weight_scale": torch.ones(()),
               "layers.0.w.comfy_quant": conf}, str(path))
    with pytest.raises(ModelLoadError, match="layer layers.0.w is quantised as nvfp4, which llm-dit does not read"):
        load_tensors(read_header(path), torch.float32)


# -- one line for each bad input ----------------------------------------------------------------------


def test_a_file_of_the_wrong_kind(comfy, tmp_path, capsys):
    args = _files(comfy)
    args[1] = str(comfy / "fp32/ae.safetensors")  # the VAE as --dit
    line = _refused(["generate", "--profile", "tiny", *SMALL, "--out", str(tmp_path / "x.png"), *args], capsys)
    assert line == f"--dit {comfy / 'fp32/ae.safetensors'}: expected a Z-Image DiT file, but it is a FLUX VAE"
    assert not (tmp_path / "x.png").exists()


def test_a_file_that_is_no_safetensors(comfy, tmp_path, capsys):
    bad = tmp_path / "z_image_turbo.safetensors"
    bad.write_bytes(b"not a model")
    args = _files(comfy)
    args[1] = str(bad)
    line = _refused(["generate", "--profile", "tiny", *SMALL, "--out", str(tmp_path / "x.png"), *args], capsys)
    assert line.startswith(f"--dit {bad} is not a readable safetensors file (")


def test_a_dit_file_with_weights_missing(comfy, tmp_path, capsys):
    state = load_file(str(comfy / "fp32/z_image_turbo_fp32.safetensors"))
    cut = tmp_path / "cut.safetensors"
    save_file({k: v for k, v in state.items() if ".layers.1." not in k}, str(cut))
    args = _files(comfy)
    args[1] = str(cut)
    line = _refused(["generate", "--profile", "tiny", *SMALL, "--out", str(tmp_path / "x.png"), *args], capsys)
    assert line.startswith(f"--dit {cut}: the Z-Image DiT file lacks ")
    assert "of the weights its config needs (layers.1." in line


def test_a_file_that_does_not_fit_its_config(comfy, tmp_path, capsys):
    """The tiny DiT with the shipped (real-size) config: neither the --tokenizer folder nor a
    models.z_image folder gives one."""
    args = _files(comfy)[:6] + ["--tokenizer", str(tmp_path)]
    (tmp_path / "tokenizer").mkdir()
    shutil.copytree(comfy / "configs/tokenizer", tmp_path / "tokenizer", dirs_exist_ok=True)
    line = _refused(["generate", "--device", "cpu", *SMALL, "--out", str(tmp_path / "x.png"), *args], capsys)
    assert line.startswith(f"--dit {comfy / 'fp32/z_image_turbo_fp32.safetensors'} does not fit the Z-Image DiT "
                           "config of ") and "configs/z-image-turbo/transformer" in line


def test_no_tokenizer_anywhere_names_where_it_looked(comfy, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(SRC), HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"),
               HF_HOME=str(tmp_path / "hf"))
    files = _files(comfy)[:6]  # three files, no --tokenizer; models.z_image left at the hub id
    r = subprocess.run([sys.executable, "-m", "llm_dit", "generate", "--device", "cpu", *SMALL,
                        "--out", str(tmp_path / "x.png"), *files], capture_output=True, text=True, env=env,
                       timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "|" not in ln]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0] == (
        "llm-dit: error: no Qwen3 tokenizer for the single-file text encoder: looked in the hub cache of "
        "Tongyi-MAI/Z-Image-Turbo (not cached), the hub cache of Qwen/Qwen3-4B (not cached); give --tokenizer "
        "DIR (a Z-Image diffusers folder or a Qwen3-4B folder)")


def test_two_candidates_in_a_comfy_folder(comfy, tmp_path, capsys):
    models = tmp_path / "models"
    shutil.copytree(comfy / "models", models)
    shutil.copy2(comfy / "fp8/z_image_turbo_fp8_scaled.safetensors", models / "diffusion_models")
    (models / "diffusion_models" / "flux_vae_by_mistake.safetensors").symlink_to(models / "vae" / "ae.safetensors")
    line = _refused(["generate", "--profile", "tiny", *SMALL, "--out", str(tmp_path / "x.png"),
                     "--z-image", str(models), "--tokenizer", str(comfy / "configs")], capsys)
    assert line == (f"ComfyUI folder {models} has 2 Z-Image DiT files (diffusion_models/z_image_turbo_bf16."
                    "safetensors, diffusion_models/z_image_turbo_fp8_scaled.safetensors); choose one with --dit FILE")
    # the explicit flag settles it
    _generate(tmp_path, "chosen", "--z-image", str(models), "--tokenizer", str(comfy / "configs"),
              "--dit", str(models / "diffusion_models" / "z_image_turbo_fp8_scaled.safetensors"))


def test_a_comfy_folder_without_a_part(comfy, tmp_path, capsys):
    models = tmp_path / "models"
    shutil.copytree(comfy / "models", models)
    shutil.rmtree(models / "vae")
    line = _refused(["generate", "--profile", "tiny", *SMALL, "--out", str(tmp_path / "x.png"),
                     "--z-image", str(models), "--tokenizer", str(comfy / "configs")], capsys)
    assert line == f"ComfyUI folder {models} has no FLUX VAE file in vae/ (absent); give --vae FILE"


def test_a_comfy_folder_is_not_taken_for_a_diffusers_one(comfy):
    from llm_dit.models.loading import resolve_model_path

    with pytest.raises(ModelLoadError, match="is a ComfyUI models folder, not a diffusers one"):
        resolve_model_path(str(comfy / "models"), "z_image")
    with pytest.raises(ModelLoadError, match=r"is a file; expected a diffusers Z-Image folder \(a single Z-Image "
                                             r"file goes to --dit, --text-encoder or --vae\)"):
        resolve_model_path(str(comfy / "models/vae/ae.safetensors"), "z_image")
