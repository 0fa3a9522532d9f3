"""Generation through diffusers' pipelines: pixel parity, img2img, guidance, shift, per-step hook."""

import numpy as np
import pytest
import torch
from PIL import Image

from llm_dit.cli import main
from llm_dit.errors import InputError
from llm_dit.generate import fit_init_image, img2img_steps
from llm_dit.images import read_png_parameters

PROMPT = "A simple cartoon house with a red roof"


def stock(pipe, **kw):
    kw.setdefault("generator", torch.Generator("cpu").manual_seed(42))
    return np.asarray(pipe(guidance_scale=kw.pop("guidance_scale", 0.0), **kw).images[0])


def test_cli_generate_writes_the_same_pixels_as_stock_diffusers(tmp_path, stock_pipe, capsys):
    out = tmp_path / "house.png"
    rc = main(["generate", "--profile", "tiny", "--prompt", PROMPT, "--out", str(out),
               "--seed", "7", "--steps", "5", "--width", "96", "--height", "64"])
    assert rc == 0 and f"wrote {out}" in capsys.readouterr().out
    ref = stock(stock_pipe, prompt=PROMPT, generator=torch.Generator("cpu").manual_seed(7),
                num_inference_steps=5, width=96, height=64)
    got = np.asarray(Image.open(out))
    assert got.shape == (64, 96, 3)
    assert np.array_equal(got, ref)
    params = read_png_parameters(out)
    assert params["prompt"] == PROMPT and params["mode"] == "txt2img"
    assert params["config"]["generation"]["seed"] == 7 and params["config"]["profile"] == "tiny"
    assert set(params["versions"]) >= {"torch", "diffusers", "transformers"}


def test_library_generate_equals_stock_and_seed_matters(zimage, stock_pipe):
    emb = zimage.encode(PROMPT).embeddings
    ours = np.asarray(zimage.generate(emb))
    g = zimage.config.generation
    ref = stock(stock_pipe, prompt=PROMPT, num_inference_steps=g.steps, width=g.width, height=g.height)
    assert np.array_equal(ours, ref)
    other = np.asarray(zimage.generate(emb, zimage.config.generation.model_copy(update={"seed": 43})))
    assert not np.array_equal(ours, other)


def test_guidance_uses_the_empty_negative_prompt_like_diffusers(zimage, stock_pipe):
    g = zimage.config.generation.model_copy(update={"guidance_scale": 3.0})
    ours = np.asarray(zimage.generate(zimage.encode(PROMPT).embeddings, g))
    ref = stock(stock_pipe, prompt=PROMPT, guidance_scale=3.0, num_inference_steps=g.steps,
                width=g.width, height=g.height)
    assert np.array_equal(ours, ref)


def test_img2img_equals_stock_and_is_seeded(zimage, stock_pipe):
    from diffusers import ZImageImg2ImgPipeline

    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8))
    g = zimage.config.generation.model_copy(update={"strength": 0.7, "steps": 6})
    emb = zimage.encode(PROMPT).embeddings
    a = np.asarray(zimage.generate(emb, g, init_image=init))
    b = np.asarray(zimage.generate(emb, g, init_image=init))
    assert np.array_equal(a, b)  # the VAE encode draws from the seeded generator too
    ref_pipe = ZImageImg2ImgPipeline(**stock_pipe.components)
    ref_pipe.set_progress_bar_config(disable=True)
    ref = stock(ref_pipe, prompt=PROMPT, image=fit_init_image(init, g.width, g.height), strength=0.7,
                num_inference_steps=6, width=g.width, height=g.height)
    assert np.array_equal(a, ref)
    assert a.shape == (g.height, g.width, 3)


def test_explicit_shift_is_applied(zimage):
    emb = zimage.encode(PROMPT).embeddings
    base = np.asarray(zimage.generate(emb))
    g = zimage.config.generation.model_copy(update={"shift": 1.15})
    shifted = np.asarray(zimage.generate(emb, g))
    assert not np.array_equal(base, shifted)
    s = torch.linspace(1.0, 1 / g.steps, g.steps)
    expected = 1.15 * s / (1 + 0.15 * s)
    torch.testing.assert_close(zimage.pipe.scheduler.sigmas[:-1].float(), expected)
    zimage.generate(emb)  # back to 3.0 for the tests that follow
    torch.testing.assert_close(zimage.pipe.scheduler.sigmas[:-1].float(), 3 * s / (1 + 2 * s))


def test_step_hook_swaps_conditioning_per_step(zimage):
    a = zimage.encode(PROMPT).embeddings
    b = zimage.encode("a portrait of an old man, oil painting").embeddings
    base = np.asarray(zimage.generate(a))
    calls = []

    def constant(i, n):
        calls.append((i, n))
        return a

    assert np.array_equal(np.asarray(zimage.generate(constant)), base)
    n = zimage.config.generation.steps
    assert calls == [(i, n) for i in range(n)]
    switched = np.asarray(zimage.generate(lambda i, n: a if i < n // 2 else b))
    only_b = np.asarray(zimage.generate(b))
    assert not np.array_equal(switched, base) and not np.array_equal(switched, only_b)


def test_step_hook_counts_img2img_steps(zimage):
    init = Image.new("RGB", (64, 64), (120, 30, 30))
    g = zimage.config.generation.model_copy(update={"strength": 0.5, "steps": 8})
    calls = []
    emb = zimage.encode(PROMPT).embeddings
    zimage.generate(lambda i, n: calls.append((i, n)) or emb, g, init_image=init)
    assert calls == [(i, 4) for i in range(4)] and img2img_steps(8, 0.5) == zimage.img2img_pipeline().num_timesteps


@pytest.mark.parametrize(
    "emb, needle",
    [
        (torch.randn(0, 64), "0 tokens"),
        (torch.randn(1505, 64), "1505 tokens"),
        (torch.randn(5, 32), "width 32"),
        (torch.randn(5), "tensor"),
        (torch.full((3, 64), float("nan")), "NaN"),
    ],
)
def test_embeddings_z_image_cannot_take_are_refused(zimage, emb, needle):
    with pytest.raises(InputError, match=needle):
        zimage.generate(emb)


def test_1504_tokens_is_the_real_limit_and_works(zimage):
    img = zimage.generate(torch.randn(1504, 64) * 0.05)
    assert img.size == (zimage.config.generation.width, zimage.config.generation.height)


def test_a_batch_gives_each_image_its_own_generation(zimage):
    """Three captions of different lengths (the DiT pads and masks between them), one of them
    switching per step, in one pipeline call: each picture is the one generated alone."""
    a = zimage.encode(PROMPT).embeddings
    b = zimage.encode("a portrait of an old man, oil painting, dramatic light, dark background").embeddings
    assert a.shape[0] != b.shape[0]

    def switch(i, n):
        return a if i < n // 2 else b

    steps = []
    batch = zimage.generate_batch([a, b, switch], on_step=lambda done, n: steps.append(done))
    alone = [zimage.generate(c) for c in (a, b, switch)]
    for got, want in zip(batch, alone, strict=True):
        diff = np.abs(np.asarray(got, dtype=np.int16) - np.asarray(want, dtype=np.int16))
        assert diff.max() <= 1  # float32 rounding of batched kernels, nothing more
    assert not np.array_equal(np.asarray(batch[0]), np.asarray(batch[1]))
    assert steps == list(range(zimage.config.generation.steps + 1))
    assert zimage.generate_batch([]) == []
