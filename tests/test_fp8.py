"""FP8 weights for the DiT (``runtime.precision``, ``models/fp8.py``): the quantization's bound, the two
products against their formulas, the layers converted, q/k/v fusion, the pipeline against stock
diffusers run on the same dequantized weights, and the one-line refusals where FP8 products cannot run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import ZImagePipeline

from llm_dit.config import resolve_config
from llm_dit.errors import ConfigError
from llm_dit.models.fp8 import (
    FP8,
    FP8_LAYERS,
    FP8Linear,
    check_precision,
    dequantize,
    quantize_rowwise,
    scaled_product,
    to_fp8,
    weight_bytes,
)

E4M3_MAX = 448.0


def weights(rows: int = 24, cols: int = 64, seed: int = 0) -> torch.Tensor:
    """Rows of very different magnitudes (1e-4 .. 1e2), an outlier, and a zero row."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.logspace(-4, 2, rows)[:, None]
    w[3, 5] *= 50.0
    w[7] = 0.0
    return w


def test_quantize_rowwise_round_trip_within_its_bound():
    w = weights()
    q, s = quantize_rowwise(w)
    assert q.dtype == FP8 and q.shape == w.shape and s.dtype == torch.float32 and s.shape == (w.shape[0], 1)
    back = dequantize(q, s, torch.float32)
    # e4m3 keeps 3 mantissa bits: half a unit in the last place is 2^-4 of a normal value; below the
    # normal range (2^-6) the step is 2^-9, so the error is at most 2^-10 there (in units of the scale)
    bound = torch.maximum(w.abs() * 2**-4, s * 2**-10) * (1 + 1e-6)
    assert torch.all((back - w).abs() <= bound)
    nonzero = [i for i in range(w.shape[0]) if i != 7]
    # each row's largest magnitude lands on e4m3's largest value, exactly
    assert torch.equal(q.float().abs().amax(dim=1)[nonzero], torch.full((len(nonzero),), E4M3_MAX))
    assert torch.equal(back[7], torch.zeros(w.shape[1])) and not torch.isnan(back).any()
    assert torch.equal(s[:, 0][nonzero], w.abs().amax(dim=1)[nonzero] / E4M3_MAX)


def test_scaled_product_is_its_formula():
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(3, 5, 64, generator=g) * 3).to(torch.bfloat16)
    w = weights(48, 64, seed=2)
    q, s = quantize_rowwise(w)
    y = scaled_product(x, q, s, None)
    assert y.shape == (3, 5, 48) and y.dtype == torch.bfloat16
    # the formula: y = (t s^T) * (P Q^T), P and t the per-token quantization of x, in float64
    p, t = quantize_rowwise(x.reshape(-1, 64))
    want = (t.double() * s.double().T) * (p.double() @ q.double().T)
    assert torch.allclose(y.reshape(-1, 48).double(), want, rtol=2**-7, atol=1e-6 * want.abs().max().item())
    exact = x.reshape(-1, 64).double() @ w.double().T
    rel = ((y.reshape(-1, 48).double() - exact).norm() / exact.norm()).item()
    assert rel < 0.06  # two 3-bit-mantissa operands


def test_fp8_weights_layer_is_the_product_with_dequantized_weights():
    torch.manual_seed(3)
    lin = torch.nn.Linear(64, 32, bias=True)
    layer = FP8Linear.from_linear(lin, "fp8_weights")
    assert layer.weight.dtype == FP8 and not layer.weight.requires_grad
    x = torch.randn(4, 7, 64)
    q, s = quantize_rowwise(lin.weight.detach())
    assert torch.equal(layer(x), F.linear(x, dequantize(q, s, torch.float32), lin.bias))
    assert "compute=fp8_weights" in repr(layer)


def test_fp8_products_need_sizes_in_multiples_of_16():
    assert FP8Linear.from_linear(torch.nn.Linear(64, 48), "fp8").compute == "fp8"
    assert FP8Linear.from_linear(torch.nn.Linear(64, 170), "fp8").compute == "fp8_weights"  # the tiny DiT's FFN


def test_to_fp8_converts_the_blocks_attention_and_feed_forward(dit, dit_output):
    before, bytes_before = dit_output(dit), weight_bytes(dit)
    names = {n for n, m in dit.named_modules() if isinstance(m, torch.nn.Linear) and FP8_LAYERS.fullmatch(n)}
    converted = {n: m.weight.numel() for n, m in dit.named_modules() if n in names}
    blocks = len(dit.layers) + len(dit.noise_refiner) + len(dit.context_refiner)
    assert len(names) == 7 * blocks  # q, k, v, out; w1, w2, w3
    assert to_fp8(dit, "fp8_weights") == len(names)
    layers = dict(dit.named_modules())
    assert all(isinstance(layers[n], FP8Linear) for n in names)
    assert not any(isinstance(m, FP8Linear) for n, m in layers.items() if n not in names)  # adaLN, embedders, final
    # float32 -> 1 byte per weight, plus a float32 scale per row
    saved = sum(3 * n for n in converted.values()) - sum(4 * layers[n].out_features for n in names)
    assert bytes_before - weight_bytes(dit) == saved
    rel = ((dit_output(dit) - before).norm() / before.norm()).item()
    assert 0 < rel < 0.05


