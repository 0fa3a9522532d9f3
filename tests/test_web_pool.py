"""``llm-dit serve --gpus N`` (web/helpers.py): the server and its helper processes share each sweep
through the run folder's claims, the helpers keep their models between runs, and the pictures are
those of one process (the recorded run made again by ``llm-dit compare --from``), bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from run_args import PROMPT, check_complete
from web_client import Http, free_port, wait


def upload(url: str, path: str) -> str:
    """``POST /api/uploads`` of the file ``path`` (multipart, as a browser sends it): its id."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"ref.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + Path(path).read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/api/uploads", data=body, method="POST",
                                 headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["id"]


def sweep(c: Http, image: str, name: str, alphas: str) -> dict:
    body = {"prompt": PROMPT, "recipe": {"references": [{"image": image}]}, "name": name,
            # enough steps that a sweep outlasts the helper's start (it loads its models on its first run)
            "generation": {"steps": 40, "width": 64, "height": 64}, "axes": {"alpha": alphas}}
    reply = c.post("/api/sweeps", json=body)
    assert reply.status_code == 202, reply.json()
    job = wait(c, reply.json()["id"], timeout=600)
    assert job["state"] == "done", job
    return job


def test_serve_gpus_spreads_each_sweep_over_a_warm_pool(refs, tmp_path):
    runs, log = tmp_path / "runs", tmp_path / "serve.log"
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads as the one-process oracle below
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llm_dit", "serve", "--profile", "tiny", "--port", str(port),
                                 "--runs", str(runs), "--gpus", "2"], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(url + "/api/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < end, log.read_text()
                time.sleep(0.2)
        c = Http(url)
        image = upload(url, refs[0])
        first = sweep(c, image, "pooled", "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1")
        second = sweep(c, image, "again", "0.25,0.35,0.45,0.55")
    finally:
        proc.terminate()  # a clean stop: the server stops its helpers
        proc.wait(60)
    text = log.read_text()
    assert "2 processes, on the CPU (no GPU is visible)" in text and "Traceback" not in text, text[-3000:]
    for job, out, n in ((first, runs / "pooled", 11), (second, runs / "again", 5)):
        # both processes joined the run; every cell made once, by one of them
        assert job["result"]["processes"] == 2 and job["result"]["generated"] == n and not job["result"]["failed"]
        check_complete(out, n)
        assert not list((out / ".claims").iterdir()) and not (runs / ".pool" / out.name).exists()
    helper = {s["worker"] for s in json.loads((runs / "pooled" / "run.json").read_text())["sessions"]} & \
        {s["worker"] for s in json.loads((runs / "again" / "run.json").read_text())["sessions"]}
    assert len(helper) == 2  # the same two processes in both runs: the pool stays up between jobs
    assert text.count("[worker 1] loading Qwen3-VL") == 1  # and keeps its models (loaded for the first run only)
    # the server stopped its helper as it stopped
    helper_pid = next(int(w.split(":")[-1]) for w in helper if int(w.split(":")[-1]) != proc.pid)
    end = time.monotonic() + 30
    while True:
        try:
            os.kill(helper_pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < end, "the helper outlived its server"
        time.sleep(0.1)
    # the oracle: the recorded run made again by one process
    one = tmp_path / "one"
    done = subprocess.run([sys.executable, "-m", "llm_dit", "compare", "--from", str(runs / "pooled" / "metadata.json"),
                           "--out", str(one), "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = check_complete(runs / "pooled", 11)
    for r in meta["results"]:
        assert (runs / "pooled" / r["file"]).read_bytes() == (one / r["file"]).read_bytes(), r["name"]
