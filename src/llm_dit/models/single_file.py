"""Z-Image from single files: the DiT, text encoder and VAE files ComfyUI users hold.

A ComfyUI installation keeps each part of Z-Image-Turbo in one safetensors file::

    models/diffusion_models/z_image_turbo_bf16.safetensors   the DiT (NextDiT keys: layers.N.attention.qkv ...)
    models/text_encoders/qwen_3_4b.safetensors                Qwen3-4B (Qwen3ForCausalLM keys: model.layers.N ...)
    models/vae/ae.safetensors                                 the FLUX.1 VAE (LDM keys: encoder.down.N.block.M ...)

and fp8 variants of the first two. They are named by ``models.dit``, ``models.text_encoder`` and
``models.vae`` (``--dit``, ``--text-encoder``, ``--vae``), or found in a ComfyUI ``models/`` folder
given as ``models.z_image``. A part not named comes from ``models.z_image`` when that is a diffusers
folder or hub id, so one file can also replace one part of a diffusers pipeline.

Loading wraps the libraries: the DiT and the VAE go through diffusers' ``from_single_file`` (its
converters map the ComfyUI and LDM key names), with the configs of ``models.tokenizer``, of a
diffusers folder at hand, or the ones shipped here (``configs/z-image-turbo``: the published sizes);
never a hub fetch. The text encoder's keys are transformers' own under ``model.``: they are loaded
into ``Qwen3Model`` directly. A file's safetensors header is read first, so a file of the wrong
kind, one with weights missing, or a quantisation this module does not read is refused in one line
naming the file, before any weight is read.

fp8: "scaled fp8" files hold e4m3fn weights with a float32 scale each (ComfyUI's older convention:
a ``scaled_fp8`` marker tensor and ``<layer>.scale_weight``; its newer one: ``<layer>.weight_scale``
with ``<layer>.comfy_quant`` or the ``_quantization_metadata`` header entry naming the format);
they are dequantised on load (``weight * scale``, per tensor or per row) to the run's dtype. Plain fp8
files (fp8 weights, no scale) are cast. ``input_scale`` / ``scale_input`` entries serve fp8 matrix
products only and are dropped.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError
from .file_header import (
    FLAGS,
    PARTS,
    WHAT,
    Header,
    caption_dim,
    check_kind,
    kind_of,
    load_tensors,
    read_header,
    text_hidden_size,
    text_layers,
)
from .loading import first_line

#: The diffusers subfolder (and pipeline component) of each part.
SUBFOLDER = {"dit": "transformer", "text_encoder": "text_encoder", "vae": "vae"}
COMPONENT = {"dit": "transformer", "text_encoder": "text_encoder", "vae": "vae"}
#: The ComfyUI ``models/`` subfolders of each part (``unet`` and ``clip`` are the older names).
COMFY_FOLDERS = {"dit": ("diffusion_models", "unet"), "text_encoder": ("text_encoders", "clip"), "vae": ("vae",)}
#: Hub entries whose local cache may hold the tokenizer and the text encoder config (never fetched).
HUB_FALLBACKS = (("Tongyi-MAI/Z-Image-Turbo", "tokenizer", "text_encoder"), ("Qwen/Qwen3-4B", "", ""))


def shipped_configs() -> Path:
    """The folder of the configs written from the published sizes (diffusers layout, no weights)."""
    return Path(str(resources.files("llm_dit.models").joinpath("configs").joinpath("z-image-turbo")))


# -- where the files, configs and tokenizer are --------------------------------------------------------


def is_comfy_folder(path: Path) -> bool:
    """A ComfyUI ``models/`` folder: it has ``diffusion_models/``, ``text_encoders/`` or ``vae/`` (or
    the older ``unet/``, ``clip/``) and is no diffusers folder."""
    if not path.is_dir() or (path / "model_index.json").is_file():
        return False
    return any((path / sub).is_dir() for subs in COMFY_FOLDERS.values() for sub in subs)


@dataclass(frozen=True)
class SingleFiles:
    """What one configuration loads Z-Image from when it names files (:func:`resolve_files`)."""

    dit: Path | None
    text_encoder: Path | None
    vae: Path | None
    #: ``models.z_image`` when it is a diffusers folder or hub id: the parts not named, and its configs
    base: str | None
    #: ``models.tokenizer``: the tokenizer, and the configs looked for first
    tokenizer: Path | None
    #: ``models.z_image`` when it is a ComfyUI models folder
    comfy: Path | None

    def file(self, part: str) -> Path | None:
        f: Path | None = getattr(self, part)
        return f

    def to_dict(self) -> dict[str, str]:
        """The absolute paths of what is loaded, for run records."""
        out = {p: str(f.resolve()) for p in PARTS if (f := self.file(p)) is not None}
        if self.base:
            out["z_image"] = self.base
        if self.comfy:
            out["comfy_folder"] = str(self.comfy.resolve())
        if self.tokenizer:
            out["tokenizer"] = str(self.tokenizer.resolve())
        return out


def _given(spec: str, key: str) -> Path:
    from ..io import expand_user

    path = expand_user(spec, f"models.{key}")
    if not path.exists():
        raise ModelLoadError(f"{FLAGS.get(key, '--' + key)} {spec} does not exist")
    return path


def _pick(folder: Path, part: str, cap_dim: int | None) -> Path:
    """The one file of ``part`` in a ComfyUI folder; several or none are refused in one line."""
    subs = [folder / s for s in COMFY_FOLDERS[part] if (folder / s).is_dir()]
    found: list[tuple[Path, str]] = []
    for f in sorted(x for s in subs for x in s.rglob("*.safetensors") if x.is_file()):
        try:
            h = read_header(f)
        except ModelLoadError:
            found.append((f, "unreadable"))
            continue
        kind, what = kind_of(h)
        if kind == part and part == "text_encoder" and cap_dim is not None and text_hidden_size(h) != cap_dim:
            what = f"a Qwen3 of hidden size {text_hidden_size(h)}, not {cap_dim}"
            kind = None
        found.append((f, "" if kind == part else what))
    good = [f for f, why in found if not why]
    where = "/, ".join(s.name for s in subs) + "/" if subs else f"{COMFY_FOLDERS[part][0]}/ (absent)"
    if len(good) == 1:
        return good[0]
    if len(good) > 1:
        names = ", ".join(str(f.relative_to(folder)) for f in good)
        raise ModelLoadError(f"ComfyUI folder {folder} has {len(good)} {WHAT[part]} files ({names}); "
                             f"choose one with {FLAGS[part]} FILE")
    others = "; ".join(f"{f.relative_to(folder)} is {why}" for f, why in found[:4])
    raise ModelLoadError(f"ComfyUI folder {folder} has no {WHAT[part]} file in {where}"
                         + (f" ({others})" if others else "") + f"; give {FLAGS[part]} FILE")


def resolve_files(models: Any) -> SingleFiles | None:
    """The single files ``models`` (a :class:`~llm_dit.config.ModelsConfig`) names, explicitly or
    through a ComfyUI folder in ``models.z_image``; None when it names none (a diffusers folder or
    hub id alone: :func:`~llm_dit.models.loading.resolve_model_path`)."""
    from ..io import expand_user

    spec = models.z_image
    comfy = None
    if spec and spec != "tiny":
        path = expand_user(spec, "models.z_image")
        if is_comfy_folder(path):
            comfy = path
    given = {p: _given(getattr(models, p), p) for p in PARTS if getattr(models, p)}
    if comfy is None and not given:
        return None
    files = dict(given)
    if comfy is not None:
        if "dit" not in files:
            files["dit"] = _pick(comfy, "dit", None)
        cap = caption_dim(read_header(files["dit"], FLAGS["dit"]))
        for part in ("text_encoder", "vae"):
            if part not in files:
                files[part] = _pick(comfy, part, cap)
    tokenizer = expand_user(models.tokenizer, "models.tokenizer") if models.tokenizer else None
    if tokenizer is not None and not tokenizer.is_dir():
        raise ModelLoadError(f"--tokenizer {models.tokenizer} is not a folder"
                             + ("" if tokenizer.exists() else " (it does not exist)"))
    base = None if comfy is not None or not spec else spec
    if base is None and len(files) < len(PARTS):
        missing = [FLAGS[p] for p in PARTS if p not in files]
        raise ModelLoadError(f"Z-Image needs {', '.join(missing)} too (or --z-image naming a diffusers folder "
                             "or a ComfyUI models folder for the parts not given)")
    return SingleFiles(files.get("dit"), files.get("text_encoder"), files.get("vae"), base, tokenizer, comfy)


def _hub_cached(repo: str) -> Path | None:
    """The local snapshot of a hub repository, if this machine has one (never a download)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, local_files_only=True))
    except Exception:
        return None


