"""The web server under faults: 50 submissions at once, clients that leave mid-stream, a server that is
killed or stopped with work queued and running, and a jobs record that cannot be read.

These run a real HTTP server (uvicorn in a thread, or ``llm-dit serve`` as a process): the test client
runs requests one at a time and cannot drop a connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import itertools
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from run_args import check_complete  # noqa: E402
from web_client import PROMPT, Http, free_port, start_server, wait  # noqa: E402

from llm_dit.web.app import create_app  # noqa: E402

GEN = {"steps": 2, "width": 64, "height": 64}


@contextlib.contextmanager
def live(app):
    """``app`` served over HTTP on a free local port, in a thread: its URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < end, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


def until(check, what: str, timeout: float = 120):
    """Poll ``check()`` until it gives something true; that value."""
    end = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


@pytest.mark.reliability("faults", "50 submissions at once over HTTP: 25 pictures, 15 sweeps without a name, 10 "
                         "sweeps that all ask for one name",
                         "41 accepted with distinct ids and run folders, 9 refused (the name is taken); all run one "
                         "at a time in order and finish, every run folder complete, all 41 in the jobs record")
def test_fifty_submissions_at_once(config, tmp_path):
    bodies = [("/api/generate", {"prompt": f"{PROMPT} {i}", "generation": {**GEN, "seed": i}}) for i in range(25)]
    bodies += [("/api/sweeps", {"prompt": PROMPT, "generation": GEN, "axes": {"seed": ["1", "2"]}})] * 15
    bodies += [("/api/sweeps", {"prompt": PROMPT, "generation": GEN, "axes": {"seed": ["3"]}, "name": "one"})] * 10
    barrier = threading.Barrier(len(bodies))

    def post(url: str, path: str, body: dict):
        barrier.wait()  # all 50 requests leave together
        return Http(url).post(path, json=body)

    app = create_app(config, tmp_path)
    with live(app) as url:
        with ThreadPoolExecutor(len(bodies)) as pool:
            replies = list(pool.map(lambda item: post(url, *item), bodies))
        assert [r.status_code for r in replies[:40]] == [202] * 40
        named = replies[40:]
        assert sorted(r.status_code for r in named) == [202] + [422] * 9
        assert all("exists already" in r.json()["detail"] for r in named if r.status_code == 422)
        jobs = [r.json() for r in replies if r.status_code == 202]
        runs = [j["run"] for j in jobs if j["run"]]
        assert len({j["id"] for j in jobs}) == 41 and len(set(runs)) == 16
        ended = sorted((wait(Http(url), j["id"]) for j in jobs), key=lambda j: j["started"])
    assert [j["state"] for j in ended] == ["done"] * 41
    assert all(a["finished"] <= b["started"] for a, b in itertools.pairwise(ended))  # one at a time
    assert [j["id"] for j in ended] == sorted(j["id"] for j in jobs)  # in the order they were taken
    for run in runs:
        check_complete(tmp_path / run, 1 if run == "one" else 2)
    assert len(list((tmp_path / "generated").glob("*.png"))) == 25
    record = json.loads((tmp_path / ".jobs.json").read_text())["jobs"]
    assert sorted(j["id"] for j in record) == sorted(j["id"] for j in jobs)
    assert {j["state"] for j in record} == {"done"}


@pytest.mark.reliability("faults", "5 clients that open a job's event stream and leave after the first event",
                         "each stream ends on the server (none left open); the job runs on, its steps still advancing")
def test_clients_that_leave_mid_stream(config, tmp_path):
    app = create_app(config, tmp_path)
    with live(app) as url:
        c = Http(url)
        job = c.post("/api/generate", json={"prompt": PROMPT, "generation": {**GEN, "steps": 1000}}).json()
        until(lambda: c.get(f"/api/jobs/{job['id']}").json()["progress"]["step"] >= 1, "the job to start")
        host, port = url.removeprefix("http://").split(":")
        for _ in range(5):
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.request("GET", f"/api/jobs/{job['id']}/events")
            r = conn.getresponse()
            assert r.status == 200 and r.getheader("content-type").startswith("text/event-stream")
            while not (line := r.readline().decode()).startswith("data: "):
                assert line, "the stream ended"
            assert json.loads(line[6:])["state"] == "running"
            assert c.get("/api/health").json()["streams"] == 1
            conn.close()  # gone, with the stream unfinished
        until(lambda: c.get("/api/health").json()["streams"] == 0, "the server to end the left streams", 20)
        now = c.get(f"/api/jobs/{job['id']}").json()
        assert now["state"] == "running"  # the streams ended because their clients left, not the job
        until(lambda: c.get(f"/api/jobs/{job['id']}").json()["progress"]["step"] > now["progress"]["step"],
              "the job to go on")
        c.post(f"/api/jobs/{job['id']}/cancel")
        assert wait(c, job["id"])["state"] == "cancelled"


def _recorded(runs: Path, *jobs: dict) -> list[str]:
    """The states the jobs record gives ``jobs``."""
    states = {j["id"]: j["state"] for j in json.loads((runs / ".jobs.json").read_text())["jobs"]}
    return [states[j["id"]] for j in jobs]


