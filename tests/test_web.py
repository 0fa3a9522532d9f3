"""The web app's JSON API, in process (FastAPI's TestClient) on the tiny profile.

Jobs run on the app's real worker thread; a test waits for a job to end (no assertion on timing).
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
import tomllib
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from web_client import PROMPT, png_bytes, wait  # noqa: E402

from llm_dit.cli import main  # noqa: E402
from llm_dit.conditioning import Recipe  # noqa: E402
from llm_dit.web.app import create_app  # noqa: E402

# -- pages, schema, options ---------------------------------------------------------------------


def test_pages_docs_and_schema(client):
    for path in ("/", "/runs", "/runs/anything"):
        r = client.get(path)
        assert r.status_code == 200 and 'id="gen-form"' in r.text and "/static/app.js" in r.text
    assert client.get("/static/app.js").status_code == 200
    docs = client.get("/docs").text
    assert "swagger" in docs.lower() and "/openapi.json" in docs
    js = docs.split("<script src=")[1].split(">")[0].strip("'\"")  # served here: no network needed
    assert js.startswith("/docs-static/") and client.get(js).status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/api/generate", "/api/sweeps", "/api/experiments", "/api/uploads", "/api/jobs/{job_id}/cancel",
              "/api/jobs/{job_id}/events", "/api/runs", "/api/runs/{name}", "/api/files/{path}", "/api/recipe"):
        assert p in paths, p


def test_every_recipe_field_has_a_control(client):
    from llm_dit.conditioning.blend import BLEND_MODES
    from llm_dit.vl.normalize import NORMALIZATION_MODES

    o = client.get("/api/options").json()
    controls = {c["name"]: c for c in o["recipe"]}
    assert set(controls) == set(Recipe.model_fields) - {"references"}
    assert controls["alpha"]["kind"] == "slider" and (controls["alpha"]["min"], controls["alpha"]["max"]) == (0, 1)
    assert controls["blend"]["options"] == list(BLEND_MODES)
    assert controls["normalization_mode"]["options"] == list(NORMALIZATION_MODES)
    assert controls["backend"]["nullable"] and controls["backend"]["profile"] == "vl"
    assert controls["dual_extraction"]["kind"] == "bool" and controls["schedule"]["kind"] == "schedule"
    assert [c["name"] for c in o["generation"]] == ["steps", "seed", "width", "height", "shift", "guidance_scale"]
    assert o["presets"]["style_transfer"]["recipe"]["blend"] == "adain_per_dim"
    assert o["presets"]["recommended"]["caption_tokens"] == 1024
    for p in o["presets"].values():  # every preset is a valid recipe
        Recipe.from_dict(p["recipe"])


# -- uploads ------------------------------------------------------------------------------------


def test_upload_is_validated_and_stored_as_png(client, upload):
    server = client.app.server
    stored = server.runs / "uploads" / f"{upload['id']}.png"
    assert stored.is_file() and Image.open(stored).size == (96, 80) and upload["url"].endswith(stored.name)
    assert client.get(upload["url"]).content == stored.read_bytes()
    # a JPEG with EXIF rotation is decoded as the CLI decodes it (upright)
    buf = io.BytesIO()
    im = Image.new("RGB", (40, 60), (0, 200, 0))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90
    im.save(buf, "JPEG", exif=exif)
    r = client.post("/api/uploads", files={"file": ("phone.jpg", buf.getvalue(), "image/jpeg")})
    assert r.status_code == 201 and (r.json()["width"], r.json()["height"]) == (60, 40)


@pytest.mark.reliability('bad input', 'web uploads that are not images',
                         'refused, nothing kept')
@pytest.mark.parametrize("data, message", [
    (b"not an image at all", "is not an image file PIL can read"),
    (b"", "is empty"),
    (png_bytes((3300, 16)), "too elongated"),
])
def test_bad_uploads_are_refused_with_nothing_kept(client, data, message):
    uploads = client.app.server.runs / "uploads"

    def kept():  # the folder exists once something was uploaded (this test may run first)
        return sorted(uploads.iterdir()) if uploads.is_dir() else []

    before = kept()
    r = client.post("/api/uploads", files={"file": ("x.png", data, "image/png")})
    assert r.status_code == 422 and message in r.json()["detail"] and r.json()["field"] == "file", r.text
    assert "/tmp" not in r.json()["detail"]  # the server's temporary path is not shown
    assert kept() == before


@pytest.mark.reliability('bad input', 'web uploads above the size limit',
                         '413, nothing kept')
def test_uploads_above_the_limit_get_413(config, tmp_path):
    app = create_app(config, tmp_path, max_upload=10_000)
    with TestClient(app) as c:
        big = png_bytes((2000, 1000), (1, 2, 3)) + b"\0" * 20_000
        r = c.post("/api/uploads", files={"file": ("big.png", big, "image/png")})
        assert r.status_code == 413 and "25" not in r.json()["detail"] and "limit" in r.json()["detail"]

        def chunks():  # no Content-Length: counted as it arrives
            for _ in range(20):
                yield b"x" * 1000

        r = c.post("/api/generate", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.post("/api/uploads", files={"file": ("s.png", png_bytes(), "image/png")}).status_code == 201
    assert not list((tmp_path / "uploads").glob(".*"))


# -- generate -----------------------------------------------------------------------------------


def test_generate_equals_the_cli(client, upload, tmp_path, capsys):
    """The web job and `llm-dit generate` with the same recipe give the same pixels."""
    recipe = {"references": [{"image": upload["id"]}], "alpha": 0.4, "blend": "adain_per_dim", "hidden_layer": -6}
    job = client.post("/api/generate", json={"prompt": PROMPT, "recipe": recipe, "generation": {"seed": 7}}).json()
    assert job["state"] in ("queued", "running") and job["kind"] == "generate"
    job = wait(client, job["id"])
    assert job["state"] == "done", job["error"]
    rec = job["result"]["record"]
    assert rec["prompt"] == PROMPT and rec["blend_mode"] == "adain_per_dim" and rec["alpha"] == 0.4
    assert rec["vl_std"] > 0 and rec["blended_std"] > 0 and rec["config"]["generation"]["seed"] == 7
    assert job["progress"]["step"] == job["progress"]["steps"] == 3
    web = Image.open(io.BytesIO(client.get(job["result"]["image"]).content))
    sidecar = client.get(job["result"]["sidecar"]).json()
    assert sidecar["recipe"] == rec["recipe"]

    ref = client.app.server.runs / "uploads" / f"{upload['id']}.png"
    out = tmp_path / "cli.png"
    assert main(["generate", "--profile", "tiny", "--steps", "3", "--width", "64", "--height", "64", "--seed", "7",
                 "--prompt", PROMPT, "--image", str(ref), "--vl-alpha", "0.4", "--blend", "adain_per_dim",
                 "--vl-layer=-6", "--out", str(out)]) == 0
    assert Image.open(out).tobytes() == web.tobytes()
    assert json.loads(out.with_suffix(".json").read_text())["recipe"] == rec["recipe"]


def test_models_stay_loaded_between_jobs(client, upload):
    pool = client.app.server.queue.pool
    job = wait(client, client.post("/api/generate", json={"prompt": "a tree"}).json()["id"])
    assert job["state"] == "done"
    first = pool._z[1]
    job = wait(client, client.post("/api/generate", json={"prompt": "a boat", "generation": {"seed": 3}}).json()["id"])
    assert job["state"] == "done" and pool._z[1] is first  # not loaded again
    assert "z_image" in client.get("/api/health").json()["loaded"]


def test_events_stream_reports_steps_until_done(client):
    job = client.post("/api/generate", json={"prompt": "a red bird", "generation": {"steps": 5}}).json()
    states = []
    with client.stream("GET", f"/api/jobs/{job['id']}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                states.append(json.loads(line[6:]))
    assert states[-1]["state"] == "done" and states[-1]["result"]["image"]
    steps = [s["progress"]["step"] for s in states]
    assert steps == sorted(steps) and steps[-1] == 5  # progress in order, up to the last step


def test_generation_reports_every_step(zimage):
    """What the job's progress is made of: the pipeline calls back before the first step and after each."""
    import torch

    calls = []
    zimage.generate(torch.randn(8, zimage.caption_dim), on_step=lambda i, n: calls.append((i, n)))
    n = zimage.config.generation.steps
    assert calls == [(i, n) for i in range(n + 1)]


