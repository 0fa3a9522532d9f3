"""Shared fixtures: the tiny models are built once per test session into a private cache."""

from __future__ import annotations

import os

import pytest
from reliability import pytest_collection_modifyitems as _record_reliability

# RELIABILITY.md from the tests marked `reliability` (see reliability.py)
from reliability import (  # noqa: F401
    pytest_configure,
    pytest_runtest_call,
    pytest_runtest_logreport,
    pytest_sessionfinish,
)

#: pytest-timeout's limit for the tests that need ``experiment_runs``: the first one's setup runs every
#: named experiment on the tiny models (three to four minutes on an idle 2-core machine, about twice
#: that when the cores are shared), which the default 300 s would cut off.
EXPERIMENT_RUNS_TIMEOUT = 1500


def pytest_collection_modifyitems(items) -> None:
    _record_reliability(items)
    for item in items:
        if "experiment_runs" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(EXPERIMENT_RUNS_TIMEOUT))


@pytest.fixture(scope="session", autouse=True)
def tiny_cache(tmp_path_factory):
    """Point LLM_DIT_CACHE at a fresh folder (so the suite never reads a user's cache) and build."""
    cache = tmp_path_factory.mktemp("llm-dit-cache")
    old = os.environ.get("LLM_DIT_CACHE")
    os.environ["LLM_DIT_CACHE"] = str(cache)
    from llm_dit.models.tiny import ensure_tiny_models

    root = ensure_tiny_models()
    yield root
    if old is None:
        os.environ.pop("LLM_DIT_CACHE", None)
    else:
        os.environ["LLM_DIT_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_z_image_dir(tiny_cache):
    return tiny_cache / "z-image"


@pytest.fixture(scope="session")
def tiny_vl_dir(tiny_cache):
    return tiny_cache / "qwen3-vl"


@pytest.fixture(scope="session")
def tiny_config():
    from llm_dit.config import resolve_config

    return resolve_config("tiny", overrides={"generation.width": 64, "generation.height": 64, "generation.steps": 4})


@pytest.fixture(scope="session")
def zimage(tiny_config):
    from llm_dit.generate import ZImage

    return ZImage.load(tiny_config)


@pytest.fixture(scope="session")
def stock_pipe(tiny_z_image_dir):
    """diffusers' own pipeline on the same folder: the oracle for parity tests."""
    import torch
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(str(tiny_z_image_dir), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def extractor(tiny_config):
    """The tiny Qwen3-VL, vl backend, no disk cache."""
    from llm_dit.vl import VLEmbeddingExtractor

    return VLEmbeddingExtractor.from_pretrained("tiny", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def splice_extractor(zimage):
    """The splice backend over the already loaded tiny Z-Image text encoder."""
    from llm_dit.vl import VLEmbeddingExtractor

    return VLEmbeddingExtractor.from_pretrained(
        "tiny", device="cpu", dtype="float32", backend="splice", text_encoder=zimage.pipe.text_encoder
    )


@pytest.fixture
def dit(tiny_z_image_dir):
    """A fresh tiny Z-Image DiT in float32 (tests change it in place)."""
    from diffusers import ZImageTransformer2DModel

    return ZImageTransformer2DModel.from_pretrained(tiny_z_image_dir / "transformer").float().eval()


def _dit_output(model):
    import torch

    g = torch.Generator().manual_seed(0)
    x = [torch.randn(16, 1, 16, 16, generator=g)]
    cap = [torch.randn(7, model.config.cap_feat_dim, generator=g)]
    with torch.no_grad():
        return model(x, torch.tensor([0.3]), cap, return_dict=False)[0][0]


@pytest.fixture
def dit_output():
    """``f(dit)``: one forward of a DiT on fixed inputs (a 16 x 16 latent, t = 0.3, a 7-token caption)."""
    return _dit_output


@pytest.fixture
def red_image():
    from PIL import Image

    return Image.new("RGB", (128, 96), (200, 30, 30))


@pytest.fixture
def noise_image():
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(1).integers(0, 255, (96, 160, 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A random-weight CLIP in the transformers layout (a character vocabulary, no merges)."""
    import json
    import string

    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    d = tmp_path_factory.mktemp("tiny-clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ".,!?":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(text_config=dict(vocab_size=len(vocab), max_position_embeddings=77, bos_token_id=0,
                                         eos_token_id=1, pad_token_id=1, **small),
                        vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=16)
    torch.manual_seed(0)
    out = d / "clip"
    CLIPModel(config).save_pretrained(out)
    CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def refs(tmp_path_factory) -> list[str]:
    """Two reference images for experiment runs: noise (96x128) and a flat blue square."""
    import numpy as np
    from PIL import Image

    d = tmp_path_factory.mktemp("refs")
    rng = np.random.default_rng(0)
    a, b = d / "a.png", d / "b.png"
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(a)
    Image.new("RGB", (128, 128), (30, 120, 220)).save(b)
    return [str(a), str(b)]


@pytest.fixture(scope="session")
def experiment_runs(refs, tmp_path_factory):
    """Every named experiment in its quick form (the same as its full form where it has none), on the
    tiny profile, what it handed the pipeline captured: ``{name: (rc, folder, stdout, stderr,
    handed)}`` (test_experiments.py, test_oracle.py)."""
    import contextlib
    import io

    from oracle import handed_to_pipeline
    from run_args import compare_args

    from llm_dit.cli import main
    from llm_dit.experiments.presets import EXPERIMENTS

    out = {}
    root = tmp_path_factory.mktemp("runs")
    for name in EXPERIMENTS:
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), handed_to_pipeline() as handed:
            rc = main(compare_args(name, refs, root / name))
        out[name] = (rc, root / name, stdout.getvalue(), stderr.getvalue(), handed)
    return out


# -- the web app's tests (test_web*.py): one app per module on the tiny profile ---------------------


@pytest.fixture(scope="module")
def config():
    from web_client import SMALL

    from llm_dit.config import resolve_config

    return resolve_config("tiny", overrides=SMALL)


@pytest.fixture(scope="module")
def client(config, tmp_path_factory):
    from fastapi.testclient import TestClient

    from llm_dit.web.app import create_app

    app = create_app(config, tmp_path_factory.mktemp("runs"))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def upload(client) -> dict:
    from web_client import png_bytes

    r = client.post("/api/uploads", files={"file": ("red.png", png_bytes(), "image/png")})
    assert r.status_code == 201, r.text
    return r.json()
