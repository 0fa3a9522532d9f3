"""One model file's header: what a safetensors file of Z-Image's parts holds, read without its
tensors, and its tensors read (fp8 dequantised). ``single_file.py`` finds and loads the files.

A file's kind comes from its key layout (a Z-Image DiT, a Qwen3 text encoder, a FLUX VAE, or
another model named for the error); "scaled fp8" files hold e4m3fn weights with a float32 scale
each (ComfyUI's ``scaled_fp8`` marker with ``<layer>.scale_weight``, or ``<layer>.weight_scale``
with ``<layer>.comfy_quant`` / the ``_quantization_metadata`` header entry), dequantised as
``weight * scale``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelLoadError

#: The parts, their config keys and flags, and what each is.
PARTS = ("dit", "text_encoder", "vae")
FLAGS = {"dit": "--dit", "text_encoder": "--text-encoder", "vae": "--vae"}
WHAT = {"dit": "Z-Image DiT", "text_encoder": "Qwen3 text encoder", "vae": "FLUX VAE"}
#: Prefixes a part's keys may carry in a file (a whole-checkpoint layout), stripped before loading.
_PREFIXES = {"dit": ("model.diffusion_model.",), "text_encoder": (), "vae": ("first_stage_model.", "vae.")}
#: fp8 dtypes as the safetensors header names them.
_FP8 = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_FP8_FORMATS = {"float8_e4m3fn", "float8_e5m2"}


# -- reading a file's header ------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """A safetensors file's table of contents: each tensor's shape and dtype, and the metadata."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    metadata: dict[str, str]

    def prefix(self, candidates: tuple[str, ...]) -> str:
        """The candidate prefix that most keys carry ('' when none does)."""
        counts = {p: sum(k.startswith(p) for k in self.shapes) for p in candidates}
        best = max(counts, key=lambda p: counts[p], default="")
        return best if counts.get(best, 0) > len(self.shapes) // 2 else ""

    def count(self, pattern: str) -> int:
        """How many distinct N match ``pattern`` (a regex with one group) over the keys."""
        rx = re.compile(pattern)
        return len({m.group(1) for k in self.shapes if (m := rx.match(k))})


def read_header(path: str | os.PathLike, what: str = "model file") -> Header:
    """The header of ``path``; a one-line :class:`ModelLoadError` when it is no safetensors file."""
    from safetensors import safe_open

    p = Path(path)
    if p.is_dir():
        raise ModelLoadError(f"{what} {p} is a folder; expected a .safetensors file")
    if not p.is_file():
        raise ModelLoadError(f"{what} {p} does not exist")
    try:
        with safe_open(str(p), framework="pt") as f:
            keys = list(f.keys())
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
            dtypes = {k: f.get_slice(k).get_dtype() for k in keys}
            metadata = dict(f.metadata() or {})
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if "not fully covered" in first:  # safetensors: the data ends before the header's offsets do
            raise ModelLoadError(f"{what} {p} is truncated: {p.stat().st_size} bytes, shorter than its header "
                                 "says (an interrupted download?)") from None
        raise ModelLoadError(f"{what} {p} is not a readable safetensors file ({first})") from None
    if not keys:
        raise ModelLoadError(f"{what} {p} holds no tensors")
    return Header(p, shapes, dtypes, metadata)


#: Keys that identify other models, so a wrong file is named for what it is.
_OTHER_KINDS = (
    ("double_blocks.0.img_attn.qkv.weight", "a FLUX DiT"),
    ("model.diffusion_model.double_blocks.0.img_attn.qkv.weight", "a FLUX DiT"),
    ("transformer_blocks.0.attn.to_qkv.weight", "a Qwen-Image DiT"),
    ("input_blocks.0.0.weight", "a Stable Diffusion UNet"),
    ("model.diffusion_model.input_blocks.0.0.weight", "a Stable Diffusion checkpoint"),
    ("text_model.encoder.layers.0.mlp.fc1.weight", "a CLIP text encoder"),
    ("encoder.block.0.layer.0.SelfAttention.k.weight", "a T5 text encoder"),
    ("model.language_model.layers.0.self_attn.q_proj.weight", "a Qwen3-VL model"),
    ("model.layers.0.self_attn.k_proj.bias", "a Qwen2.5 language model"),
)


def kind_of(h: Header) -> tuple[str | None, str]:
    """``(part, description)``: which part the file holds by its key layout (None: none of them),
    and what it is in words (for messages)."""
    keys = h.shapes
    dit = h.prefix(_PREFIXES["dit"])
    if f"{dit}cap_embedder.1.weight" in keys:
        if f"{dit}layers.0.adaLN_modulation.0.weight" in keys:
            return "dit", "a Z-Image DiT"
        return None, "a Lumina 2 DiT"
    for p in ("model.", ""):
        if f"{p}layers.0.self_attn.q_norm.weight" in keys and f"{p}layers.0.post_attention_layernorm.weight" in keys:
            return "text_encoder", "a Qwen3 text encoder"
    vae = h.prefix(_PREFIXES["vae"])
    if f"{vae}decoder.conv_in.weight" in keys and f"{vae}encoder.conv_in.weight" in keys:
        channels = h.shapes[f"{vae}decoder.conv_in.weight"][1]
        if channels == 16:
            return "vae", "a FLUX VAE"
        return None, f"a VAE with {channels} latent channels (Z-Image's has 16: the FLUX.1 VAE, ae.safetensors)"
    for key, what in _OTHER_KINDS:
        if key in keys:
            return None, what
    return None, f"no model llm-dit knows (first key: {next(iter(keys))})"


