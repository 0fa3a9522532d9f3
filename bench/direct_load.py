"""Models read straight onto the GPU (``device_map``) against read into CPU memory, then moved.

    PYTHONPATH=src:bench python bench/direct_load.py [--tiny] [--repeats 2] [--out DIR]

Z-Image (``llm_dit.models.loading.load_z_image_pipeline``, profile ``default``: nothing offloaded)
against stock diffusers' ``ZImagePipeline.from_pretrained(...)`` then ``.to("cuda")``; Qwen3-VL
(``VLEmbeddingExtractor.from_pretrained``) against stock transformers'
``Qwen3VLForConditionalGeneration.from_pretrained(...)`` then ``.to("cuda")``. Every model file is
read once first (the page cache warm, as for the second process of a run); each way is timed in
turns, ``--repeats`` times, the median reported; every tensor of the two loads must be bit-equal.
"""

from __future__ import annotations

import gc
import statistics
import time

import common
import torch


def _timed(load):
    common.sync()
    t0 = time.perf_counter()
    out = load()
    common.sync()
    return out, time.perf_counter() - t0


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _tensors(*modules) -> dict:
    out = {}
    for i, m in enumerate(modules):
        out.update({f"{i}.{k}": v for k, v in m.state_dict().items()})
    return out


def main() -> None:
    from diffusers import ZImagePipeline
    from transformers import Qwen3VLForConditionalGeneration

    from llm_dit.models.loading import load_z_image_pipeline, resolve_placement
    from llm_dit.vl.extract import VLEmbeddingExtractor

    args = common.parser(__doc__).parse_args()
    cfg = common.config(args)
    placement = resolve_placement(cfg.runtime)
    root = common.models(args)
    from multi_gpu import read_once

    read_once(root)

    def ours_z():
        pipe = load_z_image_pipeline(cfg, placement)
        return _tensors(pipe.transformer, pipe.vae, pipe.text_encoder)

    def stock_z():
        pipe = ZImagePipeline.from_pretrained(str(root / "z-image"), dtype=placement.dtype).to(placement.device)
        return _tensors(pipe.transformer, pipe.vae, pipe.text_encoder)

    def ours_vl():
        ex = VLEmbeddingExtractor.from_pretrained(str(root / "qwen3-vl"), device=placement.device,
                                                  dtype=placement.dtype)
        return _tensors(ex.model)

    def stock_vl():
        model = Qwen3VLForConditionalGeneration.from_pretrained(str(root / "qwen3-vl"), dtype=placement.dtype)
        return _tensors(model.to(placement.device))

    times: dict[str, list[float]] = {k: [] for k in ("z_direct", "z_stock", "vl_direct", "vl_stock")}
    same = {"z": True, "vl": True}
    for _ in range(args.repeats):
        for name, (ours, stock) in {"z": (ours_z, stock_z), "vl": (ours_vl, stock_vl)}.items():
            a, t = _timed(ours)
            times[f"{name}_direct"].append(t)
            a = {k: v.cpu() for k, v in a.items()}  # the GPU free for the other load
            _free()
            b, t = _timed(stock)
            times[f"{name}_stock"].append(t)
            same[name] = same[name] and _same(a, b)
            del a, b
            _free()
    med = {k: round(statistics.median(v), 3) for k, v in times.items()}
    rows = [["Z-Image (DiT, VAE, Qwen3-4B)", med["z_stock"], med["z_direct"], same["z"]],
            ["Qwen3-VL", med["vl_stock"], med["vl_direct"], same["vl"]]]
    common.write(args, "direct_load", "Loading straight onto the GPU vs through CPU memory (page cache warm)",
                 ["model", "read to CPU, then .to() (s)", "read onto the GPU (s)", "every tensor bit-equal"], rows,
                 {"times": times, "median": med, "same": same, "placement": placement.to_dict()},
                 "Stock diffusers and transformers load to CPU memory and are moved; llm-dit passes device_map "
                 "when the model stays whole on the GPU.")


if __name__ == "__main__":
    main()
