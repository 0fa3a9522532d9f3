"""``llm-dit generate``, ``models tiny``, ``profiles``, ``config``."""

from __future__ import annotations

import json
import sys
import time

from ..errors import InputError
from .common import config, overrides


def cmd_generate(args) -> int:
    from ..generate import ZImage
    from ..images import check_output_path, load_image, save_png
    from ..provenance import provenance
    from ..text import check_prompt

    # Everything a user can get wrong is checked before any model loads.
    cfg = config(args)
    check_prompt(args.prompt)
    out = check_output_path(args.out)
    init = load_image(args.image, "init image") if args.image else None
    if args.image is None and overrides(args).get("generation.strength") is not None:
        raise InputError("--strength needs --image (img2img)")

    t0 = time.perf_counter()
    model = ZImage.load(cfg)
    text = model.encode(args.prompt)
    if text.truncated:
        print(
            f"note: the prompt has {text.prompt_tokens} tokens with its template; cut to {text.max_length} "
            "(raise --max-length up to 1504, or pick a --long-prompt-mode)",
            file=sys.stderr,
        )
    image = model.generate(text.embeddings, init_image=init)
    elapsed = time.perf_counter() - t0
    record = {
        "mode": "img2img" if init is not None else "txt2img",
        "prompt": args.prompt,
        "init_image": str(args.image) if args.image else None,
        "config": cfg.to_dict(),
        "placement": model.placement.to_dict(),
        "text_encoding": text.summary(),
        "seconds": round(elapsed, 3),
        **provenance(),
    }
    save_png(image, out, record)
    g = cfg.generation
    print(f"wrote {out} ({g.width}x{g.height}, {g.steps} steps, seed {g.seed}, {elapsed:.1f} s)")
    return 0


def cmd_models_tiny(args) -> int:
    from ..models.tiny import build_tiny_models

    out = build_tiny_models(args.out)
    print(f"wrote tiny models to {out}/z-image and {out}/qwen3-vl")
    return 0


def cmd_profiles(args) -> int:
    from ..config import profile_names, resolve_config

    for name in profile_names(args.config):
        c = resolve_config(name, args.config)
        print(
            f"{name:10s} z_image={c.models.z_image} vl={c.models.vl} device={c.runtime.device} "
            f"dtype={c.runtime.dtype} offload={c.runtime.offload}"
        )
    return 0


def cmd_config(args) -> int:
    print(json.dumps(config(args).to_dict(), indent=2))
    return 0
