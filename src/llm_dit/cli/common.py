"""Shared pieces of the command line: the one-line-error parser, flag groups, config resolution."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from ..config import EncoderConfig, RuntimeConfig, VLConfig, field_choices
from ..errors import InputError, did_you_mean
from ..limits import MAX_LAYER, number_problem


class _Formatter(argparse.HelpFormatter):
    def _get_default_metavar_for_optional(self, action):  # "generation.seed" -> SEED, not GENERATION.SEED
        return action.dest.rsplit(".", 1)[-1].upper()


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the CLI prefixes ``llm-dit: error: `` once) that say what was
    probably meant: the closest flag or command, and ``--layers=-6,-2`` for a value with a leading minus."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)
        self._given: list[str] = []

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(sys.argv[1:] if args is None else args)
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:  # refused here, where this (sub)command's own flags are known for the suggestion
            self.error(unrecognized(extras, list(self._option_string_actions)))
        return namespace, extras

    def error(self, message: str):  # one line, not usage + message
        raise InputError(self._hint(message))

    def _hint(self, message: str) -> str:
        m = re.fullmatch(r"argument ([^:]+): (must be .*)", message)
        if m:  # a number flag's own sentence (number, count): "--ridge must be ..."
            return f"{m.group(1).split('/')[-1]} {m.group(2)}"
        m = re.fullmatch(r"argument ([^:]+): expected one argument", message)
        if m:  # argparse reads a value like -6,-2 as a flag: the value goes after '='
            flag = m.group(1).split("/")[-1]
            after = self._given[self._given.index(flag) + 1:] if flag in self._given else []
            if after and after[0].startswith("-"):
                return f"{message}: a value that starts with '-' goes after '=', as in {flag}={after[0]}"
            return message
        m = re.fullmatch(r"argument ([^:]+): invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:  # the subcommand names: "did you mean" (Python 3.12.8+ lists them without quotes)
            return message + did_you_mean(m.group(2), [c.strip(" '") for c in m.group(3).split(",")])
        return message


def unrecognized(extras: list[str], flags: list[str]) -> str:
    """``unrecognized arguments: --stesp 3 (did you mean '--steps'?)``: the closest flag of the first
    unknown one (a stricter cutoff than for names: flags share their ``--``)."""
    first = next((e.split("=", 1)[0] for e in extras if e.startswith("--")), None)
    return f"unrecognized arguments: {' '.join(extras)}" + (did_you_mean(first, flags, 0.75) if first else "")


def one_of(model, name: str, sep: str = " | ") -> str:
    """``"a | b | c"``: the values of the field ``name`` of ``model`` (a Config section or the Recipe),
    read from its type (:func:`~llm_dit.config.field_choices`), never typed again here."""
    return sep.join(str(v) for v in field_choices(model, name))


def number(gt: float | None = None, ge: float | None = None, lt: float | None = None, le: float | None = None):
    """An argparse ``type`` for a float flag: a finite number within the bounds, else the one line
    ``--ridge must be a finite number greater than 0 ... (got nan)``. Flags that set a Config or Recipe
    field take ``number()`` (finite; the field's bounds are the model's), others their bounds here."""

    def parse(text: str) -> float:
        value: float | None
        try:
            value = float(text)
        except ValueError:
            value = None
        problem = number_problem(value, gt=gt, ge=ge, lt=lt, le=le)
        if problem is not None or value is None:
            raise argparse.ArgumentTypeError(f"must be {problem} (got {text})")
        return value

    parse.__name__ = "number"
    return parse


def count(ge: int | None = None, le: int | None = None):
    """An argparse ``type`` for an integer flag that sets no Config or Recipe field (those take
    ``int``: the field has the bounds): a whole number in ``ge..le``, else one line naming the flag."""

    def parse(text: str) -> int:
        value: int | None
        try:
            value = int(text)
        except ValueError:
            value = None
        problem = number_problem(value, whole=True, ge=ge, le=le)
        if problem is not None or value is None:
            raise argparse.ArgumentTypeError(f"must be {problem} (got {text})")
        return value

    parse.__name__ = "count"
    return parse


def layer_index(text: str) -> int:
    """An argparse ``type`` for a ``hidden_states`` index of a flag that sets no Config field."""
    return count(ge=-(MAX_LAYER + 1), le=MAX_LAYER)(text)


def int_list(text: str) -> list[int]:
    """``"-6,-2"`` -> ``[-6, -2]`` (use ``--layers=-6,-2``: a leading minus needs the ``=`` form)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got '{text}'") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def add_config_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration")
    g.add_argument("--profile", default="default", help="profile name (default: default)")
    g.add_argument("--config", metavar="FILE", help="a TOML file that defines or extends profiles")
    g.add_argument("--device", dest="runtime.device", help="auto | cpu | cuda | cuda:N | mps")
    g.add_argument("--dtype", dest="runtime.dtype", help=one_of(RuntimeConfig, "dtype"))
    g.add_argument("--offload", dest="runtime.offload", help=one_of(RuntimeConfig, "offload"))
    g.add_argument("--precision", dest="runtime.precision",
                   help="the DiT's linear layers: " + one_of(RuntimeConfig, "precision")
                   + " (fp8_weights: half the memory, any GPU; fp8: FP8 products, Ada/Hopper)")
    g.add_argument("--compile", dest="runtime.compile", action="store_const", const=True,
                   help="torch.compile the DiT blocks and the VAE decoder (the first picture pays the compilation)")
    g.add_argument("--attention", dest="runtime.attention",
                   help="diffusers attention backend: " + one_of(RuntimeConfig, "attention"))
    g.add_argument("--batch-size", dest="runtime.batch_size", type=int,
                   help="experiments: cells with the same settings generated together (default 1)")
    g.add_argument("--debug", action="store_true", help="show tracebacks")


