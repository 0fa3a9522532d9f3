"""Reference statistics of Z-Image's text encoder, computed by the project from a prompt corpus.

Each prompt is encoded exactly as Z-Image encodes captions (chat template, up to 1504 tokens) and
the hidden states of the requested layers are gathered over all tokens of all prompts (template
included: that is what the DiT receives). One forward pass per prompt serves every layer. Per
dimension: mean, population std, min, max; optionally the covariance (``[D, D]``, for whitening).

Files: safetensors (ours), or NumPy ``.npz`` in the research notes' layout (``qwen3_4b_stats.npz``:
``per_dim_mean``, ``per_dim_std``, ``global_mean``, ``global_std``), which ``save``/``load`` write and
read by the file's suffix; our ``.npz`` adds ``per_dim_min``/``per_dim_max``, the covariance and the
provenance as further arrays. A notes file without a layer borrows it from a ``.json`` of the same
name beside it (the notes kept one: ``"layer": -2``); one with no layer at all is refused where
statistics must match a layer (:func:`check_layer_match`), and its std is taken as written (the
notes' is Bessel-corrected, ours the population std: a 0.2 % difference at 220 tokens).

``exclude_massive`` leaves out the attention-sink tokens whose RMS is more than 10x the median
token RMS (real Qwen3 hidden states carry "massive activations" of ~1e3-1e4 on a token or two),
so the statistics describe ordinary tokens; the count of excluded tokens is recorded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..text import format_prompt, run_text_encoder
from ..text.capture import canonical_layer

MASSIVE_FACTOR = 10.0
_META_KEY = "llm_dit_reference"


def covariance_sqrt(c: torch.Tensor) -> torch.Tensor:
    """``C^(1/2)`` of a symmetric ``[D, D]`` covariance, ``V diag(sqrt(max(l, 0))) V^T`` from its
    eigendecomposition (float64 inside, float32 out)."""
    evals, evecs = torch.linalg.eigh(c.double())
    return ((evecs * evals.clamp(min=0).sqrt()) @ evecs.T).float()


@dataclass
class ReferenceStats:
    """Per-dimension statistics of text-encoder hidden states at one layer (all ``[D]`` float32)."""

    mean: torch.Tensor
    std: torch.Tensor
    min: torch.Tensor | None  # None: a notes file, which holds mean and std only
    max: torch.Tensor | None
    layer: int | None  # canonical index 0..num_layers; a notes file may give a negative one, or none
    num_layers: int | None  # None: not recorded (a notes file)
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
            self._cov_sqrt = covariance_sqrt(self.covariance)
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
        """safetensors, or the notes' ``.npz`` layout when ``path`` ends in ``.npz``."""
        from ..io import save_npz, save_tensors

        if Path(path).suffix.lower() == ".npz":
            arrays: dict[str, Any] = {"per_dim_mean": self.mean.numpy(), "per_dim_std": self.std.numpy(),
                                      "global_mean": float(self.mean.mean()), "global_std": self.global_std}
            for name, t in (("per_dim_min", self.min), ("per_dim_max", self.max), ("covariance", self.covariance)):
                if t is not None:
                    arrays[name] = t.float().numpy()
            prov = {k: v for k, v in self.provenance().items() if v is not None and k != "has_covariance"}
            scalars = {k: v for k, v in prov.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
            return save_npz(path, {**arrays, **scalars, "provenance_json": json.dumps(prov, default=str)})
        tensors = {"mean": self.mean, "std": self.std, "min": self.min, "max": self.max}
        if self.covariance is not None:
            tensors["covariance"] = self.covariance
        return save_tensors(path, {k: v.float() for k, v in tensors.items() if v is not None}, _META_KEY,
                            self.provenance())

    @classmethod
    def load(cls, path: str | Path, digests: dict[str, str] | None = None) -> ReferenceStats:
        """The statistics in ``path``, safetensors or ``.npz`` (``digests``: see :func:`~llm_dit.io.read_input`)."""
        from ..io import load_npz, load_tensors

        if Path(path).suffix.lower() == ".npz":
            return cls.from_mapping(load_npz(path, "reference statistics", digests), source=Path(path))
        meta, t = load_tensors(path, _META_KEY, "reference statistics", digests)
        known = {"model", "layer", "num_layers", "num_tokens", "num_prompts", "excluded_tokens", "has_covariance"}
        return cls(
            mean=t["mean"], std=t["std"], min=t.get("min"), max=t.get("max"), covariance=t.get("covariance"),
            layer=meta["layer"], num_layers=meta["num_layers"], model=meta["model"],
            num_tokens=meta["num_tokens"], num_prompts=meta["num_prompts"],
            excluded_tokens=meta.get("excluded_tokens", 0),
            extra={k: v for k, v in meta.items() if k not in known},
        )

    @classmethod
    def from_mapping(cls, arrays: Mapping[str, Any], source: Path | None = None) -> ReferenceStats:
        """From the notes' layout (``per_dim_mean``, ``per_dim_std``, ...; a dict, ``np.load``'s archive,
        or what :meth:`save` writes to ``.npz``). ``source``: the file, whose same-named ``.json``
        supplies a missing layer."""
        import numpy as np

        missing = [k for k in ("per_dim_mean", "per_dim_std") if k not in arrays]
        if missing:
            raise InputError(f"reference statistics need {' and '.join(missing)} (the notes' .npz layout)")

        def vector(name: str) -> torch.Tensor | None:
            if name not in arrays:
                return None
            v = torch.as_tensor(np.asarray(arrays[name], dtype=np.float32))
            if v.ndim != 1 or v.shape[0] != dim:
                raise InputError(f"reference statistics: {name} has shape {tuple(v.shape)}, expected [{dim}]")
            return v

        dim = int(np.asarray(arrays["per_dim_mean"]).reshape(-1).shape[0])
        side: dict = {}
        sidecar = source.with_suffix(".json") if source is not None else None
        if "layer" not in arrays and sidecar is not None and sidecar.is_file():
            from ..io import parse_json

            side = parse_json(sidecar.read_text(encoding="utf-8"), str(sidecar))
            side = side if isinstance(side, dict) else {}

        def scalar(name: str, default: Any = None) -> Any:
            v = arrays[name] if name in arrays else side.get(name, default)
            v = v.item() if isinstance(v, np.ndarray) else v
            return v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else default

        cov = arrays.get("covariance")
        layer, n_layers = scalar("layer"), scalar("num_layers")
        mean, std = vector("per_dim_mean"), vector("per_dim_std")
        assert mean is not None and std is not None  # checked above
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std >= 0).all()):
            raise InputError("reference statistics: per_dim_mean and per_dim_std must be finite, the std >= 0")
        return cls(
            mean=mean, std=std, min=vector("per_dim_min"), max=vector("per_dim_max"),
            covariance=None if cov is None else torch.as_tensor(np.asarray(cov, dtype=np.float32)),
            layer=None if layer is None else int(layer), num_layers=None if n_layers is None else int(n_layers),
            model=str(scalar("model", "unknown")), num_tokens=int(scalar("num_tokens", 0)),
            num_prompts=int(scalar("num_prompts", 0)), excluded_tokens=int(scalar("excluded_tokens", 0)),
            extra=_provenance(arrays),
        )


