"""Qwen3-VL extraction on the tiny model: equality with a plain transformers forward, early exit,
chats, budgets, pooling, cache, save/load, and the splice backend."""

import numpy as np
import pytest
import torch
from PIL import Image

from llm_dit.errors import InputError
from llm_dit.vl import VLEmbeddingExtractor, VLExtractionResult
from llm_dit.vl.chat import build_messages, run_processor
from llm_dit.vl.tokens import TOKEN_SELECTIONS

TEXT = "A red house on a hill"


def full_forward(ex, images, text, system=None, max_pixels=None):
    """The oracle: transformers' own forward with every hidden state."""
    inputs = run_processor(ex.processor, build_messages(images, text, system), images, max_pixels)
    with torch.no_grad():
        out = ex.model(**inputs, output_hidden_states=True)
    return inputs["input_ids"][0], out.hidden_states


def oracle_mask(ids, tok, selection, text):
    """Masks written independently of llm_dit.vl.tokens: walk the ids once."""
    vs, ve, pad = (tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>"))
    inside, image = False, []
    for t in ids.tolist():
        if t == vs:
            inside = True
        image.append(inside)
        if t == ve:
            inside = False
    image = torch.tensor(image)
    if selection == "full":
        return torch.ones_like(image)
    if selection == "image_only":
        return image
    if selection == "image_no_markers":
        return ids == pad
    if selection == "text_only":
        return ~image
    # user_text: the tokens of the text itself, found after the last vision_end
    text_ids = tok(text, add_special_tokens=False).input_ids
    start = max(i for i, t in enumerate(ids.tolist()) if t == ve) + 1
    assert ids[start : start + len(text_ids)].tolist() == text_ids
    m = torch.zeros_like(image)
    m[start : start + len(text_ids)] = True
    return m


@pytest.mark.parametrize("selection", TOKEN_SELECTIONS)
def test_every_layer_and_token_mode_equals_a_plain_forward(extractor, red_image, selection):
    layers = list(range(17))  # every hidden_states index of the 16-layer tiny model
    ids, hs = full_forward(extractor, [red_image], TEXT)
    result = extractor.extract(red_image, TEXT, hidden_layer=layers, token_selection=selection)
    mask = oracle_mask(ids, extractor.tokenizer, selection, TEXT)
    assert torch.equal(result.input_ids, ids)
    for k in layers:
        assert torch.equal(result.layer_embeddings[k], hs[k][0][mask].float()), (selection, k)
        assert result.layer_embeddings[k].dtype == torch.float32 and result.layer_embeddings[k].device.type == "cpu"
    assert result.token_selection == selection and result.num_tokens == int(mask.sum())


def test_negative_layers_and_lists(extractor, red_image):
    _, hs = full_forward(extractor, [red_image], TEXT)
    r = extractor.extract(red_image, TEXT, hidden_layer=[-6, -2, -1])
    for k in (-6, -2, -1):
        assert torch.equal(r.layer_embeddings[k], hs[k][0])
    assert r.hidden_layer == -6 and torch.equal(r.embedding, hs[-6][0])


def test_forward_stops_after_the_deepest_layer(extractor, red_image):
    lm = extractor.model.model.language_model
    calls = []
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, layer in enumerate(lm.layers)]
    hooks.append(lm.norm.register_forward_hook(lambda m, a, o: calls.append("norm")))
    hooks.append(extractor.model.lm_head.register_forward_hook(lambda m, a, o: calls.append("lm_head")))
    try:
        extractor.extract(red_image, TEXT, hidden_layer=[-14, 2])  # -14 == 3: output of layer 2
        assert calls == [0, 1, 2]
        calls.clear()
        extractor.extract(red_image, TEXT, hidden_layer=-1)
        assert calls == list(range(16)) + ["norm"]
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("text", ["Describe what you see.", " leading space", "日本語のテキスト", "a\nb", "x"])
def test_user_text_is_exactly_the_users_words(extractor, red_image, text):
    r = extractor.extract(red_image, text, hidden_layer=-2, token_selection="user_text")
    ids = r.input_ids[r.masks.user_text]
    assert extractor.tokenizer.decode(ids) == text


