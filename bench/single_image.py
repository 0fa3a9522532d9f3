"""Benchmark 1: one 1024 x 1024 picture, 9 steps, guidance 0 - stock diffusers against llm-dit.

* **stock**: diffusers' ``ZImagePipeline`` called with ``prompt_embeds`` (what a user of diffusers
  writes), SDPA attention, eager;
* **ours**: ``ZImage.generate`` (what ``llm-dit generate`` runs once the embeddings exist), the same
  pipeline object, the same seed: same pixels expected, ratio to stock <= 1.02 targeted;
* **fast modes** (opt-in): attention backends (``runtime.attention``), ``torch.compile`` of the DiT
  (its repeated blocks, as ``runtime.compile`` does, in torch.compile modes) and the VAE decoder.
  Each is checked against the eager result: the relative error of one DiT forward on the same
  inputs (bf16 arithmetic: 1e-3 .. 1e-2 expected) and the mean absolute pixel difference.

The FLOP floor: DiT FLOPs of one forward (PyTorch's FlopCounterMode) x 9 + the VAE decode, over the
measured bf16 matrix-product rate of the same GPU.
"""

from __future__ import annotations

import json

import common
import numpy as np
import torch


def dit_inputs(model, emb, g):
    """One DiT forward's inputs at the picture's size: a latent, t = 0.5, the caption."""
    gen = torch.Generator("cpu").manual_seed(0)
    h, w = g.height // 8, g.width // 8
    x = torch.randn(16, 1, h, w, generator=gen).to(model.placement.device, model.pipe.transformer.dtype)
    t = torch.tensor([0.5], device=model.placement.device)
    return [x], t, [emb.to(model.placement.device, model.pipe.transformer.dtype)]


def uncompile(pipe) -> None:
    """Undo earlier compilation of the DiT and the VAE decoder (the processors stay as they are)."""
    import torch._dynamo

    torch._dynamo.reset()
    for m in [*pipe.transformer.modules(), *pipe.vae.decoder.modules()]:
        m._compiled_call_impl = None


def compiled(pipe, mode: str | None = None, **inductor) -> None:
    """Compile the DiT's repeated blocks and the VAE decoder afresh, with torch.compile ``mode`` and
    TorchInductor settings ``inductor`` (e.g. ``coordinate_descent_tuning=True``)."""
    import torch._inductor.config as ic

    uncompile(pipe)
    for k, v in inductor.items():
        setattr(ic, k, v)
    pipe.transformer.compile_repeated_blocks(fullgraph=True, mode=mode)
    pipe.vae.decoder.compile(mode=mode)


