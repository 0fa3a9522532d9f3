"""Blend functions: VL hidden states and the text embedding -> one caption sequence.

Every tensor is ``[L, D]`` float32: ``text`` (``L_t`` tokens, Z-Image's own encoder), ``vl``
(``L_v`` tokens, a VL selection). ``alpha`` in ``[0, 1]`` is the VL share; ``alpha = 0`` gives the
text back exactly for every mode except ``replace``. The seeds' argument orders are kept
(``blend_interpolate(vl, text, ...)``, ``blend_adain(text, vl, ...)``), and so are their keyword
names (``text_embeddings=``, ``vl_embeddings=``, ``style_delta=``) and their batched ``[1, L, D]``
tensors (:func:`~llm_dit.embeddings.notes_names`); :data:`BLEND_MODES` gives all of them one
signature ``(text, vl, alpha, options) -> [L, D]`` so an experiment can name them.

Sequences of different lengths meet through :func:`~llm_dit.conditioning.sequence.resample`.

A note on magnitude: Z-Image's caption embedder begins with an RMSNorm per token, so multiplying
whole tokens by a constant does not change the image. Scale matters only where tokens are mixed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import MAX_CAPTION_TOKENS
from ..embeddings import check_embedding, notes_names
from ..errors import InputError, unknown_choice
from ..modes import STYLE_MODES  # noqa: F401  (re-exported: the names live where torch is not needed)
from .sequence import resample
from .style import style_vector

#: The notes' keyword names of the two sides.
_SIDES = {"text_embeddings": "text", "vl_embeddings": "vl"}

#: Added to standard deviations before dividing (as the seeds' AdaIN).
EPS = 1e-5


@dataclass(frozen=True)
class BlendOptions:
    """Knobs some modes read; the rest ignore them."""

    resample: str = "linear"
    gem_p: float = 3.0
    svd_k: int = 10
    max_tokens: int = MAX_CAPTION_TOKENS  # concat keeps the text whole and fits the VL part in the rest


def _pair(text: torch.Tensor, vl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    text, vl = check_embedding(text, "the text embedding"), check_embedding(vl, "the VL embedding")
    if text.shape[1] != vl.shape[1]:
        raise InputError(f"the VL embedding is {vl.shape[1]}-d but the text embedding is {text.shape[1]}-d")
    return text, vl


def check_alpha(alpha: float, name: str = "alpha") -> float:
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"{name} must be a number in [0, 1] (got {alpha!r})")
    return float(alpha)


# -- content modes ------------------------------------------------------------------------------


@notes_names(**_SIDES)
def blend_interpolate(vl: torch.Tensor, text: torch.Tensor, alpha: float, method: str = "linear") -> torch.Tensor:
    """``alpha * resample(vl, L_t) + (1 - alpha) * text``. Output: ``L_t`` tokens."""
    text, vl = _pair(text, vl)
    alpha = check_alpha(alpha)
    return alpha * resample(vl, text.shape[0], method) + (1 - alpha) * text


@notes_names()
def blend_embeddings(a: torch.Tensor, b: torch.Tensor, alpha: float, method: str = "linear") -> torch.Tensor:
    """Seed 002's ``blend_embeddings(a, b, alpha)``: ``alpha * resample(a, L_b) + (1 - alpha) * b``
    (e.g. ``a`` the style extraction's image tokens, ``b`` the content extraction's text tokens).
    Output: ``L_b`` tokens; the same as ``blend_interpolate(a, b, alpha)``."""
    return blend_interpolate(a, b, alpha, method)


@notes_names(**_SIDES)
def blend_linear(vl: torch.Tensor, text: torch.Tensor, alpha: float) -> torch.Tensor:
    """Position-wise: token ``i`` of the text is paired with token ``i`` of the VL sequence.

    ``y_i = alpha * vl_i + (1 - alpha) * text_i`` for ``i < min(L_v, L_t)``; text tokens past the
    end of the VL sequence stay text, VL tokens past the end of the text are dropped. Output:
    ``L_t`` tokens. (The seeds' version cut the text to ``min(L_v, L_t)`` as well; with image tokens
    this pairs the prompt with the template and the top rows of the image.)
    """
    text, vl = _pair(text, vl)
    alpha = check_alpha(alpha)
    n = min(text.shape[0], vl.shape[0])
    out = text.clone()
    out[:n] = alpha * vl[:n] + (1 - alpha) * text[:n]
    return out


@notes_names(**_SIDES)
def concat(vl: torch.Tensor, text: torch.Tensor, weight: float, max_tokens: int | None = None) -> torch.Tensor:
    """FLUX-Redux style: the text tokens, then VL tokens appended after them.

    ``weight`` sets how many VL tokens are appended: ``k = max(1, round(weight * L_v))`` tokens,
    the VL sequence area-pooled to ``k``; ``weight = 0`` appends none. With ``max_tokens`` the text
    stays whole and ``k`` is capped at ``max_tokens - L_t`` (none when the text fills the budget).
    A multiplicative weight would do nothing here: Z-Image RMS-normalizes each caption token, so
    the VL share of the joint attention is set by the number of VL tokens, not their scale.
    Output: ``L_t + k`` tokens.
    """
    text, vl = _pair(text, vl)
    weight = check_alpha(weight, "the concat weight")
    k = 0 if weight == 0 else max(1, round(weight * vl.shape[0]))
    if max_tokens is not None:
        k = min(k, max(0, max_tokens - text.shape[0]))
    if k == 0:
        return text
    return torch.cat([text, resample(vl, k, "area")])


@notes_names(**_SIDES)
def replace(vl: torch.Tensor, text: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """The VL sequence as is (``alpha = 1`` semantics, no resampling; ``alpha`` is ignored). Output: ``L_v``."""
    _, vl = _pair(text, vl)
    return vl


# -- style modes --------------------------------------------------------------------------------


@notes_names(**_SIDES)
def blend_adain(text: torch.Tensor, vl: torch.Tensor, alpha: float, method: str = "linear") -> torch.Tensor:
    """AdaIN per token, statistics over the hidden dimension (seed 001 #6).

    ``m_t, s_t``: mean and (Bessel-corrected) std of each text token over ``D``;
    ``m_v, s_v``: the same for each VL token, resampled from ``L_v`` to ``L_t`` positions (so text
    token ``i`` takes the statistics of the VL tokens at the same relative position, not of VL token
    ``i``). ``r = (text - m_t) / (s_t + eps) * s_v + m_v``; ``y = alpha * r + (1 - alpha) * text``.
    Output: ``L_t`` tokens.
    """
    text, vl = _pair(text, vl)
    alpha = check_alpha(alpha)
    m_t, s_t = text.mean(-1, keepdim=True), text.std(-1, keepdim=True)
    stats = torch.stack([vl.mean(-1), vl.std(-1)], dim=1)  # [L_v, 2]
    m_v, s_v = resample(stats, text.shape[0], method).unbind(1)
    r = (text - m_t) / (s_t + EPS) * s_v[:, None] + m_v[:, None]
    return alpha * r + (1 - alpha) * text


@notes_names(**_SIDES)
def blend_adain_per_dim(text: torch.Tensor, vl: torch.Tensor, alpha: float) -> torch.Tensor:
    """Channel-wise AdaIN: statistics of each dimension over the sequence.

    ``mu_t[d], sd_t[d]`` over the ``L_t`` text tokens, ``mu_v[d], sd_v[d]`` over **all** ``L_v``
    selected VL tokens (population std, so one token gives ``sd = 0``, not NaN);
    ``r = (text - mu_t) / (sd_t + eps) * sd_v + mu_v``; ``y = alpha * r + (1 - alpha) * text``.
    Output: ``L_t`` tokens.
    """
    text, vl = _pair(text, vl)
    alpha = check_alpha(alpha)
    mu_t, sd_t = text.mean(0), text.std(0, unbiased=False)
    mu_v, sd_v = vl.mean(0), vl.std(0, unbiased=False)
    r = (text - mu_t) / (sd_t + EPS) * sd_v + mu_v
    return alpha * r + (1 - alpha) * text


@notes_names(text_embeddings="text", style_delta="delta")
def blend_with_style_delta(
    text: torch.Tensor, delta: torch.Tensor, alpha: float, method: str = "linear"
) -> torch.Tensor:
    """``text + alpha * resample(delta, L_t)`` (seed 001 #5). Output: ``L_t`` tokens.

    ``delta`` comes from :func:`llm_dit.conditioning.style.compute_style_delta`.
    """
    text, delta = _pair(text, delta)
    alpha = check_alpha(alpha)
    return text + alpha * resample(delta, text.shape[0], method)


@notes_names(text_embeddings="text", style_vector="style")
def blend_style_vector(text: torch.Tensor, style: torch.Tensor, alpha: float) -> torch.Tensor:
    """``text + alpha * s`` with one ``[D]`` style vector added to every token. Output: ``L_t``."""
    text = check_embedding(text, "the text embedding")
    style = check_embedding(style.reshape(1, -1), "the style vector")[0]
    if style.shape[0] != text.shape[1]:
        raise InputError(f"the style vector is {style.shape[0]}-d but the text embedding is {text.shape[1]}-d")
    return text + check_alpha(alpha) * style


# -- the registry -------------------------------------------------------------------------------

BlendFn = Callable[[torch.Tensor, torch.Tensor, float, BlendOptions], torch.Tensor]


def _style_vector_mode(kind: str) -> BlendFn:
    def fn(text: torch.Tensor, vl: torch.Tensor, alpha: float, o: BlendOptions) -> torch.Tensor:
        return blend_style_vector(text, style_vector(check_embedding(vl, "the VL embedding"), kind, o.gem_p, o.svd_k),
                                  alpha)

    return fn


#: Every blend mode, one signature ``(text, vl, alpha, options) -> [L, D]``: the names of
#: :data:`llm_dit.modes.BlendMode` in its order (the facts about each, such as
#: :data:`~llm_dit.modes.ALPHA0_IS_TEXT`, are there too, where no torch is needed). For
#: ``style_delta`` the ``vl`` argument is the delta ``style - neutral``.
BLEND_MODES: dict[str, BlendFn] = {
    "interpolate": lambda t, v, a, o: blend_interpolate(v, t, a, o.resample),
    "linear": lambda t, v, a, o: blend_linear(v, t, a),
    "concat": lambda t, v, a, o: concat(v, t, a, o.max_tokens),
    "replace": lambda t, v, a, o: replace(v, t, a),
    "adain": lambda t, v, a, o: blend_adain(t, v, a, o.resample),
    "adain_per_dim": lambda t, v, a, o: blend_adain_per_dim(t, v, a),
    "style_delta": lambda t, v, a, o: blend_with_style_delta(t, v, a, o.resample),
    "style_mean": _style_vector_mode("mean"),
    "style_gem": _style_vector_mode("gem"),
    "style_svd": _style_vector_mode("svd"),
}


def blend(mode: str, text: torch.Tensor, vl: torch.Tensor, alpha: float, options: BlendOptions | None = None):
    """Apply the named mode (see :data:`BLEND_MODES`)."""
    if mode not in BLEND_MODES:
        raise InputError(unknown_choice("blend mode", mode, BLEND_MODES))
    return BLEND_MODES[mode](text, vl, alpha, options or BlendOptions())
