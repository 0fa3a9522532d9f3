"""``llm-dit``: a thin command line over the library. Parse, build the Config, call, print.

Every failure a user can cause ends as one line on stderr and a non-zero exit code; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .errors import InputError, LlmDitError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        raise InputError(f"{self.prog}: {message}")


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration")
    g.add_argument("--profile", default="default", help="profile name (default: default)")
    g.add_argument("--config", metavar="FILE", help="a TOML file that defines or extends profiles")
    g.add_argument("--device", dest="runtime.device", help="auto | cpu | cuda | cuda:N | mps")
    g.add_argument("--dtype", dest="runtime.dtype", help="auto | float32 | bfloat16 | float16")
    g.add_argument("--debug", action="store_true", help="show tracebacks")


def _add_generation_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--z-image", dest="models.z_image", metavar="ID_OR_PATH", help="Z-Image hub id or local folder")
    g.add_argument("--seed", dest="generation.seed", type=int)
    g.add_argument("--steps", dest="generation.steps", type=int)
    g.add_argument("--width", dest="generation.width", type=int)
    g.add_argument("--height", dest="generation.height", type=int)
    g.add_argument("--shift", dest="generation.shift", type=float)
    g.add_argument("--guidance-scale", dest="generation.guidance_scale", type=float)
    g.add_argument("--strength", dest="generation.strength", type=float, help="img2img strength (0, 1]")
    e = p.add_argument_group("text encoder")
    e.add_argument("--hidden-layer", dest="encoder.hidden_layer", type=int, help="hidden_states index (default -2)")
    e.add_argument("--max-length", dest="encoder.max_length", type=int, help="caption tokens, at most 1504")
    e.add_argument(
        "--long-prompt-mode",
        dest="encoder.long_prompt_mode",
        help="truncate | interpolate | pool | attention_pool",
    )


def _overrides(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if "." in k and v is not None}


def _config(args: argparse.Namespace):
    from .config import resolve_config

    return resolve_config(args.profile, args.config, _overrides(args))


# --------------------------------------------------------------------------------------------
# Commands


def cmd_generate(args: argparse.Namespace) -> int:
    from .generate import ZImage
    from .images import check_output_path, load_image, save_png
    from .provenance import provenance
    from .text import check_prompt

    # Everything a user can get wrong is checked before any model loads.
    cfg = _config(args)
    check_prompt(args.prompt)
    out = check_output_path(args.out)
    init = load_image(args.image, "init image") if args.image else None
    if args.image is None and _overrides(args).get("generation.strength") is not None:
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


def cmd_models_tiny(args: argparse.Namespace) -> int:
    from .models.tiny import build_tiny_models

    out = build_tiny_models(args.out)
    print(f"wrote tiny models to {out}/z-image and {out}/qwen3-vl")
    return 0


def cmd_profiles(args: argparse.Namespace) -> int:
    from .config import profile_names, resolve_config

    for name in profile_names(args.config):
        c = resolve_config(name, args.config)
        print(
            f"{name:10s} z_image={c.models.z_image} vl={c.models.vl} device={c.runtime.device} "
            f"dtype={c.runtime.dtype} offload={c.runtime.offload}"
        )
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    print(json.dumps(_config(args).to_dict(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="llm-dit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("generate", help="text-to-image (or img2img with --image) with Z-Image")
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", required=True, metavar="FILE.png")
    p.add_argument("--image", metavar="INIT", help="init image for img2img")
    _add_generation_flags(p)
    _add_config_flags(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("models", help="model utilities")
    msub = p.add_subparsers(dest="models_command", required=True, parser_class=_Parser)
    t = msub.add_parser("tiny", help="write the tiny random-weight models in the real layouts")
    t.add_argument("--out", required=True, metavar="DIR")
    t.add_argument("--debug", action="store_true")
    t.set_defaults(func=cmd_models_tiny)

    p = sub.add_parser("profiles", help="list the profiles (shipped and from --config)")
    p.add_argument("--config", metavar="FILE")
    p.add_argument("--debug", action="store_true")
    p.set_defaults(func=cmd_profiles)

    p = sub.add_parser("config", help="print the resolved configuration as JSON")
    _add_generation_flags(p)
    _add_config_flags(p)
    p.set_defaults(func=cmd_config)
    return parser


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    try:
        import diffusers
        import transformers

        transformers.logging.set_verbosity_error()
        diffusers.logging.set_verbosity_error()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        _quiet_libraries()
        return args.func(args)
    except LlmDitError as e:
        if debug:
            raise
        print(f"llm-dit: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("llm-dit: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except Exception as e:  # a bug: still one line, with the way to see more
        if debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"llm-dit: internal error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
