"""What the web app's routes share: the request bodies, and :class:`Server`, which turns a request
into library objects (a configuration, a recipe, a run folder) and refuses what the CLI refuses, with
the field at fault named (:func:`field`)."""

from __future__ import annotations

import contextlib
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field

from ..conditioning.recipe import FILE_FIELDS
from ..config import Config
from ..errors import InputError, LlmDitError
from ..io import check_name
from . import files
from .form import GENERATION_FIELDS
from .jobs import Job, JobQueue

# -- request bodies ---------------------------------------------------------------------------


class _Body(BaseModel):
    # as the configuration and the recipe: nan and inf (which JSON bodies can carry) are no number
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class GenerateBody(_Body):
    prompt: str | None = Field(None, description="the prompt (or caption_tokens)")
    recipe: dict[str, Any] = Field(default_factory=dict, description="Recipe fields; references name upload ids")
    generation: dict[str, Any] = Field(default_factory=dict, description="steps, seed, width, height, shift, "
                                                                          "guidance_scale")
    caption_tokens: int | None = Field(None, description="the prompt is Qwen3-VL's caption of the first reference")


class SweepBody(GenerateBody):
    axes: dict[str, list[Any] | str] = Field(description="field -> values: a list, or a comma list as text (text "
                                                        "values are typed as the field takes them)")
    name: str | None = Field(None, description="the run folder's name (default: sweep-DATE-TIME)")


class ExperimentBody(_Body):
    experiment: str
    images: list[str] = Field(default_factory=list, description="upload ids of the reference image(s)")
    prompt: str | None = None
    quick: bool = True
    caption: str | None = Field(None, description="a caption for caption experiments instead of generating one")
    generation: dict[str, Any] = Field(default_factory=dict)
    name: str | None = None


class RecipeBody(_Body):
    recipe: dict[str, Any]


# -- the server -------------------------------------------------------------------------------


