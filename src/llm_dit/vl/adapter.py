"""A linear bridge from Qwen3-VL hidden states to Qwen3-4B's, fitted in closed form on text alone.

Seed 003 asks whether "a minimal adapter" (one linear layer between VL and DiT) would fix the
distribution mismatch, and seed 001 whether training is required at all. This is the cheapest
version that needs no images and no gradient steps: the two models share a tokenizer, so a prompt's
own tokens line up one to one. For each prompt of a corpus, the VL language model's states at layer
``k_v`` over the user's tokens (a chat without an image) are paired with Z-Image's text encoder's
states at layer ``k_t`` over the same tokens: ``X, Y`` of shape ``[N, D]``. Ridge regression::

    W = (Xc^T Xc + lam I)^-1 Xc^T Yc,   b = mean(Y) - mean(X) W,   lam = ridge * tr(Xc^T Xc) / D

(``Xc``, ``Yc`` centred; float64). A recipe with ``adapter = "file"`` maps its VL tokens, image
tokens included, as ``x -> x W + b`` before normalization. Whether a map learned on text transfers to
image tokens is exactly the question; the fit reports held-out residuals next to a scaled identity.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InputError
from ..limits import MAX_LAYER, MAX_RIDGE, check_number
from ..progress import progress
from ..protocols import Extractor
from ..text.capture import canonical_layer

log = logging.getLogger(__name__)

_META_KEY = "llm_dit_adapter"


@dataclass
class LinearAdapter:
    weight: torch.Tensor  # [D, D]
    bias: torch.Tensor  # [D]
    vl_layer: int  # canonical hidden_states index of the VL model
    vl_num_layers: int
    text_layer: int  # canonical index of the text encoder
    text_num_layers: int
    info: dict = field(default_factory=dict)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``x W + b`` for ``x: [n, D]`` (float32 out)."""
        if x.shape[-1] != self.weight.shape[0]:
            raise InputError(f"the adapter maps {self.weight.shape[0]}-d states; these are {x.shape[-1]}-d")
        return (x.double() @ self.weight.double() + self.bias.double()).float()

    def check_layer(self, layer: int, num_layers: int) -> None:
        k = canonical_layer(layer, num_layers, "vl model")
        if (k, num_layers) != (self.vl_layer, self.vl_num_layers):
            raise InputError(f"the adapter maps VL layer {self.vl_layer} of {self.vl_num_layers}; this part reads "
                             f"layer {k} of {num_layers} (fit one with llm-dit stats adapter --vl-layer)")

    def save(self, path: str | Path) -> Path:
        from ..io import save_tensors

        meta = {"vl_layer": self.vl_layer, "vl_num_layers": self.vl_num_layers, "text_layer": self.text_layer,
                "text_num_layers": self.text_num_layers, **self.info}
        return save_tensors(path, {"weight": self.weight, "bias": self.bias}, _META_KEY, meta)

    @classmethod
    def load(cls, path: str | Path, digests: dict[str, str] | None = None) -> LinearAdapter:
        """The adapter in ``path`` (``digests``: see :func:`~llm_dit.io.read_input`)."""
        p = Path(path)
        adapter, digest = _load(str(p.resolve()), p.stat().st_mtime_ns if p.exists() else 0)
        if digests is not None:
            digests[str(path)] = digest
        return adapter


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime: int) -> tuple[LinearAdapter, str]:  # mtime: a rewritten file is read again
    from ..io import load_tensors

    read: dict[str, str] = {}
    meta, t = load_tensors(path, _META_KEY, "adapter", read)
    keys = ("vl_layer", "vl_num_layers", "text_layer", "text_num_layers")
    if "weight" not in t or "bias" not in t or any(k not in meta for k in keys):
        raise InputError(f"{path} is not an llm-dit adapter file")
    return LinearAdapter(t["weight"], t["bias"], vl_layer=int(meta["vl_layer"]),
                         vl_num_layers=int(meta["vl_num_layers"]), text_layer=int(meta["text_layer"]),
                         text_num_layers=int(meta["text_num_layers"]),
                         info={k: v for k, v in meta.items() if k not in keys}), read[path]


