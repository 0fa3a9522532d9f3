"""``llm-dit serve``: the web app, a thin door to the library (FastAPI; the page is plain HTML/JS).

Pages: ``/`` (generate), ``/runs`` (run folders, start an experiment), ``/runs/NAME`` (one run).
JSON API under ``/api`` (schema and try-it page at ``/docs``):

=====================================  ==========================================================
``GET  /api/health``                   profile, device, loaded models, queue length
``GET  /api/options``                  the form: recipe controls, generation settings, presets
``GET  /api/experiments``              the named experiments
``POST /api/uploads``                  a reference image (multipart ``file``) -> its id
``POST /api/generate``                 one picture (a job)
``POST /api/sweeps``                   one or more recipe fields as lists (a job and a run folder)
``POST /api/experiments``              a named experiment (a job and a run folder)
``POST /api/recipe``                   the recipe as a TOML download (validated)
``GET  /api/jobs``, ``/api/jobs/ID``   jobs with queue position, progress, result or error
``GET  /api/jobs/ID/events``           the same as server-sent events, until the job ends
``POST /api/jobs/ID/cancel``           drop a queued job, stop a running one
``GET  /api/runs``, ``/api/runs/NAME`` run folders under ``--runs``, newest first; one run whole
``POST /api/runs/NAME/resume``         make a run's missing cells (a job; finished cells are kept; 409
                                       while a job or another process, a CLI command, writes it)
``GET  /api/files/PATH``               any file inside ``--runs`` (images, grids, report.html)
=====================================  ==========================================================

Errors: a request the CLI would refuse gets 422 and ``{"detail": sentence, "field": "recipe.alpha"}``;
a body above the upload limit 413; a path outside the runs folder 404; a missing or wrong token 401.

The jobs are recorded in ``RUNS/.jobs.json`` (:mod:`llm_dit.web.jobs`): after a restart, finished
jobs are listed again and unfinished ones as ``interrupted``.
"""


from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..conditioning.recipe import FILE_FIELDS
from ..config import Config
from ..errors import InputError, LlmDitError
from ..experiments import folder
from ..experiments.workers import Worker
from ..experiments.workers import stop as stop_workers
from ..io import MAX_NESTING
from ..limits import MAX_UPLOAD_MB, check_number
from ..provenance import version
from . import files
from .form import generation_controls, presets, recipe_controls
from .guard import Guard
from .jobs import JOBS_FILE, TERMINAL, Job, JobQueue
from .server import ExperimentBody, GenerateBody, RecipeBody, Server, SweepBody, field

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD = 25 * 2**20


# -- the app ----------------------------------------------------------------------------------


def create_app(config: Config, runs: str | Path, token: str | None = None, max_upload: int = DEFAULT_MAX_UPLOAD,
               idle_unload: float = 900.0, start_worker: bool = True, hosts: set[str] | None = None,
               helpers: Sequence[Worker] = ()):
    """The ASGI app (FastAPI behind the guard); its :class:`Server` is ``app.server``.

    ``hosts``: the Host names requests may carry (``llm-dit serve`` on a local address without a
    token: ``localhost``, ``127.0.0.1``, ``::1``); None accepts any. ``max_upload``: bytes, at most
    ``MAX_UPLOAD_MB`` MiB; ``idle_unload``: seconds (0: never); both checked before anything is made.
    ``helpers``: the processes of ``serve --gpus`` beside this one, which join its runs
    (:mod:`.helpers`); stopped with the app."""
    check_number(max_upload, "max_upload", whole=True, ge=1, le=MAX_UPLOAD_MB * 2**20)
    check_number(idle_unload, "idle_unload", ge=0)
    import transformers  # noqa: F401  imported once here: lazy imports race across request threads
    from transformers import AutoConfig  # noqa: F401

    from ..conditioning import run  # noqa: F401
    from ..pool import ModelPool

    runs = Path(runs).absolute()
    runs.mkdir(parents=True, exist_ok=True)
    queue = JobQueue(ModelPool(), idle_unload=idle_unload, record=runs / JOBS_FILE)
    queue.load()  # what an earlier server on this folder did
    server = Server(config, runs, token, max_upload, queue, hosts, len(helpers))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if start_worker:
            queue.start()
        yield
        queue.stop()
        stop_workers(list(helpers))  # each leaves the run it is in after writing its session

    api = FastAPI(title="llm-dit", version=version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Zero-shot vision conditioning of Z-Image with Qwen3-VL: generate, sweep, run "
                              "experiments, browse run folders.")
    api.state.server = server
    _routes(api, server)
    api.mount("/static", StaticFiles(directory=STATIC), name="static")
    _docs(api)
    return Guard(api, server)


