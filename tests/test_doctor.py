"""``llm-dit doctor`` on every fixture variant: good folders pass, broken ones name the problem."""

import json
import shutil
from types import SimpleNamespace

import pytest

from llm_dit.cli import main
from llm_dit.models import doctor, doctor_system
from llm_dit.models.tiny import build_tiny_qwen3_vl, mark_think_special, write_template_layout


@pytest.fixture(autouse=True)
def bounds(monkeypatch):
    """The version check reads llm-dit's installed metadata, which a venv may hold from an older
    pyproject: every test but the version tests sees no bounds (one ok row); those set their own."""
    monkeypatch.setattr(doctor_system.metadata, "requires", lambda name: [])


def run(capsys, *args):
    rc = main(["doctor", "--profile", "tiny", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def rows(out: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(part, check) -> (status, detail) from the printed table; repeated checks keep the first."""
    got: dict[tuple[str, str], tuple[str, str]] = {}
    for line in out.splitlines()[2:]:
        if not line.strip():
            break
        part, check, status, detail = (x for x in _split(line))
        got.setdefault((part, check), (status, detail))
    return got


def _split(line: str):
    cells = [c for c in line.split("  ") if c.strip()]
    return cells[0].strip(), cells[1].strip(), cells[2].strip(), "  ".join(cells[3:]).strip()


@pytest.fixture
def vl_copy(tiny_vl_dir, tmp_path):
    return shutil.copytree(tiny_vl_dir, tmp_path / "qwen3-vl")


@pytest.fixture
def z_copy(tiny_z_image_dir, tmp_path):
    return shutil.copytree(tiny_z_image_dir, tmp_path / "z-image")


def _template(folder) -> str:
    return json.loads((folder / "chat_template.json").read_text())["chat_template"]


def test_the_tiny_models_pass(capsys):
    rc, out, err = run(capsys)
    assert rc == 0 and out.rstrip().endswith("no problems found"), out + err
    r = rows(out)
    assert r[("qwen3-vl", "chat template")] == ("ok", "from chat_template.json (Instruct variant)")
    assert r[("z-image", "text_encoder weights")][1].startswith("3 shards")
    assert r[("both", "hidden sizes")] == ("ok", "all 64")
    assert "(the tiny fixture's sizes)" in r[("z-image", "transformer config")][1]


@pytest.mark.parametrize("layout,status,source", [
    ("processor", "ok", "chat_template.json"), ("tokenizer", "ok", "tokenizer_config.json"),
    ("jinja", "ok", "chat_template.jinja"), ("both", "warn", "chat_template.json"),
])
def test_every_template_layout_passes_and_says_where_the_template_is(capsys, vl_copy, layout, status, source):
    write_template_layout(vl_copy, layout, _template(vl_copy))
    rc, out, _ = run(capsys, "--vl-model", str(vl_copy))
    assert rc == 0, out
    got_status, detail = rows(out)[("qwen3-vl", "chat template")]
    assert got_status == status and detail.startswith(f"from {source}")
    assert ("different copy" in detail) == (layout == "both")


def test_a_folder_without_a_template_fails_in_one_line(capsys, vl_copy):
    write_template_layout(vl_copy, "none", _template(vl_copy))
    rc, out, _ = run(capsys, "--vl-model", str(vl_copy))
    assert rc == 1 and "1 problem:" in out
    status, detail = rows(out)[("qwen3-vl", "chat template")]
    assert status == "FAIL" and str(vl_copy) in detail and "no chat template" in detail


def test_a_half_downloaded_folder_names_the_missing_shard(capsys, vl_copy):
    (vl_copy / "model-00002-of-00002.safetensors").unlink()
    rc, out, _ = run(capsys, "--vl-model", str(vl_copy))
    assert rc == 1
    status, detail = rows(out)[("qwen3-vl", "model weights")]
    assert status == "FAIL"
    assert "1 of 2 shards listed in model.safetensors.index.json are absent" in detail
    assert "(model-00002-of-00002.safetensors)" in detail


def test_a_truncated_shard_is_named(capsys, z_copy):
    shard = z_copy / "text_encoder" / "model-00002-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    rc, out, _ = run(capsys, "--z-image", str(z_copy))
    assert rc == 1
    status, detail = rows(out)[("z-image", "text_encoder weights")]
    assert status == "FAIL" and "is truncated" in detail and shard.name in detail


def test_a_missing_folder_and_a_missing_config(capsys, tmp_path, z_copy):
    rc, out, _ = run(capsys, "--vl-model", str(tmp_path / "nowhere"))
    assert rc == 1 and rows(out)[("qwen3-vl", "location")][0] == "FAIL"
    (z_copy / "vae" / "config.json").unlink()
    rc, out, _ = run(capsys, "--z-image", str(z_copy))
    assert rc == 1 and "vae/config.json is missing" in rows(out)[("z-image", "vae config")][1]


def test_a_hub_id_not_on_this_machine_is_a_warning(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    rc, out, _ = run(capsys, "--vl-model", "Qwen/Qwen3-VL-4B-Instruct")
    status, detail = rows(out)[("qwen3-vl", "location")]
    assert rc == 0 and status == "warn" and "downloaded on first use" in detail


def test_the_thinking_variant_and_special_think_tags(capsys, tmp_path):
    folder = tmp_path / "thinking"
    build_tiny_qwen3_vl(folder, thinking=True)
    mark_think_special(folder)
    rc, out, _ = run(capsys, "--vl-model", str(folder))
    r = rows(out)
    assert rc == 0 and r[("qwen3-vl", "chat template")][1] == "from chat_template.json (Thinking variant)"
    assert "marked special (<think>, </think>): kept in captions" in r[("qwen3-vl", "think tags")][1]


def test_token_ids_that_disagree_with_the_tokenizer(capsys, vl_copy):
    config = json.loads((vl_copy / "config.json").read_text())
    config["image_token_id"] = 151655  # the real id, with the tiny tokenizer
    (vl_copy / "config.json").write_text(json.dumps(config))
    rc, out, _ = run(capsys, "--vl-model", str(vl_copy))
    status, detail = rows(out)[("qwen3-vl", "vision token ids")]
    assert rc == 1 and status == "FAIL" and "image_token_id 151655" in detail


def test_hidden_sizes_that_cannot_work_together(capsys, z_copy):
    config = json.loads((z_copy / "transformer" / "config.json").read_text())
    config["cap_feat_dim"] = 128
    (z_copy / "transformer" / "config.json").write_text(json.dumps(config))
    rc, out, _ = run(capsys, "--z-image", str(z_copy))
    status, detail = rows(out)[("both", "hidden sizes")]
    assert rc == 1 and status == "FAIL" and "Z-Image cap_feat_dim 128" in detail
    assert rows(out)[("z-image", "transformer config")][0] == "warn"  # neither the published nor the tiny sizes


def test_a_broken_config_is_one_row_not_a_traceback(capsys, vl_copy):
    (vl_copy / "config.json").write_text("{nope")
    rc, out, err = run(capsys, "--vl-model", str(vl_copy))
    assert rc == 1 and "is not valid JSON" in rows(out)[("qwen3-vl", "config")][1] and "Traceback" not in err


def test_a_version_outside_the_bounds_names_the_fix(capsys, monkeypatch):
    real = doctor_system.metadata.version
    monkeypatch.setattr(doctor_system.metadata, "requires",
                        lambda name: ["transformers>=5.18,<6", "numpy", "pytest>=8; extra == 'test'"])
    monkeypatch.setattr(doctor_system.metadata, "version",
                        lambda name: "4.57.0" if name == "transformers" else real(name))
    rc, out, _ = run(capsys)
    fails = [d for (p, c), (s, d) in rows(out).items() if c == "versions"]
    assert rc == 1 and fails == ["transformers 4.57.0 is outside <6,>=5.18: pip install 'transformers<6,>=5.18'"]


def test_versions_within_the_bounds_pass(capsys, monkeypatch):
    have = doctor_system.metadata.version("transformers")
    monkeypatch.setattr(doctor_system.metadata, "requires", lambda name: [f"transformers>={have}", "numpy"])
    rc, out, _ = run(capsys)
    assert rc == 0 and rows(out)[("system", "versions")] == ("ok", f"transformers {have}")


def test_a_gpu_profile_on_a_machine_without_one(capsys):
    rc = main(["doctor", "--profile", "rtx4090", "--z-image", "tiny", "--vl-model", "tiny"])
    out = capsys.readouterr().out
    assert rc == 1 and "needs a CUDA GPU" in rows(out)[("system", "gpu")][1]


def test_the_json_form(capsys):
    rc, out, _ = run(capsys, "--json")
    data = json.loads(out)
    assert rc == 0 and data["problems"] == 0 and {"part", "check", "status", "detail"} <= set(data["rows"][0])


GIB = 2**30


@pytest.mark.parametrize("offload,keep,expected", [
    ("none", "all", 12 + 1 + 8 + 9), ("none", "one", 12 + 1 + 8), ("encoder", "one", 12 + 1 + 8 / 6),
    ("encoder", "all", 12 + 1 + 8 / 6 + 9), ("model", "one", 12 + 1), ("group_block", "one", 1 + 12 / 30),
])
def test_peak_weights_per_offload_policy(offload, keep, expected):
    z = {"transformer": 12 * GIB, "vae": 1 * GIB, "text_encoder": 8 * GIB}
    assert doctor_system._peak_bytes(offload, keep, z, 9 * GIB) == pytest.approx(expected * GIB, rel=1e-6)


def test_memory_against_the_gpu(monkeypatch):
    """The published sizes in bfloat16 (DiT 6.15B, Qwen3-4B 4.0B, Qwen3-VL 4.4B) under the default
    profile do not fit a 24 GB card with both models resident; they fit an 80 GB one."""
    import torch

    from llm_dit.config import resolve_config

    fake = SimpleNamespace
    weights = {"transformer": fake(bytes_as=lambda b: 6.15e9 * b), "vae": fake(bytes_as=lambda b: 0.084e9 * b),
               "text_encoder": fake(bytes_as=lambda b: 4.02e9 * b)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Fake GPU")
    cfg = resolve_config("default")
    for total, status in ((24 * GIB, "FAIL"), (80 * GIB, "ok")):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0, t=total: fake(total_memory=t))
        report = doctor.Report(facts={"z_image_weights": weights, "vl_weights": fake(bytes_as=lambda b: 4.44e9 * b)})
        doctor_system.check_memory(report, cfg)
        row = next(r for r in report.rows if r.check == "gpu memory")
        assert row.status == status and "about 27.4 GiB of weights" in row.detail, row.detail


# -- ComfyUI single files -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def comfy(tiny_cache):
    from llm_dit.models.tiny_comfy import ensure_tiny_comfy

    return ensure_tiny_comfy()


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """An empty hub cache: the tokenizer is found only where the arguments say."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_a_comfyui_folder_with_its_tokenizer_passes(capsys, comfy, no_hub):
    rc, out, _ = run(capsys, "--z-image", str(comfy / "models"), "--tokenizer", str(comfy / "configs"))
    r = rows(out)
    assert rc == 0 and out.rstrip().endswith("no problems found"), out
    assert r[("z-image", "layout")] == ("ok", f"ComfyUI models folder {comfy / 'models'}")
    for part, name in (("dit", "z_image_turbo_bf16.safetensors"), ("text_encoder", "qwen_3_4b.safetensors"),
                       ("vae", "ae.safetensors")):
        status, detail = r[("z-image", f"{part} file")]
        assert status == "ok" and name in detail and "not quantised" in detail and "fits" in detail
    assert r[("both", "hidden sizes")] == ("ok", "all 64")


def test_scaled_fp8_files_are_recognised(capsys, comfy, no_hub):
    rc, out, _ = run(capsys, "--z-image", str(comfy / "models"), "--tokenizer", str(comfy / "configs"),
                     "--dit", str(comfy / "fp8" / "z_image_turbo_fp8_scaled.safetensors"),
                     "--text-encoder", str(comfy / "fp8" / "qwen_3_4b_fp8_mixed.safetensors"))
    r = rows(out)
    assert rc == 0, out
    for part in ("dit", "text_encoder"):
        status, detail = r[("z-image", f"{part} file")]
        assert status == "ok" and "scaled fp8, dequantised on load" in detail and "F8_E4M3" in detail


def test_comfyui_files_without_a_tokenizer_or_their_configs(capsys, comfy, no_hub):
    """The tiny files against the shipped (published-size) configs: each part names the misfit and
    the fix; no tokenizer anywhere names every place looked in."""
    rc, out, _ = run(capsys, "--z-image", str(comfy / "models"))
    r = rows(out)
    assert rc == 1
    assert "does not fit the Z-Image DiT config" in r[("z-image", "dit file")][1]
    text = r[("z-image", "text_encoder file")][1]
    assert "is a Qwen3 64 wide with 16 layers, but its config says 2560 and 36" in text
    status, detail = r[("z-image", "tokenizer")]
    assert status == "FAIL" and "looked in the hub cache of Tongyi-MAI/Z-Image-Turbo (not cached)" in detail


def test_a_file_of_the_wrong_kind_and_two_candidates(capsys, comfy, no_hub, tmp_path):
    models = comfy / "models"
    vae, text = str(models / "vae" / "ae.safetensors"), str(models / "text_encoders" / "qwen_3_4b.safetensors")
    rc, out, _ = run(capsys, "--dit", vae, "--text-encoder", text, "--vae", vae, "--tokenizer", str(comfy / "configs"))
    assert rc == 1
    assert rows(out)[("z-image", "dit file")][1].endswith("expected a Z-Image DiT file, but it is a FLUX VAE")
    two = shutil.copytree(models, tmp_path / "models")
    dits = two / "diffusion_models"
    shutil.copy(dits / "z_image_turbo_bf16.safetensors", dits / "copy.safetensors")
    rc, out, _ = run(capsys, "--z-image", str(two), "--tokenizer", str(comfy / "configs"))
    status, detail = rows(out)[("z-image", "files")]
    assert rc == 1 and status == "FAIL" and "has 2 Z-Image DiT files" in detail and "--dit FILE" in detail
