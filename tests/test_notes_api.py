"""The research notes' Python, as written: each call the notes (``../shared/seeds``) make, with their
module paths, argument names and shapes, checked against the formula or meaning the notes give.

Seed 000: the metadata loop (docs/notes.md runs it; tests/test_experiments.py too).
Seed 001: ``mask_outlier_dimensions(vl_emb, qwen3_stats, threshold=10.0)``, ``compute_style_delta``,
``blend_with_style_delta``, ``blend_adain``, ``vl_intra_blend_ratio``.
Seed 002: ``extract(..., image_tokens_no_markers=True)``, ``extract(..., text_tokens_only=True)``,
``blend_embeddings(a, b, alpha=0.3)``, multi-layer extraction.
Seed 003: ``whiten_embeddings(emb, reference_cov)``, ``gem_pool``, ``svd_style_vector``,
``extract_with_style_injection``.
Seed 004: ``generate(..., do_sample=True)``, ``extract(..., scale_to_text=True,
normalization_mode="global")``, ``text_encoder.encode(caption)``, ``blend_interpolate(vl, text,
alpha=0.5)``, ``parse_thinking_content``, ``unload()``.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llm_dit.errors import InputError

# the notes' module paths
from llm_dit.vl.blending import (
    blend_adain,
    blend_adain_per_dim,
    blend_embeddings,
    blend_interpolate,
    blend_with_style_delta,
    compute_style_delta,
    gem_pool,
    interpolate_sequence,
    mask_outlier_dimensions,
    svd_style_vector,
    whiten_embeddings,
)
from llm_dit.vl.qwen3_vl import VLEmbeddingExtractor, parse_thinking_content

PROMPT = "Homer Simpson eating spaghetti"
D = 64  # the tiny models' hidden size


def _interp(x: torch.Tensor, n: int) -> torch.Tensor:
    """Seed 004's interpolation, as the notes write it: ``[L, D] -> [n, D]``."""
    return F.interpolate(x.T.unsqueeze(0), size=n, mode="linear", align_corners=False).squeeze(0).T


@pytest.fixture(scope="module")
def vl_extractor(tiny_config):
    return VLEmbeddingExtractor.from_pretrained("tiny", device="cpu", dtype="float32")


@pytest.fixture
def input_image(noise_image):
    return noise_image


# -- seed 004 ----------------------------------------------------------------------------------------


def test_seed004_extract_scale_to_text_global(vl_extractor, input_image):
    """``scale_to_text=True, normalization_mode="global"``: the VL embedding scaled to the text
    encoder's std, 61.0 as the notes' default (seed 004's table: "Scaled Std 61.0")."""
    vl_result = vl_extractor.extract(image=input_image, text=PROMPT, hidden_layer=-6, text_tokens_only=False,
                                     scale_to_text=True, normalization_mode="global")
    raw = vl_result.hidden_states[-6]  # the whole sequence: text_tokens_only=False is the full one
    emb = vl_result.embeddings
    assert isinstance(emb, torch.Tensor) and emb.shape == raw.shape and emb.shape[1] == D
    std = raw.std(unbiased=False)
    torch.testing.assert_close(emb, raw * (61.0 / std))
    assert vl_result.scaled_std == pytest.approx(61.0, rel=1e-5)
    assert vl_result.original_std == pytest.approx(float(std), rel=1e-6)
    assert vl_result.scale_factor == pytest.approx(61.0 / float(std), rel=1e-5)
    assert vl_result.token_selection == "full" and vl_result.normalization_mode == "global"
    assert vl_result.max_pixels == 1024 * 1024  # the vl backend's budget when none is given
    # an explicit target wins (seed 000: "target ~70.0"); scale_to_text=False leaves the states as they are
    assert vl_extractor.extract(input_image, PROMPT, hidden_layer=-6, text_tokens_only=False, scale_to_text=True,
                                target_std=70.0).scaled_std == pytest.approx(70.0, rel=1e-5)
    off = vl_extractor.extract(input_image, PROMPT, hidden_layer=-6, scale_to_text=False, normalization_mode="global")
    assert torch.equal(off.embeddings, raw) and off.normalization_mode == "none"


