"""The one check every embedding tensor passes before it is used: shape, length, finite values."""

from __future__ import annotations

import torch

from .errors import InputError


def check_embedding(x: torch.Tensor, name: str, dim: int | None = None, max_tokens: int | None = None) -> torch.Tensor:
    """``x`` as float32 if it is a non-empty, finite ``[tokens, dim]`` tensor (of width ``dim`` and at
    most ``max_tokens`` tokens when given); otherwise one sentence naming ``name``."""
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{name} must be a non-empty [tokens, {dim or 'dim'}] tensor (got shape {shape})")
    if x.shape[0] == 0:
        raise InputError(f"{name} is empty (0 tokens); expected a non-empty [tokens, dim] tensor")
    if dim is not None and x.shape[1] != dim:
        raise InputError(f"{name} has width {x.shape[1]}; this DiT expects {dim}")
    if max_tokens is not None and x.shape[0] > max_tokens:
        raise InputError(f"{name} has {x.shape[0]} tokens; Z-Image takes 1..{max_tokens}")
    if not torch.isfinite(x).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return x.float()


def tensor_digest(x: torch.Tensor) -> str:
    """The first 16 hex digits of SHA-256 over ``dtype``, ``shape`` and the raw bytes of ``x`` (on the
    CPU, row-major): equal digests mean bit-identical tensors."""
    import hashlib

    h = hashlib.sha256(f"{x.dtype}:{tuple(x.shape)}:".encode())
    h.update(x.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint(steps: list[torch.Tensor]) -> dict:
    """What conditioned a picture, as digests: ``steps[i]`` is the ``[L, D]`` caption embedding of
    denoising step ``i``. ``{"fingerprint": d}`` where every step had the same tensor (``d`` its
    :func:`tensor_digest`); otherwise also ``fingerprints_per_step`` and ``fingerprint`` = SHA-256 of
    the per-step digests joined by commas (first 16 hex digits)."""
    import hashlib

    memo: dict[int, str] = {}  # a schedule hands the same tensor object to several steps
    per_step = [memo.setdefault(id(x), tensor_digest(x)) for x in steps]
    if len(set(per_step)) == 1:
        return {"fingerprint": per_step[0]}
    return {"fingerprint": hashlib.sha256(",".join(per_step).encode()).hexdigest()[:16],
            "fingerprints_per_step": per_step}
