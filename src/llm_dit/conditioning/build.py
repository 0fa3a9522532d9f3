"""From a resolved :class:`Recipe` to the caption embedding: plan the extractions, then build.

Planning is pure: :func:`plan_extractions` lists the unique :class:`ExtractionRequest` s a recipe
needs for a prompt (the experiment runner merges these across cells, so one forward pass serves
every cell that shares it). Building is pure tensor code: :func:`build_conditioning` takes the text
embedding, the finished extractions and the reference statistics, and returns a
:class:`Conditioning` that gives the ``[L, D]`` caption for any alpha, or for any denoising step.

One reference's VL sequence ("source"):

* plain: ``select(token_selection, hidden_layer)``
* intra-VL (``vl_intra_blend_ratio = r``, seed 002 phase 2): image part ``I`` (``image_tokens`` at
  ``image_layer``) and text part ``T`` (``text_tokens`` at ``text_layer``) of one extraction,
  ``x = r * resample(I, L_T) + (1 - r) * T``; different layers make it phase 4 (multi-layer)
* dual (``dual_extraction``, phase 3): ``I`` from a style pass (the image, no text) and ``T`` from a
  content pass (the VL text, no image: "pure prompt"), mixed the same way. (Had the content pass
  kept the image, it would equal intra-VL: with causal attention the image tokens, which come before
  the text, do not depend on it.)

Each part is mapped by the recipe's linear adapter if it has one (:mod:`llm_dit.vl.adapter`),
normalized (``normalization_mode``, the paired text embedding giving ``target_std =
"text"``), outlier-masked, then the source is fitted to ``token_budget``. A ``style_delta`` source is
``source(image) - source(gray image of the same size)``. Sources of one role are combined as
``sum_i w_i x_i / sum_i w_i`` after area-resampling to the longest of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import MAX_CAPTION_TOKENS
from ..embeddings import check_embedding
from ..errors import InputError
from ..text.long_prompt import fit_length
from ..vl.adapter import LinearAdapter
from ..vl.normalize import REFERENCE_MODES, normalize
from ..vl.outliers import mask_outliers
from ..vl.reference import ReferenceStats, check_layer_match
from ..vl.result import VLExtractionResult
from ..vl.tokens import check_selection_possible
from .blend import BlendOptions, blend
from .recipe import Recipe, Reference
from .sequence import match_rms, resample, typical_rms
from .style import compute_style_delta


@dataclass(frozen=True)
class ExtractionRequest:
    """One VL forward pass: which model reads the chat (``backend``), which image (or a gray one of
    its size), which text, which layers. Two requests that differ only in their backend are two
    different passes with different results."""

    backend: str  # "vl" (Qwen3-VL's language model), "splice" (its vision tower in Qwen3-4B) or "dopsd"
    image: str | None
    text: str | None
    layers: tuple[int, ...]
    system_prompt: str | None
    max_pixels: int
    pool: int
    neutral: bool = False  # a solid gray image the size of ``image`` (style delta)

    def label(self) -> str:
        img = "no image" if self.image is None else ("gray like " if self.neutral else "") + self.image
        text = "no text" if self.text is None else f"text {self.text[:30]!r}"
        return f"{self.backend}: {img}, {text}, layers {list(self.layers)}"


def _layers(recipe: Recipe) -> tuple[int, int, int]:
    """(plain, image part, text part) layers."""
    k = recipe.hidden_layer
    assert k is not None, "a resolved recipe has its hidden layer (Recipe.resolve)"
    return k, recipe.image_layer if recipe.image_layer is not None else k, \
        recipe.text_layer if recipe.text_layer is not None else k


def _selection(recipe: Recipe) -> str:
    assert recipe.token_selection is not None, "a resolved recipe has its token selection (Recipe.resolve)"
    return recipe.token_selection


def _sources(recipe: Recipe) -> list[Reference | None]:
    # No reference: one image-less source (the VL text alone), for a VL-text baseline.
    return list(recipe.references) or [None]


def _consumer(recipe: Recipe, role: str) -> str:
    return recipe.blend if role == "content" else recipe.style_blend


def _source_requests(recipe: Recipe, prompt: str, image: str | None, neutral: bool) -> dict[str, ExtractionRequest]:
    """The passes one source needs: ``{"main": ...}`` or ``{"style": ..., "content": ...}`` (dual)."""
    text = recipe.vl_text_for(prompt)
    plain, img_layer, txt_layer = _layers(recipe)

    def req(img, txt, layers):
        return ExtractionRequest(recipe.backend, img, txt, tuple(sorted(set(layers))), recipe.system_prompt,
                                 recipe.max_pixels, recipe.pool, neutral and img is not None)

    if image is None and text is None:
        raise InputError("the VL chat would be empty: give a reference image or VL text")
    if recipe.vl_intra_blend_ratio is None:
        check_selection_possible(_selection(recipe), int(image is not None), text is not None)
        return {"main": req(image, text, [plain])}
    check_selection_possible(recipe.text_tokens, 1, text is not None)
    if image is None:
        raise InputError("vl_intra_blend_ratio mixes image tokens with text tokens: give a reference image")
    if not recipe.dual_extraction:
        return {"main": req(image, text, [img_layer, txt_layer])}
    if text is None:
        raise InputError("dual extraction needs VL text for its content pass (vl_text is empty)")
    return {"style": req(image, None, [img_layer]), "content": req(None, text, [txt_layer])}


def source_plan(recipe: Recipe, prompt: str) -> list[tuple[Reference | None, dict, dict | None]]:
    """For every source: (reference, its passes, the passes of its neutral twin or None)."""
    out = []
    for ref in _sources(recipe):
        image = ref.image if ref is not None else None
        role = ref.role if ref is not None else "content"
        delta = _consumer(recipe, role) == "style_delta"
        if delta and image is None:
            raise InputError("the style_delta blend needs a reference image (its neutral twin is a gray copy)")
        out.append((ref, _source_requests(recipe, prompt, image, False),
                    _source_requests(recipe, prompt, image, True) if delta else None))
    return out


def plan_extractions(recipe: Recipe, prompt: str) -> list[ExtractionRequest]:
    """The unique extraction passes a resolved recipe needs, in a stable order (none for ``text``)."""
    if not recipe.uses_vl:
        return []
    seen: dict[ExtractionRequest, None] = {}
    for _, passes, neutral in source_plan(recipe, prompt):
        for r in [*passes.values(), *(neutral or {}).values()]:
            seen.setdefault(r, None)
    return list(seen)


def recipe_layers(recipe: Recipe) -> list[int]:
    """The VL layers a resolved recipe reads."""
    plain, img_layer, txt_layer = _layers(recipe)
    return sorted({plain} if recipe.vl_intra_blend_ratio is None else {img_layer, txt_layer})


def reference_stats_layers(recipe: Recipe) -> list[int]:
    """Layers whose reference statistics the recipe needs ([] when it needs none)."""
    if not recipe.uses_vl:
        return []
    needs = recipe.normalization_mode in REFERENCE_MODES or recipe.outlier_mask != "none"
    return recipe_layers(recipe) if needs else []


# -- building -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Inputs:
    """What every part of every source is built against."""

    recipe: Recipe
    text: torch.Tensor  # [L_t, D], the prompt's text embedding (a normalization target)
    stats: dict[int, ReferenceStats] | None  # reference statistics by layer
    adapter: LinearAdapter | None


def _prepare(result: VLExtractionResult, selection: str, layer: int, inputs: _Inputs,
             name: str) -> tuple[torch.Tensor, dict]:
    """select -> (adapter) -> normalize -> mask outliers, for one part of one source."""
    recipe, text, adapter = inputs.recipe, inputs.text, inputs.adapter
    ref = (inputs.stats or {}).get(layer)
    sel = result.select(selection, layers=[layer])
    x = check_embedding(sel.layer_embeddings[layer], name)
    if adapter is not None:
        adapter.check_layer(layer, result.num_layers)
        x = adapter.apply(x)
    if ref is not None:
        check_layer_match(ref, layer, result.num_layers)
    norm = normalize(x, recipe.normalization_mode, reference=ref, target_std=recipe.target_std, text=text)
    x = check_embedding(norm.embeddings, name)
    info = {"token_selection": sel.token_selection, "hidden_layer": layer, "tokens": int(x.shape[0]),
            "original_std": norm.original_std, "scaled_std": norm.scaled_std, "scale_factor": norm.scale_factor}
    if result.chat_template:  # which file the chat was rendered with (a checkpoint may carry two)
        info["chat_template"] = result.chat_template
    if recipe.outlier_mask != "none":
        if ref is None:
            raise InputError(f"outlier masking needs reference statistics of layer {layer} (llm-dit stats reference)")
        x, masked = mask_outliers(x, ref, recipe.outlier_threshold, recipe.outlier_mask)
        info["outliers"] = {"masked_dimensions": masked["masked_dimensions"], "threshold": recipe.outlier_threshold}
    return x, info


def _source_sequence(passes: dict, results: dict, inputs: _Inputs, name: str) -> tuple[torch.Tensor, dict]:
    """One source's ``[L, D]`` sequence (a reference, or its gray twin) from its extractions."""
    recipe = inputs.recipe
    plain, img_layer, txt_layer = _layers(recipe)
    got = {k: results[r] for k, r in passes.items()}
    if recipe.vl_intra_blend_ratio is None:
        x, info = _prepare(got["main"], _selection(recipe), plain, inputs, name)
    else:
        img_res, txt_res = (got["main"], got["main"]) if "main" in got else (got["style"], got["content"])
        img, i_info = _prepare(img_res, recipe.image_tokens, img_layer, inputs, f"{name} (image part)")
        txt, t_info = _prepare(txt_res, recipe.text_tokens, txt_layer, inputs, f"{name} (text part)")
        if recipe.magnitude == "match_rms":
            img = match_rms(img, typical_rms(txt))
        r = recipe.vl_intra_blend_ratio
        x = r * resample(img, txt.shape[0], recipe.resample) + (1 - r) * txt
        info = {"image_part": i_info, "text_part": t_info, "vl_intra_blend_ratio": r,
                "dual_extraction": recipe.dual_extraction}
    if recipe.token_budget is not None and x.shape[0] > recipe.token_budget:
        info["budgeted_from"] = int(x.shape[0])
        x = fit_length(x, recipe.token_budget, recipe.budget_mode)
    return x, info


