"""Each long-prompt mode against a plain-loop reference written from its formula."""

import math

import pytest
import torch
import torch.nn.functional as F

from llm_dit.text.long_prompt import fit_length


def ref_interpolate(x, m):
    n = x.shape[0]
    if m == 1:
        return x[:1].clone()
    rows = []
    for j in range(m):
        p = j * (n - 1) / (m - 1)
        lo = math.floor(p)
        hi = min(lo + 1, n - 1)
        f = p - lo
        rows.append((1 - f) * x[lo] + f * x[hi])
    return torch.stack(rows)


def ref_pool(x, m):
    n = x.shape[0]
    return torch.stack([x[(j * n) // m : -((-(j + 1) * n) // m)].mean(0) for j in range(m)])


def ref_attention_pool(x, m):
    n = x.shape[0]
    score = []
    for i in range(n):
        nb = [k for k in range(i - 2, i + 3) if k != i and 0 <= k < n]
        sims = [F.cosine_similarity(x[i], x[k], dim=0).item() for k in nb]
        score.append(1.0 - (sum(sims) / len(sims) if sims else 0.0))
    out = []
    for j in range(m):
        members = [i for i in range(n) if (i * m) // n == j]
        w = torch.softmax(torch.tensor([score[i] for i in members]), 0)
        out.append(sum(w[k] * x[i] for k, i in enumerate(members)))
    return torch.stack(out)


REFS = {"interpolate": ref_interpolate, "pool": ref_pool, "attention_pool": ref_attention_pool}


@pytest.mark.parametrize("mode", ["interpolate", "pool", "attention_pool"])
@pytest.mark.parametrize("n, m", [(10, 3), (37, 8), (9, 1), (100, 99), (5, 4)])
def test_modes_match_their_formula(mode, n, m):
    torch.manual_seed(n * 100 + m)
    x = torch.randn(n, 6)
    y = fit_length(x, m, mode)
    assert y.shape == (m, 6)
    torch.testing.assert_close(y, REFS[mode](x, m), atol=1e-5, rtol=1e-5)


def test_truncate_keeps_the_head():
    x = torch.randn(20, 4)
    assert torch.equal(fit_length(x, 7, "truncate"), x[:7])


@pytest.mark.parametrize("mode", ["truncate", "interpolate", "pool", "attention_pool"])
def test_short_sequences_pass_through_unchanged(mode):
    x = torch.randn(5, 4)
    assert torch.equal(fit_length(x, 5, mode), x)
    assert torch.equal(fit_length(x, 1504, mode), x)


def test_interpolate_pins_the_ends_and_pool_preserves_the_mean():
    x = torch.randn(50, 8)
    y = fit_length(x, 10, "interpolate")
    torch.testing.assert_close(y[0], x[0])
    torch.testing.assert_close(y[-1], x[-1])
    # 50 -> 10 windows of exactly 5: the pooled mean equals the overall mean
    torch.testing.assert_close(fit_length(x, 10, "pool").mean(0), x.mean(0))


def test_attention_pool_weights_novel_tokens_more():
    # bucket of 4: three identical tokens and one different; the odd one must get the largest weight
    base = torch.tensor([1.0, 0.0])
    x = torch.stack([base, base, base, torch.tensor([0.0, 1.0])] * 2)
    y = fit_length(x, 2, "attention_pool")
    assert y[0, 1] > 0.25  # plain averaging would give exactly 0.25


def test_errors():
    with pytest.raises(ValueError, match="unknown long-prompt mode"):
        fit_length(torch.randn(3, 2), 2, "squash")
    with pytest.raises(ValueError, match="empty"):
        fit_length(torch.randn(0, 2), 2)
    with pytest.raises(ValueError, match="tokens, dim"):
        fit_length(torch.randn(3), 2)
