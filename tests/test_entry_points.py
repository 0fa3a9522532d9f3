"""The issue's list of bad settings, at every door: the Python API, the command line (``sweep``:
``generate`` has its own list in test_cli.py), TOML files (config, recipe, grid) and the web API.

Each door must refuse each one with one sentence that names what is wrong (Python: an
:class:`~llm_dit.errors.LlmDitError`; CLI: one line on stderr, exit 2, no traceback, no run folder;
web: 422 with the field, or a server that will not start) and leave nothing behind.
"""

from __future__ import annotations

import pytest
from PIL import Image

from llm_dit.cli import main
from llm_dit.errors import LlmDitError

CASES = ["invalid TOML", "unknown key", "wrong type", "steps 0", "size not a multiple of 16", "alpha 1.5",
         "layer 99", "empty sweep list", "missing model path", "empty prompt"]
MISSING = "/no/such/model/folder"


@pytest.fixture
def ref(tmp_path) -> str:
    path = tmp_path / "ref.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path)
    return str(path)


def _one_sentence(message: str, needle: str) -> None:
    assert needle in message, message
    assert "\n" not in message.strip() and "Traceback" not in message


# -- Python ---------------------------------------------------------------------------------------


def _python(case: str, ref: str, tmp_path):
    from llm_dit import ZImage, resolve_config
    from llm_dit.conditioning import Recipe
    from llm_dit.conditioning.run import generate_from_recipe
    from llm_dit.experiments.specs import sweep_spec

    cfg = resolve_config("tiny")
    if case == "invalid TOML":
        (tmp_path / "bad.toml").write_text("[tiny\n")
        return lambda: resolve_config("tiny", config_file=tmp_path / "bad.toml"), "not valid TOML"
    return {
        "unknown key": (lambda: resolve_config("tiny", overrides={"generation.colour": 1}), "colour"),
        "wrong type": (lambda: resolve_config("tiny", overrides={"generation.steps": "abc"}), "generation.steps"),
        "steps 0": (lambda: cfg.replace(**{"generation.steps": 0}), "generation.steps"),
        "size not a multiple of 16": (lambda: cfg.replace(**{"generation.width": 100}), "multiple of 16"),
        "alpha 1.5": (lambda: Recipe.from_dict({"alpha": 1.5}), "less than or equal to 1"),
        "layer 99": (lambda: generate_from_recipe(cfg, Recipe.from_dict({"references": [{"image": ref}],
                                                                          "hidden_layer": 99}), "a cat"),
                     "hidden layer 99 is out of range"),
        "empty sweep list": (lambda: sweep_spec([{"image": ref}], "a cat", {}, {"alpha": []}, cfg),
                             "the sweep list for 'alpha' is empty"),
        "missing model path": (lambda: ZImage.load(cfg.replace(**{"models.z_image": MISSING})), "does not exist"),
        "empty prompt": (lambda: generate_from_recipe(cfg, Recipe(backend="text"), ""), "give a prompt"),
    }[case]


@pytest.mark.reliability("bad input", "the issue's bad settings through the Python API: invalid TOML, an unknown key, "
                         "a wrong type, steps 0, a width of 100, alpha 1.5, layer 99, an empty sweep list, a missing "
                         "model path, an empty prompt", "an LlmDitError of one sentence naming it")
@pytest.mark.parametrize("case", CASES)
def test_python_api(case, ref, tmp_path):
    call, needle = _python(case, ref, tmp_path)
    with pytest.raises(LlmDitError) as e:
        call()
    _one_sentence(str(e.value), needle)


# -- the command line and TOML files ---------------------------------------------------------------


def _sweep(tmp_path, ref: str, *extra: str) -> list[str]:
    # no generation flags: a config file's values would lose to them
    return ["sweep", "--profile", "tiny", "--image", ref, "--prompt", "a cat", "--no-progress",
            "--out", str(tmp_path / "run"), *extra]