def _base_folder(files: SingleFiles) -> Path | None:
    """``models.z_image`` as a local diffusers folder (the tiny one, a folder, a cached hub id)."""
    if not files.base:
        return None
    if files.base == "tiny":
        from .tiny import ensure_tiny_models

        return ensure_tiny_models() / "z-image"
    from ..io import expand_user

    path = expand_user(files.base, "models.z_image")
    if path.is_dir():
        return path
    return _hub_cached(files.base) if re.fullmatch(r"[\w.\-]+/[\w.\-]+", files.base) else None


def _config_folders(files: SingleFiles) -> list[Path]:
    """Folders whose ``<subfolder>/config.json`` give the parts' configs, in order of precedence."""
    out = [f for f in (files.tokenizer, _base_folder(files)) if f is not None]
    return [*out, shipped_configs()]


def part_config(files: SingleFiles, part: str) -> tuple[Path, str]:
    """``(folder, subfolder)`` of the config a part is built from: the first of :func:`_config_folders`
    that has ``<subfolder>/config.json`` (the shipped configs always do)."""
    sub = SUBFOLDER[part]
    for folder in _config_folders(files):
        if (folder / sub / "config.json").is_file():
            return folder, sub
    return shipped_configs(), sub


def _tokenizer_candidates(files: SingleFiles) -> list[tuple[str, Path | None, str]]:
    """``(where, folder, tokenizer subfolder)`` in order; folder None: not on this machine."""
    out: list[tuple[str, Path | None, str]] = []
    if files.tokenizer is not None:
        sub = "tokenizer" if (files.tokenizer / "tokenizer").is_dir() else ""
        out.append((f"--tokenizer {files.tokenizer}", files.tokenizer, sub))
    if files.base:
        out.append((f"--z-image {files.base}", _base_folder(files), "tokenizer"))
    for repo, sub, _ in HUB_FALLBACKS:
        out.append((f"the hub cache of {repo}", _hub_cached(repo), sub))
    return out


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()


