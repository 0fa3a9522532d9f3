"""``stats compare``: how VL hidden states differ from the text encoder's, per dimension, per layer.

For each layer it reports, against reference statistics of Z-Image's text encoder (the shipped
corpus plus the prompt, same layer):

* per-dimension std of the reference, of the VL image tokens and of the VL text tokens;
* outlier dimensions in both directions (:mod:`llm_dit.vl.outliers`);
* correlations done right: Pearson on **log** std and Spearman (ranks), each with and without the
  massive-activation dimensions (reference std above 10x the median std). Pearson on raw stds is
  dominated by those few dimensions, which is where upstream's "0.999" came from;
* a leak measure: the same chat with the reference image replaced by a flat gray image of the same
  size; ``||h - h_gray|| / ||h||`` over the user's text tokens (after the image), and over the tokens
  before the image as a control (causal attention: exactly 0). Non-zero means the text positions
  carry information about the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..config import DEFAULT_MAX_PIXELS
from ..limits import MAX_LAYER, MAX_PIXELS, MAX_POOL, check_number
from ..protocols import Extractor
from ..vl.outliers import get_outlier_dimensions
from ..vl.reference import MASSIVE_FACTOR, compute_reference_stats, read_prompts
from ..vl.result import VLExtractionResult


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else float("nan")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    def ranks(x):
        return torch.argsort(torch.argsort(x)).double()

    return pearson(ranks(a), ranks(b))


def _log(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x.double().clamp(min=1e-12))


def correlations(ref_std: torch.Tensor, vl_std: torch.Tensor, massive: torch.Tensor) -> dict[str, float]:
    keep = ~massive
    return {
        "pearson_log_std": pearson(_log(ref_std), _log(vl_std)),
        "spearman_std": spearman(ref_std, vl_std),
        "pearson_log_std_without_massive": pearson(_log(ref_std[keep]), _log(vl_std[keep])),
        "spearman_std_without_massive": spearman(ref_std[keep], vl_std[keep]),
        "pearson_raw_std": pearson(ref_std, vl_std),  # shown for comparison with the seeds' number
    }


def _relative_change(a: torch.Tensor, b: torch.Tensor) -> float | None:
    if a.numel() == 0:
        return None
    n = float(a.norm())
    return float((a - b).norm()) / n if n > 0 else 0.0


@dataclass(frozen=True)
class CompareOptions:
    """What ``stats compare`` measures and how the VL chat is run."""

    layers: list[int]  # hidden-state indices (transformers' convention), the same in both models
    model_name: str  # recorded in the reference statistics
    threshold: float = 10.0  # outlier ratio of per-dimension stds (> 1)
    prompts_file: str | None = None  # the reference corpus (None: the shipped one)
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    pool: int = 1
    system_prompt: str | None = None

    def __post_init__(self) -> None:  # refused here, before any model runs (``stats compare --threshold``)
        check_number(self.threshold, "threshold", gt=1)
        if self.max_pixels is not None:
            check_number(self.max_pixels, "max_pixels", whole=True, ge=1024, le=MAX_PIXELS)
        check_number(self.pool, "pool", whole=True, ge=1, le=MAX_POOL)
        for k in self.layers:
            check_number(k, "a layer", whole=True, ge=-(MAX_LAYER + 1), le=MAX_LAYER)


def compare_embedding_stats(extractor: Extractor, tokenizer, text_encoder, image: Image.Image, prompt: str,
                            options: CompareOptions) -> dict:
    """The numbers behind the plots, as one JSON-ready dict (see the module docstring)."""
    o = options
    layers, threshold, max_pixels, pool = o.layers, o.threshold, o.max_pixels, o.pool
    refs = compute_reference_stats(
        tokenizer, text_encoder, read_prompts(o.prompts_file) + [prompt], layers, model_name=o.model_name
    )
    def extract(im: Image.Image) -> VLExtractionResult:
        return extractor.extract(im, prompt, hidden_layer=layers, max_pixels=max_pixels, pool=pool,
                                 system_prompt=o.system_prompt)

    vl = extract(image)
    gray = extract(Image.new("RGB", image.size, (128, 128, 128)))
    masks = vl.masks
    first_image = masks.image_spans[0][0] - 1 if masks.image_spans else len(masks.full)
    before = torch.zeros_like(masks.full)
    before[:first_image] = True
    per_layer: dict[str, dict] = {}
    report = {"prompt": prompt, "model": vl.model, "backend": vl.backend, "threshold": threshold,
              "max_pixels": max_pixels, "pool": pool,
              "massive_factor": MASSIVE_FACTOR, "token_counts": masks.counts(), "token_grids": vl.token_grids,
              "layers": per_layer}
    for k in layers:
        ref = refs[k]
        h, hg = vl.hidden_states[k], gray.hidden_states[k]
        img, txt = h[masks.image_no_markers], h[masks.text_only]
        massive = ref.std > MASSIVE_FACTOR * ref.std.median()
        entry: dict[str, Any] = {
            "reference": ref.provenance(),
            "massive_dims": torch.nonzero(massive).flatten().tolist(),
            "std": {
                "reference": ref.std.tolist(),
                "vl_image": img.std(0, unbiased=False).tolist() if len(img) else None,
                "vl_text": txt.std(0, unbiased=False).tolist(),
            },
            "global_std": {"reference": ref.global_std, "vl_image": float(img.std()) if len(img) > 1 else None,
                           "vl_text": float(txt.std())},
            "leak": {
                "user_text_relative_change": _relative_change(h[masks.user_text], hg[masks.user_text]),
                "before_image_relative_change": _relative_change(h[before], hg[before]),
            },
        }
        for name, x in (("vl_image", img), ("vl_text", txt)):
            if len(x) == 0:
                continue
            sd = x.std(0, unbiased=False)
            entry[f"correlation_{name}"] = correlations(ref.std, sd, massive)
            entry[f"outliers_{name}"] = (
                [o.__dict__ for o in get_outlier_dimensions(x, ref, threshold)] if len(x) > 1 else []
            )
        per_layer[str(k)] = entry
    return report


def plot_report(report: dict, out_dir: str | Path) -> list[Path]:
    """One PNG per layer (per-dimension std, log scale; VL/reference ratio with outliers) and one
    PNG of the leak measure. Returns the paths written."""
    from .plots import pyplot, save_figure

    plt = pyplot()
    out_dir = Path(out_dir)
    written = []
    thr = report["threshold"]
    for k, entry in report["layers"].items():
        std = entry["std"]
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
        dims = range(len(std["reference"]))
        for name, color in (("reference", "black"), ("vl_image", "tab:red"), ("vl_text", "tab:blue")):
            if std[name] is not None:
                ax1.scatter(dims, std[name], s=2, color=color, label=name.replace("_", " "))
        ax1.set_yscale("log")
        ax1.set_ylabel("per-dimension std")
        ax1.set_title(f"layer {k}: text-encoder reference vs Qwen3-VL tokens")
        ax1.legend(markerscale=5)
        if std["vl_image"] is not None:
            pairs = zip(std["vl_image"], std["reference"], strict=True)  # one std per dimension each
            ratio = [math.log10(max(v, 1e-12) / max(r, 1e-12)) for v, r in pairs]
            ax2.scatter(dims, ratio, s=2, color="tab:red")
            for o in entry.get("outliers_vl_image", [])[:8]:
                sign = 1 if o["direction"] == "vl_high" else -1
                ax2.annotate(f"{o['dim']} ({o['ratio']:.0f}x)", (o["dim"], sign * math.log10(o["ratio"])), fontsize=7)
        for y in (math.log10(thr), -math.log10(thr)):
            ax2.axhline(y, color="gray", linestyle="--", linewidth=0.8)
        ax2.set_ylabel("log10(std VL image / std reference)")
        ax2.set_xlabel("hidden dimension")
        fig.tight_layout()
        written.append(save_figure(fig, out_dir / f"std_per_dim_layer{k}.png"))

    layers = list(report["layers"])
    leak = [report["layers"][k]["leak"]["user_text_relative_change"] or 0.0 for k in layers]
    control = [report["layers"][k]["leak"]["before_image_relative_change"] or 0.0 for k in layers]
    fig, ax = plt.subplots(figsize=(max(6.5, 1.5 * len(layers)), 4.5))
    x = range(len(layers))
    ax.bar([i - 0.2 for i in x], leak, width=0.4, label="user text (after the image)")
    ax.bar([i + 0.2 for i in x], control, width=0.4, label="before the image (control)")
    ax.set_xticks(list(x), [f"layer {k}" for k in layers])
    ax.set_ylabel("||h - h_gray|| / ||h||")
    ax.set_title("change at text positions when only the image changes")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    fig.tight_layout()
    written.append(save_figure(fig, out_dir / "leak.png"))
    return written