CLI = {
    "invalid TOML": (["--config", "{d}/bad.toml"], "not valid TOML"),
    "unknown key": (["--colour", "red"], "unrecognized arguments: --colour red"),
    "wrong type": (["--steps", "abc"], "invalid int value: 'abc'"),
    "steps 0": (["--steps", "0"], "generation.steps"),
    "size not a multiple of 16": (["--width", "100"], "must be a multiple of 16"),
    "alpha 1.5": (["--alphas", "0.5,1.5"], "less than or equal to 1"),
    "layer 99": (["--alphas", "0.5,1", "--vary", "hidden_layer=99"], "hidden layer 99 is out of range"),
    "empty sweep list": (["--vary", "alpha="], "empty value in the list"),
    "missing model path": (["--alphas", "0.5,1", "--z-image", MISSING], "does not exist"),
    "empty prompt": (["--alphas", "0.5,1", "--prompt", " "], "give a prompt"),
}
TOML = {  # (flag, file text, what the sentence says)
    "invalid TOML": ("--recipe", "alpha = \n", "not valid TOML"),
    "unknown key": ("--config", "[tiny.generation]\ncolour = 1\n", "colour"),
    "wrong type": ("--config", "[tiny.generation]\nsteps = \"abc\"\n", "generation.steps"),
    "steps 0": ("--grid", "[axes]\nsteps = [0, 2]\n", "steps"),
    "size not a multiple of 16": ("--config", "[tiny.generation]\nwidth = 100\n", "must be a multiple of 16"),
    "alpha 1.5": ("--recipe", "alpha = 1.5\n", "less than or equal to 1"),
    "layer 99": ("--grid", "[recipe]\nhidden_layer = 99\n[axes]\nalpha = [0.5, 1.0]\n",
                 "hidden layer 99 is out of range"),
    "empty sweep list": ("--grid", "[axes]\nalpha = []\n", "the sweep list for 'alpha' is empty"),
    "missing model path": ("--config", f"[tiny.models]\nz_image = \"{MISSING}\"\n", "does not exist"),
    "empty prompt": ("--grid", "[axes]\nalpha = [0.5, 1.0]\n", None),  # a prompt is not a file's field
}


def _refused(args: list[str], needle: str, out, capsys) -> None:
    rc = main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("llm-dit: error: "), err
    _one_sentence(lines[0], needle)
    assert not out.exists()


@pytest.mark.reliability("bad input", "the same settings as `llm-dit sweep` flags", "one line on stderr, exit 2, "
                         "no traceback, no run folder")
@pytest.mark.parametrize("case", CASES)
def test_command_line(case, ref, tmp_path, capsys):
    (tmp_path / "bad.toml").write_text("[tiny\n")
    extra, needle = CLI[case]
    _refused(_sweep(tmp_path, ref, *[a.format(d=tmp_path) for a in extra]), needle, tmp_path / "run", capsys)


@pytest.mark.reliability("bad input", "the same settings in TOML files: a config profile, a recipe, a sweep grid",
                         "one line on stderr naming the file's key, exit 2, no run folder")
@pytest.mark.parametrize("case", [c for c in CASES if TOML[c][2]])
def test_toml_files(case, ref, tmp_path, capsys):
    flag, text, needle = TOML[case]
    (tmp_path / "settings.toml").write_text(text)
    extra = [flag, str(tmp_path / "settings.toml")] + ([] if flag == "--grid" else ["--alphas", "0.5,1"])
    _refused(_sweep(tmp_path, ref, *extra), needle, tmp_path / "run", capsys)


# -- the web API ----------------------------------------------------------------------------------


def _web(case: str, upload: str) -> tuple[str, dict | bytes, str, str]:
    """(route, body, the field named, what the sentence says)."""
    gen = {"prompt": "a cat"}
    refs = {"references": [{"image": upload}]}
    return {
        "invalid TOML": ("/api/generate", b"{prompt = 'a cat'", "", "the request body is not valid JSON"),
        "unknown key": ("/api/generate", {**gen, "recipe": {"colour": 1}}, "recipe.colour", "unknown recipe field"),
        "wrong type": ("/api/generate", {**gen, "generation": {"steps": "abc"}}, "generation.steps", "integer"),
        "steps 0": ("/api/generate", {**gen, "generation": {"steps": 0}}, "generation.steps", "greater than"),
        "size not a multiple of 16": ("/api/generate", {**gen, "generation": {"width": 100}}, "generation.width",
                                      "multiple of 16"),
        "alpha 1.5": ("/api/generate", {**gen, "recipe": {**refs, "alpha": 1.5}}, "recipe.alpha",
                      "less than or equal to 1"),
        "layer 99": ("/api/generate", {**gen, "recipe": {**refs, "hidden_layer": 99}}, "recipe.hidden_layer",
                     "hidden layer 99 is out of range"),
        "empty sweep list": ("/api/sweeps", {**gen, "recipe": refs, "axes": {"alpha": []}}, "axes.alpha",
                             "the sweep list for 'alpha' is empty"),
        "empty prompt": ("/api/generate", {"prompt": ""}, "prompt", "give a prompt"),
    }[case]