def test_seed004_encode_and_blend_interpolate(vl_extractor, zimage, input_image):
    """``text_encoder.encode(caption)`` then ``blend_interpolate(vl_aligned, text_emb, alpha=0.5)``:
    ``0.5 * interpolate(vl, L_t) + 0.5 * text`` with the notes' own interpolation."""
    caption = "A red house with a blue door under a cloudy sky"
    vl_aligned = vl_extractor.extract(image=input_image, text=caption, hidden_layer=-6, text_tokens_only=False,
                                      scale_to_text=True, normalization_mode="global").embeddings
    text_encoder = zimage  # the notes' text encoder: Z-Image's own, through ZImage.encode
    text_emb = text_encoder.encode(caption).embeddings
    blended = blend_interpolate(vl_aligned, text_emb, alpha=0.5)
    torch.testing.assert_close(blended, 0.5 * _interp(vl_aligned, text_emb.shape[0]) + 0.5 * text_emb)
    # the notes' keyword names and batched [1, L, D] tensors give the same numbers, batched
    batched = blend_interpolate(vl_embeddings=vl_aligned[None], text_embeddings=text_emb[None], alpha=0.5)
    assert batched.shape == (1, *text_emb.shape) and torch.equal(batched[0], blended)


def test_seed004_generate_do_sample(vl_extractor, input_image):
    """``generate(image=..., system_prompt=..., max_new_tokens=..., temperature=0.6, top_p=0.95,
    do_sample=True)`` returns text; ``do_sample=False`` is greedy decoding, as ``temperature=0``."""
    system = "Describe the image in detail."
    sampled = vl_extractor.generate(image=input_image, system_prompt=system, max_new_tokens=24, temperature=0.6,
                                    top_p=0.95, do_sample=True, seed=3)
    again = vl_extractor.generate(image=input_image, system_prompt=system, max_new_tokens=24, temperature=0.6,
                                  top_p=0.95, seed=3)
    assert isinstance(sampled, str) and sampled == again  # do_sample=True with a temperature: the sampling path
    greedy = vl_extractor.generate(image=input_image, system_prompt=system, max_new_tokens=24, temperature=0.6,
                                   do_sample=False)
    assert greedy == vl_extractor.generate(image=input_image, system_prompt=system, max_new_tokens=24, temperature=0)
    with pytest.raises(InputError, match="do_sample=True needs a temperature"):
        vl_extractor.generate(image=input_image, max_new_tokens=4, temperature=0, do_sample=True)


def test_seed004_parse_thinking_and_unload(tiny_config):
    caption, thinking = parse_thinking_content("<think>\nlook at the roof\n</think>\n\nA red house.")
    assert (caption, thinking) == ("A red house.", "look at the roof")
    assert parse_thinking_content("A red house.") == ("A red house.", None)
    ex = VLEmbeddingExtractor.from_pretrained("tiny", device="cpu", dtype="float32")
    ex.unload()
    assert ex.model is None


# -- seed 001 ----------------------------------------------------------------------------------------


def _notes_stats_file(tmp_path, std: np.ndarray, mean: np.ndarray):
    """A statistics file in the notes' layout, written by NumPy alone (not by the library)."""
    path = tmp_path / "qwen3_4b_stats.npz"
    np.savez(path, per_dim_mean=mean.astype(np.float32), per_dim_std=std.astype(np.float32),
             global_mean=np.float64(mean.mean()), global_std=np.float64(61.0957))
    return path


