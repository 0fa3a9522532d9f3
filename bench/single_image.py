"""Benchmark 1: one 1024 x 1024 picture, 9 steps, guidance 0 - stock diffusers against llm-dit.

* **stock**: diffusers' ``ZImagePipeline`` called with ``prompt_embeds`` (what a user of diffusers
  writes), SDPA attention, eager;
* **ours**: ``ZImage.generate`` (what ``llm-dit generate`` runs once the embeddings exist), the same
  pipeline object, the same seed: same pixels expected, ratio to stock <= 1.02 targeted;
* **fast modes** (opt-in): attention backends (``runtime.attention``), ``torch.compile`` of the DiT
  (the whole transformer, or its repeated blocks as ``runtime.compile`` does) and the VAE decoder.
  Each is checked against the eager result: the relative error of one DiT forward on the same
  inputs (bf16 arithmetic: 1e-3 .. 1e-2 expected) and the mean absolute pixel difference.

The FLOP floor: DiT FLOPs of one forward (PyTorch's FlopCounterMode) x 9 + the VAE decode, over the
measured bf16 matrix-product rate of the same GPU.
"""

from __future__ import annotations

import numpy as np
import torch

import common


def dit_inputs(model, emb, g):
    """One DiT forward's inputs at the picture's size: a latent, t = 0.5, the caption."""
    gen = torch.Generator("cpu").manual_seed(0)
    h, w = g.height // 8, g.width // 8
    x = torch.randn(16, 1, h, w, generator=gen).to(model.placement.device, model.pipe.transformer.dtype)
    t = torch.tensor([0.5], device=model.placement.device)
    return [x], t, [emb.to(model.placement.device, model.pipe.transformer.dtype)]


def main() -> None:
    args = common.parser(__doc__).parse_args()
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
        variants[name] = {"seconds": t, "pixel_diff": diff, "forward_rel_error": rel}
        return t

    if torch.cuda.is_available():
        backends = {}
        for backend in ("_native_cudnn", "_native_flash"):
            backends[backend] = variant(f"attention {backend}, eager",
                                        lambda b=backend: pipe.transformer.set_attention_backend(b))
        best = min((b for b in backends if backends[b]), key=lambda b: backends[b], default="native")
        pipe.transformer.set_attention_backend(best)
        # the whole transformer compiled (then undone), against its repeated blocks (runtime.compile)
        variant(f"torch.compile whole DiT + VAE decoder, attention {best}",
                lambda: (pipe.transformer.compile(), pipe.vae.decoder.compile()))
        pipe.transformer._compiled_call_impl = None  # back to eager for the next variant
        variant(f"llm-dit --compile --attention {best} (regional: DiT blocks + VAE decoder)",
                lambda: apply_speed(pipe, cfg.runtime.model_copy(update={"compile": True, "attention": best})))
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
                  "dit_forward_flops": dit_flops, "vae_decode_flops": vae_flops, "matmul_flops_per_s": rate,
                  "floor_seconds": floor, "caption_tokens": emb.shape[0]}, notes)


if __name__ == "__main__":
    main()