class Server:
    """What the routes share: the configuration, the runs folder, the job queue and its models."""

    def __init__(self, config: Config, runs: Path, token: str | None, max_upload: int, queue: JobQueue,
                 hosts: set[str] | None = None, helpers: int = 0):
        self.config, self.runs, self.token, self.max_upload, self.queue = config, runs, token, max_upload, queue
        self.hosts = hosts  # the Host names a request may carry (None: any)
        self.helpers = helpers  # processes of `serve --gpus` beside this one, joining its runs (helpers.py)
        self._names = threading.Lock()
        self._reserved: set[str] = set()  # run names taken by requests still being checked
        self.streams = 0  # event streams open now (changed on the event loop's thread only)

    def job(self, job_id: str) -> Job:
        job = self.queue.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job

    def job_dict(self, job: Job) -> dict:
        return job.to_dict(self.queue.position(job))

    # -- requests into library objects, refused as the CLI refuses them --------------------

    def generation_config(self, generation: dict[str, Any]) -> Config:
        for key in generation:
            if key not in GENERATION_FIELDS:
                raise InputError(f"unknown generation setting '{key}'; allowed: {', '.join(GENERATION_FIELDS)}",
                                 field=f"generation.{key}")
        return self.config.replace(**{f"generation.{k}": v for k, v in generation.items()})

    def recipe(self, data: dict[str, Any]):
        from ..conditioning import Recipe

        data = dict(data)
        refs = data.get("references", [])
        if not isinstance(refs, list):
            raise InputError("recipe.references must be a list", field="recipe.references")
        mapped = []
        for i, ref in enumerate(refs):
            if not isinstance(ref, dict):
                raise InputError(f"recipe.references.{i} must be a table with 'image'", field=f"recipe.references.{i}")
            image = files.upload_path(self.runs, ref.get("image"), f"recipe.references.{i}.image")
            mapped.append({**ref, "image": image})
        if mapped:
            data["references"] = mapped
        if data.get("backend") is None and not mapped:
            data["backend"] = "text"  # as the CLI: no reference, no vision conditioning
        for key in FILE_FIELDS:
            if data.get(key):
                data[key] = self.runs_file(data[key], f"recipe.{key}")
        with field("recipe", prefix=True):
            return Recipe.from_dict(data)

    def runs_file(self, value: object, field: str) -> str:
        """A file a request names (an adapter, statistics): a path inside the runs folder, made absolute."""
        path = files.inside(self.runs, value) if isinstance(value, str) else None
        if path is None or not path.is_file():
            raise InputError(f"{field} must name a file inside the runs folder (got {value!r})", field=field)
        return str(path.resolve())

    def _taken(self, run: str) -> bool:
        return run in (files.UPLOADS, files.GENERATED) or (self.runs / run).exists() or \
            run in self.queue.active_runs() or run in self._reserved

    @contextlib.contextmanager
    def new_run(self, name: str | None, kind: str):
        """``(name, folder)`` of a new run, reserved while the request is checked and submitted (two
        requests never get one folder)."""
        if name is not None:
            check_name(name.strip(), "a run", field="name")
        with self._names:
            if name is not None:
                run = name.strip()
                if self._taken(run):
                    raise InputError(f"a run folder named {run!r} exists already; pick another name", field="name")
            else:
                stamp = datetime.now().strftime('%Y%m%d-%H%M%S')
                run, n = f"{kind}-{stamp}", 2
                while self._taken(run):
                    run, n = f"{kind}-{stamp}-{n}", n + 1
            self._reserved.add(run)
        with self._held(run):
            yield run, self.runs / run

    @contextlib.contextmanager
    def claim(self, run: str):
        """An existing run folder, reserved while a request to resume it is checked and submitted
        (a run is resumed by one job at a time)."""
        with self._names:
            if run in self.queue.active_runs() or run in self._reserved:
                raise HTTPException(409, f"the run {run!r} is queued or running already")
            self._reserved.add(run)
        with self._held(run):
            yield

    @contextlib.contextmanager
    def _held(self, run: str):
        try:
            yield
        finally:  # submitted: its job now holds the name; refused: free again
            with self._names:
                self._reserved.discard(run)

    def run_job(self, kind: str, title: str, spec, config: Config, run: str, out: Path) -> Job:
        from ..experiments.runner import prepare_run, run_prepared

        with field("recipe", prefix=True):  # refused now (422), not as a failed job; not checked again
            prepared = prepare_run(spec, config)
        pool, runs = self.queue.pool, self.runs

        def work(job: Job) -> dict:
            if self.helpers:
                return self._with_helpers(job, prepared, run, out)
            s = run_prepared(prepared, out, echo=job.log, progress=False, models=pool, on_step=job.on_step,
                             on_cell=job.on_cell)
            return {"run": run, "report": files.url(runs, out / "report.html"), "total": s.total,
                    "generated": s.generated, "failed": s.failed}

        job = Job(kind, title, work, run=run)
        job.progress["cells"] = len(spec.cells)
        return self.queue.submit(job)


    def _with_helpers(self, job: Job, prepared, run: str, out: Path) -> dict:
        """A run job beside ``serve --gpus``' helpers (:mod:`.helpers`): the run posted for them and
        joined; once this process's part is done, it waits for theirs (the last one out writes the
        report). Progress counts the cells finished by any of them; the result adds up the sessions
        the run's processes wrote."""
        import time

        from ..experiments import folder
        from ..experiments.lock import holder
        from ..experiments.runner import run_prepared
        from . import helpers

        def settled() -> int:
            return len(list((out / "cells").glob("*.json"))) if (out / "cells").is_dir() else 0

        def on_cell(done: int, total: int, name: str) -> None:
            job.on_cell(settled(), total, name)

        def sessions() -> list[dict]:
            recorded = folder.read_json(out / folder.RUN_FILE)
            return [x for x in recorded.get("sessions", []) if isinstance(x, dict)] if isinstance(recorded, dict) \
                else []

        before = len(sessions())
        helpers.post(self.runs, run)
        try:
            s = run_prepared(prepared, out, echo=job.log, progress=False, models=self.queue.pool,
                             on_step=job.on_step, on_cell=on_cell, if_busy="join")
            while holder(out) is not None:  # the helpers finishing their last cells; a cancel stops the wait
                job._changed(cells_done=settled(), message="the other GPUs' processes are finishing")
                time.sleep(helpers.LOOK_S)
        finally:
            helpers.unpost(self.runs, run)
        parts = sessions()[before:]
        return {"run": run, "report": files.url(self.runs, out / "report.html"), "total": s.total,
                "generated": sum(x.get("pictures_generated", 0) for x in parts),
                "failed": sorted({f for x in parts for f in x.get("failed", [])}), "processes": len(parts)}


#: Fields of the request bodies themselves (an error naming one is not inside the recipe).
TOP_LEVEL = ("prompt", "caption_tokens", "axes", "images", "experiment", "name", "generation", "recipe")


@contextlib.contextmanager
def field(name: str, prefix: bool = False):
    """Errors raised inside name ``name`` as their field (``prefix``: a field they name is one of
    ``name``'s, e.g. ``alpha`` -> ``recipe.alpha``)."""
    try:
        yield
    except LlmDitError as e:
        if e.field is None:
            e.field = name
        elif prefix and e.field.split(".")[0] not in TOP_LEVEL:
            e.field = f"{name}.{e.field}"
        raise


