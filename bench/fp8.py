"""Benchmark 6: FP8 precisions (``runtime.precision``) on one 1024 x 1024 picture, 9 steps: time and fidelity.

Rows, each timed on the same machine (medians of ``--repeats`` after ``--warmup`` calls):

* bfloat16 eager (``llm-dit generate``): the reference picture and DiT forward;
* ``fp8_weights`` and ``fp8``, eager;
* bfloat16 ``--compile``: its difference from eager is the spread that bf16 rounding alone gives;
* ``fp8_weights`` and ``fp8`` with ``--compile`` (the fast mode), each loaded through the shipped
  loading code (``ZImage.load``).

Fidelity of each: the relative error of one DiT forward on the same inputs against bf16 eager, and
the mean absolute pixel difference (0..255) to the bf16 eager picture and to the bf16 compiled one.

Layer study: the relative error of one forward with FP8 products in one group of linear layers
alone (eager), which is how ``FP8_LAYERS`` was chosen. Floor: the fast mode's kernel profile and the
measured FP8 and bf16 matrix-product rates.
"""

from __future__ import annotations

import gc
import json
import re

import common
import numpy as np
import torch
from single_image import dit_inputs, kernel_profile, uncompile

#: Groups of the DiT's linear layers for the layer study (names within ZImageTransformer2DModel).
GROUPS = {
    "blocks: attention": r"layers\.\d+\.attention\.(to_q|to_k|to_v|to_out\.0)",
    "blocks: feed-forward": r"layers\.\d+\.feed_forward\.w[123]",
    "noise refiner": r"noise_refiner\.\d+\.(attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.w[123])",
    "context refiner": r"context_refiner\.\d+\.(attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.w[123])",
    "adaLN modulations": r".*adaLN_modulation\.\d+",
    "final layer": r"all_final_layer\.[^.]+\.linear",
    "embedders (not t_embedder: it casts its input to its weight's dtype)": r"(all_x_embedder\.[^.]+|cap_embedder\.1)",
}


def swap(dit, pattern: re.Pattern, compute: str) -> list:
    """FP8 layers in place of the linear layers whose names match ``pattern``; what :func:`restore` needs."""
    from llm_dit.models.fp8 import FP8Linear, replace_linears

    return replace_linears(dit, pattern, lambda child: FP8Linear.from_linear(child, compute))


def restore(undo: list) -> None:
    for module, name, child in undo:
        setattr(module, name, child)