def host_seconds(fn, repeats: int = 5) -> float:
    """Median host seconds for ``fn`` to return, with the GPU idle at the start: how long the CPU
    takes to queue the work. Near the GPU time, the GPU waits for the CPU (launch-bound)."""
    import statistics
    import time

    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        with torch.no_grad():
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def kernel_profile(fn, top: int = 12) -> dict:
    """GPU time of one call of ``fn`` by kind of kernel (matrix products, attention, fused Triton code,
    other) and the ``top`` kernels, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = [(e.key, e.self_device_time_total / 1e3, e.count) for e in prof.key_averages()
               if e.self_device_time_total > 0]
    kernels.sort(key=lambda k: -k[1])

    def kind(name: str) -> str:
        n = name.lower()
        if any(w in n for w in ("flash", "fmha", "attention", "cudnn", "sdpa")):
            return "attention"
        if any(w in n for w in ("gemm", "cutlass", "nvjet", "sm90_xmma", "matmul", "cublas")):
            return "matrix products"
        if n.startswith("triton"):
            return "fused (Triton)"
        return "other"

    kinds: dict[str, float] = {}
    for name, ms, _ in kernels:
        kinds[kind(name)] = round(kinds.get(kind(name), 0.0) + ms, 2)
    return {"total_ms": round(sum(k[1] for k in kernels), 2), "by_kind_ms": kinds,
            "top": [{"kernel": n[:120], "ms": round(ms, 3), "calls": c} for n, ms, c in kernels[:top]]}


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--modes", nargs="*", default=[], metavar="MODE",
                   help="also try --compile with these torch.compile modes (e.g. reduce-overhead: CUDA graphs)")
    p.add_argument("--no-steps", action="store_true",
                   help="skip the variants that build --compile up one step at a time")
    p.add_argument("--attention", nargs="*", default=[], metavar="BACKEND",
                   help="attention backends to try, eager (e.g. _native_cudnn _native_flash)")
    p.add_argument("--tuning", action="store_true",
                   help="also try TorchInductor's coordinate-descent tuning of the fused kernels")
    args = p.parse_args()
    from llm_dit.generate import ZImage
    from llm_dit.models.loading import apply_speed

    cfg = common.config(args)
    model = ZImage.load(cfg)
    pipe, g = model.pipe, cfg.generation
    pipe.set_progress_bar_config(disable=True)
    emb = model.encode(common.PROMPT).embeddings
    dev_emb = emb.to(model.placement.device, pipe.transformer.dtype)

    def stock():
        return pipe(prompt_embeds=[dev_emb], height=g.height, width=g.width, num_inference_steps=g.steps,
                    guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(g.seed)).images[0]

    def ours():
        return model.generate(emb)

    @torch.no_grad()
    def forward():
        return pipe.transformer(*dit_inputs(model, emb, g), return_dict=False)[0][0].float()

    same = np.array_equal(np.asarray(stock()), np.asarray(ours()))
    eager_image = np.asarray(ours(), dtype=np.float32)
    eager_out = forward()
    base = common.medians({"stock": stock, "ours": ours}, args)
    dit_flops = common.count_flops(forward)
    latents = torch.randn(1, 16, g.height // 8, g.width // 8, device=model.placement.device, dtype=pipe.vae.dtype)
    vae_flops = common.count_flops(lambda: pipe.vae.decode(latents))
    rate = common.matmul_rate()
    floor = (g.steps * dit_flops + vae_flops) / rate if rate else None

    rows = [["stock diffusers ZImagePipeline(prompt_embeds=...), SDPA, eager", base["stock"]["median"], 1.0,
             "-", "-"],
            ["llm-dit ZImage.generate (llm-dit generate's path)", base["ours"]["median"],
             base["ours"]["median"] / base["stock"]["median"], "0 (same pixels)" if same else "DIFFERENT", "-"]]
    variants = {}

    def variant(name, setup):
        try:
            setup()
            t = common.medians({name: ours}, args)[name]["median"]
        except Exception as e:  # a backend this machine lacks: reported, not fatal
            rows.append([name, "failed: " + str(e).splitlines()[0][:80], "-", "-", "-"])
            return None
        out = forward()
        rel = float((out - eager_out).norm() / eager_out.norm())
        diff = float(np.abs(np.asarray(ours(), dtype=np.float32) - eager_image).mean())
        rows.append([name, t, t / base["stock"]["median"], round(diff, 3), f"{rel:.2e}"])
        print("variant", rows[-1], flush=True)  # kept in the log even if a later variant runs out of time
        variants[name] = {"seconds": t, "pixel_diff": diff, "forward_rel_error": rel}
        return t

    components: dict[str, dict] = {}

    def parts(label):
        """Median seconds of one DiT forward and one VAE decode in the pipeline's present state."""
        t = common.medians({"dit_forward": forward, "vae_decode": lambda: pipe.vae.decode(latents)}, args)
        components[label] = {k: v["median"] for k, v in t.items()}
        components[label]["dit_forward_host"] = host_seconds(lambda: pipe.transformer(*dit_inputs(model, emb, g),
                                                                                       return_dict=False))
        print(f"parts {label}: {components[label]}", flush=True)

    profiles: dict[str, dict] = {}

    def kernels(label):
        profiles[label] = kernel_profile(forward)
        print(f"kernels {label}: {json.dumps(profiles[label])}", flush=True)

    if torch.cuda.is_available():
        from llm_dit.models.rope import use_real_rope

        parts("eager")
        kernels("eager")
        for backend in args.attention:
            variant(f"attention {backend}, eager", lambda b=backend: pipe.transformer.set_attention_backend(b))
        pipe.transformer.set_attention_backend("native")  # PyTorch's SDPA picks cuDNN's kernel on Hopper
        # the shipped --compile, built up one step at a time
        if not args.no_steps:
            variant("regional compile (DiT blocks + VAE decoder), stock attention processor", lambda: compiled(pipe))
            parts("regional compile, stock processor")
            kernels("regional compile, stock processor")
            variant("+ RoPE in real arithmetic (rope.py)", lambda: (use_real_rope(pipe.transformer), compiled(pipe)))
            parts("+ real RoPE")
        variant("**llm-dit --compile** (+ q, k, v in one matrix product)",
                lambda: (uncompile(pipe), apply_speed(pipe, cfg.runtime.model_copy(update={"compile": True}))))
        parts("--compile")
        kernels("--compile")
        for mode in args.modes:
            variant(f"--compile, torch.compile mode {mode}", lambda m=mode: compiled(pipe, m))
            parts(f"--compile, mode {mode}")
            kernels(f"--compile, mode {mode}")
        if args.tuning:
            variant("--compile + coordinate-descent tuning", lambda: compiled(pipe, coordinate_descent_tuning=True))
            parts("--compile + coordinate-descent tuning")
    else:  # --tiny on the CPU: the variant code runs (compiling would take minutes here)
        variant("attention _native_math, eager", lambda: pipe.transformer.set_attention_backend("_native_math"))

    notes = (f"One DiT forward at {g.width}x{g.height} with a {emb.shape[0]}-token caption: "
             f"{dit_flops / 1e12:.1f} TFLOP; VAE decode {vae_flops / 1e12:.2f} TFLOP.")
    if floor:
        notes += (f" Measured bf16 matmul rate {rate / 1e12:.0f} TFLOP/s, so the floor for {g.steps} forwards + "
                  f"decode is **{floor:.2f} s**.")
    common.write(args, "single_image", f"Benchmark 1: one {g.width}x{g.height} picture, {g.steps} steps",
                 ["path", "seconds (median)", "ratio to stock", "mean abs pixel diff to eager", "rel. error of a "
                  "DiT forward"], rows,
                 {"stock": base["stock"], "ours": base["ours"], "same_pixels": same, "variants": variants,
                  "components": components, "kernel_profiles": profiles,
                  "dit_forward_flops": dit_flops, "vae_decode_flops": vae_flops, "matmul_flops_per_s": rate,
                  "floor_seconds": floor, "caption_tokens": emb.shape[0]}, notes)


if __name__ == "__main__":
    main()
