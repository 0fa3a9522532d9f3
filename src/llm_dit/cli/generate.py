"""``llm-dit generate``, ``models tiny``, ``profiles``, ``config``."""

from __future__ import annotations

import json
import logging

from ..errors import InputError
from .common import config, overrides

log = logging.getLogger(__name__)


def cmd_generate(args) -> int:
    from ..conditioning.recipe import read_recipe_file
    from ..conditioning.run import generate, prepare, write_generated
    from ..images import check_output_path, load_image
    from ..io import write_failure
    from .conditioning import recipe_from_args

    # Everything a user can get wrong is checked before any model loads: the prompt, the recipe, its
    # references and files (prepare, whose result generate uses as is), the output paths.
    # a shipped recipe's suggestions (steps, the caption method) apply where no flag says otherwise
    shipped = read_recipe_file(args.recipe) if args.recipe else None
    cfg = config(args, shipped.config_overrides() if shipped else None)
    caption_tokens = args.caption_tokens
    if caption_tokens is None and args.prompt is None and shipped is not None:
        caption_tokens = shipped.caption_tokens
    prepared = prepare(cfg, recipe_from_args(args, cfg), args.prompt, caption_tokens)
    resolved, cfg = prepared.recipe, prepared.config
    out = check_output_path(args.out)
    sidecar = check_output_path(out.with_suffix(".json"), ".json", "sidecar")
    init = load_image(args.init_image, "init image") if args.init_image else None
    if args.init_image is None and overrides(args).get("generation.strength") is not None:
        raise InputError("--strength needs --init-image (img2img)")
    save_recipe = check_output_path(args.save_recipe, ".toml", "--save-recipe") if args.save_recipe else None

    progress = log.info if resolved.uses_vl else None  # stderr, hidden by -q (cli/logs.py)
    result = generate(prepared, init_image=init, log=progress)
    rec = result.record
    text = rec["text_encoding"]
    if text["truncated"]:
        log.warning(f"the prompt has {text['prompt_tokens']} tokens with its template; cut to {text['max_length']} "
                    "(raise --max-length up to 1504, or pick a --long-prompt-mode)")
    write_generated(out, result, str(args.init_image) if args.init_image else None)
    if save_recipe:
        try:
            resolved.save(save_recipe)
        except OSError as e:  # a full disk after the picture: the picture stays, the one line says what is missing
            raise write_failure(e, save_recipe) from None
    g = cfg.generation
    alpha = resolved.schedule.spec() if isinstance(rec["alpha"], list) and resolved.schedule else rec["alpha"]
    how = "text only" if not resolved.uses_vl else (
        f"{resolved.backend}, {resolved.blend} alpha {alpha}, "
        f"{len(resolved.references)} reference(s), vl_std {rec['vl_std']:.4g}, blended_std {rec['blended_std']:.4g}")
    print(f"wrote {out} and {sidecar.name} ({g.width}x{g.height}, {g.steps} steps, seed {g.seed}, {how}, "
          f"{rec['seconds']:.1f} s)")
    return 0


def cmd_models_tiny(args) -> int:
    from ..models.tiny import build_tiny_models

    out = build_tiny_models(args.out)
    print(f"wrote tiny models to {out}/z-image and {out}/qwen3-vl")
    return 0


def cmd_profiles(args) -> int:
    from ..config import profile_names, resolve_config
    from ..models.classes import CLASSES, MEASURED_ON

    for name in profile_names(args.config):
        c = resolve_config(name, args.config)
        print(
            f"{name:10s} z_image={c.models.z_image} vl={c.models.vl} device={c.runtime.device} "
            f"dtype={c.runtime.dtype} offload={c.runtime.offload} precision={c.runtime.precision}"
        )
    print(f"\nmemory classes: the profile for each card ({MEASURED_ON}):")
    for cls in CLASSES:
        print(cls.line())
    return 0


def cmd_config(args) -> int:
    print(json.dumps(config(args).to_dict(), indent=2))
    return 0
