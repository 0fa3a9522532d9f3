"""Benchmark 5: pictures per second when cells that share a resolution are generated as a batch.

``ZImage.generate_batch`` with B = 1, 2, 4 conditionings of one length (four prompts' encodings cut
to a common length), 9 steps, at 1024 x 1024 and 512 x 512: the median time of one call, pictures
per second, and the peak GPU memory. Then the runner itself: the 12-cell sweep of benchmark 3
(plus its baseline) with ``runtime.batch_size`` 1 and 4.
"""

from __future__ import annotations

import shutil
import tempfile

import common
import torch

PROMPTS = [common.PROMPT, "A red vintage car parked in front of a bakery, morning light, film photo",
           "An astronaut reading a newspaper on a park bench, oil painting",
           "A bowl of ramen with a soft egg and scallions, overhead shot, studio light"]


def main() -> None:
    args = common.parser(__doc__).parse_args()
    from llm_dit.experiments.runner import run
    from llm_dit.experiments.specs import sweep_spec
    from llm_dit.pool import ModelPool

    cfg = common.config(args, **{"metrics.vqa": "off"})
    pool = ModelPool(keep="all")
    model = pool.z_image(cfg)
    model.pipe.set_progress_bar_config(disable=True)
    encoded = [model.encode(p).embeddings for p in PROMPTS]
    n = min(e.shape[0] for e in encoded)
    embs = [e[:n] for e in encoded]
    sizes = [128] if args.tiny else [1024, 512]
    rows, data = [], {}
    for side in sizes:
        g = cfg.generation.model_copy(update={"width": side, "height": side})
        single = None
        for b in (1, 2, 4):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            call = {"b": lambda b=b, g=g: model.generate_batch(embs[:b], generation=g)}
            t = common.medians(call, args)["b"]["median"]
            peak = common.gib(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else 0.0
            single = single or t
            rows.append([f"{side}x{side}", b, t, b / t, (b / t) / (1 / single), peak])
            data[f"{side}_{b}"] = {"seconds": t, "pictures_per_second": b / t, "peak_gib": peak}

    spec, scfg = sweep_spec([{"image": str(common.EXAMPLE)}], common.PROMPT, {},
                            {"alpha": [0.1, 0.25, 0.4, 0.55, 0.7, 0.85], "hidden_layer": [-2, -6]}, cfg)
    scratch = tempfile.mkdtemp(prefix="bench-batch-")
    sweep_rows = {}
    for b in (1, 4):
        c = scfg.replace(**{"runtime.batch_size": b})
        pool.vl(c)
        t = common.medians({"s": lambda c=c, b=b: shutil.rmtree(run(
            spec, c, f"{scratch}/b{b}", echo=lambda m: None, progress=False, models=pool).out)},
            argparse_once(args))["s"]["median"]
        sweep_rows[b] = t
        rows.append([f"sweep of {len(spec.cells)} cells, runtime.batch_size {b}", b, t, len(spec.cells) / t,
                     sweep_rows[1] / t, "-"])
    shutil.rmtree(scratch, ignore_errors=True)
    common.write(args, "batch_throughput", "Benchmark 5: batch throughput",
                 ["size / run", "batch", "seconds per call (median)", "pictures / s", "speed-up over batch 1",
                  "peak GiB"], rows, {"generate_batch": data, "sweep": sweep_rows, "caption_tokens": n})


def argparse_once(args):
    """The sweep rows: one warm-up, then ``--repeats`` capped at 2 (each call is 13 pictures)."""
    import argparse

    return argparse.Namespace(**{**vars(args), "warmup": 1, "repeats": min(args.repeats, 2)})


if __name__ == "__main__":
    main()