def test_seed001_mask_outlier_dimensions_with_the_notes_stats(tmp_path):
    """``mask_outlier_dimensions(vl_emb, qwen3_stats, threshold=10.0)`` with the notes' ``.npz`` loaded
    by ``np.load``: dimensions whose std differs more than 10x from the reference's, either way (the
    notes' dim 396 is the reference's 617x), are zeroed; every other value is left as it was."""
    g = torch.Generator().manual_seed(0)
    vl_emb = torch.randn(40, D, generator=g)
    vl_emb[:, 3] *= 50.0  # VL varies 50x more than the reference: vl_high
    vl_emb[:, 7] *= 0.001  # the reference varies ~1000x more (the notes' dim 396): ref_high
    ref_std = np.ones(D)
    path = _notes_stats_file(tmp_path, ref_std, np.zeros(D))
    qwen3_stats = np.load(path)
    assert qwen3_stats["per_dim_std"].shape == (D,)
    masked = mask_outlier_dimensions(vl_emb, qwen3_stats, threshold=10.0)
    # the oracle: the notes' ratio, taken both ways, with the population std
    ratios = vl_emb.std(dim=0, unbiased=False) / torch.as_tensor(qwen3_stats["per_dim_std"])
    keep = (ratios < 10.0) & (1.0 / ratios < 10.0)
    assert keep.tolist().count(False) == 2 and not keep[3] and not keep[7]
    torch.testing.assert_close(masked, vl_emb * keep.float())
    # a dict of the same arrays, a path, and the batched [1, n, D] form work the same
    as_dict = {"per_dim_std": qwen3_stats["per_dim_std"], "per_dim_mean": qwen3_stats["per_dim_mean"]}
    assert torch.equal(mask_outlier_dimensions(vl_emb, as_dict, threshold=10.0), masked)
    assert torch.equal(mask_outlier_dimensions(vl_emb[None], str(path))[0], masked)
    with pytest.raises(InputError, match="per_dim_std"):
        mask_outlier_dimensions(vl_emb, {"std": qwen3_stats["per_dim_std"]})
    with pytest.raises(InputError, match="clamp needs the reference's per-dimension range"):
        mask_outlier_dimensions(vl_emb, qwen3_stats, mode="clamp")


def test_seed001_style_delta(tmp_path):
    """``compute_style_delta(style_vl_embeddings=, neutral_vl_embeddings=)`` = style - neutral;
    ``blend_with_style_delta(text_embeddings, style_delta, alpha=0.3)`` on ``[1, L, D]`` tensors of
    different lengths = ``text + 0.3 * interpolate_sequence(delta, L_t)`` (the notes' code)."""
    g = torch.Generator().manual_seed(1)
    style, neutral = torch.randn(1, 12, D, generator=g), torch.randn(1, 12, D, generator=g)
    text = torch.randn(1, 7, D, generator=g)
    style_delta = compute_style_delta(style_vl_embeddings=style, neutral_vl_embeddings=neutral)
    assert style_delta.shape == (1, 12, D) and torch.equal(style_delta, style - neutral)
    out = blend_with_style_delta(text, style_delta, alpha=0.3)
    expected = text + 0.3 * _interp(style_delta[0], 7)[None]
    assert out.shape == (1, 7, D)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(interpolate_sequence(style_delta, text.shape[1]), _interp(style_delta[0], 7)[None])
    kw = blend_with_style_delta(text_embeddings=text, style_delta=style_delta, alpha=0.3)
    assert torch.equal(kw, out)


def test_seed001_blend_adain_is_the_notes_formula():
    """``blend_adain(text_embeddings, vl_embeddings, alpha=0.3)``: the notes' code, statistics per token
    over the hidden dimension, for sequences of the same length (where the notes' code is defined)."""
    g = torch.Generator().manual_seed(2)
    text_embeddings, vl_embeddings = torch.randn(1, 9, D, generator=g) * 3, torch.randn(1, 9, D, generator=g) + 1
    t_mean, t_std = text_embeddings.mean(dim=-1, keepdim=True), text_embeddings.std(dim=-1, keepdim=True)
    normalized = (text_embeddings - t_mean) / (t_std + 1e-5)
    v_mean, v_std = vl_embeddings.mean(dim=-1, keepdim=True), vl_embeddings.std(dim=-1, keepdim=True)
    expected = 0.3 * (normalized * v_std + v_mean) + 0.7 * text_embeddings
    out = blend_adain(text_embeddings=text_embeddings, vl_embeddings=vl_embeddings, alpha=0.3)
    torch.testing.assert_close(out, expected)
    assert torch.equal(blend_adain(text_embeddings, vl_embeddings, alpha=0.3), out)
    # adain_per_dim (seed 004's table) takes the same names; statistics per dimension over the tokens
    per_dim = blend_adain_per_dim(text_embeddings=text_embeddings[0], vl_embeddings=vl_embeddings[0], alpha=1.0)
    torch.testing.assert_close(per_dim.std(0, unbiased=False), vl_embeddings[0].std(0, unbiased=False),
                               atol=1e-4, rtol=1e-4)


