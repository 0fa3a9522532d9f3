"""``llm-dit serve``: the web app on one port (see :mod:`llm_dit.web.app`)."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path

from ..errors import InputError
from ..experiments import workers
from ..experiments.workers import visible_gpus, worker_count, worker_index
from ..limits import MAX_UPLOAD_MB
from .common import config, number

TOKEN_ENV = "LLM_DIT_TOKEN"


def add_parser(sub) -> None:
    from .common import add_config_flags

    p = sub.add_parser("serve", help="the web app: generate, sweep, run experiments, browse runs")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--runs", default="outputs/runs", metavar="DIR",
                   help="the runs folder: uploads, pictures and run folders (default outputs/runs)")
    p.add_argument("--token", help=f"required on every request (or set {TOKEN_ENV}); needed when --host is not local")
    p.add_argument("--max-upload-mb", type=number(gt=0, le=MAX_UPLOAD_MB), default=25.0, metavar="MB",
                   help=f"request size limit (default 25, at most {MAX_UPLOAD_MB})")
    p.add_argument("--idle-unload", type=number(ge=0), default=900.0, metavar="SECONDS",
                   help="unload the models after this long without a job (default 900; 0 = never)")
    p.add_argument("--gpus", metavar="N|auto",
                   help="a warm pool: N processes, one per visible GPU ('auto': all), each keeping its models "
                        "loaded; every sweep and experiment is spread over them")
    add_config_flags(p)
    p.set_defaults(func=cmd_serve)


def is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args) -> int:
    try:
        import uvicorn

        from ..web.app import create_app
    except ImportError as e:
        raise InputError(
            f"the web app needs the 'web' extra ({e.name} is missing): pip install 'llm-dit[web]'") from None
    from ..models.loading import check_z_image, resolve_model_path, resolve_placement

    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not is_local(args.host) and not token:
        raise InputError(f"--host {args.host} exposes the server beyond this machine: give --token "
                         f"(or set {TOKEN_ENV})")
    if token is not None and not re.fullmatch(r"[A-Za-z0-9._~-]{8,}", token):
        raise InputError("the token takes letters, digits and ._~- only, at least 8 of them (it travels in links)")
    if not 1 <= args.port <= 65535:
        raise InputError(f"--port must be in 1..65535 (got {args.port})")
    cfg = config(args)
    resolve_placement(cfg.runtime)  # a device that is not there: refused now
    # so is a model folder that is not there (not at the first job); the tiny models are built when
    # a job first needs them
    check_z_image(cfg.models)
    if cfg.models.vl != "tiny":
        resolve_model_path(cfg.models.vl, "vl")
    runs = Path(args.runs)
    if runs.exists() and not runs.is_dir():
        raise InputError(f"--runs {runs} is a file, not a folder")
    if worker_index() is not None:  # a helper of --gpus: no web server, it joins the server's runs
        from ..web import helpers

        return helpers.serve(runs.absolute(), args.idle_unload)
    gpus = visible_gpus() if args.gpus else []
    n = worker_count(args.gpus, gpus, "--gpus") if args.gpus else 1
    with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as s:
        try:
            s.bind((args.host, args.port))
        except OSError as e:
            raise InputError(f"cannot listen on {args.host}:{args.port} ({e.strerror}); pick another --port") from None
    # bound to this machine without a token: only pages of this machine's own names may talk to it
    hosts = {"localhost", "127.0.0.1", "::1", args.host} if is_local(args.host) and not token else None
    # the server's own process works on the first GPU; the helpers on the others (stopped with the app)
    started = workers.start(args.argv, n, gpus, first=1) if n > 1 else []
    try:
        app = create_app(cfg, runs, token=token, max_upload=int(args.max_upload_mb * 2**20),
                         idle_unload=args.idle_unload, hosts=hosts, helpers=started)
    except BaseException:
        workers.stop(started)
        raise
    shown = "localhost" if is_local(args.host) else args.host
    pool = "" if n == 1 else f"; {n} processes, " + (f"one per GPU ({','.join(gpus[:n])})" if gpus else
                                                     "on the CPU (no GPU is visible)")
    print(f"llm-dit serve: http://{shown}:{args.port}/{'?token=' + token if token else ''} "
          f"(profile {cfg.profile}, runs {runs.absolute()}{pool}); API at /docs; Ctrl-C stops", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
