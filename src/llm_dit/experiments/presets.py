"""The named experiments of the research notes, as lists of cells (seed 000-004; names as there).

Conventions (docs/experiments.md lists every cell):

* "pure VL" cells use the ``replace`` blend: the DiT sees the VL sequence itself (alpha 1), not a
  copy resampled to the prompt's length;
* layers and token selections not set by a cell come from the profile's ``[vl]`` section (layer -6,
  the full sequence); normalization is ``global`` to the paired text embedding's std;
* every group of cells (one prompt, one set of generation settings) has a pure-text cell, added as
  ``text_only`` where the experiment does not name one: the baseline of ``ssim_text``;
* ``quick`` keeps the cells the seeds single out, for a first look.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..conditioning.recipe import Recipe
from ..config import DOPSD_DEFAULTS
from ..errors import InputError
from ..io import check_name
from .cells import METHODS, SHORT, TEXT_ONLY, Cell, fmt, name_from, safe_name, with_baselines

DESCRIBE_SEEN = "Describe what you see."  # seed 000's description variant
INSTRUCTION = "Generate an image following this description: {prompt}"


@dataclass(frozen=True)
class GridSpec:
    """One grid image: the cells matching ``where``, laid out by ``rows`` x ``cols`` (automatic when
    both are None: 2-D when exactly two parameters vary, else a labelled row)."""

    file: str
    title: str = ""
    where: dict[str, Any] = field(default_factory=dict)
    rows: str | None = None
    cols: str | None = None

    def __post_init__(self) -> None:
        check_name(self.file, "a grid", "grids")  # written into the run folder: never a path
        if not self.file.endswith(".png"):
            raise InputError(f"a grid's file is a .png (got {self.file!r})", field="grids")


@dataclass(frozen=True)
class Inputs:
    images: list[str]  # reference image paths (absolute)
    quick: bool


@dataclass(frozen=True)
class Experiment:
    name: str
    summary: str
    build: Callable[[Inputs], list[Cell]]
    images: int = 1  # reference images it needs
    caption: bool = False  # its prompts are captions of the reference (no --prompt)
    grids: Callable[[list[Cell]], list[GridSpec]] | None = None
    config: dict[str, Any] = field(default_factory=dict)  # dotted overrides for the whole run
    look_at: tuple[str, ...] = ()  # the metrics its question is read from (seed 000 "what to check"), first

    def cells(self, inputs: Inputs) -> list[Cell]:
        if len(inputs.images) != self.images:
            need = "one reference image (--image IMG)" if self.images == 1 else \
                f"{self.images} reference images (--image A --image B)"
            raise InputError(f"experiment {self.name} takes {need}; got {len(inputs.images)}")
        return with_baselines(self.build(inputs))


def _vl(images: list[str], **fields) -> Recipe:
    return Recipe.from_dict({"references": [{"image": im} for im in images], **fields})


def _pure(images, **fields) -> Recipe:
    """The VL sequence alone (alpha 1, no resampling)."""
    return _vl(images, blend="replace", alpha=1.0, **fields)


def _pick(quick: bool, full: list, short: list) -> list:
    return short if quick else full


TEXT = Recipe(backend="text")


# -- seed 000 / 002: token positions ---------------------------------------------------------------


def vl_only_vs_qwen3(x: Inputs) -> list[Cell]:
    im = x.images
    return [
        Cell("pure_qwen3_4b", TEXT),
        Cell("pure_vl_text_tokens", _pure(im, token_selection="text_only")),
        Cell("pure_vl_full_seq", _pure(im, token_selection="full")),
        Cell("blend_30_vl_70_qwen3", _vl(im, token_selection="full", alpha=0.3)),
    ]


def vl_layer_by_token(x: Inputs) -> list[Cell]:
    layers = _pick(x.quick, [1, 2, 5, 10, 15], [2, 10])
    kinds = {"image": "image_no_markers", "text": "text_only"}
    return [Cell(f"{kind}_tokens_layer-{n}", _pure(x.images, token_selection=sel, hidden_layer=-n),
                 {"tokens": kind, "layer": -n})
            for kind, sel in kinds.items() for n in layers]


def vl_prompt_variations(x: Inputs) -> list[Cell]:
    im = x.images
    rows = [
        ("no_text", "", ["image", "text"]),
        ("with_prompt", "{prompt}", ["image", "text"]),
        ("with_desc", DESCRIBE_SEEN, ["text"]),
        ("with_instruction", INSTRUCTION, ["text"]),
    ]
    sel = {"image": "image_no_markers", "text": "text_only"}
    return [Cell(f"{label}_{kind}_tokens", _pure(im, vl_text=text, token_selection=sel[kind]),
                 {"vl_text": label, "tokens": kind})
            for label, text, kinds in rows for kind in kinds]


def vl_intra_token_blend(x: Inputs) -> list[Cell]:
    im = x.images
    ratios = _pick(x.quick, [0.1, 0.3, 0.5, 0.7, 0.9], [0.3, 0.7])
    return [
        Cell("baseline_vl_full", _pure(im, token_selection="full")),
        Cell("baseline_vl_image_only", _pure(im, token_selection="image_only")),
        Cell("baseline_vl_text_only", _pure(im, token_selection="text_only")),
        *(Cell(f"intra_{round(r * 100)}_image_{round((1 - r) * 100)}_text", _pure(im, vl_intra_blend_ratio=r))
          for r in ratios),
    ]


def vl_double_conditioning(x: Inputs) -> list[Cell]:
    im = x.images
    ratios = _pick(x.quick, [0.3, 0.5, 0.7], [0.3])
    return [
        Cell("single_image_tokens", _pure(im, vl_text="", token_selection="image_no_markers")),
        Cell("single_text_tokens", _pure(im, token_selection="text_only")),
        *(Cell(f"dual_{round(r * 100)}_image_{round((1 - r) * 100)}_text",
               _pure(im, vl_intra_blend_ratio=r, dual_extraction=True)) for r in ratios),
    ]


# -- seed 001: statistics -------------------------------------------------------------------------


def outlier_masking(x: Inputs) -> list[Cell]:
    masks = _pick(x.quick, ["none", "zero", "clamp", "scale", "restore"], ["none", "zero", "restore"])
    # Seed 003: the 617x outlier of dim 396 shows at layer -2, not at -6: both, side by side.
    return [Cell(f"layer{layer}_mask-{m}", _pure(x.images, token_selection="image_no_markers", hidden_layer=layer,
                                                   outlier_mask=m), {"layer": layer, "mask": m})
            for layer in (-2, -6) for m in masks]


def normalization(x: Inputs) -> list[Cell]:
    modes = _pick(x.quick, ["none", "global", "per_dim", "hybrid", "whiten", "cross"], ["global", "per_dim", "hybrid"])
    # A constant scale of the whole sequence does not change a pure-VL picture (the DiT's caption
    # embedder starts with an RMSNorm); it matters inside a blend: alpha 0.3 and 1 side by side.
    return [Cell(f"norm-{m}_alpha{fmt(a)}", _vl(x.images, token_selection="image_only", normalization_mode=m, alpha=a),
                 {"norm": m, "alpha": a})
            for m in modes for a in (0.3, 1.0)]


def cross_normalization(x: Inputs) -> list[Cell]:
    base = dict(token_selection="image_only", alpha=0.3)
    return [
        Cell("per_dim", _vl(x.images, normalization_mode="per_dim", **base)),
        *(Cell(f"cross_std{t}", _vl(x.images, normalization_mode="cross", target_std=float(t), **base))
          for t in (50, 61, 70)),
    ]


# -- seed 001 / 003: blends and schedules -----------------------------------------------------------


def style_delta(x: Inputs) -> list[Cell]:
    alphas = _pick(x.quick, [0.1, 0.2, 0.3, 0.5, 0.7], [0.3, 0.5])
    return [Cell(f"style_delta_alpha{fmt(a)}", _vl(x.images, blend="style_delta", alpha=a), {"alpha": a})
            for a in alphas]


def adain(x: Inputs) -> list[Cell]:
    alphas = _pick(x.quick, [0.1, 0.3, 0.5, 0.7], [0.3, 0.5])
    return [Cell(f"{b}_alpha{fmt(a)}", _vl(x.images, blend=b, alpha=a), {"blend": b, "alpha": a})
            for b in ("adain", "adain_per_dim") for a in alphas]


def alpha_sweep(x: Inputs) -> list[Cell]:
    alphas = _pick(x.quick, [round(i / 10, 1) for i in range(11)], [0.0, 0.3, 0.5, 1.0])
    return [Cell(name_from({"alpha": a}), _vl(x.images, alpha=a), {"alpha": a}) for a in alphas]


def timestep_alpha(x: Inputs) -> list[Cell]:
    specs = _pick(x.quick, ["constant:0.3", "linear:0.8:0", "cosine:0.8:0", "step:0.8:0:0.3", "linear:0:0.8"],
                  ["constant:0.3", "linear:0.8:0", "step:0.8:0:0.3"])
    return [Cell(spec.replace(":", "_"), _vl(x.images, schedule=spec), {"schedule": spec}) for spec in specs]


def multi_reference(x: Inputs) -> list[Cell]:
    a, b = x.images

    def refs(*spec):
        return [{"image": im, "weight": w, "role": role} for im, w, role in spec]

    cells = [
        Cell("ref_a", _vl([a], alpha=0.5)),
        Cell("ref_b", _vl([b], alpha=0.5)),
        Cell("mix_50_50", Recipe.from_dict({"references": refs((a, 1.0, "content"), (b, 1.0, "content")),
                                            "alpha": 0.5})),
        Cell("content_a_style_b", Recipe.from_dict({"references": refs((a, 1.0, "content"), (b, 1.0, "style")),
                                                    "alpha": 0.5})),
    ]
    if not x.quick:
        cells.insert(3, Cell("mix_75_25", Recipe.from_dict({"references": refs((a, 3.0, "content"),
                                                                               (b, 1.0, "content")), "alpha": 0.5})))
        cells.append(Cell("content_b_style_a", Recipe.from_dict({"references": refs((b, 1.0, "content"),
                                                                                   (a, 1.0, "style")), "alpha": 0.5})))
    return cells


def layer_multi(x: Inputs) -> list[Cell]:
    img_layers = _pick(x.quick, [-2, -5, -10], [-2, -10])
    txt_layers = _pick(x.quick, [-2, -10, -15], [-2, -10])
    # Seed 002 phase 4: image tokens from one layer, text tokens from another, mixed 30/70.
    return [Cell(f"image{i}_text{t}", _pure(x.images, vl_intra_blend_ratio=0.3, image_layer=i, text_layer=t),
                 {"image_layer": i, "text_layer": t})
            for i in img_layers for t in txt_layers]


def token_budget(x: Inputs) -> list[Cell]:
    budgets = _pick(x.quick, [256, 64, 16], [64, 16])
    modes = _pick(x.quick, ["pool", "interpolate", "truncate"], ["pool"])
    return [Cell("no_budget", _pure(x.images)),
            *(Cell(f"budget{n}_{m}", _pure(x.images, token_budget=n, budget_mode=m), {"budget_mode": m, "budget": n})
              for m in modes for n in budgets)]


def splice_vs_vl(x: Inputs) -> list[Cell]:
    sel = {"full": "full", "image": "image_no_markers"}
    return [Cell(f"{backend}_{kind}", _pure(x.images, backend=backend, token_selection=s),
                 {"backend": backend, "tokens": kind})
            for backend in ("vl", "splice") for kind, s in sel.items()]


def backends(x: Inputs) -> list[Cell]:
    """The three backends side by side at D-OPSD's layer -2 and the seeds' -6, on the full sequence
    and on the image tokens (quick: image tokens only), pure VL. Every cell at D-OPSD's pixel budget
    (768 x 768), so that the language model is what varies (dopsd also enlarges smaller images to
    512 x 512, as D-OPSD does)."""
    sel = {"image": "image_no_markers"} if x.quick else {"full": "full", "image": "image_no_markers"}
    return [Cell(f"{backend}_layer{layer}_{kind}",
                 _pure(x.images, backend=backend, hidden_layer=layer, token_selection=s,
                       max_pixels=DOPSD_DEFAULTS["max_pixels"]),
                 {"backend": backend, "layer": layer, "tokens": kind})
            for backend in ("vl", "splice", "dopsd") for layer in (-2, -6) for kind, s in sel.items()]


# -- seed 004: caption alignment ------------------------------------------------------------------

CAPTION_TOKENS = 1024  # seed 004's target
CAPTION_TOKENS_QUICK = 256


def caption_alignment(x: Inputs) -> list[Cell]:
    layers = _pick(x.quick, [-2, -3, -4, -5, -6], [-2, -6])
    alphas = _pick(x.quick, [0.0, 0.25, 0.5, 0.75, 1.0], [0.0, 0.5, 1.0])
    n = CAPTION_TOKENS_QUICK if x.quick else CAPTION_TOKENS
    cells = [Cell(TEXT_ONLY, TEXT, caption=n)]
    for layer in layers:
        for a in alphas:
            for method, text in METHODS.items():
                cells.append(Cell(f"layer{layer}_alpha{fmt(a)}_{method}",
                                  _vl(x.images, vl_text=text, hidden_layer=layer, alpha=a, token_selection="full"),
                                  {"layer": layer, "alpha": a, "method": method}, caption=n))
    return cells


def slice_grids(cells: list[Cell]) -> list[GridSpec]:
    """With three varied parameters: one 2-D grid per value of each, over the other two (seed 004's
    ``grid_method_caption.png``, ``grid_layer-6.png``, ``grid_alpha0.5.png``)."""
    from .grid import varied  # grid imports Pillow; listing the experiments needs none of it

    keys = varied([c.params for c in cells if c.params])
    if len(keys) != 3:
        return []
    grids = []
    for k in keys:
        a, b = [x for x in keys if x != k]
        prefix = SHORT.get(k, k + "-") or k + "_"
        for v in dict.fromkeys(c.params[k] for c in cells if k in c.params):
            # the value as in cell names (a text axis may hold "{prompt}"): a file name of the folder
            file = safe_name(f"grid_{prefix}{fmt(v)}") + ".png"
            grids.append(GridSpec(file, f"{k} {fmt(v)}: {a} x {b}", {k: v}, a, b))
    return grids


def caption_length(x: Inputs) -> list[Cell]:
    lengths = _pick(x.quick, [256, 512, 768, 1024, 1280, 1504], [256, 1024])
    cells = []
    for n in lengths:
        cells.append(Cell(f"caption{n}_text_only", TEXT, {"caption_tokens": n, "method": "text_only"}, caption=n))
        cells.append(Cell(f"caption{n}_vl_aligned", _vl(x.images, alpha=0.5, token_selection="full"),
                          {"caption_tokens": n, "method": "vl_aligned"}, caption=n))
    return cells


_CAPTION_RUN = {"encoder.max_length": 1504}  # captions are long: encode them whole

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in [
    Experiment("vl_only_vs_qwen3", "can VL replace Qwen3-4B? pure text vs pure VL (text tokens, full) vs a 30% blend",
               vl_only_vs_qwen3,
               look_at=("ssim_text", "grid_artifact", "vqa_yes")),
    Experiment("vl_layer_by_token", "image tokens and text tokens at layers -1 -2 -5 -10 -15 (quick: -2 -10), pure VL",
               vl_layer_by_token,
               look_at=("ssim_ref", "vqa_yes", "grid_artifact")),
    Experiment("vl_prompt_variations", "the VL chat's text: none, the prompt, a description, an instruction",
               vl_prompt_variations,
               look_at=("vqa_yes", "ssim_text", "grid_artifact")),
    Experiment("vl_intra_token_blend", "full / image / text tokens of one extraction, and image:text ratios",
               vl_intra_token_blend,
               look_at=("ssim_ref", "vqa_yes", "grid_artifact")),
    Experiment("vl_double_conditioning", "image tokens without text, text tokens with it, and dual-extraction mixes",
               vl_double_conditioning,
               look_at=("ssim_ref", "vqa_yes", "grid_artifact")),
    Experiment("outlier_masking", "outlier dimensions of image tokens: none / zero / clamp / scale / restore at -2, -6",
               outlier_masking,
               look_at=("grid_artifact", "ssim_ref", "vqa_yes")),
    Experiment("normalization", "none / global / per_dim / hybrid / whiten / cross on image tokens, alpha 0.3 and 1",
               normalization,
               look_at=("grid_artifact", "ssim_ref", "vqa_yes")),
    Experiment("cross_normalization", "per_dim, then scaled to std 50, 61, 70 (seed 001 #8)", cross_normalization,
               look_at=("grid_artifact", "ssim_ref", "vqa_yes")),
    Experiment("style_delta", "text + alpha * (VL(image) - VL(gray image)) over alphas", style_delta,
               look_at=("ssim_ref", "color_hist_ref", "vqa_yes")),
    Experiment("adain", "adain and adain_per_dim over alphas", adain,
               look_at=("ssim_ref", "color_hist_ref", "vqa_yes")),
    Experiment("alpha_sweep", "interpolate from alpha 0 (pure text) to 1 (pure VL)", alpha_sweep,
               look_at=("ssim_ref", "vqa_yes", "grid_artifact")),
    Experiment("timestep_alpha", "alpha per denoising step: constant, linear, cosine, step schedules", timestep_alpha,
               look_at=("ssim_ref", "vqa_yes", "grid_artifact")),
    Experiment("multi_reference",
               "two references: each alone, weighted mixes, content from one and style from the other",
               multi_reference, images=2,
               look_at=("ssim_ref", "color_hist_ref", "vqa_yes")),
    Experiment("layer_multi", "image tokens and text tokens from different layers, mixed 30:70", layer_multi,
               look_at=("ssim_ref", "vqa_yes", "grid_artifact")),
    Experiment("token_budget", "the VL sequence pooled / interpolated / truncated to 256, 64, 16 tokens", token_budget,
               look_at=("ssim_ref", "grid_artifact", "vqa_yes")),
    Experiment("splice_vs_vl", "Qwen3-VL's language model vs its vision tower spliced into Qwen3-4B", splice_vs_vl,
               look_at=("ssim_ref", "grid_artifact", "vqa_yes")),
    Experiment("backends", "vl, splice and dopsd (D-OPSD: Qwen3-VL's forward, Qwen3-4B's weights) at layers -2 "
               "and -6, full sequence and image tokens, pure VL", backends, grids=slice_grids,
               look_at=("ssim_ref", "grid_artifact", "vqa_yes")),
    Experiment("caption_alignment", "caption-aligned vs generic VL text over layers x alphas, plus the caption alone",
               caption_alignment, caption=True, grids=slice_grids, config=_CAPTION_RUN,
               look_at=("ssim_ref", "vqa_yes", "grid_artifact")),
    Experiment("caption_length",
               "captions of 256 / 512 / 768 / 1024 / 1280 / 1504 tokens: text alone and caption-aligned VL",
               caption_length, caption=True, config=_CAPTION_RUN,
               look_at=("ssim_ref", "vqa_yes", "grid_artifact")),
]}


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        import difflib

        close = difflib.get_close_matches(name, EXPERIMENTS, n=1)
        hint = f"; did you mean {close[0]}?" if close else "; 'llm-dit experiments' lists them"
        raise InputError(f"unknown experiment {name!r}{hint}")
    return EXPERIMENTS[name]


def catalog() -> list[dict[str, Any]]:
    """The named experiments as ``llm-dit experiments`` and the web app's list show them, in order:
    ``name``, ``summary``, ``images`` (reference images it takes), ``caption`` (it writes its own
    prompts), and its number of ``cells`` and ``quick_cells`` (text baselines included)."""
    out = []
    for e in EXPERIMENTS.values():
        images = [f"/ref{i}.png" for i in range(e.images)]  # the cell count depends on the count of images only
        out.append({"name": e.name, "summary": e.summary, "images": e.images, "caption": e.caption,
                    "cells": len(e.cells(Inputs(images, False))), "quick_cells": len(e.cells(Inputs(images, True)))})
    return out