def test_batched_tensors_hold_one_sequence():
    two = torch.zeros(2, 4, D)
    with pytest.raises(InputError, match=r"one sequence, \[1, tokens, dim\]"):
        blend_interpolate(two, two, alpha=0.5)
    with pytest.raises(InputError, match="name the same argument"):
        blend_interpolate(torch.ones(3, D), vl_embeddings=torch.ones(3, D), vl=torch.ones(3, D), alpha=0.5)


def test_seed001_vl_intra_blend_ratio(vl_extractor, input_image):
    """``extract(..., vl_intra_blend_ratio=r)``: ``r * image tokens + (1 - r) * text tokens`` of the SAME
    extraction (seed 002 phase 2), the image part resampled to the text part's length."""
    r = vl_extractor.extract(image=input_image, text=PROMPT, hidden_layer=-6, vl_intra_blend_ratio=0.3)
    h = r.hidden_states[-6]
    image = h[r.masks.image_no_markers]
    text = h[r.masks.text_only]
    torch.testing.assert_close(r.embeddings, 0.3 * _interp(image, text.shape[0]) + 0.7 * text)
    assert r.token_selection.startswith("intra(image_no_markers x 0.3")
    with pytest.raises(InputError, match="drop the token selection"):
        vl_extractor.extract(input_image, PROMPT, vl_intra_blend_ratio=0.3, text_tokens_only=True)


# -- seed 002 ----------------------------------------------------------------------------------------


def test_seed002_dual_and_multi_layer_extraction(vl_extractor, input_image):
    """Phase 3 and 4 as written: a style pass (image tokens, no text), a content pass (text tokens),
    then ``blend_embeddings(style_result.embeddings, content_result.embeddings, alpha=0.3)``."""
    style_result = vl_extractor.extract(image=input_image, text=None, image_tokens_no_markers=True)
    content_result = vl_extractor.extract(image=input_image, text=PROMPT, text_tokens_only=True)
    s_h, c_h = style_result.hidden_states[style_result.hidden_layer], content_result.hidden_states[-6]
    assert torch.equal(style_result.embeddings, s_h[style_result.masks.image_no_markers])
    assert torch.equal(content_result.embeddings, c_h[content_result.masks.text_only])
    final_emb = blend_embeddings(style_result.embeddings, content_result.embeddings, alpha=0.3)
    n = content_result.embeddings.shape[0]
    torch.testing.assert_close(final_emb, 0.3 * _interp(style_result.embeddings, n) + 0.7 * content_result.embeddings)
    # phase 4: image tokens of layer -5, text tokens of layer -15 (the tiny model has enough layers)
    img_result = vl_extractor.extract(image=input_image, text=PROMPT, hidden_layer=-5, image_tokens_no_markers=True)
    text_result = vl_extractor.extract(image=input_image, text=PROMPT, hidden_layer=-15, text_tokens_only=True)
    assert img_result.hidden_layer == -5 and text_result.hidden_layer == -15
    final = blend_embeddings(img_result.embeddings, text_result.embeddings, alpha=0.3)
    assert final.shape == text_result.embeddings.shape


# -- seed 003 ----------------------------------------------------------------------------------------


def test_seed003_whiten_embeddings_matches_the_reference_covariance():
    """``whiten_embeddings(emb, reference_cov)``: "apply whitening transform to match reference
    covariance": the result's covariance is the reference's (up to the ridge), its mean the tokens'."""
    g = torch.Generator().manual_seed(4)
    d = 8
    emb = torch.randn(4000, d, generator=g) @ torch.randn(d, d, generator=g) + 5.0
    a = torch.randn(d, d, generator=g)
    reference_cov = a @ a.T / d + 0.1 * torch.eye(d)
    out = whiten_embeddings(emb, reference_cov)
    centred = (out - out.mean(0)).double()
    cov = centred.T @ centred / out.shape[0]
    torch.testing.assert_close(cov, reference_cov.double(), rtol=5e-3, atol=5e-3)
    torch.testing.assert_close(out.mean(0), emb.mean(0), rtol=1e-4, atol=1e-3)
    assert whiten_embeddings(emb[None], reference_cov).shape == (1, *emb.shape)
    with pytest.raises(InputError, match=r"\[8, 8\] covariance"):
        whiten_embeddings(emb, torch.eye(3))


