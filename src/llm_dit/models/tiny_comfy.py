"""The tiny Z-Image as ComfyUI users hold the real one: single files, the fixtures of ``single_file.py``.

``build_tiny_comfy(out)`` writes, from the weights of the cached tiny diffusers folder (``tiny.py``)::

    out/models/diffusion_models/z_image_turbo_bf16.safetensors   the DiT, ComfyUI keys, bfloat16
    out/models/text_encoders/qwen_3_4b.safetensors               Qwen3ForCausalLM keys (model.), bfloat16
    out/models/vae/ae.safetensors                                FLUX.1 VAE, LDM keys, float32 (as ae.safetensors)
    out/z-image-bf16/     a diffusers folder of the same bfloat16-rounded weights (stored in float32):
                          what the ComfyUI files must reproduce exactly
    out/fp32/             z_image_turbo_fp32.safetensors (keys under model.diffusion_model.),
                          qwen_3_4b_fp32.safetensors, ae.safetensors: the tiny folder's own float32 weights
    out/fp8/              z_image_turbo_fp8_scaled.safetensors (ComfyUI's older convention: a scaled_fp8
                          marker, <layer>.scale_weight), qwen_3_4b_fp8_mixed.safetensors (its newer one:
                          <layer>.weight_scale and <layer>.comfy_quant), z_image_turbo_fp8_e4m3fn.safetensors
                          (plain fp8 weights, no scales); quantised from the float32 weights
    out/configs/          the tiny configs and tokenizer in the diffusers layout, no weights
                          (what --tokenizer names for the tiny models)

The key maps are the inverse of diffusers' converters (``convert_z_image_transformer_checkpoint_to_
diffusers``, ``convert_ldm_vae_checkpoint``); ``tests/test_single_file.py`` checks them by a round
trip through ``from_single_file``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from ..io import cache_root

TINY_COMFY_VERSION = "1"
#: e4m3fn's largest finite value: a per-tensor scale maps the largest weight there.
E4M3_MAX = 448.0


def dit_to_comfy(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """diffusers ``ZImageTransformer2DModel`` keys -> ComfyUI's NextDiT keys (q, k, v fused into qkv;
    ComfyUI's unused ``norm_final`` added, as its files carry it)."""
    renames = (("all_x_embedder.2-1.", "x_embedder."), ("all_final_layer.2-1.", "final_layer."),
               (".attention.to_out.0.", ".attention.out."), (".attention.norm_q.", ".attention.q_norm."),
               (".attention.norm_k.", ".attention.k_norm."))
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        if ".attention.to_q." in key:
            base = key.replace(".attention.to_q.", ".attention.{}.")
            value = torch.cat([state[base.format(p)] for p in ("to_q", "to_k", "to_v")], dim=0)
            key = base.format("qkv")
        for old, new in renames:
            key = key.replace(old, new)
        out[prefix + key] = value
    dim = state["cap_embedder.1.weight"].shape[0]
    out[prefix + "norm_final.weight"] = torch.ones(dim, dtype=next(iter(state.values())).dtype)
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], up_blocks: int) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKL`` keys -> the LDM keys of FLUX.1's ``ae.safetensors`` (decoder blocks
    in reverse order, attention projections as 1x1 convolutions)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        k = key.replace("conv_norm_out.", "norm_out.")
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", k)
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.",
                   lambda m: f"decoder.up.{up_blocks - 1 - int(m.group(1))}.block.", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                   lambda m: f"decoder.up.{up_blocks - 1 - int(m.group(1))}.upsample.", k)
        k = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", k)
        k = k.replace("conv_shortcut.", "nin_shortcut.")
        if ".mid_block.attentions.0." in k:
            k = k.replace(".mid_block.attentions.0.", ".mid.attn_1.")
            for old, new in (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                             ("to_out.0.", "proj_out.")):
                k = k.replace(old, new)
            if value.dim() == 2:
                value = value[:, :, None, None]
        out[k] = value
    return out