def fp8_rate() -> float | None:
    """Measured FP8 matrix-product rate (row-wise scaled ``torch._scaled_mm``, 8192^3) in FLOP/s."""
    import statistics

    from llm_dit.models.fp8 import FP8

    if not torch.cuda.is_available():
        return None
    n = 8192
    a = torch.randn(n, n, device="cuda").to(FP8)
    b = torch.randn(n, n, device="cuda").to(FP8)
    sa, sb = torch.ones(n, 1, device="cuda"), torch.ones(1, n, device="cuda")

    def mm():
        return torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)

    for _ in range(3):
        mm()
    common.sync()
    return 2 * n**3 / statistics.median(common.time_call(mm) for _ in range(20))


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--no-compile", action="store_true", help="eager rows only")
    args = p.parse_args()
    from llm_dit.generate import ZImage
    from llm_dit.models.fp8 import FP8_LAYERS
    from llm_dit.models.loading import apply_speed

    cuda = torch.cuda.is_available()
    cfg = common.config(args)
    model = ZImage.load(cfg)
    pipe, g = model.pipe, cfg.generation
    pipe.set_progress_bar_config(disable=True)
    emb = model.encode(common.PROMPT).embeddings

    def forward_of(m):
        @torch.no_grad()
        def forward():
            return m.pipe.transformer(*dit_inputs(m, emb, g), return_dict=False)[0][0].float()
        return forward

    def picture(m):
        return np.asarray(m.generate(emb), dtype=np.float32)

    forward = forward_of(model)
    ref_out, ref_img = forward(), picture(model)
    rows, data, spread = [], {"variants": {}, "layer_study": {}}, {}

    def measure(label: str, m, compute_rel: bool = True) -> None:
        t = common.medians({label: lambda: m.generate(emb)}, args)[label]["median"]
        out, img = forward_of(m)(), picture(m)
        rel = float((out - ref_out).norm() / ref_out.norm()) if compute_rel else 0.0
        diff = float(np.abs(img - ref_img).mean())
        to_compiled = float(np.abs(img - spread["img"]).mean()) if "img" in spread else None
        data["variants"][label] = {"seconds": t, "forward_rel_error": rel, "pixel_diff_to_eager": diff,
                                   "pixel_diff_to_bf16_compiled": to_compiled}
        rows.append([label, t, f"{rel:.2e}", round(diff, 3), "-" if to_compiled is None else round(to_compiled, 3)])
        print("row", rows[-1], flush=True)

    measure("bf16 eager (llm-dit generate)", model, compute_rel=False)
    fp8_ok = cuda and torch.cuda.get_device_capability() >= (8, 9)
    computes = ["fp8_weights", "fp8"] if fp8_ok else ["fp8_weights"]
    for label, pattern in {**GROUPS, "shipped FP8_LAYERS": FP8_LAYERS.pattern}.items():
        undo = swap(pipe.transformer, re.compile(pattern), computes[-1])
        rel = float((forward() - ref_out).norm() / ref_out.norm())
        restore(undo)
        data["layer_study"][label] = {"layers": len(undo), "forward_rel_error": rel, "compute": computes[-1]}
        print("layer study", label, len(undo), f"{rel:.2e}", flush=True)
    for compute in computes:
        undo = swap(pipe.transformer, FP8_LAYERS, compute)
        measure(f"{compute}, eager", model)
        restore(undo)
    profiles, parts = {}, {}
    latents = torch.randn(1, 16, g.height // 8, g.width // 8, device=model.placement.device, dtype=pipe.vae.dtype)
    if cuda and not args.no_compile:
        apply_speed(pipe, cfg.runtime.model_copy(update={"compile": True}))
        measure("bf16 --compile (the bf16 spread)", model)
        spread["img"] = picture(model)
        profiles["bf16 --compile"] = kernel_profile(forward)
        uncompile(pipe)
        model.unload()
        del model, pipe
        gc.collect()
        torch.cuda.empty_cache()
        for compute in computes:
            m = ZImage.load(cfg.replace(**{"runtime.precision": compute, "runtime.compile": True}))
            m.pipe.set_progress_bar_config(disable=True)
            measure(f"**{compute} --compile**", m)
            f = forward_of(m)
            profiles[f"{compute} --compile"] = kernel_profile(f)
            parts[f"{compute} --compile"] = {k: v["median"] for k, v in common.medians(
                {"dit_forward": f, "vae_decode": lambda m=m: m.pipe.vae.decode(latents)}, args).items()}
            print("kernels", compute, json.dumps(profiles[f"{compute} --compile"]), parts[f"{compute} --compile"],
                  flush=True)
            uncompile(m.pipe)
            m.unload()
            torch.cuda.empty_cache()
    rates = {"bf16": common.matmul_rate(), "fp8": fp8_rate() if fp8_ok else None}
    notes = ""
    fast = profiles.get("fp8 --compile")
    if fast and rates["fp8"]:
        k = fast["by_kind_ms"]
        dec = parts["fp8 --compile"]["vae_decode"]
        kernel_sum = g.steps * fast["total_ms"] / 1e3 + dec
        notes = (f"Fast mode: one forward's kernels sum to {fast['total_ms']:.1f} ms ({json.dumps(k)}); "
                 f"{g.steps} forwards + the {dec * 1e3:.0f} ms decode = **{kernel_sum:.3f} s of kernels** with no "
                 f"gap between them. Measured rates: FP8 {rates['fp8'] / 1e12:.0f} TFLOP/s, bf16 "
                 f"{rates['bf16'] / 1e12:.0f} TFLOP/s.")
        data["kernel_sum_seconds"] = kernel_sum
    common.write(args, "fp8", f"Benchmark 6: FP8 precisions, one {g.width}x{g.height} picture, {g.steps} steps",
                 ["path", "seconds (median)", "rel. error of a DiT forward vs bf16 eager",
                  "mean abs pixel diff to bf16 eager", "mean abs pixel diff to bf16 --compile"], rows,
                 {**data, "kernel_profiles": profiles, "parts": parts, "matmul_rates": rates}, notes)


if __name__ == "__main__":
    main()
