"""Recipes on the tiny models: planning, building, multi-reference, intra/dual/multi-layer, length
rules, schedules through diffusers' per-step hook, and staged loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from llm_dit.conditioning import Recipe, Reference, build_conditioning, parse_schedule, plan_extractions
from llm_dit.conditioning.blend import blend_adain_per_dim, blend_interpolate
from llm_dit.conditioning.build import Conditioning
from llm_dit.conditioning.run import run_extractions
from llm_dit.conditioning.sequence import match_rms, typical_rms
from llm_dit.errors import InputError
from llm_dit.vl.normalize import normalize

PROMPT = "A simple cartoon house with a red roof"


@pytest.fixture
def refs(tmp_path, red_image, noise_image):
    a, b = tmp_path / "noise.png", tmp_path / "red.png"
    noise_image.save(a)
    red_image.save(b)
    return str(a), str(b)


@pytest.fixture(scope="module")
def text(zimage):
    return zimage.encode(PROMPT).embeddings


def build(recipe, extractor, tiny_config, text, refs_images=None, stats=None):
    recipe = recipe.resolve(tiny_config)
    reqs = plan_extractions(recipe, PROMPT)
    images = {p: Image.open(p).convert("RGB") for p in {r.image for r in recipe.references}}
    ex = run_extractions(extractor, reqs, images)
    return build_conditioning(recipe, PROMPT, text, ex, stats), ex


# -- planning -----------------------------------------------------------------------------------


def test_plan_lists_each_pass_once(refs, tiny_config):
    a, b = refs
    plan = lambda **kw: plan_extractions(Recipe(**kw).resolve(tiny_config), PROMPT)  # noqa: E731
    assert plan(backend="text") == []
    assert [r.image for r in plan(references=[Reference(image=a), Reference(image=a, weight=2)])] == [a]
    one = plan(references=[Reference(image=a)], vl_intra_blend_ratio=0.5, image_layer=-2, text_layer=-6)
    assert len(one) == 1 and one[0].layers == (-6, -2) and one[0].text == PROMPT
    dual = plan(references=[Reference(image=a)], vl_intra_blend_ratio=0.5, dual_extraction=True)
    assert [(r.image, r.text) for r in dual] == [(a, None), (None, PROMPT)]
    delta = plan(references=[Reference(image=a)], blend="style_delta")
    assert [(r.image, r.neutral) for r in delta] == [(a, False), (a, True)]
    styled = plan(references=[Reference(image=a), Reference(image=b, role="style")], style_blend="style_delta")
    assert [(r.image, r.neutral) for r in styled] == [(a, False), (b, False), (b, True)]
    assert [(r.image, r.text) for r in plan(references=[])] == [(None, PROMPT)]  # the VL text alone


def test_plan_refuses_impossible_recipes(tiny_config):
    with pytest.raises(InputError, match="style_delta blend needs a reference image"):
        plan_extractions(Recipe(blend="style_delta").resolve(tiny_config), PROMPT)
    with pytest.raises(InputError, match="give a reference image"):
        plan_extractions(Recipe(vl_intra_blend_ratio=0.5).resolve(tiny_config), PROMPT)
    with pytest.raises(InputError, match="the VL chat would be empty"):
        plan_extractions(Recipe(vl_text="").resolve(tiny_config), PROMPT)


# -- building against hand-made oracles ---------------------------------------------------------


def test_single_reference_equals_select_normalize_blend(refs, extractor, tiny_config, text):
    cond, _ = build(Recipe(references=[Reference(image=refs[0])], alpha=0.4), extractor, tiny_config, text)
    res = extractor.extract(Image.open(refs[0]).convert("RGB"), PROMPT, hidden_layer=-6,
                            max_pixels=tiny_config.vl.max_pixels)
    vl = res.embedding
    vl = vl * (float(text.std(unbiased=False)) / float(vl.std(unbiased=False)))  # global, target = text std
    torch.testing.assert_close(cond.content, vl)
    torch.testing.assert_close(cond.at(0.4), blend_interpolate(vl, text, 0.4))
    assert torch.equal(cond.at(0.0), text)
    s = cond.stats(0.4)
    assert s["vl_shape"] == list(vl.shape)
    assert s["blended_std"] == pytest.approx(float(cond.at(0.4).std(unbiased=False)))


def test_intra_and_multi_layer_mix_the_parts_of_one_pass(refs, extractor, tiny_config, text):
    r = Recipe(references=[Reference(image=refs[0])], vl_intra_blend_ratio=0.25, image_layer=-2, text_layer=-6,
               normalization_mode="none", blend="replace")
    cond, ex = build(r, extractor, tiny_config, text)
    (res,) = ex.values()
    masks = res.masks
    img = res.hidden_states[-2][masks.image_no_markers]
    txt = res.hidden_states[-6][masks.text_only]
    expect = 0.25 * torch.nn.functional.interpolate(img.T[None], size=txt.shape[0], mode="linear",
                                                    align_corners=False)[0].T + 0.75 * txt
    torch.testing.assert_close(cond.content, expect)
    torch.testing.assert_close(cond.at(0.3), expect)  # replace: the VL sequence itself


def test_causal_attention_makes_image_tokens_independent_of_the_text_after_them(refs, extractor, tiny_config):
    """Why dual extraction drops the image from its content pass: with the image kept, the style
    pass and the content pass would give the same image tokens as one intra-VL pass."""
    im = Image.open(refs[0]).convert("RGB")
    kw = dict(hidden_layer=-6, token_selection="image_no_markers", max_pixels=tiny_config.vl.max_pixels)
    with_text = extractor.extract(im, PROMPT, **kw).embedding
    without = extractor.extract(im, None, **kw).embedding
    torch.testing.assert_close(with_text, without, rtol=1e-5, atol=1e-6)


def test_dual_extraction_uses_a_text_pass_without_the_image(refs, extractor, tiny_config, text):
    r = Recipe(references=[Reference(image=refs[0])], vl_intra_blend_ratio=1.0, dual_extraction=True,
               normalization_mode="none", blend="replace", resample="area")
    cond, _ = build(r, extractor, tiny_config, text)
    img = extractor.extract(Image.open(refs[0]).convert("RGB"), None, hidden_layer=-6,
                            token_selection="image_no_markers", max_pixels=tiny_config.vl.max_pixels).embedding
    txt = extractor.extract(None, PROMPT, hidden_layer=-6, token_selection="text_only").embedding
    expect = torch.nn.functional.adaptive_avg_pool1d(img.T[None], txt.shape[0])[0].T
    torch.testing.assert_close(cond.content, expect)


def test_multi_reference_weights_and_roles(refs, extractor, tiny_config, text):
    a, b = refs
    base = dict(normalization_mode="none", alpha=0.5)
    ca, _ = build(Recipe(references=[Reference(image=a)], **base), extractor, tiny_config, text)
    cb, _ = build(Recipe(references=[Reference(image=b)], **base), extractor, tiny_config, text)
    both, _ = build(Recipe(references=[Reference(image=a, weight=3), Reference(image=b, weight=1)], **base),
                    extractor, tiny_config, text)
    n = max(ca.content.shape[0], cb.content.shape[0])
    pool = lambda x: torch.nn.functional.adaptive_avg_pool1d(x.T[None], n)[0].T  # noqa: E731
    torch.testing.assert_close(both.content, 0.75 * pool(ca.content) + 0.25 * pool(cb.content))
    roles, _ = build(Recipe(references=[Reference(image=a), Reference(image=b, role="style")], style_alpha=0.2,
                            **base), extractor, tiny_config, text)
    expect = blend_adain_per_dim(blend_interpolate(ca.content, text, 0.5), cb.content, 0.2)
    torch.testing.assert_close(roles.at(0.5), expect)
    assert roles.sources[1]["role"] == "style"


def test_style_delta_subtracts_the_gray_twin(refs, extractor, tiny_config, text):
    r = Recipe(references=[Reference(image=refs[0])], blend="style_delta", normalization_mode="none")
    cond, _ = build(r, extractor, tiny_config, text)
    im = Image.open(refs[0]).convert("RGB")
    kw = dict(hidden_layer=-6, max_pixels=tiny_config.vl.max_pixels)
    style = extractor.extract(im, PROMPT, **kw).embedding
    gray = extractor.extract(Image.new("RGB", im.size, (128, 128, 128)), PROMPT, **kw).embedding
    torch.testing.assert_close(cond.content, style - gray)
    torch.testing.assert_close(cond.at(0.3), text + 0.3 * torch.nn.functional.interpolate(
        (style - gray).T[None], size=text.shape[0], mode="linear", align_corners=False)[0].T)


def test_match_rms_puts_every_token_at_the_text_scale(refs, extractor, tiny_config, text):
    cond, _ = build(Recipe(references=[Reference(image=refs[0])], magnitude="match_rms", normalization_mode="none"),
                    extractor, tiny_config, text)
    y = cond.at(0.5)
    rms = y.pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.full_like(rms, typical_rms(text)))
    v = match_rms(cond.content, typical_rms(text))
    torch.testing.assert_close(y, match_rms(blend_interpolate(v, text, 0.5), typical_rms(text)))
    raw, _ = build(Recipe(references=[Reference(image=refs[0])], normalization_mode="none"), extractor, tiny_config,
                   text)
    assert raw.stats(0.5)["rms"]["blended"] < cond.stats(0.5)["rms"]["blended"]  # averaging shrank it


def test_reference_statistics_normalization_and_masking(refs, extractor, tiny_config, text, zimage):
    from llm_dit.conditioning.run import reference_stats_for

    r = Recipe(references=[Reference(image=refs[0])], normalization_mode="per_dim", outlier_mask="restore",
               outlier_threshold=1.5).resolve(tiny_config)
    stats = reference_stats_for(r, tiny_config, zimage.pipe.tokenizer, zimage.pipe.text_encoder)
    assert list(stats) == [-6] and stats[-6].layer == 11  # layer-matched: hidden_states[-6] of 17 = index 11
    again = reference_stats_for(r, tiny_config, zimage.pipe.tokenizer, zimage.pipe.text_encoder)
    torch.testing.assert_close(again[-6].std, stats[-6].std)  # from the disk cache
    cond, ex = build(r, extractor, tiny_config, text, stats=stats)
    (res,) = ex.values()
    per_dim = normalize(res.embedding, "per_dim", reference=stats[-6]).embeddings
    assert cond.sources[0]["outliers"]["masked_dimensions"] == []  # per_dim already matched every std
    torch.testing.assert_close(cond.content, per_dim)
    raw = r.model_copy(update={"normalization_mode": "none"})
    cond, _ = build(raw, extractor, tiny_config, text, stats=stats)
    masked = cond.sources[0]["outliers"]["masked_dimensions"]
    assert masked  # a threshold of 1.5 finds some in raw VL states
    expect = res.embedding.clone()
    expect[:, masked] = stats[-6].mean[masked]
    torch.testing.assert_close(cond.content, expect)


# -- length rules and bad tensors ---------------------------------------------------------------


def test_results_never_exceed_1504_tokens_and_are_never_empty():
    text = torch.randn(1000, 8)
    long_vl = torch.randn(3000, 8)
    for blend, n in (("replace", 1504), ("concat", 1504), ("interpolate", 1000)):
        c = Conditioning(Recipe(blend=blend, alpha=1.0, budget_mode="pool"), text, content=long_vl)
        assert c.at(1.0).shape == (n, 8)
    c = Conditioning(Recipe(blend="concat"), text, content=long_vl)
    assert torch.equal(c.at(1.0)[:1000], text)  # concat keeps the prompt whole, the VL part fits the rest
    c = Conditioning(Recipe(blend="replace"), text, content=long_vl)
    assert torch.allclose(c.at(1.0), torch.nn.functional.adaptive_avg_pool1d(long_vl.T[None], 1504)[0].T)
    with pytest.raises(InputError, match="the text embedding is empty"):
        build_conditioning(Recipe(backend="text"), PROMPT, torch.zeros(0, 8), {})


def test_token_budget_limits_each_reference(refs, extractor, tiny_config, text):
    cond, _ = build(Recipe(references=[Reference(image=refs[0])], token_budget=5, blend="replace"), extractor,
                    tiny_config, text)
    assert cond.content.shape[0] == 5 and cond.sources[0]["budgeted_from"] > 5


def test_nan_in_an_extraction_is_refused_with_the_reference_named(refs, extractor, tiny_config, text):
    r = Recipe(references=[Reference(image=refs[0])]).resolve(tiny_config)
    reqs = plan_extractions(r, PROMPT)
    ex = run_extractions(extractor, reqs, {refs[0]: Image.open(refs[0]).convert("RGB")})
    (res,) = ex.values()
    res.hidden_states[-6] = res.hidden_states[-6].clone()
    res.hidden_states[-6][3, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        build_conditioning(r, PROMPT, text, ex)
    bad_text = text.clone()
    bad_text[0, 0] = float("inf")
    with pytest.raises(InputError, match="the text embedding contains NaN or infinite"):
        build_conditioning(r, PROMPT, bad_text, ex)


# -- schedules through the per-step hook --------------------------------------------------------


def test_a_schedule_that_is_constant_gives_exactly_the_plain_image(refs, extractor, tiny_config, text, zimage):
    steps = tiny_config.generation.steps
    cond, _ = build(Recipe(references=[Reference(image=refs[0])], alpha=0.4), extractor, tiny_config, text)
    plain = np.asarray(zimage.generate(cond.at(0.4)))
    for spec in ("constant:0.4", "list:" + ",".join(["0.4"] * steps), "step:0.4:0.4:0.5"):
        sched = Conditioning(cond.recipe.model_copy(update={"schedule": parse_schedule(spec)}), cond.text,
                             cond.content)
        assert np.array_equal(np.asarray(zimage.generate(sched.step_embeds(steps))), plain), spec


def test_a_varying_schedule_equals_stock_diffusers_with_a_hand_written_callback(
        refs, extractor, tiny_config, text, zimage, stock_pipe):
    g = tiny_config.generation
    cond, _ = build(Recipe(references=[Reference(image=refs[0])], schedule=parse_schedule("linear:1:0")),
                    extractor, tiny_config, text)
    ours = np.asarray(zimage.generate(cond.step_embeds(g.steps)))
    alphas = [1 - i / (g.steps - 1) for i in range(g.steps)]
    per_step = [0.0 * text + a * torch.nn.functional.interpolate(cond.content.T[None], size=text.shape[0],
                mode="linear", align_corners=False)[0].T + (1 - a) * text for a in alphas]

    def swap(pipe, i, t, kwargs):  # diffusers' documented way: edit a callback tensor input
        if i + 1 < len(per_step):
            kwargs["prompt_embeds"] = [per_step[i + 1]]
        return kwargs

    ref = stock_pipe(prompt_embeds=[per_step[0]], num_inference_steps=g.steps, width=g.width, height=g.height,
                     guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(g.seed),
                     callback_on_step_end=swap, callback_on_step_end_tensor_inputs=["prompt_embeds"]).images[0]
    assert np.array_equal(ours, np.asarray(ref))
    assert not np.array_equal(ours, np.asarray(zimage.generate(cond.at(1.0))))
    assert not np.array_equal(ours, np.asarray(zimage.generate(cond.at(0.0))))


def test_img2img_reads_the_tail_of_the_schedule(refs, extractor, tiny_config, text):
    cond, _ = build(Recipe(references=[Reference(image=refs[0])], schedule=parse_schedule("list:0.9,0.6,0.3,0.0")),
                    extractor, tiny_config, text)
    fn = cond.step_embeds(4)
    assert torch.equal(fn(0, 2), cond.at(0.3)) and torch.equal(fn(1, 2), cond.at(0.0))


def test_token_scale_does_not_change_the_image(zimage, text):
    """Z-Image RMS-normalizes each caption token: why concat's weight sets a token count, not a scale."""
    a = np.asarray(zimage.generate(text)).astype(int)
    b = np.asarray(zimage.generate(text * 7.0)).astype(int)
    assert np.abs(a - b).max() <= 1


def test_caption_length_may_change_between_steps(refs, extractor, tiny_config, text, zimage):
    cond, _ = build(Recipe(references=[Reference(image=refs[0])], blend="concat", schedule=parse_schedule(
        "step:0:1:0.5")), extractor, tiny_config, text)
    assert cond.at(0.0).shape[0] < cond.at(1.0).shape[0]
    img = np.asarray(zimage.generate(cond.step_embeds(tiny_config.generation.steps)))
    assert img.shape == (tiny_config.generation.height, tiny_config.generation.width, 3)
    assert not np.array_equal(img, np.asarray(zimage.generate(cond.at(0.0))))  # the swap happened
    assert not np.array_equal(img, np.asarray(zimage.generate(cond.at(1.0))))
