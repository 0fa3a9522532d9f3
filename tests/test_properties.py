"""Property tests (hypothesis) over the pure tensor functions.

Inputs are drawn the way real hidden states can look: 1 to 40 tokens, unequal text and VL lengths,
values at scales 1e-3 ... 1e4 (Qwen3's massive activations reach 1e3-1e4), a few massive entries on
top of unit noise, constant rows, a constant tensor, and float32 / float16 / bfloat16. Every
function must return finite values of its documented shape, and refuse NaN or infinite input with
an InputError (one sentence), never pass it on. Derandomized: the same examples on every run.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_dit.conditioning.blend import BLEND_MODES, BlendOptions, blend
from llm_dit.conditioning.schedule import parse_schedule
from llm_dit.conditioning.sequence import resample
from llm_dit.conditioning.style import STYLE_VECTORS, style_vector
from llm_dit.errors import InputError
from llm_dit.text.long_prompt import LONG_PROMPT_MODES, fit_length
from llm_dit.vl.normalize import NORMALIZATION_MODES, normalize
from llm_dit.vl.outliers import MASK_MODES, mask_outliers
from llm_dit.vl.reference import ReferenceStats
from llm_dit.vl.tokens import SpecialIds, compute_token_masks, pool_grid

settings.register_profile("llm-dit", derandomize=True, deadline=None, max_examples=60, database=None)
settings.load_profile("llm-dit")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KINDS = ("noise", "massive", "constant_rows", "constant")


def make(seed: int, n: int, d: int, scale: float, kind: str, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * scale
    if kind == "massive":  # unit noise with a few entries at +-1e4 (a real Qwen3 sequence's outliers)
        x = torch.randn(n, d, generator=g)
        x[torch.randint(n, (2,), generator=g), torch.randint(d, (2,), generator=g)] = 1e4
    elif kind == "constant_rows":  # some tokens hold one value in every dimension
        x[: max(1, n // 2)] = x[: max(1, n // 2), :1]
    elif kind == "constant":
        x = torch.full((n, d), float(scale))
    return x.to(dtype)


@st.composite
def sequences(draw, d: int | None = None, min_tokens: int = 1, max_tokens: int = 40):
    """``(tensor, its float32 value)``: what a function is given, and what it reads (the float32 cast)."""
    d = d if d is not None else draw(st.integers(2, 12))
    x = make(draw(st.integers(0, 2**31 - 1)), draw(st.integers(min_tokens, max_tokens)), d,
             draw(st.sampled_from((1e-3, 1.0, 1e3, 1e4))), draw(st.sampled_from(KINDS)), draw(st.sampled_from(DTYPES)))
    return x


@st.composite
def pairs(draw):
    d = draw(st.integers(2, 12))
    return draw(sequences(d)), draw(sequences(d))


def poisoned(x: torch.Tensor, value: float, where: int) -> torch.Tensor:
    y = x.clone()
    y.view(-1)[where % y.numel()] = value
    return y


def finite(y: torch.Tensor) -> bool:
    return bool(torch.isfinite(y.float()).all())


def within(y: torch.Tensor, x: torch.Tensor) -> bool:
    """Every column of ``y`` inside the range of that column of ``x`` (weighted averages stay there),
    up to the rounding of ``y``'s dtype."""
    lo, hi = x.float().min(0).values, x.float().max(0).values
    slack = (hi - lo).abs() * 1e-5 + lo.abs().maximum(hi.abs()) * (1e-2 if y.dtype != torch.float32 else 1e-6)
    return bool(((y.float() >= lo - slack) & (y.float() <= hi + slack)).all())


# -- blend modes ---------------------------------------------------------------------------------


@pytest.mark.reliability('bad input', 'every blend mode on random [tokens, dim] pairs: 1-40 tokens of unequal '
                         'lengths, scales 1e-3 to 1e4, massive entries, constant rows, a constant tensor; float32, '
                         'float16, bfloat16; alpha in [0, 1]',
                         'finite float32 output of the documented length')
@pytest.mark.parametrize("mode", list(BLEND_MODES))
@given(tv=pairs(), alpha=st.floats(0, 1), max_tokens=st.integers(1, 80))
def test_every_blend_mode_is_finite_with_its_documented_length(mode, tv, alpha, max_tokens):
    text, vl = tv
    out = blend(mode, text, vl, alpha, BlendOptions(max_tokens=max_tokens))
    assert out.dtype == torch.float32 and out.ndim == 2 and out.shape[1] == text.shape[1]
    assert finite(out)
    lt, lv = text.shape[0], vl.shape[0]
    if mode == "replace":
        assert out.shape[0] == lv
    elif mode == "concat":
        assert lt <= out.shape[0] <= max(lt, max_tokens) and torch.equal(out[:lt], text.float())
    else:
        assert out.shape[0] == lt


@pytest.mark.reliability('bad input', 'alpha 0 with every mode but replace, on the same inputs',
                         'the text embedding back, exactly')
@pytest.mark.parametrize("mode", [m for m in BLEND_MODES if m != "replace"])
@given(tv=pairs())
def test_alpha_zero_gives_the_text_back_exactly(mode, tv):
    text, vl = tv
    assert torch.equal(blend(mode, text, vl, 0.0), text.float())