def test_system_prompt_no_text_and_text_only_chats(extractor, red_image):
    r = extractor.extract(red_image, TEXT, system_prompt="Be brief.", hidden_layer=-2)
    assert r.full_prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<|vision_start|>")
    assert extractor.tokenizer.decode(r.input_ids[r.masks.user_text]) == TEXT
    no_text = extractor.extract(red_image, None, hidden_layer=-2)
    assert no_text.vl_text is None and not no_text.masks.user_text.any()
    with pytest.raises(InputError, match="'user_text' is empty"):
        no_text.select("user_text")
    text_only = extractor.extract(None, TEXT, hidden_layer=-2)
    assert text_only.num_images == 0
    with pytest.raises(InputError, match="'image_only' is empty: the chat has no image"):
        extractor.extract(None, TEXT, hidden_layer=-2, image_tokens_only=True)
    with pytest.raises(InputError, match="the chat is empty"):
        extractor.extract(None, None)


def test_several_images_give_per_image_spans(extractor, red_image, noise_image):
    ids, hs = full_forward(extractor, [red_image, noise_image], TEXT)
    r = extractor.extract([red_image, noise_image], TEXT, hidden_layer=-2)
    assert len(r.token_grids) == 2 and r.token_grids[0] != r.token_grids[1]
    for i, (h, w) in enumerate(r.token_grids):
        one = r.select("image_no_markers", image_index=i)
        assert one.num_tokens == h * w
        start, end = r.masks.image_spans[i]
        assert torch.equal(one.embedding, hs[-2][0][start:end])
    assert r.select("image_only", image_index=1).token_selection == "image_only[1]"


def test_seed_flags(extractor, red_image):
    full = extractor.extract(red_image, TEXT, hidden_layer=-2)
    assert full.token_selection == "full"  # no flag means the whole sequence, not text-only
    assert extractor.extract(red_image, TEXT, hidden_layer=-2, text_tokens_only=True).token_selection == "text_only"
    with pytest.raises(InputError, match="mutually exclusive"):
        extractor.extract(red_image, TEXT, text_tokens_only=True, image_tokens_only=True)


def test_pixel_budget_bounds_the_image_tokens(extractor, noise_image):
    big = noise_image.resize((512, 384))
    r = extractor.extract(big, TEXT, hidden_layer=-2, max_pixels=64 * 64)
    (h, w), (_, ph, pw) = r.token_grids[0], r.patch_grids[0]
    assert h * w <= 64 * 64 // 1024 and (ph, pw) == (2 * h, 2 * w)
    ids, hs = full_forward(extractor, [big], TEXT, max_pixels=64 * 64)
    assert torch.equal(r.embedding, hs[-2][0])
    with pytest.raises(InputError, match="max_pixels"):
        extractor.extract(big, TEXT, max_pixels=100)


