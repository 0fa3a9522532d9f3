"""Token masks from ids, selections, and grid pooling (pure functions, synthetic ids)."""

import pytest
import torch

from llm_dit.errors import InputError
from llm_dit.vl.tokens import (
    SpecialIds,
    compute_token_masks,
    pool_grid,
    pool_image_tokens,
    resolve_token_selection,
)

# made-up ids: 1 <|im_start|>, 2 <|im_end|>, 3 vision_start, 4 vision_end, 5 image_pad, 6 "user", 7 "\n"
SP = SpecialIds(im_start=1, im_end=2, vision_start=3, vision_end=4, image_pad=5, user_header=(1, 6))


def ids(*xs):
    return torch.tensor(xs)


def as_list(mask):
    return [i for i, v in enumerate(mask.tolist()) if v]


def test_one_image_and_text():
    #        0  1  2  3  4  5  6  7  8   9  10 11 12 13 14
    seq = ids(1, 6, 7, 3, 5, 5, 5, 4, 20, 21, 2, 7, 1, 30, 7)
    m = compute_token_masks(seq, SP)
    assert as_list(m.image_only) == [3, 4, 5, 6, 7]
    assert as_list(m.image_no_markers) == [4, 5, 6]
    assert as_list(m.text_only) == [0, 1, 2, 8, 9, 10, 11, 12, 13, 14]
    assert as_list(m.user_text) == [8, 9]
    assert m.full.all() and m.image_spans == [(4, 7)]
    assert as_list(m.image(0)) == [3, 4, 5, 6, 7] and as_list(m.image(0, markers=False)) == [4, 5, 6]


def test_two_images_system_turn_and_no_text():
    seq = ids(1, 40, 7, 50, 2, 7, 1, 6, 7, 3, 5, 5, 4, 3, 5, 4, 2, 7, 1, 30, 7)
    m = compute_token_masks(seq, SP)
    assert m.image_spans == [(10, 12), (14, 15)]
    assert as_list(m.image(1)) == [13, 14, 15]
    assert as_list(m.user_text) == []  # the system words (3) are not the user's
    assert m.counts()["image_only"] == 7


def test_user_text_after_a_merged_newline_token():
    # "<|im_start|>user\n\nhello": real BPE merges the two newlines into one token (id 8 here)
    m = compute_token_masks(ids(1, 6, 8, 20, 21, 2, 7), SP)
    assert as_list(m.user_text) == [3, 4]


def test_text_only_chat():
    m = compute_token_masks(ids(1, 6, 7, 20, 21, 22, 2, 7), SP)
    assert as_list(m.user_text) == [3, 4, 5] and not m.image_only.any() and m.image_spans == []
    with pytest.raises(InputError, match="image 0 does not exist"):
        m.image(0)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, "full"),
        ({"text_tokens_only": True}, "text_only"),
        ({"image_tokens_only": True}, "image_only"),
        ({"image_tokens_no_markers": True}, "image_no_markers"),
        ({"token_selection": "user_text"}, "user_text"),
        ({"token_selection": "text_only", "text_tokens_only": True}, "text_only"),
    ],
)
def test_selection_names_and_seed_flags(kwargs, expected):
    assert resolve_token_selection(**kwargs) == expected


def test_seed_flags_are_mutually_exclusive():
    with pytest.raises(InputError, match="mutually exclusive"):
        resolve_token_selection(text_tokens_only=True, image_tokens_only=True)
    with pytest.raises(InputError, match="contradicts"):
        resolve_token_selection("full", image_tokens_only=True)
    with pytest.raises(InputError, match="unknown token selection"):
        resolve_token_selection("all")


def ref_pool(x, k):
    h, w, d = x.shape
    out = torch.zeros(-(-h // k), -(-w // k), d)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = x[i * k : (i + 1) * k, j * k : (j + 1) * k].reshape(-1, d).mean(0)
    return out


@pytest.mark.parametrize("h, w, k", [(4, 6, 2), (5, 7, 2), (3, 3, 3), (6, 9, 4), (1, 1, 2), (2, 5, 1)])
def test_pool_grid_averages_neighbourhoods(h, w, k):
    x = torch.randn(h, w, 3)
    torch.testing.assert_close(pool_grid(x, k), ref_pool(x, k))


def test_pool_image_tokens_touches_only_image_positions():
    # text(2) [vs] 2x3 grid [ve] text(1) [vs] 1x2 grid [ve] text(1)
    seq = ids(1, 20, 3, 5, 5, 5, 5, 5, 5, 4, 21, 3, 5, 5, 4, 22)
    h = torch.randn(len(seq), 4)
    states, new_ids, grids = pool_image_tokens({-2: h}, seq, SP, [(2, 3), (1, 2)], 2)
    assert grids == [(1, 2), (1, 1)]
    assert new_ids.tolist() == [1, 20, 3, 5, 5, 4, 21, 3, 5, 4, 22]
    out = states[-2]
    grid = h[3:9].reshape(2, 3, 4)
    torch.testing.assert_close(out[3:5], ref_pool(grid, 2).reshape(2, 4))
    torch.testing.assert_close(out[8], h[12:14].mean(0))
    for new, old in [(0, 0), (1, 1), (2, 2), (5, 9), (6, 10), (7, 11), (9, 14), (10, 15)]:
        assert torch.equal(out[new], h[old])
    with pytest.raises(InputError, match="pool must be"):
        pool_image_tokens({-2: h}, seq, SP, [(2, 3), (1, 2)], 0)