def find_tokenizer(files: SingleFiles) -> Path:
    """The folder of the Qwen3 tokenizer; one line naming every place looked in when there is none."""
    looked = []
    for where, folder, sub in _tokenizer_candidates(files):
        if folder is not None and _has_tokenizer(folder / sub if sub else folder):
            return folder / sub if sub else folder
        looked.append(where + ("" if folder is not None else " (not cached)"))
    raise ModelLoadError("no Qwen3 tokenizer for the single-file text encoder: looked in " + ", ".join(looked)
                         + "; give --tokenizer DIR (a Z-Image diffusers folder or a Qwen3-4B folder)")


def text_encoder_config(files: SingleFiles):
    """The Qwen3 config of the text encoder: ``text_encoder/config.json`` (or a Qwen3-4B folder's own
    ``config.json``) of the tokenizer folder, the base folder or a hub cache; else the shipped one."""
    from transformers import AutoConfig

    places: list[Path] = []
    if files.tokenizer is not None:
        places += [files.tokenizer / "text_encoder", files.tokenizer]
    if (base := _base_folder(files)) is not None:
        places.append(base / "text_encoder")
    for repo, _, sub in HUB_FALLBACKS:
        if (cached := _hub_cached(repo)) is not None:
            places.append(cached / sub if sub else cached)
    places.append(shipped_configs() / "text_encoder")
    for folder in places:
        cfg = folder / "config.json"
        if cfg.is_file() and json.loads(cfg.read_text(encoding="utf-8")).get("model_type") == "qwen3":
            return AutoConfig.from_pretrained(str(folder))
    raise ModelLoadError("no Qwen3 text encoder config found")  # the shipped one is always there


