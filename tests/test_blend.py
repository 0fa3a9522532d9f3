"""Blend functions against independent references written here with numpy loops (no shared code)."""

from __future__ import annotations

import math
from typing import get_args

import numpy as np
import pytest
import torch

from llm_dit.conditioning import blend as B
from llm_dit.conditioning import sequence as Q
from llm_dit.conditioning import style as S
from llm_dit.errors import InputError

D = 6
SHAPES = [(1, 1), (1, 5), (5, 1), (4, 4), (7, 3), (3, 11), (23, 5)]  # (L_vl, L_text)


def rand(n, seed, const=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g)
    if const:  # constant rows: zero std along the hidden dim
        x[0] = 0.7
    return x


# -- independent references ---------------------------------------------------------------------


def ref_linear_resample(x: np.ndarray, n: int) -> np.ndarray:
    """Half-pixel-centre linear resampling (align_corners=False), written out."""
    L = x.shape[0]
    out = np.zeros((n, x.shape[1]))
    for j in range(n):
        p = (j + 0.5) * L / n - 0.5
        p = min(max(p, 0.0), L - 1)
        lo = int(math.floor(p))
        hi = min(lo + 1, L - 1)
        f = p - lo
        out[j] = (1 - f) * x[lo] + f * x[hi]
    return out


