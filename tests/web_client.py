"""What the web-app tests share besides their fixtures (``config``, ``client``, ``upload`` in conftest.py):
the prompt, small settings, a PNG to upload, and waiting for a job."""

from __future__ import annotations

import io
import time

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
