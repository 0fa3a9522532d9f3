"""The tiny checkpoints in the published file formats, and loading them as the real ones load.

Oracles: transformers itself (its processor's own template lookup, its config reader, a model built
in memory), diffusers' ``encode_prompt`` for the padding side.
"""

import json
import shutil

import pytest
import torch
from PIL import Image

from llm_dit.errors import ModelLoadError
from llm_dit.models.tiny import TEMPLATE_LAYOUTS, mark_think_special, other_template, write_template_layout
from llm_dit.vl import VLEmbeddingExtractor
from llm_dit.vl.chat import decode_reply

SYSTEM = "Be brief."


@pytest.fixture
def vl_copy(tiny_vl_dir, tmp_path):
    """A private copy of the tiny Qwen3-VL folder (3 MB), to rearrange."""
    return shutil.copytree(tiny_vl_dir, tmp_path / "qwen3-vl")


def _published_template(folder) -> str:
    return json.loads((folder / "chat_template.json").read_text())["chat_template"]


def _processor_oracle(folder) -> str | None:
    """The template transformers' processor itself would use (None: it finds none of its own)."""
    from transformers import AutoTokenizer, Qwen3VLProcessor

    found = Qwen3VLProcessor.get_processor_dict(str(folder))[0].get("chat_template")
    return found if found is not None else AutoTokenizer.from_pretrained(str(folder)).chat_template


#: Each fixture layout with a template, and the source the load must record.
SOURCES = {"processor": "chat_template.json", "tokenizer": "tokenizer_config.json", "jinja": "chat_template.jinja",
           "both": "chat_template.json"}


@pytest.mark.parametrize("layout,source", SOURCES.items())
def test_each_template_layout_loads_and_renders_with_the_processors_template(vl_copy, layout, source):
    template = _published_template(vl_copy)
    write_template_layout(vl_copy, layout, template)
    ex = VLEmbeddingExtractor.from_pretrained(str(vl_copy), device="cpu")
    assert ex.processor.chat_template == _processor_oracle(vl_copy) == template
    assert ex.tokenizer.chat_template == template  # no code path can render with the other copy
    assert ex.chat_template.source == source
    assert ex.chat_template.tokenizer_differs == (layout == "both")
    r = ex.extract(None, "A red house", hidden_layer=-2, system_prompt=SYSTEM)
    assert r.full_prompt.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>")  # the tokenizer's copy drops it
    assert r.metadata()["chat_template"]["source"] == source
    assert r.metadata()["chat_template"]["tokenizer_differs"] == (layout == "both")


def test_the_tokenizers_other_template_would_render_differently(vl_copy):
    """The ``both`` fixture is a real test: its tokenizer's copy renders the system turn away."""
    from transformers import AutoTokenizer

    write_template_layout(vl_copy, "both", _published_template(vl_copy))
    tok = AutoTokenizer.from_pretrained(str(vl_copy))
    assert tok.chat_template == other_template(_published_template(vl_copy))
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "x"}]
    assert SYSTEM not in tok.apply_chat_template(msgs, tokenize=False)


def test_no_template_anywhere_is_one_line_naming_the_folder(vl_copy):
    assert set(TEMPLATE_LAYOUTS) == set(SOURCES) | {"none"}  # every layout is tested
    write_template_layout(vl_copy, "none", _published_template(vl_copy))
    with pytest.raises(ModelLoadError) as err:
        VLEmbeddingExtractor.from_pretrained(str(vl_copy), device="cpu")
    msg = str(err.value)
    assert "\n" not in msg and str(vl_copy) in msg and "no chat template" in msg and "chat_template.json" in msg


def test_no_template_through_the_cli_is_one_line(vl_copy, tmp_path, capsys):
    from llm_dit.cli import main

    write_template_layout(vl_copy, "none", _published_template(vl_copy))
    img = tmp_path / "ref.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(img)
    rc = main(["extract", "--profile", "tiny", "--vl-model", str(vl_copy), "--image", str(img),
               "--out", str(tmp_path / "e.safetensors")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "|" not in ln]
    assert rc != 0 and len(err) == 1 and "no chat template" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "e.safetensors").exists()


@pytest.mark.parametrize("bad", ["{not json", '{"other": 1}', '["x"]'])
def test_a_broken_chat_template_json_is_one_line(vl_copy, bad):
    (vl_copy / "chat_template.json").write_text(bad)
    with pytest.raises(ModelLoadError, match="chat_template.json") as err:
        VLEmbeddingExtractor.from_pretrained(str(vl_copy), device="cpu")
    assert "\n" not in str(err.value)


