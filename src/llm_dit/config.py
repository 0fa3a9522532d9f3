"""Profiles and the one resolved configuration.

Resolution order, later wins::

    shipped profiles.toml  ->  user TOML (--config FILE)  ->  flags (dotted overrides)

A profile is a TOML table. ``inherits = "other"`` starts it from another profile (shipped or user);
a user file that names a shipped profile extends it in place. One top-level table is no profile: the
research notes' ``[vl]`` (seed 004: ``hidden_layer``, ``alpha``, ``method``, ``caption_tokens``; see
:class:`NotesVL`); the notes' keys llm-dit has no such setting for are refused naming its equivalent.
The merged dictionary is validated once into a frozen :class:`Config`; every error is one line that
names the key and what is allowed.
``Config.to_dict()`` is what goes into every output's metadata, and ``Config.from_dict`` reads it
back, so a run can be reproduced from its record.
"""

from __future__ import annotations

import copy
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from .errors import ConfigError, closest, did_you_mean
from .limits import MAX_LAYER, MAX_PIXELS, MAX_POOL, MAX_SEED

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, published as tomli before it joined the standard library
    import tomli as tomllib

#: Z-Image's caption limit: RoPE tables of ``axes_lens[0] = 1536`` minus one 32-token pad block.
MAX_CAPTION_TOKENS = 1504
#: VL defaults shared by the config and the Python API: the seeds' recommended layer, and a
#: per-image pixel budget of ~1024 tokens (a real checkpoint alone would allow ~16k).
DEFAULT_VL_LAYER = -6
DEFAULT_MAX_PIXELS = 1024 * 1024
#: The ``dopsd`` backend's defaults, D-OPSD's own settings (arXiv 2605.05204): hidden layer -2, each
#: image resized to 512^2 .. 768^2 pixels, the chat cut to 1024 tokens. Recorded with every
#: extraction and conditioning it makes; a recipe's ``hidden_layer`` / ``max_pixels`` override the
#: first and the third (:meth:`~llm_dit.conditioning.Recipe.resolve`).
DOPSD_DEFAULTS: dict[str, int] = {"layer": -2, "min_pixels": 512 * 512, "max_pixels": 768 * 768, "max_tokens": 1024}
#: The VL backends: ``vl`` (Qwen3-VL whole), ``splice`` (its vision tower into Z-Image's Qwen3-4B,
#: 1-D RoPE), ``dopsd`` (Qwen3-VL's forward with Z-Image's Qwen3-4B weights); see llm_dit.vl.extract.
VLBackend = Literal["vl", "splice", "dopsd"]

LongPromptMode = Literal["truncate", "interpolate", "pool", "attention_pool"]
#: A ``hidden_states`` index (transformers' convention): bounded here so that a mistyped one is refused
#: before a model loads; the model's own layer count is checked once it has (see :mod:`llm_dit.limits`).
LayerIndex = Annotated[int, Field(ge=-(MAX_LAYER + 1), le=MAX_LAYER)]


class _Section(BaseModel):
    # strict: "9" is not a number and true is not an integer; extra keys are errors, not ignored;
    # allow_inf_nan=False: nan and inf are no setting (nan passes every ``ge``/``le`` test).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


#: The Z-Image the shipped profiles name.
DEFAULT_Z_IMAGE = "Tongyi-MAI/Z-Image-Turbo"


