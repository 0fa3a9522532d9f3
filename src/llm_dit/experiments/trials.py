"""Trials: one experiment or sweep over several reference images and seeds, a run folder each.

::

    OUT/
      trials.json          the plan: every trial (its image, seed and folder)
      NAME/                one complete run folder per trial (run.json, cells, grids, report.html)
      metadata.json        the evidence (:mod:`evidence`): per-cell means and 95 % intervals,
                           paired differences, every trial's warnings
      grid_image1.png ...  one grid per image (a row per seed), summary_grid.png (a row per image)
      report.html

A trial is an ordinary run, so each resumes, shares its cells among processes and checks its
fingerprints as any run does; the models load once for all of them (one :class:`ModelPool`) and the
launcher's processes are joined once. Running the same command again resumes every trial. The
trials folder has a lock of its own (:mod:`lock`), held for the whole command, its run key the
plan's: other trials are refused, the same ones wait or are refused, as for a run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config
from ..errors import InputError
from ..io import write_json
from ..protocols import Models
from . import folder, lock
from .cells import safe_name
from .plan import RunSpec, Summary

if TYPE_CHECKING:
    from .processes import Processes

log = logging.getLogger(__name__)
#: Most trials one command may plan.
MAX_TRIALS = 200


@dataclass(frozen=True)
class Trial:
    """One reference image and one seed; ``name`` is its folder."""

    name: str
    image: str
    seed: int


def plan_trials(images: list[str], seeds: list[int]) -> list[Trial]:
    """Every image x seed, images first (``1-house_seed42``, ``1-house_seed43``, ``2-cat_seed42``...)."""
    if not images or not seeds:
        raise InputError("trials need at least one image and one seed")
    if len(set(seeds)) != len(seeds):
        raise InputError(f"a seed is repeated ({seeds})")
    if len(images) * len(seeds) > MAX_TRIALS:
        raise InputError(f"{len(images)} images x {len(seeds)} seeds is over the limit of {MAX_TRIALS} trials")
    return [Trial(f"{i}-{safe_name(Path(im).stem)[:40]}_seed{s}", im, s)
            for i, im in enumerate(images, 1) for s in seeds]


def seeds_from(text: str, first: int) -> list[int]:
    """``--seeds``: a count ``N`` (``first``, ``first + 1``, ... ``first + N - 1``) or a list ``1,5,9``."""
    try:
        numbers = [int(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"--seeds takes a count or a comma list of whole numbers (got '{text}')") from None
    if "," in text:
        seeds = numbers
    elif not 1 <= numbers[0] <= MAX_TRIALS:
        raise InputError(f"--seeds takes a count in 1..{MAX_TRIALS} or a list of seeds (got {text})")
    else:
        seeds = list(range(first, first + numbers[0]))
    if any(not 0 <= s < 2**63 for s in seeds):
        raise InputError(f"seeds must be in 0..2^63-1 (got {text})")
    return seeds


def images_from(paths: list[str]) -> list[str]:
    """``--images``: files, and folders (their images, sorted by name), as absolute paths."""
    from ..images import IMAGE_SUFFIXES

    out: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(f"folder {p} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            out += [str(f.resolve()) for f in found]
        elif p.is_file():
            out.append(str(p.resolve()))
        else:
            raise InputError(f"reference image {p} does not exist")
    return list(dict.fromkeys(out))


def _check(out: Path) -> None:
    """Refuse a run folder, or a folder of other files, as trials folder ``out`` (reads only: before
    its lock is taken, and again under it)."""
    if (out / folder.RUN_FILE).exists():
        raise InputError(f"{out} holds a single run; give a new --out for trials")
    folder.check_out(out, folder.TRIALS_FILE, "trials")


def _prepare(out: Path, plan: dict) -> None:
    """Make ``out`` the trials folder of ``plan``; refuse a run folder or other trials. The caller
    holds its lock."""
    _check(out)
    existing = folder.read_json(out / folder.TRIALS_FILE)
    # a plan that is not one (damaged, cut short) is written again; another plan's trials are refused
    if isinstance(existing, dict) and isinstance(existing.get("trials"), list) and existing["trials"] != plan["trials"]:
        raise InputError(f"{out} holds other trials (other images or seeds); give a new --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / folder.TRIALS_FILE, plan)


def run_trials(trials: list[tuple[Trial, RunSpec, Config]], out: str | Path, echo=None,
               progress: bool = True, if_busy: lock.IfBusy = "refuse") -> Summary:
    """Run every trial into ``out/<trial>`` (see the module docstring), then the combined report;
    ``if_busy``: as for :func:`~llm_dit.experiments.runner.run_prepared`."""
    from .processes import Processes

    out = Path(out)
    echo = echo or log.info
    first = trials[0][1]
    plan = {"name": first.name, "trials": [{"name": t.name, "image": t.image, "seed": t.seed} for t, _, _ in trials]}
    procs = Processes()
    held = None
    if procs.main:
        _check(out)  # before the lock file is made in it
        key = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]
        held = lock.take(out, key, first.name, if_busy, echo)
    try:
        return _run_trials(trials, out, echo, progress, procs, plan, if_busy)
    finally:
        if held is not None:
            held.release()


def _run_trials(trials: list[tuple[Trial, RunSpec, Config]], out: Path, echo, progress: bool, procs: Processes,
                plan: dict, if_busy: lock.IfBusy) -> Summary:
    """:func:`run_trials` once the first process holds the folder's lock."""
    from ..pool import ModelPool
    from .runner import run
    from .trials_report import write_trials_report

    if procs.main:
        _prepare(out, plan)
    procs.wait()
    # each run's profile decides what stays loaded between them (runtime.keep_models)
    pool: Models = ModelPool()
    total = skipped = generated = 0
    failed: list[str] = []
    try:
        for i, (trial, spec, config) in enumerate(trials, 1):
            if procs.main:
                echo(f"trial {i}/{len(trials)}: {trial.name} (image {trial.image}, seed {trial.seed})")
            s = run(spec, config, out / trial.name, echo, progress, models=pool, procs=procs, if_busy=if_busy)
            total, skipped, generated = total + s.total, skipped + s.skipped, generated + s.generated
            failed += [f"{trial.name}/{name}" for name in s.failed]
        if procs.main:
            write_trials_report(out)
    finally:
        pool.release()
        procs.close()
    return Summary(out, total, skipped, generated, failed, main=procs.main)
