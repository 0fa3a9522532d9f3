"""``llm-dit extract`` and ``llm-dit caption``."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .common import config


def cmd_extract(args) -> int:
    from ..images import check_output_path, load_image
    from ..provenance import provenance
    from ..vl import VLEmbeddingExtractor
    from ..vl.chat import check_aspect_ratio
    from ..vl.tokens import check_selection_possible

    cfg = config(args)
    out = check_output_path(args.out, ".safetensors")
    images = [load_image(p, "image") for p in args.image or []]
    if args.no_text and args.text is not None:
        raise InputError("--text and --no-text exclude each other")
    text = None if args.no_text else args.text
    if not images and not (text and text.strip()):
        raise InputError("nothing to extract: give --image and/or --text")
    system = args.system_prompt if args.system_prompt is not None else (cfg.vl.system_prompt or None)
    for im, path in zip(images, args.image or [], strict=True):
        check_aspect_ratio(im, f"image {path}")
    check_selection_possible(cfg.vl.token_selection, len(images), bool(text and text.strip()))

    layers, max_pixels = cfg.vl.layers, cfg.vl.max_pixels
    if cfg.vl.backend == "dopsd":  # D-OPSD's layer and pixel budget unless the flags name others
        from ..config import DOPSD_DEFAULTS

        layers = layers if getattr(args, "vl.layers", None) is not None else [DOPSD_DEFAULTS["layer"]]
        max_pixels = max_pixels if getattr(args, "vl.max_pixels", None) is not None else DOPSD_DEFAULTS["max_pixels"]
    extractor = VLEmbeddingExtractor.from_config(cfg)
    result = extractor.extract(
        images, text, hidden_layer=layers, system_prompt=system, token_selection=cfg.vl.token_selection,
        max_pixels=max_pixels, pool=cfg.vl.pool,
    )
    result.record = {"images": [str(p) for p in args.image or []], "config": cfg.to_dict(), **provenance()}
    result.save(out)
    print(result.summary())
    print(f"wrote {out}")
    return 0


def cmd_caption(args) -> int:
    from ..images import check_output_path, load_image
    from ..io import write_json, write_text
    from ..provenance import provenance
    from ..vl import VLEmbeddingExtractor
    from ..vl.caption import CaptionRequest, caption_image
    from ..vl.chat import check_aspect_ratio

    cfg = config(args)
    out = check_output_path(args.out, ".txt")
    image = load_image(args.image, "image")
    check_aspect_ratio(image, f"image {args.image}")
    given = {k: getattr(args, k) for k in ("min_tokens", "max_new_tokens", "prompt", "temperature", "attempts")}
    if args.system_prompt is not None:
        given["system_prompt"] = args.system_prompt or None  # '' means no system turn
    request = CaptionRequest(  # flags not given keep the request's defaults; checked before the model loads
        seed=cfg.generation.seed, max_pixels=cfg.vl.max_pixels,
        **{k: v for k, v in given.items() if v is not None or k == "system_prompt"},
    )
    extractor = VLEmbeddingExtractor.from_config(cfg, backend="vl")
    cap = caption_image(extractor, image, request)
    stem = out.with_suffix("")
    write_text(Path(f"{stem}.raw.txt"), cap.raw)
    if cap.thinking is not None:
        write_text(Path(f"{stem}.thinking.txt"), cap.thinking)
    write_json(Path(f"{stem}.json"), {
        "image": str(args.image), "tokens": cap.tokens, "attempts": cap.attempts, "model_variant": extractor.variant,
        "has_thinking": cap.thinking is not None, "max_new_tokens": cap.max_new_tokens,
        "chat_template": extractor.chat_template.to_dict(), "config": cfg.to_dict(), **provenance(),
    })
    write_text(out, cap.caption + "\n")
    print(f"caption: {cap.tokens} tokens after {cap.attempts} attempt(s), model variant {extractor.variant}")
    print(f"wrote {out}")
    return 0
