"""The one check every embedding tensor passes before it is used (shape, length, finite values), and
the one way sequences of different lengths meet.

Resampling a ``[L, D]`` sequence to ``n`` tokens (:func:`resample`):

* ``linear`` (the seeds): ``F.interpolate(mode="linear", align_corners=False)``; output ``j`` reads
  position ``p_j = (j + 0.5) L / n - 0.5`` (clamped) with two taps. Squeezing ~1000 image tokens into
  ~20 keeps ~40 of them and drops the rest: aliasing.
* ``area``: adaptive average pooling; output ``j`` averages input window
  ``[floor(jL/n), ceil((j+1)L/n))``, so every token contributes. When ``n > L`` each window holds one
  token: tokens are repeated.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch
import torch.nn.functional as F

from .errors import InputError, unknown_choice

RESAMPLE_METHODS = ("linear", "area")
_F = TypeVar("_F", bound=Callable[..., Any])


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


def resample(x: torch.Tensor, n: int, method: str = "linear") -> torch.Tensor:
    """``[L, D] -> [n, D]`` by ``linear`` or ``area`` (see the module docstring); ``L == n`` is a no-op."""
    if method not in RESAMPLE_METHODS:
        raise InputError(unknown_choice("resampling", method, RESAMPLE_METHODS))
    if n < 1:
        raise InputError(f"cannot resample to {n} tokens")
    if x.shape[0] == n:
        return x
    seq = x.T[None].float()  # [1, D, L]: F.interpolate works along the last axis
    if method == "linear":
        out = F.interpolate(seq, size=n, mode="linear", align_corners=False)
    else:
        out = F.adaptive_avg_pool1d(seq, n)
    return out[0].T


def _unbatch(x: Any) -> Any:
    if not (isinstance(x, torch.Tensor) and x.ndim == 3):
        return x
    if x.shape[0] != 1:
        raise InputError(f"a batched embedding must hold one sequence, [1, tokens, dim] (got {tuple(x.shape)})")
    return x[0]


def notes_names(**aliases: str) -> Callable[[_F], _F]:
    """Let a tensor function take the research notes' calls as written.

    ``aliases`` maps a notes keyword to the parameter it names (``text_embeddings="text"``). A
    ``[1, L, D]`` tensor argument (the notes' batched form) is called with its ``[L, D]`` sequence,
    and then a tensor result gets the batch axis back (``[L, D] -> [1, L, D]``, ``[D] -> [1, D]``).
    Batches of more than one sequence are refused in one sentence.
    """

    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            for notes, ours in aliases.items():
                if notes in kwargs:
                    if ours in kwargs:
                        raise InputError(f"{notes}= and {ours}= name the same argument of {fn.__name__}: give one")
                    kwargs[ours] = kwargs.pop(notes)
            batched = any(isinstance(a, torch.Tensor) and a.ndim == 3 for a in (*args, *kwargs.values()))
            if not batched:
                return fn(*args, **kwargs)
            out = fn(*[_unbatch(a) for a in args], **{k: _unbatch(v) for k, v in kwargs.items()})
            return out.unsqueeze(0) if isinstance(out, torch.Tensor) else out

        return cast(_F, call)

    return wrap
