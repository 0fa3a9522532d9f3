"""Captions (thinking parsing, retries) and statistics (reference, compare) on the tiny models."""

import json

import pytest
import torch
from PIL import Image

from llm_dit.analysis.compare import CompareOptions, compare_embedding_stats, pearson, plot_report, spearman
from llm_dit.errors import InputError, LlmDitError
from llm_dit.vl.caption import CaptionRequest, caption_image, parse_thinking_content
from llm_dit.vl.reference import compute_reference_stats, massive_token_mask, read_prompts


@pytest.mark.parametrize(
    "text, thinking_model, expected",
    [
        ("A red house.", False, ("A red house.", None)),
        ("<think>\nlooks red\n</think>\n\nA red house.", False, ("A red house.", "looks red")),
        ("looks red\n</think>\n\nA red house.", True, ("A red house.", "looks red")),  # prompt opened <think>
        ("still thinking about the roof", True, ("", "still thinking about the roof")),  # budget hit
        ("<think>still thinking", False, ("", "still thinking")),  # budget hit
        ("<think>a <think>b</think> c</think>Final.", False, ("Final.", "a <think>b</think> c")),  # nested
        ("Sure.<think>hmm</think>The caption.", False, ("Sure.\n\nThe caption.", "hmm")),  # text before <think>
        ("</think>Only caption", True, ("Only caption", "")),
        ("reasoning <think>n</think> more</think> Cap", True, ("Cap", "reasoning <think>n</think> more")),
        ("cap</think>x<think>y", False, ("x", "cap")),
        ("A caption. <think>cut off", False, ("A caption.", "cut off")),
    ],
)
def test_parse_thinking_content(text, thinking_model, expected):
    assert parse_thinking_content(text, started_in_thinking=thinking_model) == expected


class FakeExtractor:
    """Returns scripted generations; records the temperatures it was asked for."""

    def __init__(self, outputs, variant="instruct"):
        self.outputs, self.variant, self.temperatures = list(outputs), variant, []
        from transformers import AutoTokenizer

        from llm_dit.models.tiny import ensure_tiny_models

        self.tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_models() / "qwen3-vl")

    def generate(self, prompt, image, **kw):
        self.temperatures.append(kw["temperature"])
        return self.outputs.pop(0)


def test_caption_retries_until_long_enough():
    fake = FakeExtractor(["short", "a much longer caption of a red house on a green hill"])
    cap = caption_image(fake, None, CaptionRequest(min_tokens=8))
    assert cap.attempts == 2 and cap.tokens >= 8 and fake.temperatures == [0.6, pytest.approx(0.7)]


def test_caption_fails_clearly():
    with pytest.raises(LlmDitError, match=r"no usable caption after 3 attempt\(s\): it had \d+ tokens; at least 50"):
        caption_image(FakeExtractor(["tiny"] * 3), None, CaptionRequest(min_tokens=50))
    with pytest.raises(LlmDitError, match="reasoning used the whole token budget"):
        caption_image(FakeExtractor(["thinking..."] * 3, variant="thinking"), None, CaptionRequest(min_tokens=1))


def test_caption_refuses_bad_temperatures():
    for t in (-1.0, float("nan"), float("inf")):
        with pytest.raises(LlmDitError, match="temperature"):
            caption_image(FakeExtractor(["x"]), None, CaptionRequest(temperature=t))


def test_caption_with_the_tiny_model(extractor, red_image):
    cap = caption_image(extractor, red_image, CaptionRequest(max_new_tokens=6, temperature=0))
    assert cap.raw and cap.attempts == 1 and cap.thinking is None


def test_reference_stats_equal_the_gathered_text_encodings(zimage):
    prompts = ["a red house", "a cat on a mat", "portrait of an old man"]
    tok, te = zimage.pipe.tokenizer, zimage.pipe.text_encoder
    stats = compute_reference_stats(tok, te, prompts, [-2, -6], model_name="tiny", covariance=True)
    for layer in (-2, -6):
        x = torch.cat([zimage.encode(p, hidden_layer=layer).embeddings for p in prompts]).double()
        s = stats[layer]
        torch.testing.assert_close(s.mean, x.mean(0).float())
        torch.testing.assert_close(s.std, x.std(0, unbiased=False).float())
        torch.testing.assert_close(s.max, x.max(0).values.float())
        xc = x - x.mean(0)
        torch.testing.assert_close(s.covariance, (xc.T @ xc / len(x)).float(), atol=1e-6, rtol=1e-4)
        assert s.num_tokens == len(x) and s.num_prompts == 3 and s.layer == layer % 17


def test_massive_tokens_can_be_excluded():
    x = torch.randn(50, 16)
    x[0] *= 1000
    assert massive_token_mask(x).tolist() == [True] + [False] * 49


def test_prompt_corpus(tmp_path):
    assert len(read_prompts()) >= 40
    f = tmp_path / "p.txt"
    f.write_text("# comment\n\none\n  two  \n")
    assert read_prompts(f) == ["one", "two"]
    f.write_text("# only a comment\n")
    with pytest.raises(InputError, match="holds no prompts"):
        read_prompts(f)


def test_correlations_against_independent_formulas():
    import numpy as np

    a, b = torch.randn(100), torch.randn(100)
    assert pearson(a, b) == pytest.approx(float(np.corrcoef(a.numpy(), b.numpy())[0, 1]), abs=1e-6)
    ra, rb = np.argsort(np.argsort(a.numpy())), np.argsort(np.argsort(b.numpy()))
    assert spearman(a, b) == pytest.approx(float(np.corrcoef(ra, rb)[0, 1]), abs=1e-6)
    assert spearman(a, a**3) == pytest.approx(1.0)  # monotone


def test_compare_reports_leak_outliers_and_plots(extractor, zimage, tmp_path):
    img = Image.new("RGB", (128, 96), (200, 30, 30))
    report = compare_embedding_stats(extractor, zimage.pipe.tokenizer, zimage.pipe.text_encoder, img,
                                     "A red house", CompareOptions([-6, -2], model_name="tiny"))
    for k in ("-6", "-2"):
        e = report["layers"][k]
        assert e["leak"]["before_image_relative_change"] == 0.0  # causal attention: exactly nothing
        assert e["leak"]["user_text_relative_change"] > 0  # text after the image does see it
        assert set(e["correlation_vl_image"]) >= {"pearson_log_std", "spearman_std_without_massive"}
        assert len(e["std"]["reference"]) == 64
    json.dumps(report)
    paths = plot_report(report, tmp_path)
    assert [p.name for p in paths] == ["std_per_dim_layer-6.png", "std_per_dim_layer-2.png", "leak.png"]
    for p in paths:
        assert Image.open(p).size[0] > 300
