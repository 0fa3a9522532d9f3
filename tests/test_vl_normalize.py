"""Normalization modes and outlier dimensions against formulas written out in the tests."""

import pytest
import torch

from llm_dit.errors import InputError
from llm_dit.vl.normalize import normalize
from llm_dit.vl.outliers import get_outlier_dimensions, mask_outliers
from llm_dit.vl.reference import ReferenceStats, check_layer_match


def make_ref(d=8, layer=3, num_layers=8, seed=0, cov=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(500, d, generator=g) * torch.linspace(0.5, 3, d) + torch.linspace(-1, 1, d)
    mean, std = x.mean(0), x.std(0, unbiased=False)
    c = ((x - mean).T @ (x - mean) / x.shape[0]) if cov else None
    return ReferenceStats(mean=mean, std=std, min=x.min(0).values, max=x.max(0).values, covariance=c,
                          layer=layer, num_layers=num_layers, model="test", num_tokens=500, num_prompts=1)


def test_global_scales_to_a_number_or_the_text_std():
    x = torch.randn(20, 8) * 3
    out = normalize(x, "global", target_std=2.0)
    assert abs(out.embeddings.std(unbiased=False).item() - 2.0) < 1e-5
    assert abs(out.scale_factor - 2.0 / x.std(unbiased=False).item()) < 1e-4
    text = torch.randn(7, 8) * 0.5
    out = normalize(x, "global", target_std="text", text=text)
    torch.testing.assert_close(out.embeddings, x * text.std(unbiased=False) / x.std(unbiased=False))
    with pytest.raises(InputError, match="needs the paired text"):
        normalize(x, "global", target_std="text")
    const = torch.full((4, 8), 3.0)
    assert torch.equal(normalize(const, "global", target_std=5.0).embeddings, const)


def test_per_dim_formula_clip_and_degenerate_cases():
    ref = make_ref()
    x = torch.randn(30, 8) * 4 + 2
    x[0, 2] = 100.0  # beyond 3 sigma: clipped
    mu, sd = x.mean(0), x.std(0, unbiased=False)
    z = ((x - mu) / sd).clamp(-3, 3)
    torch.testing.assert_close(normalize(x, "per_dim", reference=ref).embeddings, z * ref.std + ref.mean)
    z_noclip = (x - mu) / sd
    torch.testing.assert_close(normalize(x, "per_dim", reference=ref, clip_sigma=None).embeddings,
                               z_noclip * ref.std + ref.mean)
    one = normalize(torch.randn(1, 8), "per_dim", reference=ref).embeddings  # a single token
    torch.testing.assert_close(one, ref.mean[None])
    x[:, 5] = 7.0  # a constant dimension
    y = normalize(x, "per_dim", reference=ref).embeddings
    assert torch.isfinite(y).all() and torch.allclose(y[:, 5], ref.mean[5].expand(30))


def test_hybrid_is_the_weighted_mix():
    ref = make_ref()
    x = torch.randn(10, 8)
    a = normalize(x, "per_dim", reference=ref).embeddings
    b = normalize(x, "global", target_std=1.5).embeddings
    h = normalize(x, "hybrid", reference=ref, target_std=1.5, hybrid_weight=0.25).embeddings
    torch.testing.assert_close(h, 0.25 * a + 0.75 * b)


def test_whiten_maps_to_the_reference_covariance():
    ref = make_ref(d=6)
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(6, 6, generator=g)
    x = torch.randn(4000, 6, generator=g) @ mix + 5
    y = normalize(x, "whiten", reference=ref).embeddings
    yc = y - y.mean(0)
    torch.testing.assert_close(y.mean(0), ref.mean, atol=1e-4, rtol=0)
    torch.testing.assert_close(yc.T @ yc / len(y), ref.covariance, atol=0.02, rtol=0.02)
    single = normalize(x[:1], "whiten", reference=ref).embeddings
    torch.testing.assert_close(single, ref.mean[None])
    few = normalize(torch.randn(3, 6), "whiten", reference=ref).embeddings  # n < D: rank-deficient
    assert torch.isfinite(few).all()
    with pytest.raises(InputError, match="no covariance"):
        normalize(x, "whiten", reference=make_ref(d=6, cov=False))


def test_scale_statistics_are_reported():
    x = torch.randn(10, 8)
    out = normalize(x, "global", target_std=3.0)
    assert out.original_std == pytest.approx(x.std(unbiased=False).item(), rel=1e-5)
    assert out.scaled_std == pytest.approx(3.0, rel=1e-5) and out.mode == "global"
    none = normalize(x, "none")
    assert none.scale_factor == 1.0 and torch.equal(none.embeddings, x)


def test_bad_inputs():
    ref = make_ref()
    with pytest.raises(InputError, match="NaN"):
        normalize(torch.tensor([[float("nan")] * 8]), "global", target_std=1.0)
    with pytest.raises(InputError, match="needs reference"):
        normalize(torch.randn(3, 8), "per_dim")
    with pytest.raises(InputError, match="unknown normalization"):
        normalize(torch.randn(3, 8), "zscore")
    with pytest.raises(InputError, match="non-empty"):
        normalize(torch.randn(0, 8), "none")
    with pytest.raises(InputError, match="clip sigma"):
        normalize(torch.randn(3, 8), "per_dim", reference=ref, clip_sigma=0)


def test_reference_layers_must_match():
    ref = make_ref(layer=3, num_layers=8)
    check_layer_match(ref, -6, 8)  # -6 of 8 layers is index 3
    check_layer_match(ref, 3, 8)
    with pytest.raises(InputError, match="layer 3 of 8, the embeddings for layer 7 of 8"):
        check_layer_match(ref, -2, 8)
    check_layer_match(ref, -2, 8, force=True)


def test_reference_stats_round_trip(tmp_path):
    ref = make_ref()
    back = ReferenceStats.load(ref.save(tmp_path / "r.safetensors"))
    for name in ("mean", "std", "min", "max", "covariance"):
        assert torch.equal(getattr(back, name), getattr(ref, name))
    assert back.provenance() == ref.provenance()
    x = torch.randn(100, 8) * 2 + 1
    assert ReferenceStats(mean=x.mean(0), std=x.std(0, unbiased=False), min=x.min(0).values, max=x.max(0).values,
                          layer=0, num_layers=1, model="m", num_tokens=100, num_prompts=1).global_std == \
        pytest.approx(x.std(unbiased=False).item(), rel=1e-4)


# --- outliers -------------------------------------------------------------------------------


def outlier_case():
    ref = make_ref()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, 8, generator=g) * ref.std + ref.mean
    x[:, 1] *= 40  # VL varies far more than the reference
    x[:, 6] = ref.mean[6] + 0.001 * torch.randn(50, generator=g)  # VL lacks the variation (like dim 396)
    return ref, x