def test_queue_positions_and_cancel(config, tmp_path):
    app = create_app(config, tmp_path, start_worker=False)
    with TestClient(app) as c:
        ids = [c.post("/api/generate", json={"prompt": f"prompt {i}", "generation": {"seed": i}}).json()["id"]
               for i in range(3)]
        assert [c.get(f"/api/jobs/{i}").json()["position"] for i in ids] == [1, 2, 3]
        assert c.post(f"/api/jobs/{ids[1]}/cancel").json()["state"] == "cancelled"
        assert c.get(f"/api/jobs/{ids[2]}").json()["position"] == 2
        app.server.queue.start()
        done = [wait(c, i) for i in (ids[0], ids[2])]
        assert [j["state"] for j in done] == ["done", "done"] and done[0]["finished"] <= done[1]["started"]
        assert c.get(f"/api/jobs/{ids[1]}").json()["state"] == "cancelled"
        assert len(list((tmp_path / "generated").glob("*.png"))) == 2
        assert c.get("/api/jobs/nope").status_code == 404


def test_cancel_a_running_job(config, tmp_path):
    app = create_app(config, tmp_path)
    with TestClient(app) as c:
        job = c.post("/api/generate", json={"prompt": "slow", "generation": {"steps": 200}}).json()
        end = time.monotonic() + 120
        while c.get(f"/api/jobs/{job['id']}").json()["progress"]["step"] < 1 and time.monotonic() < end:
            time.sleep(0.05)
        assert c.post(f"/api/jobs/{job['id']}/cancel").json()["cancel_requested"]
        job = wait(c, job["id"])
        assert job["state"] == "cancelled" and job["progress"]["step"] < 200
        assert not (tmp_path / "generated").exists() or not list((tmp_path / "generated").iterdir())
        # the worker goes on with the next job
        assert wait(c, c.post("/api/generate", json={"prompt": "next"}).json()["id"])["state"] == "done"