def check_kind(h: Header, part: str) -> None:
    """Refuse ``h`` unless it holds ``part``: one line naming the file, what it is, and the flag."""
    kind, what = kind_of(h)
    if kind != part:
        raise ModelLoadError(f"{FLAGS[part]} {h.path}: expected a {WHAT[part]} file, but it is {what}")


def text_hidden_size(h: Header) -> int | None:
    """The hidden size of a Qwen3 text-encoder file, or None."""
    for p in ("model.", ""):
        if (s := h.shapes.get(f"{p}layers.0.post_attention_layernorm.weight")) is not None:
            return s[0]
    return None


def text_layers(h: Header) -> int:
    """Decoder layers of a Qwen3 text-encoder file."""
    return h.count(r"(?:model\.)?layers\.(\d+)\.")


def caption_dim(h: Header) -> int | None:
    """The caption feature size a Z-Image DiT file expects (its text encoder's hidden size)."""
    s = h.shapes.get(f"{h.prefix(_PREFIXES['dit'])}cap_embedder.1.weight")
    return s[1] if s is not None else None


# -- quantised weights --------------------------------------------------------------------------------


def _quant_formats(h: Header) -> dict[str, str]:
    """``{layer: format}`` as the file's ``_quantization_metadata`` header entry states it (ComfyUI's
    newer convention); the ``.comfy_quant`` tensors are read at load time."""
    raw = h.metadata.get("_quantization_metadata")
    if not raw:
        return {}
    try:
        layers = json.loads(raw).get("layers", {})
        return {str(k): str(v.get("format")) for k, v in layers.items()}
    except (ValueError, AttributeError):
        raise ModelLoadError(f"{h.path}: its _quantization_metadata is not the JSON ComfyUI writes") from None


def quantisation(h: Header) -> str:
    """``none``, ``fp8`` (fp8 weights without scales), ``scaled_fp8`` (scales per weight), for messages
    and records."""
    fp8 = any(d in _FP8 for d in h.dtypes.values())
    scaled = any(k.endswith((".scale_weight", ".weight_scale")) for k in h.shapes)
    return "scaled_fp8" if scaled else "fp8" if fp8 else "none"


#: Entries of a quantised file that are no weight of the model: scales, the fp8 products' input
#: scales, ComfyUI's per-layer format tags.
_SCALE_SUFFIXES = (".scale_weight", ".weight_scale", ".scale_input", ".input_scale", ".comfy_quant")


def is_quantisation_entry(key: str) -> bool:
    """Whether ``key`` is a scale, a format tag or the ``scaled_fp8`` marker, not a model weight."""
    return key.endswith(_SCALE_SUFFIXES) or key.rsplit(".", 1)[-1] == "scaled_fp8"


def load_tensors(h: Header, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every weight of the file in ``dtype``: fp8 weights dequantised (``w * scale``, the scale per
    tensor or per output row) or cast; scale and marker entries dropped. A quantisation that is not
    fp8 (ComfyUI also writes int8, nvfp4, mxfp8 ...) is one line naming the layer and its format."""
    from safetensors import safe_open

    formats = _quant_formats(h)
    out: dict[str, torch.Tensor] = {}
    with safe_open(str(h.path), framework="pt") as f:
        for key in h.shapes:
            if is_quantisation_entry(key):
                continue
            layer = key.removesuffix(".weight")
            fmt = formats.get(layer)
            if key.endswith(".weight") and f"{layer}.comfy_quant" in h.shapes:
                raw = bytes(f.get_tensor(f"{layer}.comfy_quant").tolist())
                try:
                    fmt = str(json.loads(raw.decode("utf-8")).get("format"))
                except (ValueError, AttributeError):
                    raise ModelLoadError(f"{h.path}: {layer}.comfy_quant is not the JSON ComfyUI writes") from None
            if fmt is not None and fmt not in _FP8_FORMATS:
                raise ModelLoadError(f"{h.path}: layer {layer} is quantised as {fmt}, which llm-dit does not read "
                                     "(it dequantises fp8 e4m3fn/e5m2 only); use the bf16 or fp8_scaled file")
            t = f.get_tensor(key)
            scale_key = next((f"{layer}.{s}" for s in ("scale_weight", "weight_scale")
                              if f"{layer}.{s}" in h.shapes), None)
            if scale_key is not None and key.endswith(".weight"):
                if t.dtype not in _FP8.values():
                    raise ModelLoadError(f"{h.path}: {key} has a scale but is {h.dtypes[key]}, not fp8")
                scale = f.get_tensor(scale_key).to(torch.float32)
                if scale.numel() == 1:
                    scale = scale.reshape(())
                elif scale.numel() == t.shape[0]:
                    scale = scale.reshape(-1, *([1] * (t.dim() - 1)))
                else:
                    raise ModelLoadError(f"{h.path}: the scale of {key} has shape {tuple(scale.shape)}; llm-dit "
                                         "reads one scale per tensor or per row")
                t = t.to(torch.float32) * scale
            out[key] = t.to(dtype) if t.is_floating_point() else t
    return out