class ModelsConfig(_Section):
    """Where the models come from: a hub id or a local folder; ``tiny`` means the built-in tiny models.

    ``z_image`` is a hub id, a diffusers folder, or a ComfyUI ``models/`` folder (one with
    ``diffusion_models/``, ``text_encoders/``, ``vae/``: the one file of each part there is used).
    ``dit``, ``text_encoder``, ``vae``: single safetensors files of Z-Image's parts (ComfyUI's
    ``z_image_turbo_bf16.safetensors``, ``qwen_3_4b.safetensors``, ``ae.safetensors``, fp8 variants
    too); each replaces that part of ``z_image``. ``tokenizer``: a folder with the Qwen3 tokenizer
    (a Z-Image diffusers folder, its weights not needed, or a Qwen3-4B folder), whose configs are
    also used first; without it the tokenizer is looked for in ``z_image`` and the local hub cache.
    When all three files are named and ``z_image`` is left at the shipped hub id, ``z_image`` is
    recorded as "" (no weights come from it). See docs/configuration.md, "ComfyUI single files".
    """

    z_image: str = DEFAULT_Z_IMAGE
    vl: str = Field("Qwen/Qwen3-VL-4B-Instruct", min_length=1)
    dit: str = ""
    text_encoder: str = ""
    vae: str = ""
    tokenizer: str = ""

    @model_validator(mode="before")
    @classmethod
    def _files_replace_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and all(data.get(k) for k in ("dit", "text_encoder", "vae")) \
                and data.get("z_image", DEFAULT_Z_IMAGE) == DEFAULT_Z_IMAGE:
            data = {**data, "z_image": ""}
        return data

    @model_validator(mode="after")
    def _z_image_named(self) -> ModelsConfig:
        if not self.z_image and not (self.dit and self.text_encoder and self.vae):
            raise ValueError("z_image may be empty only when dit, text_encoder and vae name files")
        return self


#: diffusers attention backends llm-dit offers (``set_attention_backend``): PyTorch's SDPA choosing its
#: kernel (``native``), or SDPA held to one kernel. Others need extra packages (flash-attn, sageattention).
AttentionBackend = Literal["native", "_native_cudnn", "_native_flash", "_native_efficient", "_native_math",
                          "flash", "_flash_3", "sage", "xformers"]
ATTENTION_BACKENDS: tuple[str, ...] = get_args(AttentionBackend)


class RuntimeConfig(_Section):
    """Device, precision, the memory policy and the speed options.

    ``device = "auto"`` picks ``cuda`` when a GPU is present, else ``cpu``; ``dtype = "auto"`` picks
    bfloat16 on cuda and float32 on cpu. ``offload`` (cuda only): ``encoder`` keeps the DiT and the VAE
    resident and the text encoder (Qwen3-4B) on the CPU in pinned memory, streamed through the GPU a
    decoder layer at a time when it encodes (Qwen3-VL is resident while it runs, and freed before
    Z-Image loads in a one-shot run); ``model`` is diffusers' ``enable_model_cpu_offload`` (whole components move per
    pipeline call); ``group_block`` / ``group_leaf`` are diffusers' group offloading at block or leaf
    level with CUDA streams, applied to the DiT, the VAE and both language models.

    ``precision`` (the DiT's linear layers; :mod:`llm_dit.models.fp8`): ``dtype`` keeps every weight
    and product in ``dtype``; ``fp8_weights`` stores the attention and feed-forward weights of the DiT's
    blocks in float8 with a scale per output channel and computes in ``dtype`` (half the DiT's memory,
    any device); ``fp8`` also computes those products on FP8 tensor cores (GPUs of compute capability
    8.9 and newer), the fast mode. Both change pictures slightly (the fidelity is in BENCHMARKS.md), so
    precision is part of a run's key. The text encoder and Qwen3-VL always run in ``dtype``.

    Speed (none of these change what a picture is meant to be; bf16 results differ in the last bits):
    ``compile`` wraps the DiT's repeated blocks and the VAE decoder in ``torch.compile`` (the first
    picture of each size pays the compilation), with an attention processor the compiler can fuse
    (``models/rope.py``); ``attention`` is diffusers' attention backend;
    ``batch_size`` generates up to that many cells of an experiment that share their settings in one
    pipeline call (falls back to one at a time when a batch runs out of memory).
    """

    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    offload: Literal["none", "encoder", "model", "group_block", "group_leaf"] = "none"
    precision: Literal["dtype", "fp8_weights", "fp8"] = "dtype"
    compile: bool = False
    attention: AttentionBackend = "native"
    batch_size: int = Field(1, ge=1, le=64)
    #: Models kept loaded between jobs of a long-lived process (``llm-dit serve``): ``all`` keeps
    #: Z-Image and Qwen3-VL side by side; ``one`` keeps one at a time (loading one unloads the other).
    keep_models: Literal["all", "one"] = "all"

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError("must be one of auto, cpu, cuda, cuda:N, mps")
        return v


