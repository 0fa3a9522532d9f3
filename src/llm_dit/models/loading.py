"""Where models come from and where they go: paths, devices, dtypes, offloading.

A model argument is one of
* ``tiny``: the built-in tiny random-weight models (built once into the cache, see ``tiny.py``);
* a local folder in the library's own layout (diffusers for Z-Image, transformers for Qwen3-VL);
* a hub id ``org/name``, resolved by huggingface_hub (its cache, or a download where allowed).

Z-Image may also come from single files, ComfyUI's (``models.dit``, ``models.text_encoder``,
``models.vae``, or a ComfyUI ``models/`` folder as ``models.z_image``): ``single_file.py``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config, RuntimeConfig
from ..errors import ConfigError, ModelLoadError

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+")

# The file that marks each layout, and the subfolder of the tiny models.
_LAYOUTS = {
    "z_image": ("model_index.json", "z-image", "a diffusers Z-Image folder"),
    "vl": ("config.json", "qwen3-vl", "a transformers Qwen3-VL folder"),
}


def resolve_model_path(spec: str, kind: str) -> str:
    """A loadable path or hub id for ``spec``; a one-line :class:`ModelLoadError` when it cannot be."""
    marker, tiny_sub, what = _LAYOUTS[kind]
    if spec == "tiny":
        from .tiny import ensure_tiny_models

        return str(ensure_tiny_models() / tiny_sub)
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        if kind == "z_image" and not (path / marker).is_file():
            from .single_file import is_comfy_folder

            if is_comfy_folder(path):
                raise ModelLoadError(f"{spec} is a ComfyUI models folder, not a diffusers one: it is read as "
                                     "single files (models.dit, models.text_encoder, models.vae)")
        if not (path / marker).is_file():
            raise ModelLoadError(f"{spec} is not {what}: it has no {marker}")
        return str(path)
    if path.exists():
        hint = " (a single Z-Image file goes to --dit, --text-encoder or --vae)" if kind == "z_image" else ""
        raise ModelLoadError(f"model path {spec} is a file; expected {what}{hint}")
    if spec.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(spec):
        raise ModelLoadError(f"model path {spec} does not exist")
    return spec


def check_z_image(models) -> None:
    """Refuse, before anything loads, a Z-Image source that cannot be: a folder or file not there, a
    ComfyUI folder with no file (or several) of a part (``models`` is a
    :class:`~llm_dit.config.ModelsConfig`)."""
    from .single_file import resolve_files

    if resolve_files(models) is None and models.z_image != "tiny":
        resolve_model_path(models.z_image, "z_image")


@dataclass(frozen=True)
class Placement:
    """The device and dtype a config resolves to on this machine."""

    device: torch.device
    dtype: torch.dtype
    offload: str
    precision: str = "dtype"  # runtime.precision: the DiT's linear layers (fp8.py)

    def to_dict(self) -> dict:
        out: dict = {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
                     "offload": self.offload, "precision": self.precision}
        if self.precision != "dtype":  # how far from bfloat16 such pictures are, as measured
            from .fp8 import FIDELITY, FIDELITY_SOURCE

            out["precision_fidelity"] = {**FIDELITY[self.precision], "measured": FIDELITY_SOURCE}
        return out


def resolve_placement(runtime: RuntimeConfig) -> Placement:
    """``auto`` -> cuda + bfloat16 when a GPU is present, else cpu + float32."""
    if runtime.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(runtime.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"runtime.device is '{runtime.device}' but no CUDA GPU is available; "
                "use a profile with device = \"auto\" or \"cpu\" (e.g. --profile default)"
            )
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ConfigError("runtime.device is 'mps' but MPS is not available on this machine")
    if runtime.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, runtime.dtype)
    if runtime.offload != "none" and device.type != "cuda":
        raise ConfigError(f"runtime.offload = '{runtime.offload}' needs a CUDA device (device is {device})")
    if runtime.compile and runtime.offload not in ("none", "encoder"):
        # compiled blocks and offloading hooks that move weights under them do not mix
        raise ConfigError(f"runtime.compile needs offload = \"none\" or \"encoder\" (it is \"{runtime.offload}\")")
    from .fp8 import check_precision

    check_precision(runtime.precision, device, dtype)
    return Placement(device, dtype, runtime.offload, runtime.precision)


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a one-line
    error quotes of a library's failure."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


#: huggingface_hub's errors for weights that are neither cached here nor reachable.
_NO_WEIGHTS = ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "RepositoryNotFoundError", "EntryNotFoundError")
#: The hint that ends such a failure: the tiny models need no download.
NO_WEIGHTS_HINT = "no weights here? try --profile tiny"


def lacks_weights(spec: str, err: BaseException) -> bool:
    """Whether loading the hub id ``spec`` failed because its weights are not on this machine (not
    cached, and no network or no such repository), as opposed to a broken local folder or a bug."""
    if not _HUB_ID.fullmatch(spec) or Path(os.path.expanduser(spec)).exists():
        return False
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:  # the whole chain: transformers wraps the hub's error
        seen.add(id(e))
        text = str(e)
        if type(e).__name__ in _NO_WEIGHTS or "not fully cached locally" in text or "couldn't connect" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


def load_failure(what: str, spec: str, err: BaseException) -> ModelLoadError:
    """The one-line error for a model that did not load: ``could not load <what> from '<spec>':
    <first line of the cause>``, ending with :data:`NO_WEIGHTS_HINT` when the weights are not here."""
    hint = f"; {NO_WEIGHTS_HINT}" if lacks_weights(spec, err) else ""
    return ModelLoadError(f"could not load {what} from '{spec}': {first_line(err)}{hint}")


def load_z_image_pipeline(config: Config, placement: Placement | None = None):
    """``ZImagePipeline.from_pretrained`` on the configured model (or the single files it names:
    :mod:`.single_file`), placed per the runtime policy.

    Loaded once: the pipeline's own text encoder and tokenizer are the ones used for text encoding.
    """
    from diffusers import ZImagePipeline

    from .single_file import load_pipeline, resolve_files

    placement = placement or resolve_placement(config.runtime)
    files = resolve_files(config.models)
    if files is not None:  # single files (ComfyUI's): see single_file.py
        pipe = load_pipeline(files, placement.dtype)
    else:
        source = resolve_model_path(config.models.z_image, "z_image")
        try:
            pipe = ZImagePipeline.from_pretrained(source, dtype=placement.dtype)
        except Exception as e:  # hub errors, missing files, corrupt weights: all one line
            raise load_failure("Z-Image", config.models.z_image, e) from e
    apply_precision(pipe, placement)
    place_pipeline(pipe, placement)
    apply_speed(pipe, config.runtime)
    pipe.set_progress_bar_config(leave=False)
    return pipe


def apply_precision(pipe, placement: Placement) -> None:
    """``runtime.precision`` ``fp8_weights`` / ``fp8``: the DiT's attention and feed-forward weights
    to float8 (:func:`~llm_dit.models.fp8.to_fp8`), before the DiT is placed: on a GPU each layer is
    quantized there and kept there when the DiT stays resident (offload ``none`` or ``encoder``;
    else back on the CPU for the offloading to move), so the bfloat16 DiT never sits whole on a small GPU."""
    if placement.precision == "dtype":
        return
    from .fp8 import to_fp8

    cuda = placement.device.type == "cuda"
    store = placement.device if placement.offload in ("none", "encoder") else torch.device("cpu")
    to_fp8(pipe.transformer, placement.precision, work=placement.device if cuda else None, store=store)


def place_pipeline(pipe, placement: Placement) -> None:
    """Move a diffusers pipeline to its device, or install the configured offloading.

    ``encoder``: the DiT and the VAE stay on the GPU; the text encoder (7.5 GiB in bfloat16) stays on
    the CPU in pinned memory and streams through the GPU a decoder layer at a time when it encodes
    (diffusers' block-level group offloading on a CUDA stream: layer i + 1 is copied in while layer i
    runs; offloading a layer only drops its GPU copy, so nothing is ever copied back). The GPU holds
    the DiT and the VAE, and while an encode runs two of the encoder's 36 layers and its token
    embedding (0.78 GiB); the DiT never moves. An encode costs one pass of the encoder's weights over
    the bus, overlapped with its compute.
    """
    if placement.offload == "none":
        pipe.to(placement.device)
    elif placement.offload == "encoder":
        from diffusers.hooks import apply_group_offloading

        pipe.transformer.to(placement.device)
        pipe.vae.to(placement.device)
        apply_group_offloading(pipe.text_encoder, **_group_offload_kwargs(placement, "block_level"))
    elif placement.offload == "model":
        pipe.enable_model_cpu_offload(device=placement.device)
    else:
        pipe.enable_group_offload(**_group_offload_kwargs(placement))


def _group_offload_kwargs(placement: Placement, level: str | None = None) -> dict:
    """diffusers' group-offloading arguments: ``level`` (default: the one ``group_*`` names), one
    block per group, prefetched on a CUDA stream from pinned CPU memory."""
    level = level or ("block_level" if placement.offload == "group_block" else "leaf_level")
    kwargs = {"num_blocks_per_group": 1} if level == "block_level" else {}
    return dict(onload_device=placement.device, offload_device=torch.device("cpu"), offload_type=level,
                use_stream=True, **kwargs)


def place_language_model(model, placement: Placement):
    """A transformers model (Qwen3-VL) on its device, or group-offloaded under ``group_*``.

    Group offloading is applied at leaf level (each Linear, Embedding and norm moves in when it
    runs) whatever the block/leaf choice: Qwen3-VL calls its
    token embedding outside its language model's forward, which block groups would not see, and
    diffusers' block grouping cannot descend into nested models with streams. Under ``none``,
    ``encoder`` and ``model`` it is resident: a one-shot run frees it before Z-Image loads, and
    ``keep_models = "one"`` does so in a server.
    """
    if placement.offload.startswith("group_"):
        from diffusers.hooks import apply_group_offloading

        # No CUDA-stream prefetching: it replays the order of the first forward pass, and caption
        # generation (prefill, then one token at a time) runs the modules in another order.
        apply_group_offloading(model, onload_device=placement.device, offload_device=torch.device("cpu"),
                               offload_type="leaf_level", use_stream=False)
        return model
    return model.to(placement.device)


def apply_speed(pipe, runtime: RuntimeConfig) -> None:
    """The speed options: diffusers' attention backend, and ``torch.compile`` of the DiT's repeated
    blocks (diffusers' regional compilation: one block compiled, reused 30 times) and the VAE decoder.
    Compiled, attention rotates q and k in real arithmetic and projects q, k, v in one matrix product
    (``rope.py``: Inductor cannot fuse the stock complex multiply)."""
    if runtime.attention != "native":
        try:
            pipe.transformer.set_attention_backend(runtime.attention)
        except Exception as e:  # a backend whose package is missing, or that this GPU cannot run
            raise ConfigError(f"runtime.attention = '{runtime.attention}' is not usable here: {first_line(e)}") \
                from None
    if runtime.compile:
        from .rope import fuse_qkv, use_real_rope

        use_real_rope(pipe.transformer)
        fuse_qkv(pipe.transformer)
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
        pipe.vae.decoder.compile()