@pytest.mark.reliability('bad input',
                         'NaN, +inf or -inf at a random position of the text or the VL input, every blend mode',
                         'InputError in one sentence')
@pytest.mark.parametrize("mode", list(BLEND_MODES))
@given(tv=pairs(), bad=st.sampled_from((math.nan, math.inf, -math.inf)), where=st.integers(0, 10**6),
       side=st.sampled_from(("text", "vl")))
def test_every_blend_mode_refuses_nan_and_inf(mode, tv, bad, where, side):
    text, vl = tv
    if side == "text":
        text = poisoned(text, bad, where)
    else:
        vl = poisoned(vl, bad, where)
    with pytest.raises(InputError, match="NaN or infinite"):
        blend(mode, text, vl, 0.5)


@pytest.mark.reliability('bad input', 'resampling (linear, area) of those inputs to 1-60 tokens',
                         'finite, each dimension within its input range')
@given(x=sequences(), n=st.integers(1, 60), method=st.sampled_from(("linear", "area")))
def test_resample_keeps_each_dimension_in_range(x, n, method):
    y = resample(x.float(), n, method)
    assert y.shape == (n, x.shape[1]) and finite(y) and within(y, x)


# -- long prompts --------------------------------------------------------------------------------


@pytest.mark.reliability('bad input', 'every long-prompt mode on 1-60 tokens, limits of 1-50',
                         "the limit's length (or unchanged), finite, within range, dtype kept")
@pytest.mark.parametrize("mode", LONG_PROMPT_MODES)
@given(x=sequences(max_tokens=60), max_len=st.integers(1, 50))
def test_long_prompt_modes_fit_the_length_and_average_within_range(mode, x, max_len):
    y = fit_length(x, max_len, mode)
    assert y.shape == (min(x.shape[0], max_len), x.shape[1]) and y.dtype == x.dtype and finite(y)
    if x.shape[0] <= max_len or mode == "truncate":
        assert torch.equal(y, x[: y.shape[0]])
    else:
        assert within(y, x)


@pytest.mark.reliability('bad input', 'NaN or inf into every long-prompt mode',
                         'InputError in one sentence')
@pytest.mark.parametrize("mode", LONG_PROMPT_MODES)
@given(x=sequences(), bad=st.sampled_from((math.nan, math.inf)), where=st.integers(0, 10**6))
def test_long_prompt_modes_refuse_nan_and_inf(mode, x, bad, where):
    with pytest.raises(InputError, match="NaN or infinite"):
        fit_length(poisoned(x, bad, where), 4, mode)


# -- normalization and outliers --------------------------------------------------------------------


def reference_for(d: int, seed: int) -> ReferenceStats:
    g = torch.Generator().manual_seed(seed)
    mean, std = torch.randn(d, generator=g), torch.rand(d, generator=g) * 3 + 0.01
    a = torch.randn(d, d, generator=g)
    return ReferenceStats(mean=mean, std=std, min=mean - 4 * std, max=mean + 4 * std, layer=30, num_layers=36,
                          model="test", num_tokens=100, num_prompts=10, covariance=a @ a.T / d + torch.eye(d) * 1e-3)


@pytest.mark.reliability('bad input', 'every normalization mode on those inputs, random reference statistics',
                         'finite, same shape; global hits its target std')
@pytest.mark.parametrize("mode", NORMALIZATION_MODES)
@given(tx=pairs(), seed=st.integers(0, 1000))
def test_every_normalization_is_finite_and_keeps_the_shape(mode, tx, seed):
    text, x = tx
    n = normalize(x, mode, reference=reference_for(x.shape[1], seed), text=text, target_std=2.0)
    assert n.embeddings.shape == x.shape and finite(n.embeddings)
    assert all(math.isfinite(v) for v in (n.original_std, n.scaled_std, n.scale_factor))
    if mode == "global" and float(x.float().std(unbiased=False)) > 0:
        assert n.scaled_std == pytest.approx(2.0, rel=1e-3)


@pytest.mark.reliability('bad input', 'NaN or inf into every normalization mode',
                         'InputError in one sentence')
@pytest.mark.parametrize("mode", NORMALIZATION_MODES)
@given(x=sequences(d=6), bad=st.sampled_from((math.nan, math.inf)), where=st.integers(0, 10**6))
def test_every_normalization_refuses_nan_and_inf(mode, x, bad, where):
    with pytest.raises(InputError, match="NaN or infinite"):
        normalize(poisoned(x, bad, where), mode, reference=reference_for(6, 0), target_std=1.0)


@pytest.mark.reliability('bad input', 'outlier analysis and every masking mode, thresholds 1.5-50',
                         'finite; only the outlier dimensions change')