def add_z_image_flags(g, what: str = "") -> None:
    """``--z-image`` and the single-file flags beside it (models.dit, .text_encoder, .vae, .tokenizer)."""
    g.add_argument("--z-image", dest="models.z_image", metavar="ID_OR_PATH",
                   help="Z-Image hub id, diffusers folder or ComfyUI models folder" + what)
    g.add_argument("--dit", dest="models.dit", metavar="FILE",
                   help="Z-Image DiT single file (ComfyUI diffusion_models/, bf16 or fp8)")
    g.add_argument("--text-encoder", dest="models.text_encoder", metavar="FILE",
                   help="Qwen3-4B single file (ComfyUI text_encoders/qwen_3_4b*.safetensors)")
    g.add_argument("--vae", dest="models.vae", metavar="FILE", help="VAE single file (ComfyUI vae/ae.safetensors)")
    g.add_argument("--tokenizer", dest="models.tokenizer", metavar="DIR",
                   help="folder with the Qwen3 tokenizer (a Z-Image diffusers folder or Qwen3-4B) for single files")


def add_generation_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    add_z_image_flags(g)
    g.add_argument("--seed", dest="generation.seed", type=int)
    g.add_argument("--steps", dest="generation.steps", type=int)
    g.add_argument("--width", dest="generation.width", type=int)
    g.add_argument("--height", dest="generation.height", type=int)
    g.add_argument("--shift", dest="generation.shift", type=number())
    g.add_argument("--guidance-scale", dest="generation.guidance_scale", type=number())
    g.add_argument("--strength", dest="generation.strength", type=number(), help="img2img strength (0, 1]")
    add_encoder_flags(p)


def add_encoder_flags(p: argparse.ArgumentParser) -> None:
    e = p.add_argument_group("text encoder")
    e.add_argument("--hidden-layer", dest="encoder.hidden_layer", type=int, help="hidden_states index (default -2)")
    e.add_argument("--max-length", dest="encoder.max_length", type=int, help="caption tokens, at most 1504")
    e.add_argument("--long-prompt-mode", dest="encoder.long_prompt_mode",
                   help=one_of(EncoderConfig, "long_prompt_mode"))


def add_vl_flags(p: argparse.ArgumentParser, extraction: bool = True, tokens: bool = True) -> None:
    g = p.add_argument_group("Qwen3-VL")
    g.add_argument("--vl-model", dest="models.vl", metavar="ID_OR_PATH", help="Qwen3-VL hub id or local folder")
    add_z_image_flags(g, " (its text encoder: splice and dopsd backends, statistics)")
    g.add_argument("--max-pixels", dest="vl.max_pixels", type=int, help="pixel budget per image (~1 token / 1024 px)")
    if extraction:
        g.add_argument("--layers", dest="vl.layers", type=int_list, metavar="K[,K...]",
                       help="hidden_states indices, e.g. --layers=-6,-2")
        if tokens:
            g.add_argument("--tokens", dest="vl.token_selection", help=one_of(VLConfig, "token_selection"))
        g.add_argument("--pool", dest="vl.pool", type=int, help="average K x K neighbourhoods of the image-token grid")
        g.add_argument("--backend", dest="vl.backend", help=one_of(VLConfig, "backend"))


def overrides(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if "." in k and not k.startswith("recipe.") and v is not None}


def config(args: argparse.Namespace, defaults: dict | None = None, notes: bool = False):
    """The Config the flags ask for; ``defaults`` (dotted keys, e.g. a shipped recipe's suggested
    steps) apply under the flags. ``notes``: the command reads the notes' ``[vl]`` alpha, method and
    caption_tokens of ``--config`` (``sweep``); other commands refuse them (they would do nothing)."""
    from ..config import notes_unused, resolve_config
    from ..errors import ConfigError

    cfg = resolve_config(args.profile, args.config, {**(defaults or {}), **overrides(args)})
    unused = None if notes else notes_unused(args.config)
    if unused:
        raise ConfigError(unused)
    return cfg
