"""``VLExtractionResult``: what one extraction produced, and the selection taken from it.

It keeps the raw hidden states of the whole sequence for every requested layer (``[S, D]`` float32
on the CPU, after grid pooling) and the token ids, from which every mask is recomputed; so one
forward pass serves every token selection and normalization. ``select`` returns a new result whose
``layer_embeddings`` (``{layer: [n, D]}``) are the chosen tokens, normalized, with the seeds' statistics
per layer (``layer_original_std``, ``layer_scaled_std``, ``layer_scale_factor``). In the notes' names,
``embeddings`` is the selected ``[n, D]`` tensor of the first requested layer (``hidden_layer``) and
``original_std`` / ``scaled_std`` / ``scale_factor`` are its numbers. ``save``/``load`` use safetensors
with the rest as JSON metadata.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..embeddings import resample
from ..errors import InputError
from .normalize import NOTES_TARGET_STD, normalize
from .reference import ReferenceStats, check_layer_match
from .tokens import SpecialIds, TokenMasks, compute_token_masks, resolve_token_selection

_META_KEY = "llm_dit_vl_extraction"


def _per_layer(value, layers: list[int], what: str) -> dict:
    """``{layer: value}``: a dict is taken as is (and must cover ``layers``); a single object is
    allowed for a single layer only, since statistics differ from layer to layer."""
    if isinstance(value, dict):
        missing = [k for k in layers if k not in value]
        if missing:
            raise InputError(f"no {what} given for layer(s) {missing}")
        return {k: value[k] for k in layers}
    if value is not None and len(layers) > 1:
        raise InputError(
            f"one {what} for {len(layers)} layers: pass {{layer: {what}}} or select a single layer (layers=[...])"
        )
    return {k: value for k in layers}


@dataclass
class VLExtractionResult:
    hidden_states: dict[int, torch.Tensor]  # requested layer index -> [S, D] float32 CPU
    input_ids: torch.Tensor  # [S]
    special: SpecialIds
    layers: list[int]  # as requested, e.g. [-6, -2]
    num_layers: int  # decoder layers of the model that produced the states
    backend: str  # "vl", "splice" or "dopsd"
    model: str
    model_variant: str  # "instruct" or "thinking"
    vl_text: str | None
    system_prompt: str | None
    full_prompt: str  # the decoded input, special tokens kept
    patch_grids: list[tuple[int, int, int]] = field(default_factory=list)  # processor (t, h, w) per image
    token_grids: list[tuple[int, int]] = field(default_factory=list)  # (h, w) image tokens, after pooling
    max_pixels: int | None = None
    pool: int = 1
    chat_template: dict = field(default_factory=dict)  # ChatTemplate.to_dict(): source, sha256, tokenizer_differs
    backend_settings: dict = field(default_factory=dict)  # dopsd: its defaults (DOPSD_DEFAULTS), tokens cut
    # the selection
    token_selection: str = "full"
    normalization_mode: str = "none"
    layer_embeddings: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> selected [n, D]
    layer_original_std: dict[int, float] = field(default_factory=dict)
    layer_scaled_std: dict[int, float] = field(default_factory=dict)
    layer_scale_factor: dict[int, float] = field(default_factory=dict)
    record: dict = field(default_factory=dict)  # what produced it: the resolved config, versions

    # -- convenience ---------------------------------------------------------------------------

    @property
    def masks(self) -> TokenMasks:
        return compute_token_masks(self.input_ids, self.special)

    @property
    def hidden_layer(self) -> int:
        """The first requested layer: the one ``embedding`` refers to."""
        return self.layers[0]

    @property
    def embeddings(self) -> torch.Tensor:
        """The notes' ``vl_result.embeddings``: the selected ``[n, D]`` tensor of ``hidden_layer``
        (``layer_embeddings`` holds every requested layer)."""
        if self.hidden_layer not in self.layer_embeddings:
            raise InputError("this result holds raw hidden states only: select tokens first (result.select(...))")
        return self.layer_embeddings[self.hidden_layer]

    @property
    def embedding(self) -> torch.Tensor:
        """The same as :attr:`embeddings`."""
        return self.embeddings

    @property
    def original_std(self) -> float:
        """Std of the selected tokens of ``hidden_layer`` before normalization (all elements, population)."""
        return self.layer_original_std[self.hidden_layer]

    @property
    def scaled_std(self) -> float:
        """Std after normalization (the notes' "scaled std", ~61 after ``scale_to_text``)."""
        return self.layer_scaled_std[self.hidden_layer]

    @property
    def scale_factor(self) -> float:
        """``scaled_std / original_std`` (1.0 when undefined)."""
        return self.layer_scale_factor[self.hidden_layer]

    @property
    def num_tokens(self) -> int:
        return int(self.embedding.shape[0])

    @property
    def num_images(self) -> int:
        return len(self.token_grids)

    # -- selection -----------------------------------------------------------------------------

    def select(
        self,
        token_selection: str | None = None,
        *,
        image_index: int | None = None,
        layers: list[int] | None = None,
        normalization_mode: str = "none",
        reference: ReferenceStats | dict[int, ReferenceStats] | None = None,
        target_std: float | str | None = None,
        text: torch.Tensor | dict[int, torch.Tensor] | None = None,
        clip_sigma: float | None = 3.0,
        hybrid_weight: float = 0.5,
        force_reference: bool = False,
        scale_to_text: bool | None = None,
        **notes_flags: bool,
    ) -> VLExtractionResult:
        """A new result with the chosen tokens of every layer (or of ``layers``), normalized.

        ``token_selection`` names the tokens; the seeds' flags (``image_tokens_only=True``, ...; see
        :data:`~llm_dit.vl.tokens.NOTES_FLAGS`) are accepted instead. ``scale_to_text`` is the notes'
        switch for global scaling to the text encoder's std: ``True`` turns ``none`` into ``global``
        and, with no other target given, scales to :data:`~llm_dit.vl.normalize.NOTES_TARGET_STD`
        (61.0); ``False`` turns ``global`` into ``none``; other modes are left as they are.
        ``image_index`` narrows ``image_only``/``image_no_markers`` to one image of several.
        Statistics are per layer: ``reference`` and ``text`` (the paired text embedding, for
        ``target_std="text"``) are either one object for a single layer or ``{layer: object}``.
        """
        name = resolve_token_selection(token_selection, **notes_flags)
        if scale_to_text is True and normalization_mode in ("none", "global"):
            normalization_mode = "global"
            if target_std is None and text is None and reference is None:
                target_std = NOTES_TARGET_STD
        elif scale_to_text is False and normalization_mode == "global":
            normalization_mode = "none"
        masks = self.masks
        if image_index is not None:
            if name not in ("image_only", "image_no_markers"):
                raise InputError("image_index applies to image_only or image_no_markers selections")
            mask = masks.image(image_index, markers=name == "image_only")
        else:
            mask = masks.get(name)
        if not bool(mask.any()):
            why = "the chat has no image" if name.startswith("image") else "the chat has no such text"
            raise InputError(f"token selection '{name}' is empty: {why}")
        layers = list(self.layers if layers is None else layers)
        unknown = [k for k in layers if k not in self.hidden_states]
        if unknown:
            raise InputError(f"layer(s) {unknown} were not extracted; this result has {self.layers}")
        refs = _per_layer(reference, layers, "reference")
        texts = _per_layer(text, layers, "text")
        for layer, ref in refs.items():
            if ref is not None:
                check_layer_match(ref, layer, self.num_layers, force_reference)
        out = {}
        stats: dict[str, dict[int, float]] = {"o": {}, "s": {}, "f": {}}
        for layer in layers:
            res = normalize(
                self.hidden_states[layer][mask], normalization_mode, reference=refs[layer], target_std=target_std,
                text=texts[layer], clip_sigma=clip_sigma, hybrid_weight=hybrid_weight,
            )
            out[layer] = res.embeddings
            stats["o"][layer], stats["s"][layer], stats["f"][layer] = res.original_std, res.scaled_std, res.scale_factor
        label = name if image_index is None else f"{name}[{image_index}]"
        return dataclasses.replace(
            self, layers=layers, token_selection=label, normalization_mode=normalization_mode, layer_embeddings=out,
            layer_original_std=stats["o"], layer_scaled_std=stats["s"], layer_scale_factor=stats["f"],
        )

    def intra_blend(self, ratio: float, image_tokens: str = "image_no_markers", text_tokens: str = "text_only",
                    method: str = "linear", **select_kwargs) -> VLExtractionResult:
        """Seed 002's intra-VL blend of this one extraction, per layer: image part ``I`` and text part
        ``T`` selected (and each normalized) by :meth:`select`, then ``r * resample(I, L_T) + (1 - r) * T``
        (``L_T`` tokens; the recipe's ``vl_intra_blend_ratio`` with the same defaults).
        ``original_std`` is that of the mix before normalization, ``scaled_std`` of the result."""
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0.0 <= float(ratio) <= 1.0:
            raise InputError(f"vl_intra_blend_ratio must be a number in [0, 1] (got {ratio!r})")
        r = float(ratio)
        img, txt = self.select(image_tokens, **select_kwargs), self.select(text_tokens, **select_kwargs)
        raw_img, raw_txt = self.select(image_tokens, layers=img.layers), self.select(text_tokens, layers=txt.layers)
        out: dict[int, torch.Tensor] = {}
        stats: dict[str, dict[int, float]] = {"o": {}, "s": {}, "f": {}}
        for k in img.layers:
            n = txt.layer_embeddings[k].shape[0]
            out[k] = r * resample(img.layer_embeddings[k], n, method) + (1 - r) * txt.layer_embeddings[k]
            raw = r * resample(raw_img.layer_embeddings[k], n, method) + (1 - r) * raw_txt.layer_embeddings[k]
            before, after = float(raw.std(unbiased=False)), float(out[k].std(unbiased=False))
            stats["o"][k], stats["s"][k], stats["f"][k] = before, after, after / before if before > 0 else 1.0
        return dataclasses.replace(
            txt, token_selection=f"intra({image_tokens} x {r:g} + {text_tokens} x {1 - r:g})", layer_embeddings=out,
            layer_original_std=stats["o"], layer_scaled_std=stats["s"], layer_scale_factor=stats["f"],
        )

    # -- records -------------------------------------------------------------------------------

    def metadata(self) -> dict:
        return {
            "layers": self.layers,
            "num_layers": self.num_layers,
            "backend": self.backend,
            "backend_settings": self.backend_settings,
            "model": self.model,
            "model_variant": self.model_variant,
            "chat_template": self.chat_template,
            "vl_text": self.vl_text,
            "system_prompt": self.system_prompt,
            "full_prompt": self.full_prompt,
            "patch_grids": [list(g) for g in self.patch_grids],
            "token_grids": [list(g) for g in self.token_grids],
            "max_pixels": self.max_pixels,
            "pool": self.pool,
            "token_selection": self.token_selection,
            "normalization_mode": self.normalization_mode,
            # per layer, as in the file since its first version
            "original_std": {str(k): v for k, v in self.layer_original_std.items()},
            "scaled_std": {str(k): v for k, v in self.layer_scaled_std.items()},
            "scale_factor": {str(k): v for k, v in self.layer_scale_factor.items()},
            "special_ids": self.special.to_dict(),
            "token_counts": self.masks.counts(),
            "record": self.record,
        }

    def summary(self) -> str:
        """One line: tokens, grid, std per layer."""
        grids = ",".join(f"{h}x{w}" for h, w in self.token_grids) or "none"
        stds = " ".join(f"L{k}:{self.layer_scaled_std.get(k, float('nan')):.4g}" for k in self.layers)
        return (
            f"{self.num_tokens} tokens ({self.token_selection}) of {self.input_ids.shape[0]}, "
            f"image grid {grids}, std {stds}, backend {self.backend}, {self.model_variant}"
        )

    def save(self, path: str | Path) -> Path:
        """Write raw states, ids and the selection as safetensors; metadata as JSON inside."""
        from ..io import save_tensors

        tensors = {"input_ids": self.input_ids.to(torch.int64)}
        for k in self.layers:
            tensors[f"hidden_states.{k}"] = self.hidden_states[k].float()
            if k in self.layer_embeddings:
                tensors[f"embeddings.{k}"] = self.layer_embeddings[k].float()
        return save_tensors(path, tensors, _META_KEY, self.metadata())

    @classmethod
    def load(cls, path: str | Path) -> VLExtractionResult:
        from ..io import load_tensors

        meta, t = load_tensors(path, _META_KEY, "extraction")
        layers = [int(k) for k in meta["layers"]]
        return cls(
            hidden_states={k: t[f"hidden_states.{k}"] for k in layers},
            input_ids=t["input_ids"],
            special=SpecialIds.from_dict(meta["special_ids"]),
            layers=layers,
            num_layers=meta["num_layers"],
            backend=meta["backend"],
            backend_settings=meta.get("backend_settings", {}),  # files written before it was recorded have none
            model=meta["model"],
            model_variant=meta["model_variant"],
            chat_template=meta.get("chat_template", {}),  # files written before it was recorded have none
            vl_text=meta["vl_text"],
            system_prompt=meta["system_prompt"],
            full_prompt=meta["full_prompt"],
            patch_grids=[tuple(g) for g in meta["patch_grids"]],
            token_grids=[tuple(g) for g in meta["token_grids"]],
            max_pixels=meta["max_pixels"],
            pool=meta["pool"],
            token_selection=meta["token_selection"],
            normalization_mode=meta["normalization_mode"],
            layer_embeddings={k: t[f"embeddings.{k}"] for k in layers if f"embeddings.{k}" in t},
            layer_original_std={int(k): v for k, v in meta["original_std"].items()},
            layer_scaled_std={int(k): v for k, v in meta["scaled_std"].items()},
            layer_scale_factor={int(k): v for k, v in meta["scale_factor"].items()},
            record=meta.get("record", {}),
        )