def _combine(parts: list[tuple[torch.Tensor, float]]) -> torch.Tensor:
    total = sum(w for _, w in parts)
    n = max(x.shape[0] for x, _ in parts)
    scaled = [resample(x, n, "area") * (w / total) for x, w in parts]
    out = scaled[0]
    for x in scaled[1:]:  # summed left to right, as the sources are listed
        out = out + x
    return out


@dataclass
class Conditioning:
    """The prepared sides of one recipe; :meth:`at` blends them for an alpha."""

    recipe: Recipe
    text: torch.Tensor  # [L_t, D]
    content: torch.Tensor | None = None  # combined content sources [L_v, D] (deltas for style_delta)
    style: torch.Tensor | None = None  # combined style sources
    sources: list[dict] = field(default_factory=list)
    _memo: dict[float, torch.Tensor] = field(default_factory=dict, repr=False)

    def at(self, alpha: float) -> torch.Tensor:
        """The caption embedding ``[L, D]`` (``1 <= L <= 1504``) for VL share ``alpha``."""
        if alpha in self._memo:
            return self._memo[alpha]
        r = self.recipe
        opts = BlendOptions(resample=r.resample, gem_p=r.gem_p, svd_k=r.svd_k)
        target = typical_rms(self.text)
        y = self.text
        if self.content is not None:
            v = match_rms(self.content, target) if r.magnitude == "match_rms" else self.content
            y = blend(r.blend, y, v, alpha, opts)
        if self.style is not None:
            s = match_rms(self.style, target) if r.magnitude == "match_rms" else self.style
            y = blend(r.style_blend, y, s, alpha if r.style_alpha is None else r.style_alpha, opts)
        if r.magnitude == "match_rms" and (self.content is not None or self.style is not None):
            y = match_rms(y, target)  # averaging shrinks norms; put tokens back at the text's scale
        y = fit_length(y, MAX_CAPTION_TOKENS, r.budget_mode)
        check_embedding(y, "the blended embedding")
        self._memo[alpha] = y
        return y

    def step_embeds(self, steps: int):
        """``(i, n) -> [L, D]`` for diffusers' per-step hook, or the constant tensor when nothing varies.

        ``i`` counts the ``n`` steps that run; img2img runs the last ``n`` of ``steps``.
        """
        sched = self.recipe.schedule
        if sched is None or sched.is_constant():
            return self.at(self.recipe.alpha_at(0, steps))
        sched.check_steps(steps)
        return lambda i, n: self.at(sched.alpha(i + steps - n, steps))

    def stats(self, alpha: float) -> dict:
        """The seeds' numbers (``vl_shape``, ``vl_std``, ``blended_std``) and the RMS of each part."""
        y = self.at(alpha)
        vl = self.content if self.content is not None else self.style
        out: dict[str, Any] = {
            "alpha": alpha,
            "vl_shape": list(vl.shape) if vl is not None else None,
            "vl_std": float(vl.std(unbiased=False)) if vl is not None else None,
            "text_std": float(self.text.std(unbiased=False)),
            "blended_std": float(y.std(unbiased=False)),
            "blended_shape": list(y.shape),
        }
        rms = out["rms"] = {"text": typical_rms(self.text), "blended": typical_rms(y)}
        if self.content is not None:
            rms["content"] = typical_rms(self.content)
        if self.style is not None:
            rms["style"] = typical_rms(self.style)
            out["style_shape"] = list(self.style.shape)
        return out


