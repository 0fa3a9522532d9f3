"""``llm-dit stats reference``, ``llm-dit stats compare`` and ``llm-dit stats adapter``."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .common import config


def z_image_identity(models) -> str:
    """Z-Image's source as one string (``single_file.identity``); imported when called, so that
    ``llm-dit --help`` imports no torch (tests/test_cli_startup.py)."""
    from ..models.single_file import identity

    return identity(models)


def _text_encoder(cfg):
    from ..models.loading import resolve_placement
    from ..vl.extract import load_text_encoder

    placement = resolve_placement(cfg.runtime)
    return load_text_encoder(cfg.models, placement.device, placement.dtype)


def cmd_stats_reference(args) -> int:
    from ..images import check_output_path
    from ..provenance import provenance
    from ..vl.reference import compute_reference_stats, read_prompts

    cfg = config(args)
    out = check_output_path(args.out, (".safetensors", ".npz"))  # .npz: the notes' qwen3_4b_stats.npz layout
    prompts = read_prompts(args.prompts)
    encoder, tokenizer = _text_encoder(cfg)
    stats = compute_reference_stats(
        tokenizer, encoder, prompts, [args.layer], model_name=z_image_identity(cfg.models),
        covariance=args.covariance, exclude_massive=args.exclude_massive,
    )[args.layer]
    stats.extra = {"prompts": args.prompts or "shipped corpus", "config": cfg.to_dict(), **provenance()}
    stats.save(out)
    print(
        f"{stats.num_tokens} tokens from {stats.num_prompts} prompts at layer {args.layer} "
        f"(index {stats.layer} of {stats.num_layers}): global std {stats.global_std:.4g}, "
        f"median per-dim std {float(stats.std.median()):.4g}"
        + (f", {stats.excluded_tokens} massive tokens excluded" if args.exclude_massive else "")
    )
    print(f"wrote {out}")
    return 0


def cmd_stats_compare(args) -> int:
    from ..analysis.compare import CompareOptions, compare_embedding_stats, plot_report
    from ..images import load_image
    from ..io import write_json
    from ..provenance import provenance
    from ..text import check_prompt
    from ..vl import VLEmbeddingExtractor
    from ..vl.chat import check_aspect_ratio

    cfg = config(args)
    check_prompt(args.prompt)
    image = load_image(args.image, "image")
    check_aspect_ratio(image, f"image {args.image}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder")
    encoder, tokenizer = _text_encoder(cfg)
    extractor = VLEmbeddingExtractor.from_config(cfg, text_encoder=encoder)
    report = compare_embedding_stats(extractor, tokenizer, encoder, image, args.prompt, CompareOptions(
        list(cfg.vl.layers), model_name=z_image_identity(cfg.models), threshold=args.threshold or 10.0,
        prompts_file=args.prompts, max_pixels=cfg.vl.max_pixels, pool=cfg.vl.pool,
        system_prompt=cfg.vl.system_prompt or None))
    report.update(image=str(args.image), config=cfg.to_dict(), **provenance())
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "stats.json", report)
    plots = plot_report(report, out)
    for k, entry in report["layers"].items():
        c = entry.get("correlation_vl_image") or entry["correlation_vl_text"]
        leak = entry["leak"]["user_text_relative_change"]
        print(
            f"layer {k}: {len(entry.get('outliers_vl_image', []))} image-token outlier dims, "
            f"spearman {c['spearman_std']:.3f} ({c['spearman_std_without_massive']:.3f} without massive dims), "
            f"text change when the image changes {leak if leak is None else f'{leak:.3g}'}"
        )
    print(f"wrote {out / 'stats.json'} and {len(plots)} plots to {out}")
    return 0


def cmd_stats_adapter(args) -> int:
    from ..images import check_output_path
    from ..provenance import provenance
    from ..vl import VLEmbeddingExtractor
    from ..vl.adapter import fit_adapter
    from ..vl.reference import read_prompts

    cfg = config(args)
    out = check_output_path(args.out, (".safetensors", ".npz"))  # .npz: the notes' qwen3_4b_stats.npz layout
    prompts = read_prompts(args.prompts)
    text_layer = cfg.encoder.hidden_layer if args.text_layer is None else args.text_layer
    encoder, tokenizer = _text_encoder(cfg)
    extractor = VLEmbeddingExtractor.from_config(cfg, backend="vl")
    adapter = fit_adapter(extractor, tokenizer, encoder, prompts, args.vl_layer, text_layer, args.ridge)
    adapter.info.update(model_z_image=z_image_identity(cfg.models), **provenance())
    adapter.save(out)
    i = adapter.info
    held = (f"; held-out residual {i['heldout_residual']:.3g} (scaled identity: "
            f"{i['heldout_residual_scaled_identity']:.3g})") if "heldout_residual" in i else ""
    print(f"{i['tokens']} tokens of {i['prompts']} prompts: VL layer {args.vl_layer} -> text layer {text_layer}, "
          f"train residual {i['train_residual']:.3g}{held}")
    print(f"wrote {out}")
    return 0
