"""Offline image metrics against formulas written here, and VQAScore against a plain forward."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from llm_dit.analysis import metrics as M


def smooth(size=256, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(3))


def with_grid(image: Image.Image, period: int, amplitude: float = 12.0) -> Image.Image:
    a = np.asarray(image).astype(float)
    x = np.arange(a.shape[1])
    wave = amplitude * np.sign(np.sin(2 * np.pi * (x + 0.5) / period))
    return Image.fromarray(np.clip(a + wave[None, :, None] + wave[: a.shape[0], None, None], 0, 255).astype(np.uint8))


def test_grid_artifact_score_sees_the_16_pixel_period_and_its_harmonics():
    clean = smooth()
    assert abs(M.grid_artifact_score(clean)) < 0.1
    assert M.grid_artifact_score(with_grid(clean, 16)) > 1.5  # the DiT's patch period
    assert M.grid_artifact_score(with_grid(clean, 8)) > 1.5  # its second harmonic
    assert M.grid_artifact_score(with_grid(clean, 32)) < 0.1  # a coarser period is not a patch artifact
    assert M.grid_artifact_score(Image.new("RGB", (16, 16))) == 0.0  # too small to measure: 0, no error


def test_grid_artifact_score_matches_a_direct_fft():
    im = with_grid(smooth(128, 3), 16, 5.0)
    g = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    ratios = []
    for x in (g, g.T):
        p = (np.abs(np.fft.rfft(x - x.mean(1, keepdims=True), axis=1)) ** 2).mean(0)
        for m in range(1, 9):
            k = m * 128 // 16
            nb = [p[j] for j in range(max(1, k - 4), min(len(p) - 1, k + 4) + 1) if j != k]
            ratios.append(p[k] / np.median(nb))
    assert M.grid_artifact_score(im) == pytest.approx(math.log10(np.mean(ratios)), rel=1e-9)


def test_color_histogram_distance_equals_a_numpy_chi_square():
    a, b = smooth(64, 1), smooth(64, 2).convert("L").convert("RGB")

    def hist(im):
        x = np.asarray(im).reshape(-1, 3)
        h, _ = np.histogramdd(x, bins=(8, 8, 8), range=[(0, 256)] * 3)
        return h.ravel() / h.sum()

    p, q = hist(a), hist(b)
    s = p + q
    expect = 0.5 * np.sum(np.where(s > 0, (p - q) ** 2 / np.where(s > 0, s, 1), 0))
    assert M.color_histogram_distance(a, b) == pytest.approx(expect)
    assert M.color_histogram_distance(a, a) == 0.0
    assert M.color_histogram_distance(Image.new("RGB", (4, 4), (255, 0, 0)),
                                      Image.new("RGB", (9, 9), (0, 0, 255))) == pytest.approx(1.0)


def test_ssim_and_psnr():
    a = smooth(128)
    assert M.ssim_psnr(a, a) == (pytest.approx(1.0), math.inf)
    noise = np.random.default_rng(0).integers(-40, 40, (128, 128, 3))
    noisy = Image.fromarray(np.clip(np.asarray(a).astype(int) + noise, 0, 255).astype(np.uint8))
    ssim, psnr = M.ssim_psnr(noisy, a)
    x = np.asarray(noisy, dtype=np.float64) / 255
    y = np.asarray(a, dtype=np.float64) / 255
    # 128 px is below the metric size: compared as is, so PSNR is the plain formula
    assert psnr == pytest.approx(10 * math.log10(1 / np.mean((x - y) ** 2)), rel=1e-4)
    assert 0 < ssim < 0.9
    # a reference of another size and aspect is fitted to the cell's, not refused
    ssim2, _ = M.ssim_psnr(a, a.resize((300, 200)))
    assert 0 < ssim2 <= 1


def test_image_metrics_keys():
    a = smooth(64)
    assert set(M.image_metrics(a, None, None)) == {"grid_artifact"}
    assert set(M.image_metrics(a, a, a)) == {"grid_artifact", "ssim_ref", "psnr_ref", "color_hist_ref", "ssim_text",
                                             "psnr_text"}


def test_vqa_yes_probability_equals_a_plain_forward(extractor, red_image):
    from llm_dit.vl.chat import build_messages, run_processor

    q = "Does this image show a red house?"
    got = extractor.answer_probability(red_image, q, max_pixels=65536)
    inputs = run_processor(extractor.processor, build_messages([red_image], q, None), [red_image], 65536)
    with torch.no_grad():
        logits = extractor.model(**inputs).logits[0, -1]
    yes = extractor.tokenizer("Yes", add_special_tokens=False).input_ids[0]
    assert got == pytest.approx(float(logits.softmax(-1)[yes]), rel=1e-5)
    assert got != pytest.approx(extractor.answer_probability(red_image, q, answer="No", max_pixels=65536))


def test_vqa_on_a_thinking_model_answers_after_an_empty_reasoning_block(tmp_path, red_image, monkeypatch):
    import llm_dit.vl.extract as X
    from llm_dit.models.tiny import build_tiny_qwen3_vl
    from llm_dit.vl import VLEmbeddingExtractor

    path = tmp_path / "thinking"
    build_tiny_qwen3_vl(path, thinking=True)
    ex = VLEmbeddingExtractor.from_pretrained(str(path), device="cpu", dtype="float32")
    seen = []
    real = X.run_processor

    def spy(processor, messages, images, max_pixels, answer_prefix=""):
        seen.append(processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                    + answer_prefix)
        return real(processor, messages, images, max_pixels, answer_prefix)

    monkeypatch.setattr(X, "run_processor", spy)
    p = ex.answer_probability(red_image, "Is it red?", max_pixels=65536)
    assert seen[0].endswith("<think>\n\n</think>\n\n") and 0 <= p <= 1


def test_clip_score_is_the_cosine_of_a_plain_forward(tiny_clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    from llm_dit.analysis.hub_metrics import EmbeddingScorer

    image = smooth(64)
    got = EmbeddingScorer.load("clip", str(tiny_clip_dir), torch.device("cpu")).score(image, "a red house")
    model, proc = CLIPModel.from_pretrained(tiny_clip_dir), CLIPProcessor.from_pretrained(tiny_clip_dir)
    with torch.no_grad():
        out = model(**proc(text=["a red house"], images=[image], return_tensors="pt", padding=True))
    assert got == pytest.approx(float((out.image_embeds * out.text_embeds).sum()), abs=1e-5)


def test_hub_metrics_are_skipped_with_a_note_or_refused_when_the_folder_is_missing(tiny_config):
    from llm_dit.analysis.hub_metrics import load_scorers
    from llm_dit.errors import InputError

    scorers, notes = load_scorers(tiny_config, torch.device("cpu"))
    assert scorers == [] and [n.split(":")[0] for n in notes] == ["clip", "siglip", "image_reward"]
    with pytest.raises(InputError, match="metrics.clip folder /no/such does not exist"):
        load_scorers(tiny_config.replace(**{"metrics.clip": "/no/such"}), torch.device("cpu"))