def test_grid_pooling_of_the_extraction(extractor, noise_image):
    raw = extractor.extract(noise_image, TEXT, hidden_layer=-2)
    pooled = extractor.extract(noise_image, TEXT, hidden_layer=-2, pool=2)
    (h, w), (ph, pw) = raw.token_grids[0], pooled.token_grids[0]
    assert (ph, pw) == (-(-h // 2), -(-w // 2))
    grid = raw.select("image_no_markers").embedding.reshape(h, w, -1)
    expect = torch.stack([grid[i:i + 2, j:j + 2].reshape(-1, grid.shape[-1]).mean(0)
                          for i in range(0, h, 2) for j in range(0, w, 2)])
    torch.testing.assert_close(pooled.select("image_no_markers").embedding, expect)
    torch.testing.assert_close(pooled.select("user_text").embedding, raw.select("user_text").embedding)
    assert pooled.input_ids.shape[0] == raw.input_ids.shape[0] - h * w + ph * pw


def test_layer_out_of_range(extractor, red_image):
    with pytest.raises(InputError, match=r"hidden layer 17 is out of range .* 16 layers \(valid: -17..16\)"):
        extractor.extract(red_image, TEXT, hidden_layer=17)
    with pytest.raises(InputError, match="-18"):
        extractor.extract(red_image, TEXT, hidden_layer=[-2, -18])


def test_variant_is_detected_from_the_template(tmp_path, extractor):
    from llm_dit.models.tiny import build_tiny_qwen3_vl

    assert extractor.variant == "instruct"
    build_tiny_qwen3_vl(tmp_path / "thinking", thinking=True)
    thinking = VLEmbeddingExtractor.from_pretrained(str(tmp_path / "thinking"), device="cpu")
    assert thinking.variant == "thinking"
    assert thinking.extract(None, "x", hidden_layer=-2).full_prompt.endswith("<|im_start|>assistant\n<think>\n")


def test_save_and_load_round_trip(extractor, red_image, tmp_path):
    r = extractor.extract(red_image, TEXT, hidden_layer=[-6, -2], token_selection="image_only", pool=2)
    back = VLExtractionResult.load(r.save(tmp_path / "e.safetensors"))
    for k in (-6, -2):
        assert torch.equal(back.layer_embeddings[k], r.layer_embeddings[k])
        assert torch.equal(back.hidden_states[k], r.hidden_states[k])
    assert back.metadata() == r.metadata()
    assert back.select("user_text").num_tokens == r.select("user_text").num_tokens
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    with pytest.raises(InputError, match="not an llm-dit extraction"):
        VLExtractionResult.load(tmp_path / "bad.safetensors")


def test_disk_cache_skips_the_forward_pass(tmp_path, red_image):
    from llm_dit.vl.cache import ExtractionCache

    ex = VLEmbeddingExtractor.from_pretrained("tiny", device="cpu", cache=ExtractionCache(10**8, tmp_path))
    calls = []
    hook = ex.model.model.register_forward_pre_hook(lambda *a: calls.append(1))
    first = ex.extract(red_image, TEXT, hidden_layer=[-6, -2])
    second = ex.extract(red_image, TEXT, hidden_layer=[-2, -6], token_selection="image_only")
    hook.remove()
    assert len(calls) == 1 and len(list(tmp_path.glob("*.safetensors"))) == 1
    assert torch.equal(second.hidden_states[-2], first.hidden_states[-2])
    assert torch.equal(second.embedding, first.hidden_states[-2][first.masks.image_only])
    ex.extract(red_image, "other text", hidden_layer=-2)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    tiny = ExtractionCache(1, tmp_path)  # a bound smaller than one entry keeps nothing
    tiny.evict()
    assert list(tmp_path.glob("*.safetensors")) == []


def test_splice_places_vision_features_in_the_text_encoder(splice_extractor, extractor, red_image):
    r = splice_extractor.extract(red_image, TEXT, hidden_layer=[0, -2])
    inputs = run_processor(extractor.processor, build_messages([red_image], TEXT, None), [red_image], None)
    with torch.no_grad():
        feats = extractor.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    assert torch.equal(r.input_ids, inputs["input_ids"][0])
    assert torch.equal(r.hidden_states[0][r.masks.image_no_markers], feats.pooler_output[0])
    emb = splice_extractor.text_encoder.get_input_embeddings().weight
    torch.testing.assert_close(r.hidden_states[0][r.masks.text_only], emb[r.input_ids[r.masks.text_only]])
    # the image reaches the text after it, and only after it
    gray = splice_extractor.extract(Image.new("RGB", red_image.size, (128, 128, 128)), TEXT, hidden_layer=-2)
    m = r.masks
    before = torch.arange(len(m.full)) < m.image_spans[0][0] - 1
    assert torch.equal(r.hidden_states[-2][before], gray.hidden_states[-2][before])
    assert not torch.allclose(r.hidden_states[-2][m.user_text], gray.hidden_states[-2][m.user_text])
    assert r.backend == "splice"


def test_splice_text_only_equals_the_text_path(splice_extractor, zimage):
    for layer in (-2, -6):
        r = splice_extractor.extract(None, TEXT, hidden_layer=layer)
        assert torch.equal(r.embedding, zimage.encode(TEXT, hidden_layer=layer).embeddings)


def test_splice_needs_a_text_encoder():
    with pytest.raises(InputError, match="splice backend needs"):
        VLEmbeddingExtractor.from_pretrained("tiny", device="cpu", backend="splice")
    with pytest.raises(InputError, match="unknown backend"):
        VLEmbeddingExtractor.from_pretrained("tiny", device="cpu", backend="clip")


def test_merged_tokens_are_in_row_major_grid_order(extractor):
    # Each 32x32 cell of the image gets its own gray level; after the processor, every group of
    # four consecutive patches (one merged token) must come from one cell, in row-major order.
    h, w = 3, 4
    cells = np.arange(h * w, dtype=np.uint8).reshape(h, w) * 20
    img = Image.fromarray(np.kron(cells, np.ones((32, 32), dtype=np.uint8))).convert("RGB")
    inputs = run_processor(extractor.processor, build_messages([img], None, None), [img], None)
    assert inputs["image_grid_thw"][0].tolist() == [1, 2 * h, 2 * w]
    patches = inputs["pixel_values"].reshape(h * w, 4, -1)
    per_token = patches.mean(dim=(1, 2))
    assert torch.all(per_token[1:] > per_token[:-1])  # increasing = row-major order of the cells
    assert torch.allclose(patches.std(dim=(1, 2)), torch.zeros(h * w), atol=1e-6)


def test_generate_greedy_is_deterministic(extractor, red_image):
    a = extractor.generate("Describe what you see.", red_image, max_new_tokens=6, temperature=0)
    b = extractor.generate("Describe what you see.", red_image, max_new_tokens=6, temperature=0)
    assert isinstance(a, str) and a == b
    c = extractor.generate("Describe.", red_image, max_new_tokens=6, temperature=0.9, seed=3)
    d = extractor.generate("Describe.", red_image, max_new_tokens=6, temperature=0.9, seed=3)
    assert c == d
    with pytest.raises(InputError, match="max_new_tokens"):
        extractor.generate("x", max_new_tokens=0)


def test_normalization_is_per_layer(extractor, red_image, zimage):
    from llm_dit.vl.reference import compute_reference_stats

    r = extractor.extract(red_image, TEXT, hidden_layer=[-6, -2])
    refs = compute_reference_stats(zimage.pipe.tokenizer, zimage.pipe.text_encoder, ["a cat", "a red house"],
                                   [-6, -2], model_name="tiny")
    with pytest.raises(InputError, match="one reference for 2 layers"):
        r.select("image_no_markers", normalization_mode="per_dim", reference=refs[-6])
    with pytest.raises(InputError, match="layer 11 of 16, the embeddings for layer 15 of 16"):
        r.select("image_no_markers", layers=[-2], normalization_mode="per_dim", reference=refs[-6])
    one = r.select("image_no_markers", layers=[-6], normalization_mode="per_dim", reference=refs[-6])
    assert one.layers == [-6] and list(one.layer_embeddings) == [-6]
    both = r.select("image_no_markers", normalization_mode="per_dim", reference=refs)
    torch.testing.assert_close(both.layer_embeddings[-6], one.layer_embeddings[-6])
    texts = {k: zimage.encode(TEXT, hidden_layer=k).embeddings for k in (-6, -2)}
    g = r.select("full", normalization_mode="global", target_std="text", text=texts)
    for k in (-6, -2):
        assert g.layer_scaled_std[k] == pytest.approx(texts[k].std(unbiased=False).item(), rel=1e-5)
    with pytest.raises(InputError, match="no text given for layer"):
        r.select("full", normalization_mode="global", target_std="text", text={-6: texts[-6]})
    with pytest.raises(InputError, match="were not extracted"):
        r.select("full", layers=[-3])


def test_selection_is_checked_before_the_forward_pass(extractor):
    calls = []
    hook = extractor.model.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(InputError, match="'user_text' is empty: the chat has no text"):
            extractor.extract(Image.new("RGB", (64, 64)), None, token_selection="user_text")
        with pytest.raises(InputError, match="aspect ratio"):
            extractor.extract(Image.new("RGB", (8, 2000)), "x")
    finally:
        hook.remove()
    assert calls == []


@pytest.mark.parametrize("selection", TOKEN_SELECTIONS)
def test_splice_every_layer_and_token_mode_equals_a_plain_forward(splice_extractor, extractor, red_image, selection):
    # the oracle: Qwen3Model's own forward over input embeddings with the vision features put in
    te = splice_extractor.text_encoder
    inputs = run_processor(extractor.processor, build_messages([red_image], TEXT, None), [red_image], None)
    ids = inputs["input_ids"][0]
    with torch.no_grad():
        feats = splice_extractor.vision(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output
        embeds = te.get_input_embeddings()(ids[None]).clone()
        embeds[0, ids == splice_extractor.special.image_pad] = feats
        hs = te(inputs_embeds=embeds, output_hidden_states=True).hidden_states
    layers = list(range(17))
    r = splice_extractor.extract(red_image, TEXT, hidden_layer=layers, token_selection=selection)
    mask = oracle_mask(ids, extractor.tokenizer, selection, TEXT)
    for k in layers:
        torch.testing.assert_close(r.layer_embeddings[k], hs[k][0][mask], atol=1e-5, rtol=1e-5)


def test_generation_under_group_offloading_is_refused_in_one_line(extractor, red_image):
    """Group offloading keeps extraction small but cannot run generate() or the LM head: refused
    with what to do instead, not a device-mismatch traceback."""
    from llm_dit.errors import InputError

    extractor.offload = "group_block"
    try:
        with pytest.raises(InputError, match="needs Qwen3-VL resident.*--profile rtx4090"):
            extractor.generate("Describe it.", red_image, max_new_tokens=4)
        with pytest.raises(InputError, match="VQA scoring needs Qwen3-VL resident"):
            extractor.answer_probability(red_image, "Is it red?")
    finally:
        extractor.offload = "none"
