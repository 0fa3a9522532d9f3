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

from importlib import resources
from pathlib import Path

import torch

from ..capture import canonical_layer
from ..errors import InputError
from ..text import format_prompt, run_text_encoder
from ..vl.normalize import ReferenceStats

MASSIVE_FACTOR = 10.0


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
