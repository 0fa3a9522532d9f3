"""What the web-app tests share besides their fixtures (``config``, ``client``, ``upload`` in conftest.py):
the prompt, small settings, a PNG to upload, waiting for a job, ``llm-dit serve`` as a process, and a
small HTTP client for a live server."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

PROMPT = "A simple cartoon house with a red roof"
SMALL = {"generation.steps": 3, "generation.width": 64, "generation.height": 64}


def png_bytes(size=(96, 80), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def wait(client, job_id: str, timeout: float = 240) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    pytest.fail(f"job {job_id} did not end: {job}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(runs: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``llm-dit serve --profile tiny --runs RUNS`` as a person starts it, once it answers: (process, URL)."""
    port = free_port()
    out = open(log, "a")
    proc = subprocess.Popen([sys.executable, "-m", "llm_dit", "serve", "--profile", "tiny", "--port", str(port),
                             "--runs", str(runs)], stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    out.close()  # the process has its own copy
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(url + "/api/health", timeout=2)
            return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > end:
                proc.kill()
                pytest.fail("llm-dit serve did not start: " + log.read_text())
            time.sleep(0.2)


class Reply:
    """What :class:`Http` answers: the parts of a response the tests read."""

    def __init__(self, status_code: int, content: bytes):
        self.status_code, self.content = status_code, content

    def json(self) -> Any:
        return json.loads(self.content)


class Http:
    """JSON requests to a live server on the standard library (the test client's HTTP package is a
    dependency of the installed Starlette, and changes with it)."""

    def __init__(self, url: str, timeout: float = 120):
        self.url, self.timeout = url, timeout

    def request(self, method: str, path: str, body: Any = None) -> Reply:
        data = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"} if data is not None else {}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return Reply(r.status, r.read())
        except urllib.error.HTTPError as e:
            return Reply(e.code, e.read())

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post(self, path: str, json: Any = None) -> Reply:
        return self.request("POST", path, json)