class EncoderConfig(_Section):
    """Z-Image's own text encoder (Qwen3-4B).

    ``hidden_layer`` follows transformers' ``hidden_states`` indexing (0 = token embeddings,
    -1 = final normed output, -2 = what Z-Image was trained on). ``max_length`` caps the caption in
    tokens, chat template included. Longer prompts are cut there (``truncate``, what diffusers does)
    or encoded whole and compressed to ``max_length`` by ``long_prompt_mode``.
    """

    hidden_layer: LayerIndex = -2
    max_length: int = Field(512, ge=1, le=MAX_CAPTION_TOKENS)
    long_prompt_mode: LongPromptMode = "truncate"


class GenerationConfig(_Section):
    """Denoising settings; the defaults are Z-Image-Turbo's."""

    steps: int = Field(9, ge=1, le=1000)
    guidance_scale: float = Field(0.0, ge=0.0, le=30.0)
    width: int = Field(1024, ge=16, le=4096)
    height: int = Field(1024, ge=16, le=4096)
    shift: float = Field(3.0, gt=0.0, le=100.0)
    seed: int = Field(42, ge=0, le=MAX_SEED)
    strength: float = Field(0.6, gt=0.0, le=1.0)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_16(cls, v: int) -> int:
        # The VAE downsamples by 8 and the DiT patchifies by 2.
        if v % 16:
            raise ValueError(f"must be a multiple of 16 (got {v}; nearest: {max(16, round(v / 16) * 16)})")
        return v


class VLConfig(_Section):
    """Qwen3-VL extraction defaults (the seeds' recommended layer -6, the full token sequence).

    ``max_pixels`` bounds each reference image's pixels and so its tokens (about one token per
    32 x 32 pixels: 1048576 -> ~1024 tokens); ``pool`` then averages ``pool x pool`` neighbourhoods of
    each image's token grid. ``cache_gb`` bounds the on-disk extraction cache (0 turns it off).
    """

    backend: VLBackend = "vl"
    layers: list[LayerIndex] = Field(default_factory=lambda: [DEFAULT_VL_LAYER], min_length=1)
    token_selection: Literal["full", "text_only", "user_text", "image_only", "image_no_markers"] = "full"
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1024, le=MAX_PIXELS)
    pool: int = Field(1, ge=1, le=MAX_POOL)
    system_prompt: str = ""
    cache_gb: float = Field(4.0, ge=0.0)

    @field_validator("layers")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"must not repeat a layer (got {v})")
        return v


class MetricsConfig(_Section):
    """Image metrics of experiment runs (see :mod:`llm_dit.analysis.metrics`).

    ``vqa``: the prompt-adherence score P("Yes") from Qwen3-VL. ``auto`` scores when the run loads
    Qwen3-VL anyway (it then stays loaded through generation); ``on`` loads it for scoring if needed;
    ``off`` never. ``clip``, ``siglip``: local folders of a transformers CLIP or SigLIP model (no model
    hub is needed or used); empty: skipped with a note.
    """

    vqa: Literal["auto", "on", "off"] = "auto"
    clip: str = ""
    siglip: str = ""


class NotesVL(_Section):
    """Seed 004's ``[vl]`` table of a config file (top level, beside the profiles), what each key becomes:

    * ``hidden_layer``: ``vl.layers = [hidden_layer]`` in whichever profile runs (the VL layer every
      recipe without its own ``hidden_layer`` extracts);
    * ``alpha``, ``method`` (``caption`` | ``generic``), ``caption_tokens``: the defaults of
      ``llm-dit sweep`` (the recipe's ``alpha``; its VL text, see ``experiments.cells.METHODS``;
      ``--caption-tokens`` when no prompt is given) and of the notes' caption scripts. Other commands
      refuse them (:func:`notes_unused`): they would do nothing there.
    """

    hidden_layer: LayerIndex | None = None
    alpha: float | None = Field(None, ge=0.0, le=1.0)
    method: Literal["caption", "generic"] | None = None
    caption_tokens: int | None = Field(None, ge=1, le=MAX_CAPTION_TOKENS)


#: The notes' ``[vl]`` keys that only a sweep (and the notes' caption scripts) reads, and where
#: ``llm-dit generate`` takes each instead.
NOTES_SWEEP_KEYS = {"alpha": "--vl-alpha A", "method": "--vl-text ('caption' is its default, the prompt)",
                    "caption_tokens": "--caption-tokens N"}