def _kept(out: Path) -> dict[str, tuple[str, int]]:
    """The finished cells of a run folder: name -> (the PNG's digest, the record's mtime)."""
    return {p.stem: (hashlib.sha256((out / f"{p.stem}.png").read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in (out / "cells").glob("*.json")}


@pytest.mark.reliability("faults", "`llm-dit serve` killed (SIGKILL) with a sweep running and a job queued, and "
                         "stopped (SIGTERM) with a job running; started again on the same runs folder each time",
                         "finished jobs and runs still listed with their pictures; unfinished jobs shown as "
                         "interrupted; the killed sweep resumes from the page keeping its finished cells")
def test_a_server_restart_keeps_the_finished_and_shows_the_unfinished_as_interrupted(tmp_path):
    runs, log = tmp_path / "runs", tmp_path / "serve.log"
    with serving(runs, log) as (proc, c):
        first = wait(c, c.post("/api/generate", json={"prompt": PROMPT, "generation": GEN}).json()["id"])
        sweep = c.post("/api/sweeps", json={"prompt": PROMPT, "generation": {**GEN, "steps": 30}, "name": "long",
                                            "axes": {"seed": [str(i) for i in range(6)]}}).json()
        queued = c.post("/api/generate", json={"prompt": "queued", "generation": GEN}).json()
        until(lambda: c.get(f"/api/jobs/{sweep['id']}").json()["progress"]["cells_done"] >= 1, "a finished cell")
        proc.kill()
        proc.wait(10)
    kept = _kept(runs / "long")
    assert 1 <= len(kept) < 6
    assert _recorded(runs, sweep, queued) == ["running", "queued"]  # as the killed server left them

    with serving(runs, log) as (proc, c):
        jobs = {j["id"]: j for j in c.get("/api/jobs").json()}
        assert jobs[first["id"]]["state"] == "done"
        assert c.get(jobs[first["id"]]["result"]["image"]).content == c.get(first["result"]["image"]).content
        assert jobs[sweep["id"]]["state"] == jobs[queued["id"]]["state"] == "interrupted"
        assert "resume the run from its page" in jobs[sweep["id"]]["error"]
        assert "submit it again" in jobs[queued["id"]]["error"]
        listed = {r["name"]: r for r in c.get("/api/runs").json()}
        assert listed["long"]["status"] == "incomplete" and listed["long"]["done"] == len(kept)
        assert c.get("/api/runs/long").json()["job"]["state"] == "interrupted"
        resumed = c.post("/api/runs/long/resume")
        assert resumed.status_code == 202
        assert c.post("/api/runs/long/resume").status_code == 409  # one job per run
        assert resumed.json()["id"] not in jobs  # new ids go on after the recorded ones
        assert wait(c, resumed.json()["id"])["state"] == "done"
        slow = c.post("/api/generate", json={"prompt": "slow", "generation": {**GEN, "steps": 1000}}).json()
        until(lambda: c.get(f"/api/jobs/{slow['id']}").json()["progress"]["step"] >= 1, "the slow job to start")
        proc.terminate()  # a clean stop: the running job is stopped and recorded as interrupted
        proc.wait(30)
    assert _recorded(runs, slow) == ["interrupted"]
    check_complete(runs / "long", 6)
    assert {k: v for k, v in _kept(runs / "long").items() if k in kept} == kept  # not made again

    with serving(runs, log) as (proc, c):
        jobs = {j["id"]: j for j in c.get("/api/jobs").json()}
        assert jobs[slow["id"]]["state"] == "interrupted" and jobs[resumed.json()["id"]]["state"] == "done"
        assert c.get("/api/runs").json()[0]["status"] == "complete"


@contextlib.contextmanager
def serving(runs: Path, log: Path):
    """``llm-dit serve`` on ``runs`` for the block: (its process, a client); killed at the end."""
    proc, url = start_server(runs, log)
    try:
        yield proc, Http(url)
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.reliability("faults",
                         "a jobs record that is not JSON, or has a job of the wrong types, when the server starts",
                         "a warning naming the file, which is set aside; the server starts with an empty list")
@pytest.mark.parametrize("text", ["{cut sho", '{"jobs": [{"id": 7, "kind": "generate"}]}',
                                  '{"jobs": [{"id": "0001-1", "kind": "generate", "title": "t", "state": "done", '
                                  '"progress": [1]}]}'], ids=["not JSON", "an id that is a number", "bad progress"])
def test_an_unreadable_jobs_record_is_set_aside(config, tmp_path, caplog, text):
    (tmp_path / ".jobs.json").write_text(text)
    with TestClient(create_app(config, tmp_path, start_worker=False)) as c:
        assert c.get("/api/jobs").json() == []
        assert c.get("/api/files/.jobs.json.unreadable").status_code == 404  # hidden: never served
        assert c.post("/api/generate", json={"prompt": PROMPT}).status_code == 202  # and works
    warned = [r for r in caplog.records if r.name == "llm_dit.web.jobs" and r.levelno == logging.WARNING]
    assert len(warned) == 1 and "could not be read" in warned[0].getMessage()  # the logger says it (on stderr)
    assert (tmp_path / ".jobs.json.unreadable").read_text() == text
