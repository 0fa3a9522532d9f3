"""``llm-dit``: a thin command line over the library. Parse, build the Config, call, print.

Every failure a user can cause ends as one line on stderr and a non-zero exit code; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import interrupt
from ..errors import LlmDitError
from ..limits import MAX_CAPTION_ATTEMPTS, MAX_NEW_TOKENS, MAX_RIDGE, MAX_TEMPERATURE
from ..models.classes import out_of_memory_message
from . import doctor, experiments, generate, logs, serve, stats, vl
from .common import (
    Parser,
    add_config_flags,
    add_generation_flags,
    add_vl_flags,
    add_z_image_flags,
    count,
    layer_index,
    number,
)
from .conditioning import add_recipe_flags


def build_parser() -> Parser:
    parser = Parser(prog="llm-dit", description="Zero-shot vision conditioning of Z-Image with Qwen3-VL.")
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    # taken from anywhere on the line by logs.split_verbosity before argparse reads it; listed here for --help
    parser.add_argument("-v", "--verbose", action="count", help="more messages (debug); anywhere on the line")
    parser.add_argument("-q", "--quiet", action="count",
                        help="fewer messages: warnings and errors only (-qq: errors only); anywhere on the line")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("generate", help="an image from a prompt, optionally conditioned on reference images")
    p.add_argument("--prompt", help="the prompt (or --caption-tokens)")
    p.add_argument("--caption-tokens", type=int, metavar="N",
                   help="the prompt is Qwen3-VL's caption of the first --image, about N tokens (seed 004)")
    p.add_argument("--out", required=True, metavar="FILE.png", help="the image; its metadata goes to FILE.json")
    p.add_argument("--init-image", metavar="INIT", help="init image for img2img (with --strength)")
    add_recipe_flags(p)
    add_generation_flags(p)
    add_config_flags(p)
    p.set_defaults(func=generate.cmd_generate)

    experiments.add_parsers(sub)
    serve.add_parser(sub)

    p = sub.add_parser("extract", help="Qwen3-VL hidden states of images + text, saved as safetensors")
    p.add_argument("--image", action="append", metavar="IMG", help="a reference image (repeat for several)")
    p.add_argument("--text", help="the VL text: the prompt, or any other text")
    p.add_argument("--no-text", action="store_true", help="images only, no text in the chat")
    p.add_argument("--system-prompt", help="an optional system turn")
    p.add_argument("--out", required=True, metavar="FILE.safetensors")
    add_vl_flags(p)
    add_config_flags(p)
    p.set_defaults(func=vl.cmd_extract)

    p = sub.add_parser("caption", help="caption an image with Qwen3-VL (Instruct or Thinking)")
    p.add_argument("--image", required=True, metavar="IMG")
    p.add_argument("--out", required=True, metavar="caption.txt")
    p.add_argument("--min-tokens", type=count(0, MAX_NEW_TOKENS), metavar="N",
                   help="retry until the caption has this many tokens (default 0)")
    p.add_argument("--max-new-tokens", type=count(1, MAX_NEW_TOKENS), metavar="N",
                   help="generation budget, thinking included (default 1024; 2560 for a Thinking model)")
    p.add_argument("--temperature", type=number(ge=0, le=MAX_TEMPERATURE), metavar="T",
                   help="0 = greedy (default 0.6)")
    p.add_argument("--attempts", type=count(1, MAX_CAPTION_ATTEMPTS), metavar="N",
                   help="tries to reach --min-tokens (default 3)")
    p.add_argument("--prompt", help="the request (default: 'Describe this image in detail.')")
    p.add_argument("--system-prompt", help="replace the captioning system prompt ('' for none)")
    p.add_argument("--seed", dest="generation.seed", type=int)
    add_vl_flags(p, extraction=False)
    add_config_flags(p)
    p.set_defaults(func=vl.cmd_caption)

    p = sub.add_parser("stats", help="reference statistics and VL-vs-text comparisons")
    ssub = p.add_subparsers(dest="stats_command", required=True, parser_class=Parser)
    s = ssub.add_parser("reference", help="per-dimension statistics of Z-Image's text encoder at one layer")
    s.add_argument("--prompts", metavar="FILE", help="one prompt per line (default: the shipped corpus)")
    s.add_argument("--layer", type=layer_index, default=-2, metavar="L", help="hidden_states index (default -2)")
    s.add_argument("--covariance", action="store_true", help="also store the [D, D] covariance (for whiten)")
    s.add_argument("--exclude-massive", action="store_true", help="leave out massive-activation tokens")
    s.add_argument("--out", required=True, metavar="ref.safetensors")
    add_z_image_flags(s)
    add_config_flags(s)
    s.set_defaults(func=stats.cmd_stats_reference)
    s = ssub.add_parser("compare", help="per-dimension statistics: text encoder vs VL image and text tokens")
    s.add_argument("--image", required=True, metavar="IMG")
    s.add_argument("--prompt", required=True)
    s.add_argument("--threshold", type=number(gt=1), metavar="R", help="outlier std ratio (default 10)")
    s.add_argument("--prompts", metavar="FILE", help="reference corpus (default: the shipped one)")
    s.add_argument("--out", required=True, metavar="DIR")
    add_vl_flags(s, tokens=False)
    add_config_flags(s)
    s.set_defaults(func=stats.cmd_stats_compare)

    s = ssub.add_parser("adapter", help="fit a linear map from Qwen3-VL states to the text encoder's (on text alone)")
    s.add_argument("--vl-layer", type=layer_index, default=-6, metavar="K",
                   help="the VL layer it maps (default -6)")
    s.add_argument("--text-layer", type=layer_index, metavar="K",
                   help="the text-encoder layer it maps to (default: encoder.hidden_layer)")
    s.add_argument("--prompts", metavar="FILE", help="one prompt per line (default: the shipped corpus)")
    s.add_argument("--ridge", type=number(gt=0, le=MAX_RIDGE), default=0.01, metavar="R",
                   help="ridge strength, relative to the mean variance")
    s.add_argument("--out", required=True, metavar="adapter.safetensors")
    add_vl_flags(s, extraction=False)
    add_config_flags(s)
    s.set_defaults(func=stats.cmd_stats_adapter)

    p = sub.add_parser("doctor", help="check the model folders, the profile's GPU memory and the library versions "
                       "(loads no weights); exit 1 when a check fails")
    add_z_image_flags(p)
    p.add_argument("--vl-model", dest="models.vl", metavar="ID_OR_PATH", help="Qwen3-VL folder or hub id")
    p.add_argument("--json", action="store_true", help="the rows as JSON")
    add_config_flags(p)
    p.set_defaults(func=doctor.cmd_doctor)

    p = sub.add_parser("models", help="model utilities")
    msub = p.add_subparsers(dest="models_command", required=True, parser_class=Parser)
    t = msub.add_parser("tiny", help="write the tiny random-weight models in the real layouts")
    t.add_argument("--out", required=True, metavar="DIR")
    t.add_argument("--debug", action="store_true")
    t.set_defaults(func=generate.cmd_models_tiny)

    p = sub.add_parser("profiles", help="list the profiles (shipped and from --config)")
    p.add_argument("--config", metavar="FILE")
    p.add_argument("--debug", action="store_true")
    p.set_defaults(func=generate.cmd_profiles)

    p = sub.add_parser("config", help="print the resolved configuration as JSON")
    add_generation_flags(p)
    add_config_flags(p)
    p.set_defaults(func=generate.cmd_config)
    return parser


#: Commands that load no model: they print from the configuration and the catalog alone, and start
#: without importing torch, diffusers or transformers (tests/test_cli_startup.py).
_NO_MODELS = {"experiments", "profiles", "config"}


class _Version(argparse.Action):
    """``--version``: the package metadata's version, read only when asked for (start-up stays short)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from ..provenance import version

        print(f"llm-dit {version()}")
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code. A Ctrl-C ends it with ``llm-dit: interrupted`` and 130 (in
    the command line at any moment, from the package's first line on: :mod:`llm_dit.interrupt`)."""
    try:
        given = sys.argv[1:] if argv is None else list(argv)
        argv, level = logs.split_verbosity(given)
        undo_logging = logs.setup(level)
        try:
            return _main(argv, given)
        finally:
            undo_logging()
    except KeyboardInterrupt:  # outside _main's own try: setting up, or undoing, the logging
        print(interrupt.MESSAGE, file=sys.stderr)
        return interrupt.EXIT_CODE


def _main(argv: list[str], given: list[str]) -> int:
    debug = "--debug" in argv
    args = None
    try:
        args = build_parser().parse_args(argv)
        args.argv = given  # the command as given (verbosity flags too): what --workers starts again
        if args.command not in _NO_MODELS:  # importing diffusers for `llm-dit config` would cost seconds
            logs.quiet_libraries()
        return args.func(args)
    except LlmDitError as e:
        if debug:
            raise
        print(f"llm-dit: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(interrupt.MESSAGE, file=sys.stderr)
        return interrupt.EXIT_CODE
    except SystemExit as e:  # --help, --version
        return int(e.code or 0)
    except BrokenPipeError:  # `llm-dit config | head -1`: the reader has what it wanted
        _silence_stdout()
        return 0
    except Exception as e:  # a bug, or the GPU out of memory: still one line, with the way to see more
        if debug:
            raise
        oom = out_of_memory_message(e, _offload(args))
        if oom:
            print(f"llm-dit: error: {oom}", file=sys.stderr)
            return 1
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"llm-dit: internal error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of the text still buffered for
    the closed pipe does not end in a second BrokenPipeError at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # a stdout without a file descriptor (tests)
        pass


def _offload(args) -> str | None:
    """The offload a command ran with, as far as its flags tell (for the out-of-memory advice)."""
    if args is None:
        return None
    return vars(args).get("runtime.offload") or ("group_block" if getattr(args, "profile", None) == "low_vram"
                                                 else None)


if __name__ == "__main__":
    raise SystemExit(main())
