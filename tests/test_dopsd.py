"""The dopsd backend (D-OPSD's multimodal features) on the tiny models: equal, bit for bit, to a plain
transformers ``Qwen3VLModel`` whose language model was loaded with Z-Image's text-encoder weights;
the encoder's tensors shared, never copied; other architectures refused; its defaults recorded."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from llm_dit.conditioning import Recipe
from llm_dit.config import DOPSD_DEFAULTS, resolve_config
from llm_dit.errors import InputError, ModelLoadError
from llm_dit.vl import VLEmbeddingExtractor, VLExtractionResult
from llm_dit.vl.chat import build_messages, run_processor

TEXT = "A red house on a hill"


@pytest.fixture(scope="module")
def dopsd(zimage):
    """The dopsd backend over the already loaded tiny Z-Image text encoder."""
    return VLEmbeddingExtractor.from_pretrained("tiny", device="cpu", dtype="float32", backend="dopsd",
                                                text_encoder=zimage.pipe.text_encoder)


@pytest.fixture(scope="module")
def oracle(tiny_vl_dir, zimage):
    """Plain transformers: ``Qwen3VLModel`` from the tiny Qwen3-VL config, its vision weights read from
    the checkpoint's ``model.visual.*`` tensors, its language model's state dict loaded (copied) from
    the tiny Z-Image text encoder."""
    from transformers import AutoConfig, Qwen3VLModel

    model = Qwen3VLModel(AutoConfig.from_pretrained(tiny_vl_dir)).eval()
    visual = {}
    for f in sorted(tiny_vl_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            visual.update({k[len("model.visual."):]: st.get_tensor(k) for k in st.keys()
                           if k.startswith("model.visual.")})
    model.visual.load_state_dict(visual, strict=True)
    model.language_model.load_state_dict(zimage.pipe.text_encoder.state_dict(), strict=True)
    return model


def _oracle_states(oracle, processor, images, text):
    """Every hidden state of the oracle for the chat, on the inputs D-OPSD gives it (512^2 .. 768^2)."""
    inputs = run_processor(processor, build_messages(images, text, None), images, DOPSD_DEFAULTS["max_pixels"],
                           min_pixels=DOPSD_DEFAULTS["min_pixels"])
    with torch.no_grad():
        out = oracle(**inputs, output_hidden_states=True, use_cache=False)
    return inputs["input_ids"][0], out.hidden_states


def test_equals_qwen3_vl_with_the_text_encoders_weights(dopsd, oracle, red_image):
    ids, hs = _oracle_states(oracle, dopsd.processor, [red_image], TEXT)
    r = dopsd.extract(red_image, TEXT, hidden_layer=[-2, -6], max_pixels=DOPSD_DEFAULTS["max_pixels"])
    assert torch.equal(r.input_ids, ids) and r.masks.counts()["image_no_markers"] > 0
    for k in (-2, -6):  # the same modules, weights and inputs: bit for bit
        assert torch.equal(r.hidden_states[k], hs[k][0]), k
    # an image below 512 x 512 pixels is enlarged to at least that many (D-OPSD's floor), its shape kept:
    # 128 x 96 -> 608 x 448 pixels, 19 x 14 merged tokens of 32 x 32
    assert r.token_grids == [(14, 19)] and 14 * 19 * 32 * 32 >= 512 * 512 > 13 * 18 * 32 * 32
    # the default layer is D-OPSD's -2, the default budget its 768^2
    default = dopsd.extract(red_image, TEXT)
    assert default.layers == [-2] and torch.equal(default.hidden_states[-2], hs[-2][0])
    assert default.max_pixels == DOPSD_DEFAULTS["max_pixels"]
    # a budget below the floor is a bound still: the image is not enlarged past it (128 x 96 -> 4 x 3 tokens)
    small = dopsd.extract(red_image, TEXT, max_pixels=128 * 128)
    (h, w), = small.token_grids
    assert h * w * 32 * 32 <= 128 * 128 and small.max_pixels == 128 * 128


def test_text_only_input(dopsd, oracle, splice_extractor):
    ids, hs = _oracle_states(oracle, dopsd.processor, [], TEXT)
    r = dopsd.extract(None, TEXT, hidden_layer=[-2, -6])
    assert torch.equal(r.input_ids, ids) and r.token_grids == []
    for k in (-2, -6):
        assert torch.equal(r.hidden_states[k], hs[k][0])
    # the same weights as the splice backend's text path, but Qwen3-VL's rotary table (theta 5e6)
    s = splice_extractor.extract(None, TEXT, hidden_layer=-2)
    assert s.hidden_states[-2].shape == r.hidden_states[-2].shape
    assert not torch.equal(s.hidden_states[-2], r.hidden_states[-2])


def test_the_text_encoders_tensors_are_shared_not_copied(dopsd, zimage, tiny_vl_dir, red_image):
    """During a forward pass the language model runs on the encoder's own tensors (same data_ptr, the
    encoder being resident); before and after it holds none (meta tensors), so it can never keep a
    tensor an offloading policy has since moved."""
    encoder = zimage.pipe.text_encoder
    lm = dopsd.dopsd.language_model
    theirs = dict(encoder.named_parameters())
    assert all(p.is_meta for p in lm.parameters())
    seen: dict[str, tuple[int, tuple]] = {}

    def look(module, args):
        seen.update({n: (p.data_ptr(), tuple(p.shape)) for n, p in lm.named_parameters()})

    handle = lm.layers[0].register_forward_pre_hook(look)
    try:
        dopsd.extract(red_image, "a new text for a new forward pass", hidden_layer=-2)
    finally:
        handle.remove()
    assert sorted(seen) == sorted(theirs) and len(seen) > 100
    for name, (ptr, shape) in seen.items():
        assert ptr == theirs[name].data_ptr() and shape == tuple(theirs[name].shape), name
    assert all(p.is_meta for p in lm.parameters())  # given back
    # the vision tower is the extractor's own (read from model.visual.* alone), inside the dopsd model
    assert dopsd.dopsd.visual is dopsd.vision and dopsd.text_encoder is encoder
    # Qwen3-VL's own language weights were not read: they differ from the encoder's, which ran
    key = "model.language_model.layers.0.self_attn.q_proj.weight"
    found = 0
    for f in tiny_vl_dir.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            if key in st.keys():
                found += 1
                assert not torch.equal(theirs[key[len("model.language_model."):]].detach(), st.get_tensor(key))
    assert found == 1
    # M-RoPE from Qwen3-VL's text_config, not the encoder's 1-D RoPE
    assert dopsd.dopsd.config.text_config.rope_parameters["mrope_section"] == [4, 2, 2]


def test_an_encoder_kept_elsewhere_is_lent_for_the_pass_only(zimage):
    """lent_weights: the encoder's own tensors where they are already on the device; a copy on the
    device for the pass where an offloading policy keeps them elsewhere; none held afterwards."""
    import torch.nn as nn

    from llm_dit.vl.dopsd import lent_weights

    inner = zimage.pipe.text_encoder.layers[0].mlp.down_proj  # a module of the encoder, on the CPU
    lent = nn.Linear(inner.in_features, inner.out_features, bias=False, device="meta")
    with lent_weights(lent, inner, inner.weight.device):
        assert lent.weight.data_ptr() == inner.weight.data_ptr()
        assert torch.equal(lent(torch.ones(1, inner.in_features)), inner(torch.ones(1, inner.in_features)))
    with lent_weights(lent, inner, torch.device("meta")):  # "the device" another one: every tensor copied there
        assert lent.weight.is_meta and lent.weight.shape == inner.weight.shape
    assert lent.weight.is_meta and not inner.weight.is_meta


def test_a_text_encoder_of_another_architecture_is_refused(zimage):
    import copy

    from transformers import Qwen3Model

    cfg = copy.deepcopy(zimage.pipe.text_encoder.config)
    cfg.num_hidden_layers, cfg.intermediate_size = 8, 96
    small = Qwen3Model(cfg)
    with pytest.raises(ModelLoadError) as e:
        VLEmbeddingExtractor.from_pretrained("tiny", device="cpu", dtype="float32", backend="dopsd", text_encoder=small)
    msg = str(e.value)
    assert "\n" not in msg and "num_hidden_layers 8 vs 16" in msg and "intermediate_size 96 vs 128" in msg
    with pytest.raises(InputError, match="dopsd backend needs Z-Image's text encoder"):
        VLEmbeddingExtractor.from_pretrained("tiny", device="cpu", backend="dopsd")


def test_metadata_records_the_backend_and_its_defaults(dopsd, red_image, tmp_path, tiny_config):
    r = dopsd.extract(red_image, TEXT, hidden_layer=-6)
    meta = r.metadata()
    assert meta["backend"] == "dopsd" and meta["layers"] == [-6]
    assert meta["backend_settings"]["defaults"] == {"layer": -2, "min_pixels": 512 * 512, "max_pixels": 768 * 768,
                                                    "max_tokens": 1024}
    assert meta["backend_settings"]["tokens_cut"] == 0
    back = VLExtractionResult.load(r.save(tmp_path / "x.safetensors"))
    assert back.backend_settings == r.backend_settings
    # a recipe under the dopsd backend takes D-OPSD's layer and budget where it sets none
    resolved = Recipe(backend="dopsd").resolve(tiny_config)
    assert (resolved.hidden_layer, resolved.max_pixels) == (-2, 768 * 768)
    assert Recipe(backend="dopsd", hidden_layer=-6, max_pixels=4096).resolve(tiny_config).hidden_layer == -6
    assert resolve_config("tiny", overrides={"vl.backend": "dopsd"}).vl.backend == "dopsd"


def test_the_chat_is_cut_to_1024_tokens(dopsd, red_image):
    long = " ".join(["house"] * 1100)
    r = dopsd.extract(red_image, long, hidden_layer=-2)
    assert r.input_ids.shape[0] == 1024 == r.hidden_states[-2].shape[0]
    assert r.backend_settings["tokens_cut"] > 0 and r.masks.counts()["image_no_markers"] == 14 * 19
    big = Image.new("RGB", (768, 768), (10, 200, 10))
    with pytest.raises(InputError, match="past the dopsd backend's limit of 1024 tokens"):
        dopsd.extract([big, big], TEXT, hidden_layer=-2)


def test_the_pool_lends_the_loaded_encoder(tiny_config):
    from llm_dit.pool import ModelPool

    pool = ModelPool(keep="all")
    try:
        ex = pool.dopsd(tiny_config)
        encoder = pool.z_image(tiny_config).pipe.text_encoder
        assert ex.text_encoder is encoder and pool.loaded() == ["z_image", "dopsd"]
        assert ex.dopsd.language_model.embed_tokens.weight.is_meta  # it holds the encoder's tensors in a pass only
        assert pool.dopsd(tiny_config) is ex
        pool.release("dopsd")
        assert pool.loaded() == ["z_image"]
    finally:
        pool.release()