def test_fused_fp8_projection_is_the_unfused_one(dit, dit_output):
    from llm_dit.models.rope import fuse_qkv, use_real_rope

    use_real_rope(dit)
    to_fp8(dit, "fp8_weights")
    before = dit_output(dit)
    assert fuse_qkv(dit) == len(dit.layers) + len(dit.noise_refiner) + len(dit.context_refiner)
    attn = dit.layers[0].attention
    n = attn.to_q.weight.shape[0]
    assert isinstance(attn.to_qkv, FP8Linear) and attn.to_qkv.out_features == 3 * n
    assert attn.to_k.weight.data_ptr() == attn.to_qkv.weight[n:].data_ptr()  # views: no memory added
    assert attn.to_k.weight_scale.data_ptr() == attn.to_qkv.weight_scale[n:].data_ptr()
    assert torch.allclose(dit_output(dit), before, rtol=0, atol=1e-5)
    size = weight_bytes(dit)
    dit._apply(lambda t: t.clone())  # what a move between devices does: each parameter copied apart
    assert weight_bytes(dit) == size and attn.to_k.weight.data_ptr() == attn.to_qkv.weight[n:].data_ptr()


def test_fp8_products_in_the_dit(dit, dit_output):
    """``fp8``: the layers whose sizes FP8 tensor cores take compute with quantized activations (on the
    CPU through the same ``torch._scaled_mm``), fused q/k/v too; the others fall back to ``fp8_weights``."""
    from llm_dit.models.rope import fuse_qkv, use_real_rope

    before = dit_output(dit)
    use_real_rope(dit)
    to_fp8(dit, "fp8")
    layers = {n: m for n, m in dit.named_modules() if isinstance(m, FP8Linear)}
    assert {m.compute for n, m in layers.items() if ".attention." in n} == {"fp8"}
    assert {m.compute for n, m in layers.items() if ".feed_forward." in n} == {"fp8_weights"}  # 170 wide
    out = dit_output(dit)
    assert 0 < ((out - before).norm() / before.norm()).item() < 0.1
    fuse_qkv(dit)
    assert dit.layers[0].attention.to_qkv.compute == "fp8"
    assert torch.allclose(dit_output(dit), out, rtol=0, atol=1e-5)


def test_fp8_weights_pictures_are_stock_diffusers_on_the_dequantized_weights(tiny_z_image_dir):
    """The oracle: diffusers' own pipeline whose converted layers hold ``s * Q`` as ordinary weights
    makes the same picture as llm-dit with ``precision = "fp8_weights"``."""
    from llm_dit.generate import ZImage

    cfg = resolve_config("tiny", overrides={"generation.width": 64, "generation.height": 64,
                                            "generation.steps": 3, "runtime.precision": "fp8_weights"})
    model = ZImage.load(cfg)
    assert model.placement.to_dict()["precision"] == "fp8_weights"
    emb = model.encode("a red house by a lake").embeddings
    ours = np.asarray(model.generate(emb))
    stock = ZImagePipeline.from_pretrained(tiny_z_image_dir, dtype=torch.float32)
    with torch.no_grad():
        for name, module in stock.transformer.named_modules():
            if isinstance(module, torch.nn.Linear) and FP8_LAYERS.fullmatch(name):
                module.weight.copy_(dequantize(*quantize_rowwise(module.weight), torch.float32))
    stock.scheduler.set_shift(cfg.generation.shift)
    theirs = stock(prompt_embeds=[emb], height=64, width=64, num_inference_steps=3, guidance_scale=0.0,
                   generator=torch.Generator("cpu").manual_seed(cfg.generation.seed)).images[0]
    assert np.array_equal(ours, np.asarray(theirs))
    plain = np.asarray(ZImage.load(cfg.replace(**{"runtime.precision": "dtype"})).generate(emb))
    assert not np.array_equal(ours, plain)  # the precision did change the picture