@pytest.mark.parametrize("mode", MASK_MODES)
@given(x=sequences(d=8, min_tokens=2), seed=st.integers(0, 1000), threshold=st.floats(1.5, 50))
def test_outlier_masking_is_finite_and_touches_only_outlier_dimensions(mode, x, seed, threshold):
    y, info = mask_outliers(x, reference_for(8, seed), threshold, mode)
    assert y.shape == x.shape and finite(y)
    untouched = [d for d in range(8) if d not in info["masked_dimensions"]]
    assert torch.equal(y[:, untouched], x.float()[:, untouched])
    assert set(info["masked_dimensions"]) <= {o["dim"] for o in info["outliers"]}


@pytest.mark.reliability('bad input', 'NaN or inf into the outlier analysis',
                         'InputError in one sentence')
@given(x=sequences(d=8, min_tokens=2), bad=st.sampled_from((math.nan, math.inf)), where=st.integers(0, 10**6))
def test_outlier_analysis_refuses_nan_and_inf(x, bad, where):
    with pytest.raises(InputError, match="NaN or infinite"):
        mask_outliers(poisoned(x, bad, where), reference_for(8, 0))


# -- pooling and style vectors -------------------------------------------------------------------


@pytest.mark.reliability('bad input', 'style vectors (mean, GeM with p 0.5-16, SVD with k 1-12)',
                         'one finite [dim] vector; means within range')
@pytest.mark.parametrize("kind", STYLE_VECTORS)
@given(x=sequences(), p=st.floats(0.5, 16), k=st.integers(1, 12))
def test_style_vectors_are_one_finite_vector(kind, x, p, k):
    s = style_vector(x, kind, p, k)
    assert s.shape == (x.shape[1],) and finite(s)
    if kind == "mean":
        assert within(s[None], x)
    elif kind == "gem":  # a generalized mean of magnitudes: within [0, max |x|] per dimension
        assert within(s[None], torch.cat([x.float().abs(), torch.zeros(1, x.shape[1])]))


@pytest.mark.reliability('bad input', 'token-grid pooling of 1-9 x 1-9 grids by 1-4',
                         'the ceil-divided grid, within range, mean kept for full windows')
@given(h=st.integers(1, 9), w=st.integers(1, 9), k=st.integers(1, 4), x=sequences(d=3, min_tokens=81, max_tokens=81))
def test_pool_grid_shape_range_and_mean(h, w, k, x):
    grid = x[: h * w].float().reshape(h, w, 3)
    y = pool_grid(grid, k)
    assert y.shape == (-(-h // k), -(-w // k), 3) and finite(y) and within(y.reshape(-1, 3), grid.reshape(-1, 3))
    if h % k == 0 and w % k == 0:  # full windows: the mean of the grid is kept
        assert torch.allclose(y.mean((0, 1)), grid.mean((0, 1)), rtol=1e-4, atol=1e-4 * float(grid.abs().max()))


# -- token masks ---------------------------------------------------------------------------------

SPECIAL = SpecialIds(vision_start=5, vision_end=6, image_pad=7, im_start=1, im_end=2, user_header=(1, 3))


@pytest.mark.reliability('bad input',
                         'token masks of random id sequences (unbalanced vision markers, headers anywhere)',
                         "masks of the sequence's length: text and image partition it")
@given(ids=st.lists(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]), min_size=1, max_size=60))
def test_token_masks_partition_any_id_sequence(ids):
    m = compute_token_masks(torch.tensor(ids), SPECIAL)
    n = len(ids)
    for mask in (m.full, m.text_only, m.user_text, m.image_only, m.image_no_markers):
        assert mask.shape == (n,) and mask.dtype == torch.bool
    assert torch.equal(m.text_only, ~m.image_only)
    assert not (m.image_no_markers & ~m.image_only).any() and not (m.user_text & ~m.text_only).any()


# -- schedules -----------------------------------------------------------------------------------

alphas = st.floats(0, 1)


@pytest.mark.reliability('bad input', 'random valid alpha schedules over 1-50 steps',
                         'one alpha in [0, 1] per step')
@given(spec=st.one_of(
    alphas.map(lambda a: f"{a}"),
    st.tuples(alphas, alphas).map(lambda t: f"linear:{t[0]}:{t[1]}"),
    st.tuples(alphas, alphas).map(lambda t: f"cosine:{t[0]}:{t[1]}"),
    st.tuples(alphas, alphas, alphas).map(lambda t: f"step:{t[0]}:{t[1]}:{t[2]}"),
), steps=st.integers(1, 50))
def test_valid_schedules_give_one_alpha_in_range_per_step(spec, steps):
    s = parse_schedule(spec)
    a = [s.alpha(i, steps) for i in range(steps)]
    assert len(a) == steps and all(0.0 <= v <= 1.0 and math.isfinite(v) for v in a)


@pytest.mark.reliability('bad input', 'schedules with nan, inf, -inf, 1.5, -0.1, 1e9',
                         'InputError in one sentence')
@given(value=st.sampled_from(("nan", "inf", "-inf", "1.5", "-0.1", "1e9")),
       form=st.sampled_from(("{}", "linear:0.5:{}", "step:0.5:0.2:{}", "0.3,{}")))
def test_schedules_out_of_range_are_refused_in_one_sentence(value, form):
    with pytest.raises(InputError) as e:
        parse_schedule(form.format(value))
    assert "\n" not in str(e.value)