def quantise_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fp8 e4m3fn weight, float32 scale)`` with ``scale = max|w| / 448`` (round to nearest)."""
    scale = (w.abs().max().float() / E4M3_MAX).clamp(min=1e-12)
    return (w.float() / scale).to(torch.float8_e4m3fn), scale.reshape(())


def _quantised(key: str, value: torch.Tensor) -> bool:
    """The weights fp8 files quantise: the matrices of the repeated blocks (norms, embeddings and the
    first and last layers stay in higher precision, as in ComfyUI's fp8_scaled files)."""
    return key.endswith(".weight") and value.dim() == 2 and re.search(r"(^|\.)(layers|noise_refiner|"
                                                                       r"context_refiner)\.\d+\.", key) is not None


def scaled_fp8_legacy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's older scaled-fp8 layout: ``scaled_fp8`` marker, ``<layer>.weight`` in e4m3fn and
    ``<layer>.scale_weight`` (float32, shape ``[]``)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if _quantised(key, value):
            out[key], out[key.removesuffix("weight") + "scale_weight"] = quantise_fp8(value)
        else:
            out[key] = value.to(torch.bfloat16)
    out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


def scaled_fp8_mixed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's newer layout: ``<layer>.weight_scale`` and ``<layer>.comfy_quant`` (the layer's
    format as UTF-8 JSON bytes in a uint8 tensor)."""
    conf = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode("utf-8")), dtype=torch.uint8)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if _quantised(key, value):
            layer = key.removesuffix(".weight")
            out[key], out[f"{layer}.weight_scale"] = quantise_fp8(value)
            out[f"{layer}.comfy_quant"] = conf.clone()
        else:
            out[key] = value.to(torch.bfloat16)
    return out


def plain_fp8(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp8 e4m3fn weights without scales (cast; every value of the tiny weights is in range)."""
    return {k: v.to(torch.float8_e4m3fn) if _quantised(k, v) else v.to(torch.bfloat16) for k, v in state.items()}


def _save(path: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def _copy_configs(src: Path, out: Path) -> None:
    for sub in ("transformer", "vae", "text_encoder"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / sub / "config.json", out / sub / "config.json")
    shutil.copytree(src / "scheduler", out / "scheduler")
    shutil.copytree(src / "tokenizer", out / "tokenizer")


def checkpoint_state(folder: Path, stem: str) -> dict[str, torch.Tensor]:
    """One state dict from the ``stem.safetensors`` weights of a checkpoint folder, sharded (as the
    text encoder is, with ``stem.safetensors.index.json``) or not."""
    from safetensors.torch import load_file

    index = folder / f"{stem}.safetensors.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() \
        else [f"{stem}.safetensors"]
    return {k: v for shard in shards for k, v in load_file(str(folder / shard)).items()}


def build_tiny_comfy(out: str | os.PathLike, z_image: str | os.PathLike | None = None) -> Path:
    """Write the files listed in the module docstring from the tiny diffusers folder ``z_image``
    (default: the cached one); returns ``out``."""
    from diffusers import ZImagePipeline

    from .tiny import ensure_tiny_models

    src = Path(z_image) if z_image is not None else ensure_tiny_models() / "z-image"
    out = Path(out)
    dit = checkpoint_state(src / "transformer", "diffusion_pytorch_model")
    vae = checkpoint_state(src / "vae", "diffusion_pytorch_model")
    text = checkpoint_state(src / "text_encoder", "model")
    up_blocks = len(json.loads((src / "vae" / "config.json").read_text())["up_block_types"])

    def bf16(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(torch.bfloat16) for k, v in state.items()}

    models = out / "models"
    _save(models / "diffusion_models" / "z_image_turbo_bf16.safetensors", dit_to_comfy(bf16(dit)))
    _save(models / "text_encoders" / "qwen_3_4b.safetensors", bf16(text))
    _save(models / "vae" / "ae.safetensors", vae_to_ldm(vae, up_blocks))

    fp32 = out / "fp32"
    _save(fp32 / "z_image_turbo_fp32.safetensors", dit_to_comfy(dit, prefix="model.diffusion_model."))
    _save(fp32 / "qwen_3_4b_fp32.safetensors", text)
    _save(fp32 / "ae.safetensors", vae_to_ldm(vae, up_blocks))

    fp8 = out / "fp8"
    _save(fp8 / "z_image_turbo_fp8_scaled.safetensors", scaled_fp8_legacy(dit_to_comfy(dit)))
    _save(fp8 / "qwen_3_4b_fp8_mixed.safetensors", scaled_fp8_mixed(text))
    _save(fp8 / "z_image_turbo_fp8_e4m3fn.safetensors", plain_fp8(dit_to_comfy(dit)))

    _copy_configs(src, out / "configs")
    pipe = ZImagePipeline.from_pretrained(str(src), dtype=torch.bfloat16)
    pipe.to(torch.float32)
    pipe.vae.load_state_dict(vae)  # the VAE file is float32: its weights are not rounded
    pipe.save_pretrained(out / "z-image-bf16", safe_serialization=True)
    index = json.loads((src / "model_index.json").read_text())
    (out / "z-image-bf16" / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return out


def ensure_tiny_comfy() -> Path:
    """The cached tiny single files, built on first use (beside the tiny models they come from)."""
    from .tiny import TINY_VERSION

    final = cache_root() / f"tiny-comfy-v{TINY_VERSION}.{TINY_COMFY_VERSION}"
    if (final / "z-image-bf16" / "model_index.json").is_file():
        return final
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build_tiny_comfy(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "z-image-bf16" / "model_index.json").is_file():  # not another process finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