def _docs(api: FastAPI) -> None:
    """``/docs``: Swagger UI from the installed ``swagger-ui-bundle`` (no network needed), else from
    FastAPI's default CDN."""
    from fastapi.openapi.docs import get_swagger_ui_html

    try:
        from swagger_ui_bundle import swagger_ui_path

        api.mount("/docs-static", StaticFiles(directory=str(swagger_ui_path)), name="docs-static")
        assets = {"swagger_js_url": "/docs-static/swagger-ui-bundle.js",
                  "swagger_css_url": "/docs-static/swagger-ui.css"}
    except ImportError:
        assets = {}

    @api.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="llm-dit API", **assets)


def _routes(api: FastAPI, server: Server) -> None:
    runs = server.runs

    @api.exception_handler(LlmDitError)
    async def _refused(request: Request, e: LlmDitError):
        return JSONResponse({"detail": str(e), "field": e.field}, status_code=422)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        err = e.errors()[0]
        if err["type"] == "json_invalid":  # its location is a character of the body, not a field
            why = err.get("ctx", {}).get("error", "a syntax error")
            return JSONResponse({"detail": f"the request body is not valid JSON ({why} at character {err['loc'][-1]})",
                                 "field": None}, status_code=422)
        loc = [str(p) for p in err["loc"] if p not in ("body", "query", "path")]
        where = ".".join(loc)
        msg = err["msg"] if err["msg"][1:2].isupper() else err["msg"][:1].lower() + err["msg"][1:]  # JSON stays JSON
        return JSONResponse({"detail": f"request field '{where}': {msg}" if where else msg,
                             "field": where or None}, status_code=422)

    @api.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        # FastAPI answers 400 "There was an error parsing the body" to a body json.loads cannot read for
        # its nesting (RecursionError, some hundreds of levels deep): a request the CLI would refuse too
        if e.status_code == 400 and isinstance(e.__cause__, RecursionError):
            return JSONResponse({"detail": f"the request body nests deeper than {MAX_NESTING} levels", "field": None},
                                status_code=422)
        return await http_exception_handler(request, e)

    # pages: one document; the script shows the page the path names
    for path in ("/", "/runs", "/runs/{name}"):
        api.add_api_route(path, lambda: FileResponse(STATIC / "index.html"), include_in_schema=False)

    @api.get("/api/health")
    def health():
        from ..models.loading import resolve_placement
        from ..models.single_file import identity as z_image_identity

        return {"status": "ok", "profile": server.config.profile,
                "device": str(resolve_placement(server.config.runtime).device),
                "models": {"z_image": z_image_identity(server.config.models), "vl": server.config.models.vl},
                "loaded": server.queue.pool.loaded(), "keep_models": server.config.runtime.keep_models,
                "queued": sum(1 for j in list(server.queue.jobs.values()) if j.state == "queued"),
                "streams": server.streams,
                "runs": str(runs), "max_upload_mb": server.max_upload / 2**20}

    @api.get("/api/options")
    def options():
        from ..experiments.cells import GENERATION_AXES

        return {"profile": server.config.profile, "recipe": recipe_controls(server.config),
                "generation": generation_controls(server.config), "presets": presets(),
                "sweepable": [c["name"] for c in recipe_controls(server.config)] + list(GENERATION_AXES) + ["method"],
                "max_upload_mb": server.max_upload / 2**20}

    @api.get("/api/experiments")
    def experiments():
        from ..experiments.presets import catalog

        return catalog()

    @api.post("/api/uploads", status_code=201)
    async def upload(file: Annotated[UploadFile, File()]):
        data = await file.read()
        return await asyncio.to_thread(files.save_upload, runs, data, file.filename or "upload")

    @api.post("/api/generate", status_code=202)
    def generate(body: GenerateBody):
        from ..conditioning.run import generate, prepare, write_generated

        config = server.generation_config(body.generation)
        recipe = server.recipe(body.recipe)
        with field("recipe", prefix=True):  # checked and loaded once, here: the job only generates
            prepared = prepare(config, recipe, body.prompt, body.caption_tokens)
        pool = server.queue.pool
        prompt = prepared.prompt

        def work(job: Job) -> dict:
            result = generate(prepared, log=job.log, models=pool, on_step=job.on_step)
            out = runs / files.GENERATED / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{job.id}.png"
            record = write_generated(out, result)
            return {"image": files.url(runs, out), "sidecar": files.url(runs, out.with_suffix(".json")),
                    "record": record}

        title = prompt if prompt is not None else f"caption of {body.caption_tokens} tokens"
        return server.job_dict(server.queue.submit(Job("generate", title[:80], work)))

    @api.post("/api/sweeps", status_code=202)
    def sweep(body: SweepBody):
        from ..experiments.cells import sweep_axis
        from ..experiments.specs import sweep_spec

        config = server.generation_config(body.generation)
        recipe = server.recipe(body.recipe)
        axes = {}
        for key, values in body.axes.items():
            key, values = sweep_axis(key, values)
            if key == "references":
                raise InputError("references cannot be swept here: run one sweep per reference",
                                 field="axes.references")
            axes[key] = values
            if key in FILE_FIELDS:
                axes[key] = [v if v is None else server.runs_file(v, f"axes.{key}") for v in axes[key]]
        base = recipe.to_dict()
        references = base.pop("references")
        with field("recipe", prefix=True):  # a field of the fixed part is a recipe field
            spec, config = sweep_spec(references, body.prompt, base, axes, config, caption_tokens=body.caption_tokens)
        title = f"sweep of {', '.join(axes)}: {len(spec.cells)} cells"
        with server.new_run(body.name, "sweep") as (run, out):
            return server.job_dict(server.run_job("sweep", title, spec, config, run, out))

    @api.post("/api/experiments", status_code=202)
    def experiment(body: ExperimentBody):
        from ..experiments.specs import experiment_spec

        config = server.generation_config(body.generation)
        images = [files.upload_path(runs, im, f"images.{i}") for i, im in enumerate(body.images)]
        with field("experiment"):
            spec, config = experiment_spec(body.experiment, images, body.prompt, config, quick=body.quick,
                                           caption=body.caption)
        title = f"{spec.name}{' (quick)' if body.quick else ''}: {len(spec.cells)} cells"
        with server.new_run(body.name, spec.name) as (run, out):
            return server.job_dict(server.run_job("experiment", title, spec, config, run, out))

    @api.post("/api/recipe", response_class=Response,
              responses={200: {"content": {"application/toml": {}}, "description": "the recipe as TOML"}})
    def recipe_toml(body: RecipeBody):
        recipe = server.recipe(body.recipe)
        return Response(recipe.to_toml(), media_type="application/toml",
                        headers={"Content-Disposition": 'attachment; filename="recipe.toml"'})

    @api.get("/api/jobs")
    def jobs():
        return [server.job_dict(j) for j in reversed(list(server.queue.jobs.values()))]

    @api.get("/api/jobs/{job_id}")
    def job(job_id: str):
        return server.job_dict(server.job(job_id))

    @api.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: str):
        return server.job_dict(server.queue.cancel(server.job(job_id)))

    @api.get("/api/jobs/{job_id}/events", response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}, "description": "job states until it ends"}})
    async def events(job_id: str, request: Request):
        job = server.job(job_id)

        async def stream():
            # a client that goes away ends the stream (cancelled while sending or sleeping, or seen
            # here): the job runs on, and the count of open streams drops again
            server.streams += 1
            try:
                seen, beat = None, time.monotonic()
                while True:
                    now = (job.version, server.queue.position(job))
                    if now != seen:
                        seen = now
                        yield f"event: job\ndata: {json.dumps(server.job_dict(job))}\n\n"
                        if job.state in TERMINAL:
                            return
                    elif time.monotonic() - beat > 15:
                        beat = time.monotonic()
                        yield ": keep-alive\n\n"
                    if await request.is_disconnected():
                        return
                    await asyncio.sleep(0.1)
            finally:
                server.streams -= 1

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @api.get("/api/runs")
    def list_runs():
        return files.list_runs(runs, server.queue.active_runs())

    @api.get("/api/runs/{name}")
    def run_detail(name: str):
        jobs_ = [j for j in list(server.queue.jobs.values()) if j.run == name]
        detail = files.run_detail(runs, name, server.queue.active_runs())
        if detail is None and jobs_:  # queued: its folder is made when the worker starts it
            detail = {"name": name, "experiment": None, "prompt": None, "quick": None, "status": jobs_[-1].state,
                      "cells": [], "grids": [], "plots": [], "references": [], "report": None, "metadata": None,
                      "captions": {}, "details": {}, "config": None, "sessions": []}
        if detail is None:
            raise HTTPException(404, f"no run folder {name!r} under the runs folder")
        detail["job"] = server.job_dict(jobs_[-1]) if jobs_ else None
        return detail

    @api.post("/api/runs/{name}/resume", status_code=202)
    def resume(name: str):
        from ..experiments.lock import holder
        from ..experiments.specs import spec_from_run

        out = files.inside(runs, name)
        if out is None or "/" in name or not (out / folder.RUN_FILE).is_file():
            raise HTTPException(404, f"no run folder {name!r} under the runs folder")
        with server.claim(name):
            # another process (a CLI command) writing it: answered now, not as a job that would fail
            # (a job that starts once one did fails with the runner's own sentence)
            if (other := holder(out)) is not None:
                raise HTTPException(409, f"the run {name!r} is being written by another process ({other.describe()}); "
                                         "resume it once that process has ended")
            spec, config = spec_from_run(out)
            title = f"{spec.name} {name} resumed: {len(spec.cells)} cells"
            kind = "sweep" if spec.name == "sweep" else "experiment"
            return server.job_dict(server.run_job(kind, title, spec, config, name, out))

    @api.get("/api/files/{path:path}")
    def file(path: str):
        p = files.inside(runs, path)
        if p is None or not p.is_file():
            raise HTTPException(404, "no such file in the runs folder")
        return FileResponse(p)