def test_the_template_is_part_of_the_extractors_identity(vl_copy):
    """Another template, same weights at the same path: another cache key (the states differ)."""
    before = VLEmbeddingExtractor.from_pretrained(str(vl_copy), device="cpu")
    again = VLEmbeddingExtractor.from_pretrained(str(vl_copy), device="cpu")
    template = _published_template(vl_copy)
    (vl_copy / "chat_template.json").write_text(json.dumps({"chat_template": other_template(template)}))
    changed = VLEmbeddingExtractor.from_pretrained(str(vl_copy), device="cpu")
    assert before.fingerprint() == again.fingerprint() != changed.fingerprint()


def test_the_published_config_loads_the_same_model_as_the_one_built_in_memory(tiny_vl_dir):
    """``rope_theta`` + ``rope_scaling`` (and a 4.x writer) read by transformers 5 give the model the
    fixture was made from: same RoPE parameters, same hidden states."""
    from transformers import AutoConfig, Qwen3VLForConditionalGeneration

    from llm_dit.models.tiny import qwen3_vl_model

    raw = json.loads((tiny_vl_dir / "config.json").read_text())
    text = raw["text_config"]
    assert "rope_parameters" not in text and text["rope_theta"] == 5e6
    assert text["rope_scaling"] == {"mrope_interleaved": True, "mrope_section": [4, 2, 2], "rope_type": "default"}
    assert raw["transformers_version"].startswith("4.")
    built, tok = qwen3_vl_model()
    loaded = Qwen3VLForConditionalGeneration.from_pretrained(str(tiny_vl_dir), dtype=torch.float32).eval()
    assert AutoConfig.from_pretrained(str(tiny_vl_dir)).text_config.rope_parameters == \
        built.config.text_config.rope_parameters
    ids = torch.tensor([tok("A red house on a hill").input_ids])
    with torch.no_grad():
        a = built.eval().model(input_ids=ids, output_hidden_states=True).hidden_states
        b = loaded.model(input_ids=ids, output_hidden_states=True).hidden_states
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_the_published_text_encoder_config_and_tokenizer(tiny_z_image_dir):
    from transformers import AutoConfig, AutoTokenizer

    raw = json.loads((tiny_z_image_dir / "text_encoder" / "config.json").read_text())
    assert raw["rope_theta"] == 1e6 and raw["rope_scaling"] is None and "rope_parameters" not in raw
    assert AutoConfig.from_pretrained(str(tiny_z_image_dir / "text_encoder")).rope_parameters["rope_theta"] == 1e6
    index = json.loads((tiny_z_image_dir / "text_encoder" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3  # three shards, as published
    tok_config = json.loads((tiny_z_image_dir / "tokenizer" / "tokenizer_config.json").read_text())
    assert "chat_template" in tok_config and not (tiny_z_image_dir / "tokenizer" / "chat_template.jinja").exists()
    assert AutoTokenizer.from_pretrained(str(tiny_z_image_dir / "tokenizer")).chat_template == \
        tok_config["chat_template"]


def test_the_tokenizer_config_lists_every_added_token_with_the_real_flags(tiny_vl_dir):
    from llm_dit.models.tiny import ADDED_TOKENS

    config = json.loads((tiny_vl_dir / "tokenizer_config.json").read_text())
    listed = sorted(config["added_tokens_decoder"].items(), key=lambda kv: int(kv[0]))
    assert [(t["content"], t["special"]) for _, t in listed] == ADDED_TOKENS
    assert config["additional_special_tokens"][0] == "<|im_start|>" and "<think>" not in \
        config["additional_special_tokens"]


def test_the_processor_named_fast_falls_back_to_the_same_pixels(tiny_vl_dir):
    """``Qwen2VLImageProcessorFast`` is named, as published; without torchvision transformers takes the
    PIL class, whose pixels equal that class made directly (torchvision's path: bench/cuda_smoke.py)."""
    from transformers import AutoImageProcessor, Qwen2VLImageProcessorPil

    pre = json.loads((tiny_vl_dir / "preprocessor_config.json").read_text())
    assert (pre["image_processor_type"], pre["processor_class"]) == ("Qwen2VLImageProcessorFast", "Qwen3VLProcessor")
    auto = AutoImageProcessor.from_pretrained(str(tiny_vl_dir))
    direct = Qwen2VLImageProcessorPil(**{k: pre[k] for k in ("patch_size", "temporal_patch_size", "merge_size",
                                                             "image_mean", "image_std", "size")})
    img = Image.new("RGB", (150, 90), (10, 120, 240))
    a, b = auto(images=[img], return_tensors="pt"), direct(images=[img], return_tensors="pt")
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["image_grid_thw"], b["image_grid_thw"])


@pytest.mark.parametrize("special", [False, True])
def test_think_tags_survive_decoding_whether_special_or_not(vl_copy, special):
    from transformers import AutoTokenizer

    if special:
        mark_think_special(vl_copy)
    tok = AutoTokenizer.from_pretrained(str(vl_copy))
    ids = tok("<think>\nlooking</think>\n\nA red house.<|im_end|><|endoftext|>", add_special_tokens=False).input_ids
    erased = tok.decode(ids, skip_special_tokens=True)
    assert ("</think>" in erased) == (not special)  # the hazard is real when they are special
    assert decode_reply(tok, ids) == "<think>\nlooking</think>\n\nA red house."


def test_a_thinking_caption_with_special_tags_is_split_at_the_tag(tmp_path):
    """End to end through ``generate`` (the model's sampled ids replaced by a fixed reply): the
    caption is what follows ``</think>``, the reasoning is kept, the raw reply too."""
    from llm_dit.models.tiny import build_tiny_qwen3_vl
    from llm_dit.vl.caption import CAPTION_BUDGET, THINKING_BUDGET, CaptionRequest, caption_image

    folder = tmp_path / "thinking"
    build_tiny_qwen3_vl(folder, thinking=True)
    mark_think_special(folder)
    ex = VLEmbeddingExtractor.from_pretrained(str(folder), device="cpu")
    assert ex.variant == "thinking"
    reply = ex.tokenizer("the roof is red</think>\n\nA red house on a hill.<|im_end|>",
                         add_special_tokens=False).input_ids
    seen = {}

    def fake_generate(input_ids, max_new_tokens, **kwargs):
        seen["budget"] = max_new_tokens
        return torch.cat([input_ids, torch.tensor([reply])], dim=1)

    ex.model.generate = fake_generate
    cap = caption_image(ex, Image.new("RGB", (64, 64), (200, 30, 30)), CaptionRequest(temperature=0))
    assert (cap.caption, cap.thinking) == ("A red house on a hill.", "the roof is red")
    assert cap.raw == "the roof is red</think>\n\nA red house on a hill."
    assert seen["budget"] == cap.max_new_tokens == CAPTION_BUDGET + THINKING_BUDGET


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("prompt", ["A simple cartoon house with a red roof", "x"])
def test_text_encoding_follows_the_tokenizers_padding_side_as_diffusers(zimage, stock_pipe, side, prompt):
    ours_tok, stock_tok = zimage.pipe.tokenizer, stock_pipe.tokenizer
    try:
        ours_tok.padding_side = stock_tok.padding_side = side
        with torch.no_grad():
            (ref,), _ = stock_pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
        ours = zimage.encode(prompt, hidden_layer=-2, max_length=512).embeddings
    finally:
        ours_tok.padding_side = stock_tok.padding_side = "right"
    assert torch.equal(ours, ref)
    right = zimage.encode(prompt, hidden_layer=-2, max_length=512).embeddings
    # RoPE sees relative offsets only: the two sides agree but for rounding
    torch.testing.assert_close(ours, right, rtol=1e-3, atol=1e-4)



def test_a_generated_picture_records_which_template_rendered_its_chat(vl_copy, tmp_path):
    """``both`` layout: the processor's copy is used, and the picture's record says so."""
    from llm_dit.conditioning import Recipe
    from llm_dit.conditioning.run import generate_from_recipe
    from llm_dit.config import resolve_config

    write_template_layout(vl_copy, "both", _published_template(vl_copy))
    ref = tmp_path / "ref.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(ref)
    cfg = resolve_config("tiny", overrides={"models.vl": str(vl_copy), "generation.steps": 2,
                                            "generation.width": 64, "generation.height": 64})
    out = generate_from_recipe(cfg, Recipe.from_dict({"references": [{"image": str(ref)}]}), "A red house")
    recorded = out.record["sources"][0]["chat_template"]
    assert recorded["source"] == "chat_template.json" and recorded["tokenizer_differs"] is True