# -- loading ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_diffusers():
    """diffusers' ``from_single_file`` casts with ``.to(dtype)`` and warns about float32 modules even
    when there are none (``[]``): its warnings are silenced around the call, errors still raise."""
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(level)


def check_keys(cls, state: dict[str, torch.Tensor], folder: Path, sub: str, path: Path, part: str) -> None:
    """Refuse a file that lacks weights the model needs, before loading: diffusers' own converter run
    over the file's keys (as shapes on the meta device) against the model its config builds."""
    from accelerate import init_empty_weights
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    config = cls.load_config(str(folder), subfolder=sub, local_files_only=True)
    with init_empty_weights():
        shapes = {k: tuple(v.shape) for k, v in cls.from_config(config).state_dict().items()}
    wanted = set(shapes)
    meta = {k: torch.empty(v.shape, device="meta") for k, v in state.items()}
    if not wanted <= set(meta):
        entry: Any = SINGLE_FILE_LOADABLE_CLASSES[cls.__name__]
        convert = entry["checkpoint_mapping_fn"]
        try:
            meta = convert(config=config, checkpoint=meta)
        except Exception as e:  # a converter that meets keys it cannot map
            raise ModelLoadError(f"{FLAGS[part]} {path}: its keys are not a {WHAT[part]}'s ({first_line(e)})") \
                from None
    wrong = [k for k in sorted(wanted & set(meta)) if tuple(meta[k].shape) != shapes[k]]
    if wrong:
        k = wrong[0]
        raise ModelLoadError(f"{FLAGS[part]} {path} does not fit the {WHAT[part]} config of {folder / sub}: {k} is "
                             f"{list(meta[k].shape)} in the file, {list(shapes[k])} in the config (give the folder "
                             f"of its {sub}/config.json with --tokenizer)")
    missing = sorted(wanted - set(meta))
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise ModelLoadError(f"{FLAGS[part]} {path}: the {WHAT[part]} file lacks {len(missing)} of the weights its "
                             f"config needs ({shown})")


def _check_complete(model: torch.nn.Module, path: Path, part: str) -> None:
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise ModelLoadError(f"{FLAGS[part]} {path}: the {WHAT[part]} file lacks {len(missing)} of the weights its "
                             f"config needs ({shown})")


def _header(path: Path, part: str) -> Header:
    h = read_header(path, FLAGS[part])
    check_kind(h, part)
    return h


def diffusers_class(part: str):
    """The diffusers model class a ``dit`` or ``vae`` file is loaded into."""
    from diffusers import AutoencoderKL, ZImageTransformer2DModel

    return {"dit": ZImageTransformer2DModel, "vae": AutoencoderKL}[part]


def load_diffusers_part(path: Path, files: SingleFiles, dtype: torch.dtype, part: str):
    """A ``dit`` (ComfyUI or diffusers key names) or ``vae`` (the FLUX.1 ``ae.safetensors`` LDM layout)
    single file, through diffusers' ``from_single_file`` with the config :func:`part_config` finds."""
    cls = diffusers_class(part)
    h = _header(path, part)
    state = load_tensors(h, dtype)
    folder, sub = part_config(files, part)
    check_keys(cls, state, folder, sub, path, part)
    try:
        with _quiet_diffusers():
            model = cls.from_single_file(state, config=str(folder), subfolder=sub, local_files_only=True, dtype=dtype)
    except Exception as e:
        raise ModelLoadError(f"{FLAGS[part]} {path} does not fit the {WHAT[part]} config of {folder / sub}: "
                             f"{first_line(e)}") from None
    _check_complete(model, path, part)
    return model


def load_dit(path: Path, files: SingleFiles, dtype: torch.dtype):
    return load_diffusers_part(path, files, dtype, "dit")


def load_vae(path: Path, files: SingleFiles, dtype: torch.dtype):
    return load_diffusers_part(path, files, dtype, "vae")