def test_fp8_products_are_refused_where_they_cannot_run(monkeypatch):
    with pytest.raises(ConfigError, match=r"needs a GPU with FP8 tensor cores \(device is cpu\)"):
        check_precision("fp8", torch.device("cpu"))
    check_precision("fp8_weights", torch.device("cpu"))  # storage only: anywhere
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA GeForce RTX 3090")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (8, 6))
    with pytest.raises(ConfigError) as e:
        check_precision("fp8", torch.device("cuda"))
    assert "RTX 3090 is 8.6" in str(e.value) and "fp8_weights" in str(e.value) and "\n" not in str(e.value)
    for cap in ((8, 9), (9, 0), (10, 0)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0, c=cap: c)
        check_precision("fp8", torch.device("cuda:0"))


def test_the_cli_refuses_fp8_on_the_cpu_in_one_line(tmp_path, capsys):
    from llm_dit.cli import main

    out = tmp_path / "x.png"
    assert main(["generate", "--profile", "tiny", "--precision", "fp8", "--prompt", "a house", "--out", str(out)]) != 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "FP8 tensor cores" in lines[0] and not out.exists()


def test_precision_is_part_of_a_runs_key(tmp_path):
    from PIL import Image

    from llm_dit.experiments.plan import run_key
    from llm_dit.experiments.specs import experiment_spec

    ref = tmp_path / "ref.png"
    Image.new("RGB", (64, 64), "red").save(ref)
    keys = set()
    for precision in ("dtype", "fp8_weights"):
        cfg = resolve_config("tiny", overrides={"runtime.precision": precision})
        spec, cfg = experiment_spec("vl_only_vs_qwen3", [str(ref)], "a house", cfg)
        keys.add(run_key(spec, cfg))
    assert len(keys) == 2  # a folder made in one precision is refused to a run in another


def test_bfloat16_runs_keep_the_keys_of_folders_made_before_precisions(tmp_path, monkeypatch):
    from PIL import Image

    from llm_dit.config import Config
    from llm_dit.experiments.plan import run_key
    from llm_dit.experiments.specs import experiment_spec

    ref = tmp_path / "ref.png"
    Image.new("RGB", (64, 64), "red").save(ref)
    spec, cfg = experiment_spec("vl_only_vs_qwen3", [str(ref)], "a house", resolve_config("tiny"))
    now = run_key(spec, cfg)
    to_dict = Config.to_dict

    def before(self):  # the config as it was written before runtime.precision existed
        d = to_dict(self)
        d["runtime"].pop("precision")
        return d

    monkeypatch.setattr(Config, "to_dict", before)
    assert run_key(spec, cfg) == now


def test_fused_rows_keep_their_biases():
    from llm_dit.models.fp8 import concat_rows

    torch.manual_seed(5)
    with_bias, without = torch.nn.Linear(32, 16), torch.nn.Linear(32, 16, bias=False)
    layers = [FP8Linear.from_linear(m, "fp8_weights") for m in (with_bias, without)]
    fused = concat_rows(layers)
    x = torch.randn(3, 32)
    assert torch.equal(fused(x), torch.cat([m(x) for m in layers], dim=-1))


def test_fp8_needs_bfloat16_activations():
    with pytest.raises(ConfigError, match="bfloat16 activations"):
        check_precision("fp8", torch.device("cuda"), torch.float16)


def test_reports_and_records_say_the_precision():
    from llm_dit.experiments.report_html import precision_banner, summary
    from llm_dit.models.fp8 import FIDELITY
    from llm_dit.models.loading import Placement

    meta = {"config": {"runtime": {"precision": "fp8", "dtype": "bfloat16"}, "models": {}}, "results": [],
            "experiment": "alpha_sweep"}
    banner = precision_banner(meta)
    assert "FP8 DiT (precision fp8)" in banner and str(FIDELITY["fp8"]["pixel_diff"]) in banner
    assert precision_banner({"config": {"runtime": {"precision": "dtype"}}}) == ""
    assert precision_banner({"config": {"runtime": {}}}) == ""  # a folder from before precisions existed
    assert banner in summary({**meta, "warnings": [], "answers": []})
    record = Placement(torch.device("cpu"), torch.float32, "none", "fp8_weights").to_dict()
    assert record["precision"] == "fp8_weights"
    assert record["precision_fidelity"]["pixel_diff"] == FIDELITY["fp8_weights"]["pixel_diff"]
    assert "precision_fidelity" not in Placement(torch.device("cpu"), torch.float32, "none").to_dict()


def test_profiles_lists_the_memory_classes(capsys):
    from llm_dit.cli import main
    from llm_dit.models.classes import CLASSES

    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    for cls in CLASSES:
        cfg = resolve_config(cls.profile)
        assert cfg.runtime.device == "cuda" and cls.line() in out
    assert "12gb" in out and "precision=fp8_weights" in out