def _find(seq: list[int], sub: list[int]) -> int:
    for i in range(len(seq) - len(sub) + 1):
        if seq[i:i + len(sub)] == sub:
            return i
    return -1


def gather_pairs(extractor: Extractor, tokenizer, text_encoder, prompts: list[str], vl_layer: int,
                 text_layer: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """``(X, Y, tokens per prompt)``: VL and text-encoder states of each prompt's own tokens."""
    from ..text import encode_prompt

    xs, ys, counts = [], [], []
    for prompt in progress(prompts, len(prompts), "adapter: states of", "prompts", log):
        r = extractor.extract(None, prompt, hidden_layer=vl_layer, token_selection="user_text")
        ids = r.input_ids[r.masks.get("user_text")].tolist()
        enc = encode_prompt(tokenizer, text_encoder, prompt, hidden_layer=text_layer, max_length=1504)
        at = _find(enc.token_ids, ids)
        if at < 0 or not ids:  # tokenized differently in the two chats: leave the prompt out
            continue
        xs.append(r.embedding)
        ys.append(enc.embeddings[at:at + len(ids)])
        counts.append(len(ids))
    if not xs:
        raise InputError("no prompt tokenized the same way in both chats; the models do not share a tokenizer")
    return torch.cat(xs), torch.cat(ys), counts


def ridge_fit(x: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, b)`` of the module docstring."""
    check_number(ridge, "ridge", gt=0, le=MAX_RIDGE)
    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    lam = ridge * float(torch.trace(gram)) / x.shape[1]
    w = torch.linalg.solve(gram + lam * torch.eye(x.shape[1], dtype=torch.float64), xc.T @ yc)
    return w.float(), (my - mx @ w).float()


def relative_residual(pred: torch.Tensor, y: torch.Tensor) -> float:
    """``||pred - y|| / ||y - mean(y)||`` (0: perfect; 1: no better than the mean)."""
    return float((pred - y).norm() / (y - y.mean(0)).norm().clamp_min(1e-12))


def fit_adapter(extractor: Extractor, tokenizer, text_encoder, prompts: list[str], vl_layer: int = -6,
                text_layer: int = -2, ridge: float = 1e-2, holdout: float = 0.2) -> LinearAdapter:
    """Fit on the first prompts, report residuals on the last ``holdout`` share, then refit on all.

    ``ridge``: the ridge strength relative to the mean variance, in ``(0, MAX_RIDGE]``; checked (with
    the layers and ``holdout``) before any prompt is encoded."""
    check_number(ridge, "ridge", gt=0, le=MAX_RIDGE)
    check_number(holdout, "holdout", ge=0, lt=1)
    for name, layer in (("vl_layer", vl_layer), ("text_layer", text_layer)):
        check_number(layer, name, whole=True, ge=-(MAX_LAYER + 1), le=MAX_LAYER)
    x, y, counts = gather_pairs(extractor, tokenizer, text_encoder, prompts, vl_layer, text_layer)
    log.info(f"adapter: ridge fit on {x.shape[0]} token pairs of {len(counts)} prompts "
             f"({x.shape[1]} -> {y.shape[1]} dims)")
    n_test = sum(counts[len(counts) - max(1, round(holdout * len(counts))):]) if len(counts) > 1 else 0
    info = {"prompts": len(counts), "tokens": int(x.shape[0]), "ridge": ridge, "model_vl": extractor.model_name}
    if n_test:
        w, b = ridge_fit(x[:-n_test], y[:-n_test], ridge)
        xt, yt = x[-n_test:], y[-n_test:]
        scale = float(y[:-n_test].std() / x[:-n_test].std().clamp_min(1e-12))
        info["heldout_residual"] = relative_residual(xt @ w + b, yt)
        info["heldout_residual_scaled_identity"] = relative_residual(xt * scale, yt)
    w, b = ridge_fit(x, y, ridge)
    info["train_residual"] = relative_residual(x @ w + b, y)
    return LinearAdapter(w, b, canonical_layer(vl_layer, extractor.num_layers, "vl model"), extractor.num_layers,
                         canonical_layer(text_layer, text_encoder.config.num_hidden_layers, "text encoder"),
                         text_encoder.config.num_hidden_layers, info)