def build_conditioning(
    recipe: Recipe,
    prompt: str,
    text: torch.Tensor,
    extractions: dict[ExtractionRequest, VLExtractionResult],
    reference_stats: dict[int, ReferenceStats] | None = None,
    adapter: LinearAdapter | None = None,
) -> Conditioning:
    """Turn a resolved recipe, the prompt's text embedding and the finished extractions into a
    :class:`Conditioning` (see the module docstring). ``adapter``: the recipe's adapter file, already
    loaded (by the checks); loaded here when the recipe names one and it is not given."""
    text = check_embedding(text, "the text embedding")
    if not recipe.uses_vl:
        return Conditioning(recipe, text)
    if adapter is None and recipe.adapter:
        adapter = LinearAdapter.load(recipe.adapter)
    missing = [r.label() for r in plan_extractions(recipe, prompt) if r not in extractions]
    if missing:
        raise InputError(f"extraction missing for this recipe: {missing[0]}")
    roles: dict[str, list[tuple[torch.Tensor, float]]] = {"content": [], "style": []}
    infos = []
    inputs = _Inputs(recipe, text, reference_stats, adapter)
    for i, (ref, passes, neutral) in enumerate(source_plan(recipe, prompt)):
        name = f"the VL embedding of reference {i + 1}" + (f" ({ref.image})" if ref is not None else "")
        x, info = _source_sequence(passes, extractions, inputs, name)
        if neutral is not None:
            n, info["neutral"] = _source_sequence(neutral, extractions, inputs, f"{name}, gray twin")
            x = check_embedding(compute_style_delta(x, n), f"{name}, style delta")
        role, weight = (ref.role, ref.weight) if ref is not None else ("content", 1.0)
        roles[role].append((x, weight))
        infos.append({"image": ref.image if ref else None, "role": role, "weight": weight, **info})
    content = _combine(roles["content"]) if roles["content"] else None
    style = _combine(roles["style"]) if roles["style"] else None
    return Conditioning(recipe, text, content, style, infos)
