"""CUDA smoke test: every shipped runtime policy runs end to end on a GPU (tiny models).

Not a benchmark (the models are tiny): it shows that the CUDA code paths of the profiles run
(device auto -> cuda + bfloat16, resident, model offload, group offload at block and leaf level),
that a seed gives the same image twice on the GPU, and how far the bf16 GPU image is from the fp32
CPU one. Usage: ``python bench/cuda_smoke.py`` (needs a CUDA GPU).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from llm_dit.config import resolve_config
from llm_dit.generate import ZImage

PROMPT = "A simple cartoon house with a red roof"


def run(profile: str, **overrides) -> tuple[np.ndarray, float, float, dict]:
    base = {"models.z_image": "tiny", "models.vl": "tiny", "generation.width": 256, "generation.height": 256}
    cfg = resolve_config(profile, overrides={**base, **overrides})
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = ZImage.load(cfg)
    emb = model.encode(PROMPT).embeddings
    model.generate(emb)  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    img = np.asarray(model.generate(emb))
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    again = np.asarray(model.generate(emb))
    assert np.array_equal(img, again), f"{profile}: the same seed gave two different images"
    again = np.asarray(model.generate(model.encode(PROMPT).embeddings))  # the text encoder's turn, then the DiT's
    assert np.array_equal(img, again), f"{profile}: encoding again changed the image"
    peak = torch.cuda.max_memory_allocated() / 2**20
    placement = model.placement.to_dict()
    model.unload()
    return img, dt, peak, placement


def vl_rows() -> None:
    """Every extraction backend on cuda/bfloat16 against cpu/float32 (relative error per layer)."""
    from PIL import Image

    from llm_dit.vl import VLEmbeddingExtractor

    img = Image.new("RGB", (256, 192), (200, 40, 40))
    cpu_z = ZImage.load(resolve_config("tiny"))
    print(f"\n{'backend':8s} {'layer':>6s} {'tokens':>7s} {'rel. err bf16 vs fp32':>22s}")
    for backend in ("vl", "splice", "dopsd"):
        results = {}
        for device, dtype in (("cpu", torch.float32), ("cuda", torch.bfloat16)):
            te = None
            if backend in ("splice", "dopsd"):
                te = cpu_z.pipe.text_encoder if device == "cpu" else ZImage.load(
                    resolve_config("default", overrides={"models.z_image": "tiny"})).pipe.text_encoder
            ex = VLEmbeddingExtractor.from_pretrained("tiny", device=device, dtype=dtype, backend=backend,
                                                      text_encoder=te)
            results[device] = ex.extract(img, PROMPT, hidden_layer=[-6, -2], max_pixels=65536)
        for k in (-6, -2):
            a, b = results["cpu"].layer_embeddings[k], results["cuda"].layer_embeddings[k]
            err = float((a - b).norm() / a.norm())
            print(f"{backend:8s} {k:6d} {a.shape[0]:7d} {err:22.2e}")


def processor_rows() -> None:
    """The image processor GPU machines take: with torchvision installed, the file's
    ``Qwen2VLImageProcessorFast`` resolves to transformers' torchvision class, not the PIL one the
    CPU test suite runs. Its grids must equal the PIL class's and its pixels come close (the resize
    kernels differ), and extraction through it runs."""
    from importlib.util import find_spec

    from PIL import Image
    from transformers import AutoImageProcessor, Qwen2VLImageProcessorPil

    from llm_dit.models.tiny import ensure_tiny_models
    from llm_dit.vl import VLEmbeddingExtractor

    folder = ensure_tiny_models() / "qwen3-vl"
    auto = AutoImageProcessor.from_pretrained(folder)
    tv = "present" if find_spec("torchvision") else "absent"
    print(f"\nimage processor: {type(auto).__name__} (torchvision {tv})")
    pil = Qwen2VLImageProcessorPil.from_pretrained(folder)
    rng = np.random.default_rng(1)
    print(f"{'image':>10s} {'grid fast':>12s} {'grid pil':>12s} {'max |diff|':>11s} {'mean |diff|':>12s}")
    for w, h in ((160, 96), (517, 333), (256, 256), (1000, 700)):
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        a, b = auto(images=[img], return_tensors="pt"), pil(images=[img], return_tensors="pt")
        ga, gb = a["image_grid_thw"][0].tolist(), b["image_grid_thw"][0].tolist()
        same = ga == gb and a["pixel_values"].shape == b["pixel_values"].shape
        diff = (a["pixel_values"].float() - b["pixel_values"].float()).abs() if same else None
        print(f"{w}x{h:<6d} {str(ga):>12s} {str(gb):>12s} {float(diff.max()) if same else float('nan'):11.4f} "
              f"{float(diff.mean()) if same else float('nan'):12.5f}")
    ex = VLEmbeddingExtractor.from_pretrained("tiny", device="cuda", dtype=torch.bfloat16)
    r = ex.extract(Image.new("RGB", (256, 192), (200, 40, 40)), PROMPT, hidden_layer=-2, max_pixels=65536)
    print(f"extraction through {type(ex.processor.image_processor).__name__}: {r.summary()}")


RECIPES = {
    "interpolate": dict(alpha=0.5),
    "adain_per_dim": dict(blend="adain_per_dim", alpha=0.4),
    "style_delta": dict(blend="style_delta", alpha=0.5, magnitude="match_rms"),
    "schedule linear": dict(schedule="linear:0.9:0.1"),
    "concat + step schedule": dict(blend="concat", schedule="step:0:1:0.5"),
    "dual, multi-layer": dict(vl_intra_blend_ratio=0.4, dual_extraction=True, image_layer=-2, text_layer=-6,
                              blend="replace"),
    "per_dim + restore": dict(normalization_mode="per_dim", outlier_mask="restore", outlier_threshold=1.5),
    "splice": dict(backend="splice", alpha=0.5),
    "dopsd": dict(backend="dopsd", alpha=0.5),
}


def recipe_rows(ref_path: str) -> None:
    """Recipes end to end (staged loading, per-step hook) on CUDA under three memory policies."""
    from llm_dit.conditioning import Recipe
    from llm_dit.conditioning.run import generate_from_recipe

    base = torch.cuda.memory_allocated()
    print(f"\n{'recipe':24s} {'profile':10s} {'offload':12s} {'seconds':>8s} {'peak MiB':>9s} {'left MiB':>9s} "
          f"{'same twice':>10s} {'blended_std':>12s}")
    for profile, ov in (("default", {}), ("low_vram", {}), ("low_vram", {"runtime.offload": "model"})):
        cfg = resolve_config(profile, overrides={"models.z_image": "tiny", "models.vl": "tiny", "generation.width": 256,
                                                 "generation.height": 256, "vl.max_pixels": 65536, **ov})
        for name, fields in RECIPES.items():
            recipe = Recipe.from_dict({"references": [{"image": ref_path}], **fields})
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            try:
                a = generate_from_recipe(cfg, recipe, PROMPT)
                dt = time.perf_counter() - t0
                b = generate_from_recipe(cfg, recipe, PROMPT)
            except Exception as e:  # report and go on: one table shows every path
                print(f"{name:24s} {profile:10s} {cfg.runtime.offload:12s} FAILED: {type(e).__name__}: {e}")
                continue
            same = np.array_equal(np.asarray(a.image), np.asarray(b.image))
            peak = torch.cuda.max_memory_allocated() / 2**20
            left = (torch.cuda.memory_allocated() - base) / 2**20  # after both stages unloaded
            print(f"{name:24s} {profile:10s} {cfg.runtime.offload:12s} {dt:8.3f} {peak:9.1f} {left:9.1f} "
                  f"{str(same):>10s} {a.record['blended_std']:12.4g}")


def main() -> int:
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    if not torch.cuda.is_available():
        print("no CUDA GPU", file=sys.stderr)
        return 1
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}")
    if "--recipes-only" not in sys.argv:
        policy_rows()
        processor_rows()
    import tempfile

    from PIL import Image

    with tempfile.TemporaryDirectory() as d:
        ref = f"{d}/ref.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (192, 256, 3), dtype=np.uint8)).save(ref)
        recipe_rows(ref)
    return 0


def policy_rows() -> None:
    cpu = np.asarray(
        ZImage.load(resolve_config("tiny", overrides={"generation.width": 256, "generation.height": 256}))
        .generate(ZImage.load(resolve_config("tiny")).encode(PROMPT).embeddings)
    ).astype(np.float64)
    rows = [
        ("default", {}),
        ("rtx4090", {}),
        ("16gb", {}),
        ("12gb", {}),
        ("low_vram", {}),
        ("default", {"runtime.precision": "fp8"}),
        ("default", {"runtime.precision": "fp8", "runtime.compile": True}),
        ("rtx4090", {"runtime.precision": "fp8_weights", "runtime.compile": True}),
        ("low_vram", {"runtime.offload": "group_leaf"}),
        ("low_vram", {"runtime.offload": "model"}),
        ("default", {"runtime.dtype": "float32"}),
    ]
    print(f"{'profile':10s} {'device':8s} {'dtype':9s} {'offload':12s} {'precision':11s} {'seconds':>8s} "
          f"{'peak MiB':>9s} {'|gpu-cpu| mean':>15s}")
    for profile, ov in rows:
        img, dt, peak, pl = run(profile, **ov)
        diff = np.abs(img.astype(np.float64) - cpu).mean()
        print(f"{profile:10s} {pl['device']:8s} {pl['dtype']:9s} {pl['offload']:12s} {pl['precision']:11s} "
              f"{dt:8.3f} {peak:9.1f} {diff:15.2f}")
    vl_rows()


if __name__ == "__main__":
    raise SystemExit(main())