@pytest.mark.reliability("bad input", "the same settings in web API requests (invalid JSON for invalid TOML)",
                         "422 with one sentence and the field it names; nothing queued, no run folder")
@pytest.mark.parametrize("case", [c for c in CASES if c != "missing model path"])
def test_web_api(case, client, upload):
    route, body, field, needle = _web(case, upload["id"])
    before = client.get("/api/jobs").json()
    runs_before = client.get("/api/runs").json()
    if isinstance(body, bytes):
        r = client.post(route, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(route, json=body)
    assert r.status_code == 422, r.text
    _one_sentence(r.json()["detail"], needle)
    assert (r.json()["field"] or "") == field
    assert client.get("/api/jobs").json() == before and client.get("/api/runs").json() == runs_before


@pytest.mark.reliability("bad input", "`llm-dit serve` with a model path that does not exist",
                         "refuses to start: one line naming the path, exit 2")
def test_serve_refuses_a_missing_model_path(tmp_path, capsys, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started"))
    (tmp_path / "models.toml").write_text(f"[tiny.models]\nvl = \"{MISSING}\"\n")
    rc = main(["serve", "--profile", "tiny", "--config", str(tmp_path / "models.toml"), "--port", "7861",
               "--runs", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"model path {MISSING} does not exist" in err
    assert not (tmp_path / "runs").exists()


# -- every command ---------------------------------------------------------------------------------

COMMANDS = [  # (arguments, what the sentence says, the output it must not leave)
    (["generate", "--prompt", "a", "--init-image", "{d}/missing.png", "--out", "{d}/o.png"], "does not exist", "o.png"),
    (["compare", "--experiment", "nope", "--image", "{d}/ref.png", "--prompt", "a", "--out", "{d}/o"],
     "unknown experiment 'nope'", "o"),
    (["sweep", "--image", "{d}/ref.png", "--prompt", "a", "--vary", "alpha=", "--out", "{d}/o"], "empty value", "o"),
    (["report", "{d}/o"], "is not a folder", "o"),
    (["serve", "--port", "70000", "--runs", "{d}/o"], "--port must be in 1..65535", "o"),
    (["extract", "--image", "{d}/missing.png", "--out", "{d}/o.safetensors"], "does not exist", "o.safetensors"),
    (["caption", "--image", "{d}/missing.png", "--out", "{d}/o.txt"], "does not exist", "o.txt"),
    (["stats", "reference", "--prompts", "{d}/missing.txt", "--out", "{d}/o.safetensors"], "does not exist",
     "o.safetensors"),
    (["stats", "compare", "--image", "{d}/missing.png", "--prompt", "a", "--out", "{d}/o"], "does not exist", "o"),
    (["stats", "adapter", "--prompts", "{d}/missing.txt", "--out", "{d}/o.safetensors"], "does not exist",
     "o.safetensors"),
    (["models", "tiny", "--out", "{d}/ref.png"], "is a file", None),
    (["profiles", "--config", "{d}/bad.toml"], "not valid TOML", None),
    (["config", "--config", "{d}/bad.toml"], "not valid TOML", None),
    (["experiments", "--colour"], "unrecognized arguments: --colour", None),
]
TINY = ("generate", "compare", "sweep", "extract", "caption", "stats")  # the commands that load models


@pytest.mark.reliability("bad input", "a bad input to each of the 14 commands (generate, compare, sweep, report, "
                         "serve, extract, caption, the 3 stats, models tiny, profiles, config, experiments)",
                         "one line on stderr, exit 2, no traceback, no output; with --debug the exception and its "
                         "traceback")
@pytest.mark.parametrize("args, needle, output", COMMANDS, ids=[" ".join(c[0][:2]) for c in COMMANDS])
def test_every_command_refuses_in_one_line(args, needle, output, ref, tmp_path, capsys):
    (tmp_path / "bad.toml").write_text("[tiny\n")
    args = [a.format(d=tmp_path) for a in args] + (["--profile", "tiny"] if args[0] in TINY else [])
    _refused(args, needle, tmp_path / (output or "none"), capsys)
    if args[0] != "experiments":  # a usage error has no traceback to show
        with pytest.raises(LlmDitError, match=needle.replace(".", r"\.")):
            main([*args, "--debug"])