class Config(_Section):
    """The whole resolved configuration: one object, validated once, recorded whole."""

    profile: str = "default"
    models: ModelsConfig = ModelsConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    encoder: EncoderConfig = EncoderConfig()
    generation: GenerationConfig = GenerationConfig()
    vl: VLConfig = VLConfig()
    metrics: MetricsConfig = MetricsConfig()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        return _validate(data)

    def replace(self, **dotted: Any) -> Config:
        """A copy with dotted overrides applied, e.g. ``cfg.replace(**{"generation.steps": 4})``."""
        data = self.to_dict()
        _apply_overrides(data, dotted)
        return _validate(data)


# --------------------------------------------------------------------------------------------
# Loading and merging


def _shipped_profiles() -> dict[str, Any]:
    text = resources.files("llm_dit").joinpath("profiles.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def _read_toml(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    from .io import parse_toml

    try:  # nested deeper than io.MAX_NESTING: parse_toml's ConfigError, which names the file
        return parse_toml(path.read_text(encoding="utf-8"), f"config file {path}", ConfigError)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


#: A top-level table of a config file that is the notes' (seed 004), not a profile.
NOTES_TABLE = "vl"
#: Keys of the notes' configs llm-dit has no setting for: ``(section, key) -> the sentence's end``.
REFUSED_KEYS = {
    ("vl", "device"): "llm-dit runs Qwen3-VL on runtime.device, as every model ([{p}.runtime] device = \"cpu\"); "
                      "a one-shot run frees it before Z-Image loads, and [{p}.runtime] keep_models = \"one\" "
                      "frees it in a server",
}


def _refused(config_file: str | Path, name: str, table: dict[str, Any]) -> None:
    for (section, key), instead in REFUSED_KEYS.items():
        if isinstance(table.get(section), dict) and key in table[section]:
            raise ConfigError(f"config file {config_file}: [{name}.{section}] {key} is not an llm-dit setting: "
                              + instead.format(p=name))


def notes_vl(config_file: str | Path | None) -> NotesVL:
    """The notes' ``[vl]`` table of ``config_file`` (empty when there is none), checked."""
    if config_file is None:
        return NotesVL()
    table = _read_toml(Path(config_file)).get(NOTES_TABLE)
    if table is None:
        return NotesVL()
    where = f"config file {config_file}: [{NOTES_TABLE}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    for key, value in table.items():
        if key not in NotesVL.model_fields:
            what = "a table" if isinstance(value, dict) else f"the key '{key}'"
            raise ConfigError(f"{where} holds {what}; the notes' [vl] table takes {', '.join(NotesVL.model_fields)} "
                              f"(a profile's Qwen3-VL settings go in [NAME.vl], e.g. [default.vl] layers = [-6])")
    return validate_model(NotesVL, table, f"{where} key")


def notes_unused(config_file: str | Path | None) -> str | None:
    """The sentence refusing a notes' ``[vl]`` key a command other than ``sweep`` would not use; None
    when there is none."""
    notes = notes_vl(config_file)
    for key, flag in NOTES_SWEEP_KEYS.items():
        value = getattr(notes, key)
        if value is not None:
            return (f"config file {config_file}: [{NOTES_TABLE}] {key} = {value!r} is a default of llm-dit sweep and "
                    f"the notes' caption scripts only; this command would not use it (llm-dit generate takes {flag})")
    return None


def load_profiles(config_file: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """All profile tables, shipped ones extended or joined by those of ``config_file`` (whose notes'
    ``[vl]`` table is no profile: see :func:`notes_vl`)."""
    profiles = _shipped_profiles()
    if config_file is not None:
        user = _read_toml(Path(config_file))
        if NOTES_TABLE in user:
            notes_vl(config_file)  # checked: a key it does not know is named now
            user.pop(NOTES_TABLE)
        for name, table in user.items():
            if not isinstance(table, dict):
                raise ConfigError(
                    f"config file {config_file}: top-level key '{name}' must be a profile table like [{name}]"
                )
            _refused(config_file, name, table)
            profiles[name] = _deep_merge(profiles.get(name, {}), table)
        for name in user:  # every table, used now or not: a misplaced one ([vl], [profiles.x]) is named
            _check_profile(name, profiles, config_file)
    return profiles


def _check_profile(name: str, profiles: dict[str, dict[str, Any]], config_file: str | Path) -> None:
    """Refuse the table ``[name]`` of ``config_file`` unless it makes a valid profile (inherited
    tables merged): one line naming it, and how a profile is written."""
    try:
        _validate({**_flatten_profile(name, profiles), "profile": name})
    except ConfigError as e:
        raise ConfigError(f"config file {config_file}: [{name}] is not a valid profile ({e}); a profile is a table "
                          f"[NAME] with sections such as [NAME.generation], and inherits = \"default\" to start from "
                          "a shipped one") from None


def profile_names(config_file: str | Path | None = None) -> list[str]:
    return sorted(load_profiles(config_file))


def _flatten_profile(name: str, profiles: dict[str, dict[str, Any]], seen: tuple[str, ...] = ()) -> dict:
    if name not in profiles:
        raise ConfigError(f"unknown profile '{name}'; available: {', '.join(sorted(profiles))}"
                          f"{did_you_mean(name, profiles)}")
    if name in seen:
        raise ConfigError(f"profile inheritance loops: {' -> '.join(seen + (name,))}")
    table = dict(profiles[name])
    parent = table.pop("inherits", None)
    if parent is None:
        return table
    if not isinstance(parent, str):
        raise ConfigError(f"profile '{name}': inherits must be a profile name")
    return _deep_merge(_flatten_profile(parent, profiles, seen + (name,)), table)


def _apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> None:
    for dotted, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{dotted}' does not name a setting")
        node[leaf] = value


def describe_error(err: ErrorDetails, root: type[BaseModel] | None = None, what: str = "config key") -> str:
    """One line for one pydantic error: the dotted key, what is wrong, what was given."""
    root = root or Config
    loc = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        section = _section_for(err["loc"][:-1], root)
        allowed = ", ".join(section.model_fields) if section else ""
        return f"unknown {what} '{loc}'" + (f"; allowed keys here: {allowed}" if allowed else "")
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    got = err.get("input")
    shown = "" if isinstance(got, dict) or "got" in msg else f" (got {got!r})"
    where = f"{what} '{loc}': " if loc else f"{what.split()[0]}: "
    if kind == "literal_error" and shown:  # a name not among the choices: the closest one, if any
        close = closest(got, re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", ""))))
        shown = f" (got {got!r}; did you mean '{close}'?)" if close else shown
    return f"{where}{msg[0].lower() + msg[1:]}{shown}"


def _section_for(loc: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    model: type[BaseModel] = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type)]
        nested = [a for a in ([ann] if isinstance(ann, type) else args) if issubclass(a, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def field_choices(cls: type[BaseModel], name: str) -> tuple[Any, ...]:
    """The values a field of ``cls`` may take when its type is a ``Literal`` (``None`` left out, and
    other members of a union such as ``float | Literal["text"]`` too); ``()`` when it is no choice.

    What the command line's help lists and the web form offers comes from here, so a mode added to a
    type shows up in both without being typed again.
    """
    import types
    import typing

    def literals(ann) -> list[Any]:
        if typing.get_origin(ann) is Literal:
            return list(typing.get_args(ann))
        if typing.get_origin(ann) in (typing.Union, types.UnionType):
            return [v for a in typing.get_args(ann) for v in literals(a)]
        return []

    return tuple(dict.fromkeys(literals(cls.model_fields[name].annotation)))


def validate_model(cls: type[BaseModel], data: dict[str, Any], what: str, error: type = ConfigError):
    """``cls.model_validate(data)`` with the first error as one line (``error`` raised)."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        raise error(describe_error(first, cls, what), field=".".join(str(p) for p in first["loc"]) or None) from None


def _validate(data: dict[str, Any]) -> Config:
    return validate_model(Config, data, "config key")


def resolve_config(
    profile: str = "default",
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Profile + user file + dotted overrides -> one validated :class:`Config`."""
    profiles = load_profiles(config_file)
    data = _flatten_profile(profile, profiles)
    data["profile"] = profile
    layer = notes_vl(config_file).hidden_layer
    if layer is not None:  # the notes' [vl] hidden_layer: the VL layer of whichever profile runs
        _apply_overrides(data, {"vl.layers": [layer]})
    _apply_overrides(data, overrides or {})
    return _validate(data)
