"""The plan of a run: what it is (:class:`RunSpec`), its keys, and its jobs (one per distinct picture).

Keys make resuming safe. The run key digests everything that decides the pictures (cells, recipes,
prompt, reference images' bytes, the configuration without metrics, offloading and caching); each
cell's key adds its name and recipe. A finished cell is trusted only under the same keys.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..conditioning.build import ExtractionRequest, plan_extractions
from ..conditioning.recipe import FILE_FIELDS, Recipe
from ..conditioning.run import Checked, Loaded, check_recipe
from ..config import Config
from .cells import Cell, digest, effective_recipe, generation_key
from .folder import RUNTIME_NOT_IN_KEY
from .presets import GridSpec


@dataclass
class RunSpec:
    """What to run: a named experiment or a sweep, on reference images and a prompt."""

    name: str  # the experiment's name, or "sweep"
    images: list[str]  # absolute paths of the reference images
    prompt: str | None  # None: the prompts are captions (caption experiments)
    cells: list[Cell]
    grids: list[GridSpec] = field(default_factory=list)
    quick: bool = False
    caption: str | None = None  # a caption given by the user instead of generating one
    save_embeddings: bool = False
    details: dict = field(default_factory=dict)  # recorded as is (a sweep's axes)
    #: The generation budget of each caption Qwen3-VL writes (its thinking and the caption); None:
    #: the target length, plus THINKING_BUDGET for a Thinking model (:func:`~llm_dit.vl.caption.make_caption`).
    caption_max_new_tokens: int | None = None

    def plan(self, config: Config) -> dict:
        # the budget is in the plan (and so in the run key) only when given: earlier runs keep their keys
        budget = {} if self.caption_max_new_tokens is None else {"caption_max_new_tokens": self.caption_max_new_tokens}
        return {
            "name": self.name, "quick": self.quick, "images": self.images, "prompt": self.prompt,
            "given_caption": self.caption, **budget, "details": self.details,
            "cells": [{"name": c.name, "params": c.params, "caption": c.caption, "generation": c.generation,
                       "recipe": c.recipe.to_dict()} for c in self.cells],
            "grids": [g.__dict__ for g in self.grids],
            "config": config.to_dict(),
        }


@dataclass(frozen=True)
class PreparedRun:
    """A run checked and ready (:func:`~llm_dit.experiments.runner.prepare_run`): what the checks
    loaded, for the stages to use; none of them checks again."""

    spec: RunSpec
    config: Config
    references: list[Image.Image]  # ``spec.images``, loaded and checked, in order
    resolved: dict[str, Recipe]  # cell name -> its recipe resolved against its configuration
    checked: dict[str, Checked]  # cell name -> its planned extractions and loaded files
    loaded: Loaded = field(default_factory=Loaded)  # the files the checks loaded, by path, and their digests


@dataclass
class Summary:
    out: Path
    total: int
    skipped: int
    generated: int
    failed: list[str]
    main: bool = True  # False in the other processes of a multi-process run (they print nothing)
    reported: bool = True  # False in a process of a joined run that others outlasted (the last one reports)
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage, this process


@functools.lru_cache(maxsize=256)
def _digest_of(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _file_digest(path: str) -> str:
    st = Path(path).stat()  # cached per (path, mtime, size): a file is read once per run, not per cell
    return _digest_of(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


def run_key(spec: RunSpec, config: Config, digests: dict[str, str] | None = None) -> str:
    """Equal for the same command: what decides the pictures (not metrics, memory and speed settings,
    caching or which GPU). ``digests``: of the reference images as they were read and decoded
    (``Loaded.digests``); a file not in it is read now."""
    cfg = config.to_dict()
    cfg.pop("metrics", None)
    for key in RUNTIME_NOT_IN_KEY:
        cfg["runtime"].pop(key, None)
    if cfg["runtime"].get("precision") == "dtype":  # the keys of folders made before precisions existed
        cfg["runtime"].pop("precision")
    # which GPU of the machine ran a cell does not decide its picture (multi-GPU runs, resumes)
    cfg["runtime"]["device"] = cfg["runtime"]["device"].split(":")[0]
    cfg["vl"].pop("cache_gb", None)
    plan = spec.plan(config)
    plan.pop("config")
    plan.pop("grids")
    return digest(plan, cfg, [(digests or {}).get(p) or _file_digest(p) for p in spec.images])


def recipe_files(recipe: Recipe) -> list[str]:
    """The files a recipe reads: its reference images, its adapter, its statistics."""
    paths = [r.image for r in recipe.references] + [getattr(recipe, k) for k in FILE_FIELDS]
    return [p for p in paths if p]


def cell_key(key: str, cell: Cell, digests: dict[str, str] | None = None) -> str:
    """The run key, the cell's declaration and the bytes of every file its recipe reads (a refitted
    adapter or an edited reference makes the cell stale; ``digests``: see :func:`run_key`)."""
    files = {p: (digests or {}).get(p) or (_file_digest(p) if Path(p).is_file() else None)
             for p in recipe_files(cell.recipe)}
    return digest(key, cell.name, cell.recipe.to_dict(), cell.caption, cell.generation, files)


def text_key(prompt: str, config: Config) -> str:
    """The generation key of the pure-text picture of a prompt and generation settings: the baseline."""
    return generation_key(Recipe(backend="text").resolve(config), prompt, config)


@dataclass
class Job:
    """One picture to generate, and the cells that show it."""

    key: str
    recipe: Recipe  # effective and resolved
    prompt: str
    config: Config
    cells: list[Cell]
    requests: list[ExtractionRequest] = field(default_factory=list)
    extract_seconds: float = 0.0  # the forward passes it reads (shared with other jobs)
    files: Checked | None = None  # the adapter and reference statistics the checks loaded for it

    @property
    def is_text(self) -> bool:
        return self.recipe.backend == "text"


def _merge_key(r: ExtractionRequest) -> ExtractionRequest:
    """Everything but the layers: requests with the same key are one forward pass."""
    return dataclasses.replace(r, layers=())


def merge_requests(requests: list[ExtractionRequest]) -> dict[ExtractionRequest, ExtractionRequest]:
    """Map every request to one that reads the union of the layers its chat is asked for: one
    forward pass per distinct chat."""
    layers: dict[ExtractionRequest, set[int]] = {}
    for r in requests:
        layers.setdefault(_merge_key(r), set()).update(r.layers)
    merged = {k: dataclasses.replace(k, layers=tuple(sorted(v))) for k, v in layers.items()}
    return {r: merged[_merge_key(r)] for r in requests}


def plan_jobs(pending: list[Cell], prepared: PreparedRun, captions: dict[int, str]) -> list[Job]:
    """One :class:`Job` per distinct picture among ``pending`` cells of a prepared run (``captions``:
    the prompts of caption cells, by target length)."""
    jobs: dict[str, Job] = {}
    for c in pending:
        cfg = c.config(prepared.config)
        text = prepared.spec.prompt if c.caption is None else captions[c.caption]
        assert text is not None, "a run without a prompt captions every cell (checked by its spec)"
        recipe = effective_recipe(prepared.resolved[c.name])
        recipe = recipe.resolve(cfg) if recipe.backend == "text" else recipe
        key = generation_key(recipe, text, cfg)
        if key not in jobs:
            files = prepared.checked[c.name]
            if c.caption is not None:  # checked with a stand-in prompt before; the caption is known now
                files = check_recipe(recipe, cfg, text, prepared.loaded)
            jobs[key] = Job(key, recipe, text, cfg, [], plan_extractions(recipe, text), files=files)
        jobs[key].cells.append(c)
    # baselines first: every other picture is compared with its baseline
    return sorted(jobs.values(), key=lambda j: not j.is_text)
