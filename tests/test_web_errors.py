"""The web app's refusals: bad fields (422 naming the field), bodies that are not JSON, paths outside
the runs folder, the token, the host names it answers, and `llm-dit serve`'s own checks."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from web_client import PROMPT, png_bytes  # noqa: E402

from llm_dit.cli import main  # noqa: E402
from llm_dit.web.app import create_app  # noqa: E402


@pytest.mark.parametrize("path, body, field, words", [
    ("/api/generate", {"prompt": PROMPT, "recipe": {"alpha": 3}}, "recipe.alpha", "less than or equal to 1"),
    ("/api/generate", {"prompt": PROMPT, "recipe": {"colour": 1}}, "recipe.colour", "unknown recipe field"),
    ("/api/generate", {"prompt": PROMPT, "recipe": {"blend": "mix"}}, "recipe.blend", "interpolate"),
    ("/api/generate", {"prompt": PROMPT, "generation": {"steps": 0}}, "generation.steps", "greater than"),
    ("/api/generate", {"prompt": PROMPT, "generation": {"width": 100}}, "generation.width", "multiple of 16"),
    ("/api/generate", {"prompt": PROMPT, "generation": {"colour": 1}}, "generation.colour", "unknown generation"),
    ("/api/generate", {"prompt": "  "}, "prompt", "give a prompt"),
    ("/api/generate", {"prompt": PROMPT, "colour": 1}, "colour", "extra"),
    ("/api/generate", {"prompt": 5}, "prompt", "string"),
    ("/api/generate", {"prompt": PROMPT, "recipe": {"references": [{"image": "/etc/passwd"}]}},
     "recipe.references.0.image", "id of an uploaded image"),
    ("/api/generate", {"prompt": PROMPT, "recipe": {"references": [{"image": "0" * 24}]}},
     "recipe.references.0.image", "no uploaded image"),
    ("/api/generate", {"prompt": PROMPT, "recipe": {"backend": "vl", "adapter": "../../etc/passwd"}},
     "recipe.adapter", "inside the runs folder"),
    ("/api/generate", {"prompt": PROMPT, "recipe": {"backend": "vl", "hidden_layer": 40}}, "recipe.hidden_layer",
     "out of range"),
    ("/api/generate", {"prompt": PROMPT, "recipe": {"backend": "vl", "schedule": "list:0.1,0.2"}}, "recipe.schedule",
     "steps"),
    ("/api/generate", {"prompt": PROMPT, "recipe": {"backend": "vl", "schedule": "bogus:1"}}, "recipe.schedule", None),
    ("/api/generate", {"caption_tokens": 0, "recipe": {"references": [{"image": "UPLOAD"}]}}, "caption_tokens",
     "1..1504"),
    ("/api/generate", {"caption_tokens": 32}, "caption_tokens", "reference"),
    ("/api/sweeps", {"prompt": PROMPT, "axes": {}}, "axes", "nothing to sweep"),
    ("/api/sweeps", {"prompt": PROMPT, "axes": {"colour": ["1", "2"]}}, "axes.colour", "cannot sweep"),
    ("/api/sweeps", {"prompt": PROMPT, "axes": {"alpha": ["0.3", "1.5"]}}, "axes.alpha", "less than or equal"),
    ("/api/sweeps", {"prompt": PROMPT, "axes": {"seed": ["1"]}, "recipe": {"pool": 0}}, "recipe.pool", "greater"),
    ("/api/sweeps", {"prompt": PROMPT, "axes": {"seed": ["1"]}, "name": "../x"}, "name", None),
    ("/api/sweeps", {"prompt": PROMPT, "axes": {"steps": [[1]]}}, "axes.steps", "whole number"),
    ("/api/sweeps", {"prompt": PROMPT, "axes": {"method": [[1]]}, "caption_tokens": 8}, "caption_tokens", None),
    ("/api/sweeps", {"prompt": PROMPT, "axes": {"schedule": ["bogus:1", "linear:1:0"]}}, "axes.schedule", None),
    ("/api/sweeps", {"prompt": PROMPT, "axes": {"seed": [str(i) for i in range(100)],
                                                "alpha": [str(i / 100) for i in range(100)]}}, "axes", "limit"),
    ("/api/sweeps", {"prompt": PROMPT, "axes": {"references": [[{"image": "/etc/passwd"}]]}}, "axes.references",
     None),
    ("/api/sweeps", {"prompt": PROMPT, "recipe": {"backend": "vl"}, "axes": {"adapter": ["/etc/hostname", "x"]}},
     "axes.adapter", "inside the runs folder"),
    ("/api/experiments", {"experiment": "alpha_swep", "prompt": PROMPT}, "experiment", "did you mean alpha_sweep"),
    ("/api/experiments", {"experiment": "alpha_sweep", "images": []}, "prompt", "needs a prompt"),
    ("/api/experiments", {"experiment": "multi_reference", "prompt": PROMPT}, "images", "2 reference images"),
    ("/api/experiments", {"experiment": "alpha_sweep", "prompt": PROMPT, "images": ["abc"]}, "images.0", "upload"),
    ("/api/recipe", {"recipe": {"svd_k": 0}}, "recipe.svd_k", "greater"),
])
@pytest.mark.reliability('bad input', 'web API requests with bad fields',
                         '422 naming the field')
def test_bad_requests_get_422_with_the_field_named(client, upload, path, body, field, words):
    before = len(client.get("/api/jobs").json())
    body = json.loads(json.dumps(body).replace("UPLOAD", upload["id"]))
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field, r.json()
    assert words is None or words in r.json()["detail"], r.json()
    assert len(client.get("/api/jobs").json()) == before  # refused: no job


@pytest.mark.reliability('bad input', 'web API: a body that is not JSON',
                         '422, the server stays up')
def test_body_that_is_not_json_gets_422(client):
    r = client.post("/api/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


@pytest.mark.reliability('bad input', 'resuming what is not a run folder (a missing name, uploads, traversal)',
                         '404, nothing queued')
@pytest.mark.parametrize("name", ["nope", "uploads", "generated", "..", "%2e%2e", ".jobs.json"])
def test_resume_needs_a_run_folder(client, name):
    before = len(client.get("/api/jobs").json())
    assert client.post(f"/api/runs/{name}/resume").status_code == 404
    assert len(client.get("/api/jobs").json()) == before


@pytest.mark.reliability('bad input', 'web paths that leave the runs folder (traversal)',
                         '404')
@pytest.mark.parametrize("path", [
    "/api/files/../etc/passwd", "/api/files/%2e%2e/%2e%2e/etc/passwd", "/api/files//etc/passwd",
    "/api/files/%2Fetc%2Fpasswd", "/api/files/uploads/..%2F..%2Fx", "/api/files/nope.png", "/api/files/uploads",
    "/api/files/outside/secret.txt", "/api/runs/..", "/api/runs/%2e%2e", "/api/runs/nope", "/api/runs/uploads",
])
def test_paths_outside_the_runs_folder_are_404(client, path, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    link = client.app.server.runs / "outside"
    if not link.exists():
        link.symlink_to(tmp_path, target_is_directory=True)
    r = client.get(path)
    assert r.status_code == 404 and "secret" not in r.text


def test_token_is_required_on_every_request(config, tmp_path):
    app = create_app(config, tmp_path, token="s3cret")
    with TestClient(app) as c:
        for path in ("/", "/api/health", "/api/runs", "/docs", "/static/app.js"):
            assert c.get(path).status_code == 401, path
        assert c.get("/api/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.post("/api/uploads", files={"file": ("a.png", png_bytes(), "image/png")}).status_code == 401
        r = c.get("/?token=s3cret")  # the page link: the token then travels as a cookie
        assert r.status_code == 200 and "llm_dit_token" in r.headers["set-cookie"]
        assert c.get("/api/health").status_code == 200
        c.cookies.clear()
        assert c.get("/api/health").status_code == 401


def test_local_server_answers_only_its_own_names_and_pages(config, tmp_path):
    """Bound to this machine without a token: a page elsewhere (DNS rebinding, another site) is refused."""
    app = create_app(config, tmp_path, hosts={"localhost", "127.0.0.1", "::1"})
    with TestClient(app, base_url="http://localhost:7860") as c:
        assert c.get("/api/health").status_code == 200
        assert c.get("/api/health", headers={"host": "[::1]:7860"}).status_code == 200
        assert c.get("/api/health", headers={"host": "evil.example:7860"}).status_code == 403
        files = {"file": ("a.png", png_bytes(), "image/png")}
        assert c.post("/api/uploads", files=files, headers={"origin": "http://evil.example"}).status_code == 403
        assert c.post("/api/uploads", files=files, headers={"origin": "http://localhost:7860"}).status_code == 201


def test_a_run_name_is_given_once(client):
    server = client.app.server
    with server.new_run("taken", "sweep") as (run, out):
        assert run == "taken" and not out.exists()
        with pytest.raises(Exception, match="exists already"):
            with server.new_run("taken", "sweep"):
                pass
        with server.new_run(None, "sweep") as (a, _), server.new_run(None, "sweep") as (b, _):
            assert a != b  # two automatic names in the same second differ
    with server.new_run("taken", "sweep") as (run, _):  # refused or done: the name is free again
        assert run == "taken"


def test_serve_refuses_a_public_host_without_token(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("LLM_DIT_TOKEN", raising=False)
    assert main(["serve", "--profile", "tiny", "--host", "0.0.0.0", "--runs", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "give --token" in err and len(err.strip().splitlines()) == 1
    assert main(["serve", "--profile", "tiny", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["serve", "--profile", "tiny", "--host", "0.0.0.0", "--token", "a+b;c/d=="]) == 2
    assert "the token takes letters" in capsys.readouterr().err