def load_text_encoder_file(path: Path, files: SingleFiles, dtype: torch.dtype):
    """``Qwen3Model`` from a single file of Qwen3ForCausalLM keys (``model.`` prefix, no ``lm_head``:
    the embeddings are tied), with the config of :func:`text_encoder_config`."""
    from accelerate import init_empty_weights
    from transformers import Qwen3Model

    h = _header(path, "text_encoder")
    config = text_encoder_config(files)
    state = {k.removeprefix("model."): v for k, v in load_tensors(h, dtype).items() if not k.startswith("lm_head.")}
    with init_empty_weights(include_buffers=False):
        model = Qwen3Model._from_config(config, dtype=dtype)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except Exception as e:
        raise ModelLoadError(f"--text-encoder {path} does not fit the Qwen3 config "
                             f"({config.hidden_size} wide, {config.num_hidden_layers} layers): {first_line(e)}") \
            from None
    if unexpected:
        raise ModelLoadError(f"--text-encoder {path} has weights a {config.num_hidden_layers}-layer Qwen3 does not "
                             f"({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})")
    _check_complete(model, path, "text_encoder")
    return model.eval()


def load_tokenizer(files: SingleFiles):
    from transformers import AutoTokenizer

    folder = find_tokenizer(files)
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:
        raise ModelLoadError(f"could not load the Qwen3 tokenizer from {folder}: {first_line(e)}") from None


def load_parts(files: SingleFiles, dtype: torch.dtype) -> dict[str, Any]:
    """The pipeline components the files give, by component name."""
    loaders = {"dit": load_dit, "text_encoder": load_text_encoder_file, "vae": load_vae}
    return {COMPONENT[p]: loaders[p](f, files, dtype) for p in PARTS if (f := files.file(p)) is not None}


def load_pipeline(files: SingleFiles, dtype: torch.dtype):
    """A ``ZImagePipeline`` from the files, and from ``files.base`` for any part not given."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    tokenizer = load_tokenizer(files) if all(files.file(p) for p in PARTS) else None
    parts = load_parts(files, dtype)  # the tokenizer first: a missing one is refused before any weight is read
    if tokenizer is None:
        from .loading import load_failure, resolve_model_path

        assert files.base is not None, "resolve_files refuses missing parts without a base"
        try:
            return ZImagePipeline.from_pretrained(resolve_model_path(files.base, "z_image"), dtype=dtype, **parts)
        except ModelLoadError:
            raise
        except Exception as e:
            raise load_failure("Z-Image", files.base, e) from e
    folder = next((f for f in _config_folders(files) if (f / "scheduler" / "scheduler_config.json").is_file()),
                  shipped_configs())
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(folder), subfolder="scheduler",
                                                                local_files_only=True)
    return ZImagePipeline(scheduler=scheduler, vae=parts["vae"], text_encoder=parts["text_encoder"],
                          tokenizer=tokenizer, transformer=parts["transformer"])


def load_text_encoder(files: SingleFiles, dtype: torch.dtype):
    """``(Qwen3Model, tokenizer)`` for the splice backend and statistics: from the text-encoder file,
    or from ``files.base`` when only other parts are files."""
    if files.text_encoder is None:
        return None
    tokenizer = load_tokenizer(files)
    return load_text_encoder_file(files.text_encoder, files, dtype), tokenizer


def text_encoder_layers(files: SingleFiles) -> int | None:
    """Decoder layers of the text encoder the files give (from its header), None if it is not a file."""
    if files.text_encoder is None:
        return None
    return text_layers(_header(files.text_encoder, "text_encoder"))


def describe(models: Any) -> dict[str, str]:
    """What Z-Image is loaded from, for records: ``{"z_image": spec}`` or the files' absolute paths."""
    files = resolve_files(models)
    return files.to_dict() if files is not None else {"z_image": models.z_image}


def identity(models: Any) -> str:
    """One string naming Z-Image's source, for cache keys and labels: ``models.z_image`` when it is
    a diffusers folder or hub id, else the files (``dit=...;text_encoder=...``)."""
    if not (models.dit or models.text_encoder or models.vae):
        return str(models.z_image)
    return ";".join(f"{k}={v}" for k, v in (("z_image", models.z_image), *((p, getattr(models, p)) for p in PARTS),
                                             ("tokenizer", models.tokenizer)) if v)