def test_seed003_pooling_is_the_notes_formula():
    """``gem_pool(embeddings, p=3.0)`` and ``svd_style_vector(embeddings, k=10)`` as the notes write them."""
    g = torch.Generator().manual_seed(5)
    embeddings = torch.randn(30, D, generator=g) * 4
    p = 3.0
    torch.testing.assert_close(gem_pool(embeddings, p=3.0), (embeddings.abs() ** p).mean(dim=0) ** (1.0 / p))
    u, s, vt = torch.linalg.svd(embeddings, full_matrices=False)
    k = 10
    torch.testing.assert_close(svd_style_vector(embeddings, k=10),
                               (u[:, :k] @ torch.diag(s[:k]) @ vt[:k, :]).mean(dim=0), atol=1e-4, rtol=1e-4)


def test_seed003_style_injection_sketch(vl_extractor, input_image):
    """Gemini's sketch as quoted: ``h[:, vision_end:] + ratio * h[:, vision_start:vision_end].mean``
    at layer -8, ``[1, N, D]``."""
    out = vl_extractor.extract_with_style_injection(input_image, PROMPT, ratio=0.3)
    r = vl_extractor.extract(input_image, PROMPT, hidden_layer=-8)
    ids = r.input_ids.tolist()
    tok = vl_extractor.tokenizer
    vision_start = ids.index(tok.convert_tokens_to_ids("<|vision_start|>"))
    vision_end = ids.index(tok.convert_tokens_to_ids("<|vision_end|>"))
    hidden = r.hidden_states[-8][None]
    img_tokens, txt_tokens = hidden[:, vision_start:vision_end, :], hidden[:, vision_end:, :]
    torch.testing.assert_close(out, txt_tokens + 0.3 * img_tokens.mean(dim=1, keepdim=True))


# -- the notes' statistics file ---------------------------------------------------------------------


def test_reference_stats_npz_round_trip_and_notes_layout(tmp_path, zimage):
    """``stats reference`` writes and reads the notes' ``.npz`` layout; a notes file without a layer
    takes it from the ``.json`` beside it, and one with none at all is refused where layers must match."""
    from llm_dit.vl.reference import ReferenceStats, check_layer_match, compute_reference_stats

    pipe = zimage.pipe
    stats = compute_reference_stats(pipe.tokenizer, pipe.text_encoder, ["a red house", "a cat on a sofa"], [-6],
                                    "tiny")[-6]
    path = stats.save(tmp_path / "ref.npz")
    z = np.load(path)
    assert {"per_dim_mean", "per_dim_std", "global_mean", "global_std"} <= set(z.files)
    assert float(z["global_std"]) == pytest.approx(stats.global_std)
    back = ReferenceStats.load(path)
    for name in ("mean", "std", "min", "max"):
        assert torch.equal(getattr(back, name), getattr(stats, name))
    assert (back.layer, back.num_layers, back.model, back.num_tokens) == (
        stats.layer, stats.num_layers, stats.model, stats.num_tokens)
    # the notes' own file: arrays only, its layer in qwen3_4b_stats.json beside it
    notes = _notes_stats_file(tmp_path, stats.std.numpy(), stats.mean.numpy())
    with pytest.raises(InputError, match="do not record their layer"):
        check_layer_match(ReferenceStats.load(notes), -6, stats.num_layers)
    notes.with_suffix(".json").write_text('{"model": "Qwen3-4B", "layer": -6, "num_prompts": 10}')
    read = ReferenceStats.load(notes)
    assert read.layer == -6 and read.num_layers is None and read.model == "Qwen3-4B" and read.min is None
    check_layer_match(read, -6, stats.num_layers)  # the same layer counted from the end: accepted
    with pytest.raises(InputError, match="reference statistics are for layer -6"):
        check_layer_match(read, -2, stats.num_layers)
