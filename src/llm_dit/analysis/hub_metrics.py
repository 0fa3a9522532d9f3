"""Optional image-prompt scores from models a user staged on disk (no model hub is ever contacted).

* ``clip`` / ``siglip``: cosine of the image and prompt embeddings of a transformers CLIP or SigLIP
  folder (``metrics.clip``, ``metrics.siglip``). SigLIP's text tower was trained on 64 padded
  tokens, so its prompts are padded to ``max_length`` (upstream padded to the longest, which skews it).

A key left empty skips its metric with a note in the run's record; a folder that does not exist is
a one-line error before anything loads. ImageReward is not offered: its package fetches a BLIP
configuration and a BERT tokenizer from the hub whenever it loads, so a local checkpoint is not
enough; every run says so in its notes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch

from ..config import Config
from ..errors import InputError, ModelLoadError
from ..io import expand_user

KINDS = ("clip", "siglip")


class ClipLike(Protocol):
    """A transformers CLIP or SigLIP model: both towers' projected features (a tensor or an output)."""

    def get_text_features(self, **inputs: torch.Tensor) -> Any: ...

    def get_image_features(self, *, pixel_values: torch.Tensor) -> Any: ...


class Processor(Protocol):
    """A transformers processor: text and/or images in, ``{name: tensor}`` out."""

    def __call__(self, **kwargs: Any) -> Any: ...


@dataclass
class EmbeddingScorer:
    name: str
    model: ClipLike
    processor: Processor
    device: torch.device

    @classmethod
    def load(cls, name: str, path: str, device: torch.device) -> EmbeddingScorer:
        from transformers import AutoModel, AutoProcessor

        try:
            model = AutoModel.from_pretrained(path).to(device).eval()
            processor = AutoProcessor.from_pretrained(path)
        except Exception as e:
            raise ModelLoadError(f"could not load the {name} model from {path}: {type(e).__name__}: {e}") from e
        if not hasattr(model, "get_image_features") or not hasattr(model, "get_text_features"):
            raise ModelLoadError(f"{path} is not a CLIP-like model (no image and text features)")
        return cls(name, cast(ClipLike, model), processor, device)  # both methods checked just above

    @torch.no_grad()
    def score(self, image, prompt: str) -> float:
        """``cos(f_image, f_text)`` in ``[-1, 1]``."""
        padding = "max_length" if self.name == "siglip" else True
        text = self.processor(text=[prompt], padding=padding, truncation=True, return_tensors="pt")
        pixels = self.processor(images=[image.convert("RGB")], return_tensors="pt")
        t = _features(self.model.get_text_features(**{k: v.to(self.device) for k, v in text.items()}))
        i = _features(self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device)))
        return float(torch.nn.functional.cosine_similarity(i.float(), t.float()).item())


def _features(out) -> torch.Tensor:
    # transformers 5 may return a model output instead of the projected tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def check_paths(config: Config) -> None:
    for kind in KINDS:
        path = getattr(config.metrics, kind)
        if path and not expand_user(path, f"metrics.{kind} folder").is_dir():
            raise InputError(f"metrics.{kind} folder {path} does not exist (leave it empty to skip this metric)")


def load_scorers(config: Config, device: torch.device) -> tuple[list[EmbeddingScorer], list[str]]:
    """The configured scorers, and a note for each metric that is skipped."""
    check_paths(config)
    scorers, notes = [], []
    for kind in KINDS:
        path = getattr(config.metrics, kind)
        if path:
            scorers.append(EmbeddingScorer.load(kind, str(expand_user(path, f"metrics.{kind} folder")), device))
        else:
            notes.append(f"{kind}: skipped (set metrics.{kind} to a local folder; no model hub is used)")
    notes.append("image_reward: not available offline (its package downloads BLIP and BERT files when it loads)")
    return scorers, notes