def test_cancel_a_running_sweep_keeps_its_finished_cells(config, tmp_path):
    app = create_app(config, tmp_path)
    with TestClient(app) as c:
        job = c.post("/api/sweeps", json={"prompt": PROMPT, "generation": {"steps": 60},
                                          "axes": {"seed": [str(i) for i in range(8)]}, "name": "long"}).json()
        end = time.monotonic() + 180
        while c.get(f"/api/jobs/{job['id']}").json()["progress"]["cells_done"] < 1 and time.monotonic() < end:
            time.sleep(0.05)
        c.post(f"/api/jobs/{job['id']}/cancel")
        job = wait(c, job["id"])
        assert job["state"] == "cancelled"
        d = c.get("/api/runs/long").json()
        states = [cell["status"] for cell in d["cells"]]
        assert "done" in states and "pending" in states and d["status"] == "incomplete"
        assert d["report"] is not None  # the report of what finished is still written
        assert not list((tmp_path / "long").rglob(".*.tmp"))


def test_save_as_recipe_downloads_toml(client, upload):
    r = client.post("/api/recipe", json={"recipe": {"references": [{"image": upload["id"], "role": "style"}],
                                                    "alpha": 0.35, "schedule": "linear:0.8:0.2"}})
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    data = tomllib.loads(r.text)
    recipe = Recipe.from_dict(data)
    assert recipe.schedule.spec() == "linear:0.8:0.2" and recipe.references[0].role == "style"
    assert Path(recipe.references[0].image).is_file()


# -- sweeps, experiments, runs -----------------------------------------------------------------


