"""``llm-dit doctor``'s checks across the models and of this machine: the hidden sizes the two models
must share, the GPU memory the profile's offload policy needs against this GPU's, disk for the
extraction cache, and the installed libraries against llm-dit's declared bounds (``doctor.py`` has
the model folders' checks and the report)."""

from __future__ import annotations

import shutil
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config
from .inspect import gib

if TYPE_CHECKING:
    from .doctor import Report

#: A row's status: fine, worth knowing, a problem (exit status 1).
OK, WARN, FAIL = "ok", "warn", "FAIL"
#: Bytes per parameter of the run dtypes.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: The share of the DiT's weights in its FP8 layers (``models/fp8.py``'s FP8_LAYERS: attention and
#: feed-forward of the blocks and refiners; 6.02 B of 6.15 B at the published sizes).
FP8_SHARE = 0.977
#: Working memory beside the weights for a 1024x1024 picture (activations, VAE decode), measured
#: roughly on an H100 (BENCHMARKS.md): a margin, not a bound.
WORKING_GIB = 3.0

def check_relations(report: Report) -> None:
    """The sizes the conditioning needs to agree, across the two models."""
    f = report.facts
    sizes = {"Z-Image cap_feat_dim": f.get("cap_feat_dim"), "Qwen3-4B hidden": f.get("text_hidden")}
    if "vl_hidden" in f:
        sizes["Qwen3-VL text hidden"], sizes["Qwen3-VL vision output"] = f["vl_hidden"]
    known = {k: v for k, v in sizes.items() if v is not None}
    if len(known) < 2:
        return
    if len(set(known.values())) == 1:
        report.add("both", "hidden sizes", OK, f"all {next(iter(known.values()))}")
    else:
        listed = ", ".join(f"{k} {v}" for k, v in known.items())
        report.add("both", "hidden sizes", FAIL, f"they must be equal: {listed}; these models cannot work together")


def check_memory(report: Report, config: Config) -> None:
    """The profile's GPU memory need (weights in the run dtype under its offload policy, plus a
    working margin) against the GPU of this machine; and the disk the extraction cache may fill."""
    import torch

    from .loading import resolve_placement

    rt = config.runtime
    cuda = torch.cuda.is_available()
    if rt.device == "cuda" and not cuda:
        report.add("system", "gpu", FAIL, f"profile {config.profile} needs a CUDA GPU and none is available: "
                   "use --profile default (CPU) or run on a GPU machine")
        return
    if not cuda and rt.device == "auto":
        report.add("system", "gpu", WARN, "no CUDA GPU: everything runs on the CPU in float32 (slow)")
    elif rt.device not in ("auto", "cuda"):
        report.add("system", "gpu", OK, f"profile {config.profile} runs on {rt.device}, not on a GPU")
    if cuda:
        placement = resolve_placement(rt)
        per = DTYPE_BYTES.get(str(placement.dtype).removeprefix("torch."), 4)
        z, vl = report.facts.get("z_image_weights"), report.facts.get("vl_weights")
        if z is not None:
            sizes = {k: w.bytes_as(per) for k, w in z.items()}
            if rt.precision != "dtype":  # the DiT's FP8 layers: 1 byte a weight
                sizes["transformer"] = int(sizes["transformer"] * (1 - FP8_SHARE + FP8_SHARE / per))
            need = _peak_bytes(rt.offload, rt.keep_models, sizes, vl.bytes_as(per) if vl is not None else 0)
            total = torch.cuda.get_device_properties(0).total_memory
            status = OK if need + WORKING_GIB * 2**30 <= total else FAIL
            what = f"about {gib(need)} of weights + {WORKING_GIB:g} GiB working memory under offload " \
                   f"{rt.offload!r}; {torch.cuda.get_device_name(0)} has {gib(total)}"
            report.add("system", "gpu memory", status, what if status == OK else
                       f"{what}: use a profile that offloads (--profile low_vram)")
    free = shutil.disk_usage(_existing(_cache_dir())).free
    want = config.vl.cache_gb * 2**30
    report.add("system", "disk", OK if free >= want else WARN,
               f"{gib(free)} free for the extraction cache (vl.cache_gb {config.vl.cache_gb:g})"
               + ("" if free >= want else ": lower vl.cache_gb or free some space"))


def _cache_dir() -> Path:
    from ..io import cache_root

    return cache_root()


def _existing(p: Path) -> Path:
    """The nearest existing folder at or above ``p`` (the cache may not exist yet)."""
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _peak_bytes(offload: str, keep: str, z: dict[str, int], vl: int) -> int:
    """Weights resident on the GPU at the worst moment: ``none`` keeps Z-Image (and, with
    ``keep_models = "all"``, Qwen3-VL) resident; ``encoder`` keeps the DiT and the VAE, with a sixth
    of the text encoder on the GPU while it encodes (its token embedding, a tenth, and two of its 36
    layers streaming through; Qwen3-VL, freed before Z-Image loads, is alone);
    ``model`` moves whole components; ``group_*`` one block at a time."""
    dit, vae, te = z["transformer"], z["vae"], z["text_encoder"]
    if offload == "none":
        return dit + vae + te + vl if keep == "all" else max(dit + vae + te, vl)
    if offload == "encoder":  # keep_models = "all" (a server) keeps Qwen3-VL beside them
        return dit + vae + te // 6 + vl if keep == "all" else max(dit + vae + te // 6, vl)
    if offload == "model":
        return max(dit, te) + vae + vl if keep == "all" else max(dit, te, vl) + vae
    return vae + max(dit, te, vl) // 30  # a block of 30 (the DiT's), the VAE whole


def check_versions(report: Report) -> None:
    """Each installed dependency against llm-dit's declared bounds (the tested floors)."""
    from packaging.requirements import Requirement

    try:
        requires = metadata.requires("llm-dit") or []
    except metadata.PackageNotFoundError:
        report.add("system", "versions", WARN, "llm-dit is not installed (a source tree): bounds unknown; "
                   "pip install -e .")
        return
    bad, seen = [], []
    for line in requires:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an extra's tool, or another Python's
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            bad.append(f"{req.name} is not installed (needs {req.specifier})")
            continue
        seen.append(f"{req.name} {have}")
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            bad.append(f"{req.name} {have} is outside {req.specifier}: pip install '{req.name}{req.specifier}'")
    for line in bad:
        report.add("system", "versions", FAIL, line)
    if not bad:
        report.add("system", "versions", OK, ", ".join(s for s in seen if s.split()[0] in
                                                        ("torch", "transformers", "diffusers", "accelerate")))