def test_outliers_in_both_directions():
    ref, x = outlier_case()
    found = {o.dim: o for o in get_outlier_dimensions(x, ref, threshold=10)}
    assert set(found) == {1, 6}
    assert found[1].direction == "vl_high" and found[6].direction == "ref_high"
    sd = x.std(0, unbiased=False)
    assert found[1].ratio == pytest.approx(float(sd[1] / ref.std[1]), rel=1e-5)
    assert found[6].ratio == pytest.approx(float(ref.std[6] / sd[6]), rel=1e-5)
    with pytest.raises(InputError, match="greater than 1"):
        get_outlier_dimensions(x, ref, threshold=0)
    with pytest.raises(InputError, match="greater than 1"):
        get_outlier_dimensions(x, ref, threshold=-3)


def test_each_masking_mode_does_its_own_thing():
    ref, x = outlier_case()
    dims = [1, 6]
    keep = [d for d in range(8) if d not in dims]
    outs = {}
    for mode in ("zero", "clamp", "scale", "restore"):
        y, info = mask_outliers(x, ref, 10, mode)
        assert sorted(info["masked_dimensions"]) == dims and torch.equal(y[:, keep], x[:, keep])
        outs[mode] = y
    assert torch.equal(outs["zero"][:, dims], torch.zeros(50, 2))
    clipped = torch.maximum(torch.minimum(x[:, dims], ref.max[dims]), ref.min[dims])
    assert torch.equal(outs["clamp"][:, dims], clipped)
    mu, sd = x[:, dims].mean(0), x[:, dims].std(0, unbiased=False)
    torch.testing.assert_close(outs["scale"][:, dims], mu + (x[:, dims] - mu) * ref.std[dims] / sd)
    torch.testing.assert_close(outs["scale"][:, dims].std(0, unbiased=False), ref.std[dims])
    assert torch.equal(outs["restore"][:, dims], ref.mean[dims].expand(50, 2))
    for a in outs:
        for b in outs:
            if a < b:
                assert not torch.allclose(outs[a], outs[b]), (a, b)
    y, info = mask_outliers(x, ref, 10, "none")
    assert torch.equal(y, x) and info["masked_dimensions"] == [] and len(info["outliers"]) == 2
    with pytest.raises(InputError, match="unknown outlier masking"):
        mask_outliers(x, ref, 10, "drop")