def test_sweep_and_experiment_fill_run_folders(client, upload):
    server = client.app.server
    sweep = client.post("/api/sweeps", json={"prompt": PROMPT, "recipe": {"references": [{"image": upload["id"]}]},
                                            "axes": {"alpha": ["0.3", "0.7"]}, "name": "my-sweep"}).json()
    assert sweep["run"] == "my-sweep" and sweep["kind"] == "sweep"
    exp = client.post("/api/experiments", json={"experiment": "vl_only_vs_qwen3", "images": [upload["id"]],
                                                "prompt": PROMPT, "quick": True}).json()
    assert exp["run"].startswith("vl_only_vs_qwen3-")
    # while queued or running, the run is listed as running
    listed = {r["name"]: r for r in client.get("/api/runs").json()}
    assert all(listed[n]["status"] == "running" for n in ("my-sweep", exp["run"]) if n in listed)
    for j in (sweep, exp):
        j = wait(client, j["id"])
        assert j["state"] == "done" and j["result"]["failed"] == [], j
    runs = client.get("/api/runs").json()
    assert [r["name"] for r in runs][:2] == [exp["run"], "my-sweep"]  # newest first
    by = {r["name"]: r for r in runs}
    assert by["my-sweep"]["status"] == "complete" and by["my-sweep"]["cells"] == 3  # two alphas + pure text
    assert by[exp["run"]]["experiment"] == "vl_only_vs_qwen3" and by[exp["run"]]["prompt"] == PROMPT
    d = client.get(f"/api/runs/{exp['run']}").json()
    assert d["status"] == "complete" and d["job"]["state"] == "done"
    assert [c["name"] for c in d["cells"]] == ["pure_qwen3_4b", "pure_vl_text_tokens", "pure_vl_full_seq",
                                               "blend_30_vl_70_qwen3"]
    assert all(c["status"] == "done" and c["record"]["success"] for c in d["cells"])
    for url in [d["report"], d["metadata"], *d["grids"], *d["plots"], *(c["image"] for c in d["cells"])]:
        assert client.get(url).status_code == 200, url
    assert "text/html" in client.get(d["report"]).headers["content-type"]
    assert (server.runs / exp["run"] / "comparison_grid.png").is_file()
    # a name that exists is refused
    r = client.post("/api/sweeps", json={"prompt": PROMPT, "axes": {"seed": ["1", "2"]}, "name": "my-sweep"})
    assert r.status_code == 422 and r.json()["field"] == "name"


def test_a_trials_folder_is_listed_and_shows_its_evidence(client, refs):
    """A study made by the CLI (--images, --seeds) into the runs folder: listed with its trials' cells,
    its page opening with the trials report's answers and table (the same code)."""
    from run_args import SMALL

    from llm_dit.cli import main

    runs = client.app.server.runs
    assert main(["compare", "--experiment", "vl_only_vs_qwen3", "--images", *refs, "--seeds", "2", "--prompt", PROMPT,
                 "--out", str(runs / "study"), *SMALL]) == 0
    by = {r["name"]: r for r in client.get("/api/runs").json()}
    s = by["study"]
    assert s["experiment"] == "vl_only_vs_qwen3 (4 trials)" and (s["cells"], s["done"], s["status"]) == (16, 16,
                                                                                                        "complete")
    assert not any(n.startswith(("1-", "2-")) for n in by)  # the trials are inside it, not runs of their own
    d = client.get("/api/runs/study").json()
    assert d["kind"] == "trials" and "Cells over the trials" in d["summary"] and "Mean over 4 trials" in d["summary"]
    assert "Does pure_vl_text_tokens match pure_qwen3_4b quality?" in d["summary"]
    for url in [d["report"], d["metadata"], *d["grids"], *d["plots"]]:
        assert client.get(url).status_code == 200, url
    assert len(d["grids"]) == 3  # the summary, then one per image


def test_model_pool_keeps_one_model_when_told(tiny_config):
    from llm_dit.pool import ModelPool

    pool = ModelPool()
    one = tiny_config.replace(**{"runtime.keep_models": "one"})
    z = pool.z_image(one)
    assert pool.z_image(one) is z and pool.loaded() == ["z_image"]
    pool.vl(one)
    assert pool.loaded() == ["vl"] and z.pipe is None  # unloaded, not kept beside
    pool.z_image(tiny_config)  # keep_models "all": both stay
    pool.splice(tiny_config)
    assert pool.loaded() == ["z_image", "vl", "splice"]
    pool.release()
    assert pool.loaded() == []
