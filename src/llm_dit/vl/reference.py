"""Reference statistics of Z-Image's text encoder, computed by the project from a prompt corpus.

Each prompt is encoded exactly as Z-Image encodes captions (chat template, up to 1504 tokens) and
the hidden states of the requested layers are gathered over all tokens of all prompts (template
included: that is what the DiT receives). One forward pass per prompt serves every layer. Per
dimension: mean, population std, min, max; optionally the covariance (``[D, D]``, for whitening).

``exclude_massive`` leaves out the attention-sink tokens whose RMS is more than 10x the median
token RMS (real Qwen3 hidden states carry "massive activations" of ~1e3-1e4 on a token or two),
so the statistics describe ordinary tokens; the count of excluded tokens is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from ..errors import InputError
from ..text import format_prompt, run_text_encoder
from ..text.capture import canonical_layer

MASSIVE_FACTOR = 10.0
_META_KEY = "llm_dit_reference"


@dataclass
class ReferenceStats:
    """Per-dimension statistics of text-encoder hidden states at one layer (all ``[D]`` float32)."""

    mean: torch.Tensor
    std: torch.Tensor
    min: torch.Tensor
    max: torch.Tensor
    layer: int  # canonical index 0..num_layers
    num_layers: int
    model: str
    num_tokens: int
    num_prompts: int
    covariance: torch.Tensor | None = None  # [D, D], optional (needed by whiten)
    excluded_tokens: int = 0
    extra: dict = field(default_factory=dict)
    _cov_sqrt: torch.Tensor | None = field(default=None, repr=False)

    @property
    def global_std(self) -> float:
        """Std over all elements, recomposed from the per-dimension moments."""
        second = (self.std**2 + self.mean**2).mean()
        return float((second - self.mean.mean() ** 2).clamp(min=0).sqrt())

    def covariance_sqrt(self) -> torch.Tensor:
        if self.covariance is None:
            raise InputError("these reference statistics have no covariance; recompute them with --covariance")
        if self._cov_sqrt is None:
            evals, evecs = torch.linalg.eigh(self.covariance.double())
            self._cov_sqrt = ((evecs * evals.clamp(min=0).sqrt()) @ evecs.T).float()
        return self._cov_sqrt

    def provenance(self) -> dict:
        return {
            "model": self.model,
            "layer": self.layer,
            "num_layers": self.num_layers,
            "num_tokens": self.num_tokens,
            "num_prompts": self.num_prompts,
            "excluded_tokens": self.excluded_tokens,
            "has_covariance": self.covariance is not None,
            **self.extra,
        }

    def save(self, path: str | Path) -> Path:
        from ..io import save_tensors

        tensors = {"mean": self.mean, "std": self.std, "min": self.min, "max": self.max}
        if self.covariance is not None:
            tensors["covariance"] = self.covariance
        return save_tensors(path, {k: v.float() for k, v in tensors.items()}, _META_KEY, self.provenance())

    @classmethod
    def load(cls, path: str | Path, digests: dict[str, str] | None = None) -> ReferenceStats:
        """The statistics in ``path`` (``digests``: see :func:`~llm_dit.io.read_input`)."""
        from ..io import load_tensors

        meta, t = load_tensors(path, _META_KEY, "reference statistics", digests)
        known = {"model", "layer", "num_layers", "num_tokens", "num_prompts", "excluded_tokens", "has_covariance"}
        return cls(
            mean=t["mean"], std=t["std"], min=t["min"], max=t["max"], covariance=t.get("covariance"),
            layer=meta["layer"], num_layers=meta["num_layers"], model=meta["model"],
            num_tokens=meta["num_tokens"], num_prompts=meta["num_prompts"],
            excluded_tokens=meta.get("excluded_tokens", 0),
            extra={k: v for k, v in meta.items() if k not in known},
        )


def check_layer_match(reference: ReferenceStats, layer: int, num_layers: int, force: bool = False) -> None:
    """Refuse statistics of another layer (indices compared after mapping negatives)."""
    k = layer % (num_layers + 1)
    if reference.num_layers == num_layers and reference.layer == k:
        return
    if force:
        return
    raise InputError(
        f"reference statistics are for layer {reference.layer} of {reference.num_layers}, the embeddings for "
        f"layer {k} of {num_layers}; compute matching statistics (llm-dit stats reference --layer) or force"
    )



def read_prompts(path: str | Path | None = None) -> list[str]:
    """Prompts, one per line (``#`` comments and blank lines skipped); the shipped corpus by default."""
    if path is None:
        text = resources.files("llm_dit").joinpath("data").joinpath("reference_prompts.txt").read_text(encoding="utf-8")
    else:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"prompt file {p} does not exist")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InputError(f"prompt file {p} is not UTF-8 text") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise InputError(f"prompt file {path} holds no prompts")
    return prompts


def massive_token_mask(x: torch.Tensor, factor: float = MASSIVE_FACTOR) -> torch.Tensor:
    """Tokens whose RMS exceeds ``factor`` times the median token RMS."""
    rms = x.float().pow(2).mean(-1).sqrt()
    return rms > factor * rms.median()


@torch.no_grad()
def compute_reference_stats(
    tokenizer,
    text_encoder,
    prompts: list[str],
    layers: list[int],
    model_name: str,
    covariance: bool = False,
    exclude_massive: bool = False,
    max_length: int = 1504,
) -> dict[int, ReferenceStats]:
    """``{layer: ReferenceStats}`` for each requested ``hidden_states`` index."""
    n_layers = text_encoder.config.num_hidden_layers
    canon = {k: canonical_layer(k, n_layers, "text encoder") for k in layers}
    gathered: dict[int, list[torch.Tensor]] = {c: [] for c in canon.values()}
    for prompt in prompts:
        ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False).input_ids[:max_length]
        states = run_text_encoder(text_encoder, ids, sorted(gathered), pad_id=tokenizer.pad_token_id)
        for c, h in states.items():
            gathered[c].append(h)
    out = {}
    for k, c in canon.items():
        x = torch.cat(gathered[c]).double()
        excluded = 0
        if exclude_massive:
            keep = ~massive_token_mask(x)
            excluded = int((~keep).sum())
            x = x[keep]
        mean = x.mean(0)
        cov = None
        if covariance:
            xc = x - mean
            cov = (xc.T @ xc / x.shape[0]).float()
        out[k] = ReferenceStats(
            mean=mean.float(), std=x.std(0, unbiased=False).float(), min=x.min(0).values.float(),
            max=x.max(0).values.float(), covariance=cov, layer=c, num_layers=n_layers, model=model_name,
            num_tokens=int(x.shape[0]), num_prompts=len(prompts), excluded_tokens=excluded,
        )
    return out