def ref_area_resample(x: np.ndarray, n: int) -> np.ndarray:
    L = x.shape[0]
    return np.stack([x[(j * L) // n: -((-(j + 1) * L) // n)].mean(0) for j in range(n)])


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=tol, atol=tol)


# -- resampling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("L,n", [(1, 1), (1, 4), (4, 1), (5, 3), (3, 5), (100, 7), (7, 100)])
def test_resample_matches_the_written_out_formulas(L, n):
    x = rand(L, L * 31 + n)
    close(Q.resample(x, n, "linear"), ref_linear_resample(x.numpy(), n))
    close(Q.resample(x, n, "area"), ref_area_resample(x.numpy(), n))


def test_area_keeps_every_token_and_linear_aliases():
    """Squeezing 1000 tokens into 10: the area mean equals the true mean; linear sees a few tokens."""
    x = torch.zeros(1000, D)
    x[::3] = 1.0  # a periodic "grid" pattern, one row in three
    assert torch.allclose(Q.resample(x, 10, "area").mean(), x.mean(), atol=1e-3)
    lin = Q.resample(x, 10, "linear")  # two taps per output: 0 or 0.5 depending on the phase
    assert float((lin - x.mean()).abs().max()) > 0.15


def test_the_recipe_types_name_exactly_the_registered_modes():
    # the names live in llm_dit.modes (no torch) for recipes and --help; the registry is what runs
    from llm_dit import modes

    assert get_args(modes.BlendMode) == tuple(B.BLEND_MODES)
    assert set(modes.STYLE_MODES) <= set(B.BLEND_MODES)


def test_resample_rejects_bad_method():
    with pytest.raises(InputError, match="choose one of linear, area"):
        Q.resample(rand(3, 0), 2, "cubic")


# -- content modes ------------------------------------------------------------------------------


@pytest.mark.parametrize("Lv,Lt", SHAPES)
@pytest.mark.parametrize("method", ["linear", "area"])
def test_blend_interpolate(Lv, Lt, method):
    vl, text = rand(Lv, 1, const=True), rand(Lt, 2)
    a = 0.3
    res = ref_linear_resample if method == "linear" else ref_area_resample
    expect = a * res(vl.numpy(), Lt) + (1 - a) * text.numpy()
    out = B.blend_interpolate(vl, text, a, method)
    assert out.shape == (Lt, D)
    close(out, expect)
    assert torch.equal(B.blend_interpolate(vl, text, 0.0, method), text)


@pytest.mark.parametrize("Lv,Lt", SHAPES)
def test_blend_linear_pairs_token_i_with_token_i(Lv, Lt):
    vl, text = rand(Lv, 3), rand(Lt, 4)
    out = B.blend_linear(vl, text, 0.25)
    assert out.shape == (Lt, D)
    for i in range(Lt):
        expect = 0.25 * vl[i].numpy() + 0.75 * text[i].numpy() if i < Lv else text[i].numpy()
        close(out[i], expect)


@pytest.mark.parametrize("Lv,Lt", SHAPES)
def test_concat_appends_a_weighted_share_of_vl_tokens(Lv, Lt):
    vl, text = rand(Lv, 5), rand(Lt, 6)
    for w in (0.0, 0.5, 1.0):
        out = B.concat(vl, text, w)
        k = 0 if w == 0 else max(1, round(w * Lv))
        assert out.shape == (Lt + k, D)
        close(out[:Lt], text)
        if k:
            close(out[Lt:], ref_area_resample(vl.numpy(), k))
    close(B.concat(vl, text, 1.0)[Lt:], vl)  # weight 1: every VL token as is
    capped = B.concat(vl, text, 1.0, max_tokens=Lt + 1)  # the text stays whole, the VL part shrinks
    assert capped.shape == (Lt + 1, D)
    close(capped[Lt:], vl.numpy().mean(0, keepdims=True))
    assert torch.equal(B.concat(vl, text, 1.0, max_tokens=Lt), text)


@pytest.mark.parametrize("Lv,Lt", SHAPES)
def test_replace_is_the_vl_sequence(Lv, Lt):
    vl, text = rand(Lv, 7), rand(Lt, 8)
    assert torch.equal(B.replace(vl, text, 0.2), vl)


# -- style modes --------------------------------------------------------------------------------


@pytest.mark.parametrize("Lv,Lt", SHAPES)
def test_blend_adain_per_token(Lv, Lt):
    text, vl = rand(Lt, 9, const=True), rand(Lv, 10, const=True)
    a = 0.4
    t = text.numpy().astype(np.float64)
    v = vl.numpy().astype(np.float64)
    # Per-token statistics over the hidden dim (Bessel-corrected, as the seed), VL stats at the
    # same relative positions as the text tokens.
    vm = ref_linear_resample(np.stack([v.mean(1), v.std(1, ddof=1)], 1), Lt)
    expect = np.zeros_like(t)
    for i in range(Lt):
        r = (t[i] - t[i].mean()) / (t[i].std(ddof=1) + 1e-5) * vm[i, 1] + vm[i, 0]
        expect[i] = a * r + (1 - a) * t[i]
    out = B.blend_adain(text, vl, a)
    assert out.shape == (Lt, D) and torch.isfinite(out).all()
    close(out, expect, 1e-4)


def test_blend_adain_equal_lengths_is_the_seed_formula():
    text, vl = rand(9, 11), rand(9, 12)
    a = 0.3
    t_n = (text - text.mean(-1, keepdim=True)) / (text.std(-1, keepdim=True) + 1e-5)
    seed = a * (t_n * vl.std(-1, keepdim=True) + vl.mean(-1, keepdim=True)) + (1 - a) * text
    close(B.blend_adain(text, vl, a), seed)


@pytest.mark.parametrize("Lv,Lt", SHAPES)
def test_blend_adain_per_dim_uses_all_vl_tokens(Lv, Lt):
    text, vl = rand(Lt, 13), rand(Lv, 14, const=True)
    a = 0.6
    t, v = text.numpy().astype(np.float64), vl.numpy().astype(np.float64)
    expect = np.zeros_like(t)
    for d in range(D):
        mt, st = t[:, d].mean(), t[:, d].std()
        mv, sv = v[:, d].mean(), v[:, d].std()  # over every VL token, not a strip of L_t
        expect[:, d] = a * ((t[:, d] - mt) / (st + 1e-5) * sv + mv) + (1 - a) * t[:, d]
    out = B.blend_adain_per_dim(text, vl, a)
    assert out.shape == (Lt, D) and torch.isfinite(out).all()
    close(out, expect, 1e-4)


def test_adain_per_dim_statistics_do_not_come_from_a_truncated_strip():
    """The tail of a long VL sequence must move the result (upstream used only the first L_t)."""
    text = rand(4, 15)
    vl = rand(40, 16)
    vl2 = vl.clone()
    vl2[20:] += 5.0
    assert not torch.allclose(B.blend_adain_per_dim(text, vl, 0.5), B.blend_adain_per_dim(text, vl2, 0.5))


@pytest.mark.parametrize("Lv,Lt", SHAPES)
def test_style_delta(Lv, Lt):
    style, neutral, text = rand(Lv, 17), rand(Lv, 18), rand(Lt, 19)
    delta = S.compute_style_delta(style, neutral)
    close(delta, style.numpy() - neutral.numpy())
    out = B.blend_with_style_delta(text, delta, 0.5)
    close(out, text.numpy() + 0.5 * ref_linear_resample(delta.numpy(), Lt))
    # a neutral extraction of another length is area-resampled to the style length
    close(S.compute_style_delta(style, rand(Lv + 3, 20)),
          style.numpy() - ref_area_resample(rand(Lv + 3, 20).numpy(), Lv))


@pytest.mark.parametrize("n", [1, 2, 9])
def test_style_vectors(n):
    x = rand(n, 21, const=True)
    xn = x.numpy().astype(np.float64)
    close(S.mean_pool(x), xn.mean(0))
    close(S.gem_pool(x, 3.0), (np.abs(xn) ** 3).mean(0) ** (1 / 3), 1e-4)
    close(S.gem_pool(x, 1.0), np.abs(xn).mean(0))
    # rank-k reconstruction mean, by numpy's SVD
    u, s, vt = np.linalg.svd(xn, full_matrices=False)
    for k in (1, 2, 50):
        kk = min(k, len(s))
        close(S.svd_style_vector(x, k), (u[:, :kk] @ np.diag(s[:kk]) @ vt[:kk]).mean(0), 1e-4)
    close(S.svd_style_vector(x, 50), xn.mean(0), 1e-4)  # full rank: the plain mean
    big = torch.full((4, 3), 1000.0)
    big[0] = -3000.0
    close(S.gem_pool(big, 13.0), ((3000.0**13 + 3 * 1000.0**13) / 4) ** (1 / 13), 1e-4)  # no float32 overflow
    close(S.gem_pool(torch.full((4, 3), 0.2), 100.0), [0.2] * 3, 1e-4)  # nor underflow: p -> inf is the max
    assert torch.equal(S.gem_pool(torch.zeros(3, 3), 3.0), torch.zeros(3))
    text = rand(4, 22)
    close(B.blend_style_vector(text, S.mean_pool(x), 0.3), text.numpy() + 0.3 * xn.mean(0))


# -- magnitude ----------------------------------------------------------------------------------


def test_match_rms_and_typical_rms():
    x = rand(5, 23)
    x[2] = 0.0
    y = Q.match_rms(x, 2.0)
    rms = np.sqrt((y.numpy() ** 2).mean(1))
    close(rms[[0, 1, 3, 4]], [2.0] * 4)
    assert torch.equal(y[2], torch.zeros(D))
    x = torch.ones(5, D)
    x[0] *= 1000  # one massive token does not move the median
    assert Q.typical_rms(x) == pytest.approx(1.0)


# -- registry and errors ------------------------------------------------------------------------


def test_every_mode_one_signature_and_alpha_zero_keeps_the_text():
    text, vl = rand(5, 24), rand(12, 25)
    for mode in B.BLEND_MODES:
        out = B.blend(mode, text, vl, 0.0)
        if mode == "replace":
            assert torch.equal(out, vl)
        else:
            close(out, text)
        assert B.blend(mode, text, vl, 0.7).shape[1] == D


def test_the_registrys_alpha0_fact_holds_bit_for_bit():
    """``alpha0_is_text`` lets a run picture an alpha-0 cell as its pure-text baseline (cells.
    effective_recipe): true exactly where alpha 0 gives back the text embedding bit for bit."""
    from llm_dit.modes import ALPHA0_IS_TEXT

    text, vl = rand(5, 24) * 3, rand(12, 25)
    for mode in B.BLEND_MODES:
        assert torch.equal(B.blend(mode, text, vl, 0.0), text) is (mode in ALPHA0_IS_TEXT), mode


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), "0.5", True])
def test_alpha_outside_unit_interval_is_refused(alpha):
    with pytest.raises(InputError, match=r"alpha must be a number in \[0, 1\]"):
        B.blend_interpolate(rand(3, 0), rand(3, 1), alpha)


def test_nan_inf_empty_and_width_are_refused_with_the_tensor_named():
    bad = rand(3, 0)
    bad[1, 2] = float("nan")
    with pytest.raises(InputError, match="the VL embedding contains NaN"):
        B.blend("adain", rand(3, 1), bad, 0.5)
    bad[1, 2] = float("inf")
    with pytest.raises(InputError, match="the text embedding contains NaN or infinite"):
        B.blend("interpolate", bad, rand(3, 1), 0.5)
    with pytest.raises(InputError, match="the VL embedding is empty"):
        B.blend("interpolate", rand(3, 1), torch.zeros(0, D), 0.5)
    with pytest.raises(InputError, match="is 4-d but the text embedding is 6-d"):
        B.blend("linear", rand(3, 1), torch.zeros(2, 4), 0.5)
    with pytest.raises(InputError, match="unknown blend mode 'mix'; choose one of interpolate, linear"):
        B.blend("mix", rand(3, 1), rand(3, 2), 0.5)