def _provenance(arrays: Mapping[str, Any]) -> dict:
    """What our ``.npz`` records beyond the notes' layout (``provenance_json``), or where it came from."""
    known = {"model", "layer", "num_layers", "num_tokens", "num_prompts", "excluded_tokens"}
    if "provenance_json" not in arrays:
        return {"source": "the notes' .npz layout"}
    try:
        prov = json.loads(str(arrays["provenance_json"]))
    except ValueError:
        return {}
    return {k: v for k, v in prov.items() if k not in known} if isinstance(prov, dict) else {}


def as_reference(stats: ReferenceStats | Mapping[str, Any] | str | Path) -> ReferenceStats:
    """Reference statistics from what a caller has: :class:`ReferenceStats`, the notes' dict or
    ``np.load`` archive (``per_dim_std``, ``per_dim_mean``), or a file's path."""
    if isinstance(stats, ReferenceStats):
        return stats
    if isinstance(stats, (str, Path)):
        return ReferenceStats.load(stats)
    if isinstance(stats, Mapping):
        return ReferenceStats.from_mapping(stats)
    raise InputError(f"reference statistics must be ReferenceStats, a dict with per_dim_std/per_dim_mean, "
                     f"or a file path (got {type(stats).__name__})")


def check_layer_match(reference: ReferenceStats, layer: int, num_layers: int | None, force: bool = False) -> None:
    """Refuse statistics of another layer (indices compared after mapping negatives). Statistics
    that record a negative layer and no depth (the notes' file) match that index of any depth;
    with no depth on either side the indices are compared as given."""
    if force:
        return
    if reference.layer is None:
        raise InputError(
            f"reference statistics from {reference.model} do not record their layer; write them again with "
            "llm-dit stats reference --layer, put {\"layer\": N} in a .json of the same name beside the .npz, or force")
    if num_layers is None:
        k, ref_layer = layer, reference.layer
    else:
        k = layer % (num_layers + 1)
        ref_layer = reference.layer % (num_layers + 1) if reference.num_layers is None else reference.layer
    if reference.num_layers in (None, num_layers) and ref_layer == k:
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
