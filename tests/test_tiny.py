"""The tiny models: real layouts, real token layout, real chat formats, real loading code."""

import hashlib
import json

import pytest
import torch

from llm_dit.models.tiny import ADDED_TOKENS, build_tiny_models


def test_z_image_layout(tiny_z_image_dir):
    d = tiny_z_image_dir
    for f in [
        "model_index.json",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors.index.json",
        "text_encoder/model-00003-of-00003.safetensors",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
    ]:
        assert (d / f).is_file(), f
    index = json.loads((d / "model_index.json").read_text())
    assert index["_class_name"] == "ZImagePipeline"
    assert index["text_encoder"] == ["transformers", "Qwen3Model"]
    assert index["tokenizer"] == ["transformers", "Qwen2Tokenizer"]
    te = json.loads((d / "text_encoder/config.json").read_text())
    assert te["architectures"] == ["Qwen3ForCausalLM"]  # a CausalLM checkpoint, as in the real repo
    tr = json.loads((d / "transformer/config.json").read_text())
    assert tr["axes_lens"] == [1536, 512, 512] and tr["cap_feat_dim"] == te["hidden_size"]
    sch = json.loads((d / "scheduler/scheduler_config.json").read_text())
    assert sch["shift"] == 3.0 and sch["use_dynamic_shifting"] is False
    vae = json.loads((d / "vae/config.json").read_text())
    assert (vae["latent_channels"], vae["scaling_factor"], vae["shift_factor"]) == (16, 0.3611, 0.1159)


def test_qwen3_vl_layout(tiny_vl_dir, tiny_z_image_dir):
    d = tiny_vl_dir
    for f in ["config.json", "model.safetensors.index.json", "model-00002-of-00002.safetensors", "tokenizer.json",
              "tokenizer_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
              "chat_template.json", "generation_config.json"]:
        assert (d / f).is_file(), f
    assert not (d / "chat_template.jinja").exists()  # as published: the template is only in chat_template.json
    assert "chat_template" not in json.loads((d / "tokenizer_config.json").read_text())
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_vl"
    te = json.loads((tiny_z_image_dir / "text_encoder/config.json").read_text())
    assert cfg["text_config"]["hidden_size"] == cfg["vision_config"]["out_hidden_size"] == te["hidden_size"]


def test_real_special_token_layout(zimage, tiny_vl_dir):
    from transformers import AutoTokenizer

    for tok in (zimage.pipe.tokenizer, AutoTokenizer.from_pretrained(tiny_vl_dir)):
        ids = tok.convert_tokens_to_ids([t for t, _ in ADDED_TOKENS])
        base = ids[0]
        assert ids == list(range(base, base + len(ADDED_TOKENS)))  # contiguous, real order
        # Real offsets: <|endoftext|> 151643, <|vision_start|> 151652, <|image_pad|> 151655, </think> 151668
        offs = {t: i - base for t, i in zip([t for t, _ in ADDED_TOKENS], ids, strict=True)}
        assert (offs["<|vision_start|>"], offs["<|image_pad|>"], offs["</think>"]) == (9, 12, 25)
        assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
        text = "<|im_start|>user\n<think>x</think><|vision_start|><|image_pad|><|vision_end|><|im_end|>"
        kept = tok.decode(tok(text).input_ids, skip_special_tokens=True)
        assert kept == "user\n<think>x</think>"  # <think> is not special, the vision tokens are


def test_qwen3_chat_format(zimage):
    tok = zimage.pipe.tokenizer
    msgs = [{"role": "user", "content": "A cat"}]
    on = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    off = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert on == "<|im_start|>user\nA cat<|im_end|>\n<|im_start|>assistant\n"
    assert off == on + "<think>\n\n</think>\n\n"
    sys = tok.apply_chat_template([{"role": "system", "content": "S"}] + msgs, tokenize=False)
    assert sys == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nA cat<|im_end|>\n"


def test_qwen3_vl_chat_format(tiny_vl_dir):
    from llm_dit.vl.chat import load_processor

    tok, template = load_processor(str(tiny_vl_dir))  # the processor renders as the tokenizer would
    assert template.source == "chat_template.json"
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe what you see."}]},
    ]
    s = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert s == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "Describe what you see.<|im_end|>\n<|im_start|>assistant\n"
    )
    from llm_dit.models.tiny import qwen3_vl_chat_template

    assert tok.chat_template == qwen3_vl_chat_template(thinking=False)
    assert "'<think>\\n'" in qwen3_vl_chat_template(thinking=True)


def test_real_loading_code_loads_everything(tiny_z_image_dir, tiny_vl_dir):
    from transformers import AutoImageProcessor, Qwen3Model, Qwen3VLForConditionalGeneration

    model, info = Qwen3Model.from_pretrained(tiny_z_image_dir / "text_encoder", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    vl = Qwen3VLForConditionalGeneration.from_pretrained(tiny_vl_dir, dtype=torch.float32)
    assert vl.config.text_config.num_hidden_layers == 16
    ip = AutoImageProcessor.from_pretrained(tiny_vl_dir)
    assert ip.patch_size == 16 and ip.merge_size == 2


def _digest(root):
    h = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return h


def test_build_is_deterministic_and_small(tmp_path, tiny_cache):
    out = build_tiny_models(tmp_path / "t")
    assert _digest(out) == _digest(tiny_cache)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert size < 10_000_000


def test_build_refuses_a_non_empty_folder(tmp_path):
    from llm_dit.errors import InputError

    (tmp_path / "x").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        build_tiny_models(tmp_path)


def test_the_full_size_dimensions_give_the_real_parameter_counts():
    """The benchmarks' random models (built on a GPU) have the real models' sizes: checked here on
    the meta device, where nothing is allocated."""
    import torch

    from llm_dit.models.tiny import FULL, qwen3_vl_model, z_image_pipeline

    with torch.device("meta"):
        pipe = z_image_pipeline(FULL)
        vl, _ = qwen3_vl_model(FULL)

    def billions(m):
        return round(sum(p.numel() for p in m.parameters()) / 1e9, 2)

    assert billions(pipe.transformer) == 6.15  # Z-Image-Turbo's DiT
    assert billions(pipe.text_encoder) == 4.02  # Qwen3-4B
    assert round(sum(p.numel() for p in pipe.vae.parameters()) / 1e6, 1) == 83.8  # the FLUX.1 autoencoder
    assert billions(vl) == 4.44 and billions(vl.model.visual) == 0.42  # Qwen3-VL-4B, its vision tower
    assert pipe.transformer.config.cap_feat_dim == vl.config.text_config.hidden_size == 2560
