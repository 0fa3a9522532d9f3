"""Numbers that are not numbers (issue 20): every float flag and field refuses NaN and infinity, and
every count has an upper bound, at every door: the Python API, the command line, TOML files (config
profiles, recipes, sweep grids) and the web API.

The cases are walked from the source where that can be done, so a field or flag added later is tested
without being listed here: the float and int fields of the configuration and the recipe (pydantic),
and every number flag of every command (argparse). Each refusal is one sentence that names the flag
or field (Python: an :class:`~llm_dit.errors.LlmDitError`; CLI: one line, exit 2, nothing written;
web: 422 with the field); every case is refused before a model loads.
"""

from __future__ import annotations

import json
import math
import types
import typing

import pytest
from PIL import Image
from pydantic import BaseModel

from llm_dit.cli import build_parser, main
from llm_dit.conditioning.recipe import Recipe, Reference
from llm_dit.conditioning.schedule import Schedule
from llm_dit.config import Config, resolve_config
from llm_dit.errors import InputError, LlmDitError
from llm_dit.limits import check_number, number_problem

NAN, INF = float("nan"), float("inf")
NOT_NUMBERS = [NAN, INF, -INF]
HUGE = 10**20  # the issue's --max-new-tokens 100000000000000000000


@pytest.fixture
def ref(tmp_path) -> str:
    path = tmp_path / "ref.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path)
    return str(path)


def _one_sentence(message: str, *needles: str) -> None:
    assert any(n in message for n in needles), (message, needles)
    assert "\n" not in message.strip() and "Traceback" not in message, message


# -- the numbers of the models, walked -------------------------------------------------------------


def _bounds(metadata) -> dict:
    """``{"ge": .., "le": ..}`` of annotated-types constraints, and of the ones a ``Field()`` holds."""
    flat = [c for m in metadata for c in (getattr(m, "metadata", None) or [m])]
    return {k: getattr(m, k) for m in flat for k in ("gt", "ge", "lt", "le") if getattr(m, k, None) is not None}


def _number_kind(annotation) -> tuple[type, dict, bool] | None:
    """``(int or float, bounds, is_list)`` of a field's type (None, Literal members and an Annotated
    wrapper looked through), or None when it holds no number."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(annotation)
        found = _number_kind(base)
        return None if found is None else (found[0], {**found[1], **_bounds(meta)}, found[2])
    if origin in (typing.Union, types.UnionType):
        found = [k for a in typing.get_args(annotation) if (k := _number_kind(a)) is not None]
        return found[0] if found else None
    if origin is list:
        found = _number_kind(typing.get_args(annotation)[0])
        return None if found is None else (found[0], found[1], True)
    if annotation in (int, float):
        return annotation, {}, False
    return None


def numbers_of(model: type[BaseModel]) -> list[tuple[str, type, dict, bool]]:
    """``(field, int or float, bounds, is_list)`` of every number field of ``model``."""
    out = []
    for name, info in model.model_fields.items():
        found = _number_kind(info.annotation)
        if found is not None:
            kind, bounds, is_list = found
            out.append((name, kind, {**bounds, **_bounds(info.metadata)}, is_list))
    return out


CONFIG_NUMBERS = [(f"{section}.{name}", kind, bounds, is_list)
                  for section, info in Config.model_fields.items()
                  if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
                  for name, kind, bounds, is_list in numbers_of(info.annotation)]
#: (field as the error names it, recipe data with the value at ``X``, kind, bounds)
RECIPE_NUMBERS = [(name, kind, bounds, is_list) for name, kind, bounds, is_list in numbers_of(Recipe)]
REFERENCE_NUMBERS = numbers_of(Reference)
SCHEDULE_NUMBERS = numbers_of(Schedule)


def test_the_walk_finds_the_numbers():
    """The walk sees what it should (a walk that found nothing would test nothing)."""
    assert {"generation.shift", "generation.steps", "vl.layers", "vl.cache_gb", "encoder.hidden_layer"} <= {
        n for n, *_ in CONFIG_NUMBERS}
    assert {"alpha", "target_std", "svd_k", "gem_p", "hidden_layer", "token_budget"} <= {n for n, *_ in RECIPE_NUMBERS}
    assert [n for n, *_ in REFERENCE_NUMBERS] == ["weight"]
    assert {"start", "end", "at", "values"} == {n for n, *_ in SCHEDULE_NUMBERS}


@pytest.mark.parametrize("name, kind, bounds, is_list",
                         [c for c in CONFIG_NUMBERS + RECIPE_NUMBERS + REFERENCE_NUMBERS if c[1] is int],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_every_count_has_an_upper_bound(name, kind, bounds, is_list):
    assert "le" in bounds or "lt" in bounds, f"{name} is an int without an upper bound (le=...)"


def _recipe_data(name: str, value) -> dict:
    if name in {n for n, *_ in REFERENCE_NUMBERS}:
        return {"references": [{"image": "a.png", name: value}]}
    if name in {n for n, *_ in SCHEDULE_NUMBERS}:
        kind = {"start": "constant", "values": "list"}.get(name, "step")
        schedule = {"constant": {"start": 0.5}, "list": {}, "step": {"start": 0.8, "end": 0.2, "at": 0.5}}[kind]
        return {"schedule": {"kind": kind, **schedule, name: [value] if name == "values" else value}}
    return {name: value}


def _bad_values(kind: type, bounds: dict) -> list:
    if kind is float:
        return NOT_NUMBERS
    top = bounds.get("le", bounds.get("lt", 0))
    return [top + 1, HUGE]


PY_CASES = [("config", name, v) for name, kind, bounds, _ in CONFIG_NUMBERS for v in _bad_values(kind, bounds)] + [
    ("recipe", name, v) for name, kind, bounds, _ in RECIPE_NUMBERS + REFERENCE_NUMBERS + SCHEDULE_NUMBERS
    for v in _bad_values(kind, bounds)]


@pytest.mark.reliability("bad input", "NaN, inf and -inf in every float field, and one past the bound and 10^20 in "
                         "every int field, of the configuration and the recipe (walked from the models) and of the "
                         "library functions that take numbers (fit_adapter's ridge, CaptionRequest, CompareOptions, "
                         "create_app, outlier threshold, normalization, style vectors, sweep values), through the "
                         "Python API", "an LlmDitError of one sentence naming the field")
@pytest.mark.parametrize("door, name, value", PY_CASES, ids=[f"{d}-{n}-{v}" for d, n, v in PY_CASES])
def test_python_api_refuses_every_field(door, name, value):
    with pytest.raises(LlmDitError) as e:
        if door == "config":
            section, key = name.split(".")
            is_list = next(c[3] for c in CONFIG_NUMBERS if c[0] == name)
            resolve_config("tiny", overrides={name: [value] if is_list else value})
        else:
            Recipe.from_dict(_recipe_data(name, value))
    _one_sentence(str(e.value), name)
    # a schedule's own check (a list's values) names the schedule
    where = "schedule" if name in {n for n, *_ in SCHEDULE_NUMBERS} else name.split(".")[-1]
    assert e.value.field is not None and where in e.value.field, e.value.field


def _library_calls():
    """(what, call, the words of the sentence): functions of the library that take numbers directly."""
    import torch

    from llm_dit.analysis.compare import CompareOptions
    from llm_dit.conditioning.recipe import check_prompt_or_caption
    from llm_dit.conditioning.style import gem_pool, svd_style_vector
    from llm_dit.experiments.cells import sweep_axis, sweep_cells
    from llm_dit.experiments.trials import seeds_from
    from llm_dit.vl.adapter import fit_adapter, ridge_fit
    from llm_dit.vl.caption import CaptionRequest
    from llm_dit.vl.chat import pixel_bounds
    from llm_dit.vl.normalize import scale_global
    from llm_dit.vl.outliers import get_outlier_dimensions
    from llm_dit.vl.reference import ReferenceStats

    x = torch.randn(8, 4)
    ref = ReferenceStats(mean=torch.zeros(4), std=torch.ones(4), min=-torch.ones(4), max=torch.ones(4), layer=1,
                         num_layers=2, model="m", num_tokens=8, num_prompts=1)
    return [
        ("fit_adapter ridge nan", lambda: fit_adapter(None, None, None, ["a"], ridge=NAN), "ridge"),
        ("fit_adapter ridge inf", lambda: fit_adapter(None, None, None, ["a"], ridge=INF), "ridge"),
        ("fit_adapter ridge 1e300", lambda: fit_adapter(None, None, None, ["a"], ridge=1e300), "ridge"),
        ("fit_adapter holdout nan", lambda: fit_adapter(None, None, None, ["a"], holdout=NAN), "holdout"),
        ("fit_adapter layer huge", lambda: fit_adapter(None, None, None, ["a"], vl_layer=HUGE), "vl_layer"),
        ("ridge_fit nan", lambda: ridge_fit(x, x, NAN), "ridge"),
        ("caption max_new_tokens huge", lambda: CaptionRequest(max_new_tokens=HUGE), "max_new_tokens"),
        ("caption min_tokens huge", lambda: CaptionRequest(min_tokens=HUGE), "min_tokens"),
        ("caption attempts huge", lambda: CaptionRequest(attempts=HUGE), "attempts"),
        ("caption temperature nan", lambda: CaptionRequest(temperature=NAN), "temperature"),
        ("caption temperature inf", lambda: CaptionRequest(temperature=INF), "temperature"),
        ("caption top_p nan", lambda: CaptionRequest(top_p=NAN), "top_p"),
        ("caption top_k huge", lambda: CaptionRequest(top_k=HUGE), "top_k"),
        ("caption seed huge", lambda: CaptionRequest(seed=HUGE), "seed"),
        ("caption max_pixels huge", lambda: CaptionRequest(max_pixels=HUGE), "max_pixels"),
        ("stats threshold nan", lambda: CompareOptions([-2], "m", threshold=NAN), "threshold"),
        ("stats threshold inf", lambda: CompareOptions([-2], "m", threshold=INF), "threshold"),
        ("stats pool huge", lambda: CompareOptions([-2], "m", pool=HUGE), "pool"),
        ("stats layer huge", lambda: CompareOptions([HUGE], "m"), "layer"),
        ("outlier threshold nan", lambda: get_outlier_dimensions(x, ref, NAN), "outlier threshold"),
        ("target std inf", lambda: scale_global(x, INF), "target std"),
        ("GeM p inf", lambda: gem_pool(x, INF), "GeM exponent"),
        ("svd k huge", lambda: svd_style_vector(x, HUGE), "svd_k"),
        ("caption tokens huge", lambda: check_prompt_or_caption(None, HUGE, 1), "caption tokens"),
        ("pixel budget huge", lambda: pixel_bounds(None, HUGE), "max_pixels"),
        ("seeds huge", lambda: seeds_from(str(HUGE), 0), "--seeds"),
        ("sweep shift nan", lambda: sweep_cells({"backend": "vl"}, dict([sweep_axis("shift", "nan,3")])), "shift"),
        ("sweep guidance inf", lambda: sweep_cells({"backend": "vl"}, {"guidance_scale": [INF]}), "guidance_scale"),
        ("sweep steps huge", lambda: sweep_cells({"backend": "vl"}, {"steps": [HUGE]}), "steps"),
        ("sweep alpha nan", lambda: sweep_cells({"backend": "vl"}, dict([sweep_axis("alpha", "0.5,nan")])), "alpha"),
    ]


@pytest.mark.parametrize("what", [c[0] for c in _library_calls()])
def test_python_api_functions_refuse_numbers_that_are_not(what):
    _, call, needle = next(c for c in _library_calls() if c[0] == what)
    with pytest.raises(LlmDitError) as e:
        call()
    _one_sentence(str(e.value), needle)


@pytest.mark.parametrize("kwargs, needle", [({"max_new_tokens": HUGE}, "max_new_tokens"),
                                            ({"temperature": NAN}, "temperature"), ({"top_p": INF}, "top_p"),
                                            ({"top_k": HUGE}, "top_k")])
def test_the_extractor_refuses_a_generation_budget_before_generating(extractor, red_image, kwargs, needle):
    """``VLEmbeddingExtractor.generate`` (the Captioner protocol) checks what it is given, too."""
    with pytest.raises(InputError, match=needle):
        extractor.generate("Describe this image.", red_image, **kwargs)


def test_create_app_refuses_before_making_anything(tmp_path):
    pytest.importorskip("fastapi")
    from llm_dit.web.app import create_app

    cfg = resolve_config("tiny")
    for kwargs, needle in (({"max_upload": NAN}, "max_upload"), ({"max_upload": 10**15}, "max_upload"),
                           ({"idle_unload": NAN}, "idle_unload"), ({"idle_unload": INF}, "idle_unload")):
        with pytest.raises(InputError, match=needle):
            create_app(cfg, tmp_path / "runs", start_worker=False, **kwargs)
    assert not (tmp_path / "runs").exists()


def test_the_web_form_shows_the_bounds():
    """A layer field (``LayerIndex | None``) stays a number control, with its bounds, on the web page."""
    from llm_dit.web.form import recipe_controls

    controls = {c["name"]: c for c in recipe_controls(resolve_config("tiny"))}
    for name in ("hidden_layer", "image_layer", "text_layer"):
        assert (controls[name]["kind"], controls[name]["min"], controls[name]["max"]) == ("int", -257, 256)
    assert controls["svd_k"]["max"] == 4096 and controls["max_pixels"]["max"] == 16384 * 16384


def test_check_number():
    assert check_number(0.5, "x", gt=0, le=1) == 0.5 and check_number(HUGE, "n", whole=True, ge=0) == HUGE
    for bad, kw in ((NAN, {}), (INF, {}), (-INF, {}), (True, {}), ("1", {}), (0, {"gt": 0}), (1.5, {"whole": True}),
                    (HUGE, {"whole": True, "le": 10})):
        assert number_problem(bad, **kw) is not None, (bad, kw)
    with pytest.raises(InputError, match=r"^ridge must be a finite number in \(0, 1000000\] \(got nan\)$"):
        check_number(NAN, "ridge", gt=0, le=1e6)
    with pytest.raises(InputError, match=r"^n must be a whole number in 1\.\.32768 \(got 100000000000000000000\)$"):
        check_number(HUGE, "n", whole=True, ge=1, le=32768)


# -- the command line ------------------------------------------------------------------------------


def _refused(args: list[str], needles: tuple[str, ...], out, capsys) -> None:
    rc = main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("llm-dit: error: "), (args, err)
    _one_sentence(lines[0], *needles)
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


ISSUE = [  # the issue's four examples, as a careless user typed them
    (["stats", "adapter", "--profile", "tiny", "--ridge", "nan", "--out", "{o}/adapter.safetensors"],
     "--ridge must be a finite number in (0, 1000000] (got nan)"),
    (["stats", "compare", "--profile", "tiny", "--image", "{ref}", "--prompt", "a cat", "--threshold", "nan",
      "--out", "{o}/stats"], "--threshold must be a finite number greater than 1 (got nan)"),
    (["serve", "--profile", "tiny", "--max-upload-mb", "nan", "--runs", "{o}/runs"],
     "--max-upload-mb must be a finite number in (0, 1024] (got nan)"),
    (["serve", "--profile", "tiny", "--max-upload-mb", "inf", "--runs", "{o}/runs"],
     "--max-upload-mb must be a finite number in (0, 1024] (got inf)"),
    (["caption", "--profile", "tiny", "--image", "{ref}", "--max-new-tokens", "100000000000000000000",
      "--out", "{o}/caption.txt"], "--max-new-tokens must be a whole number in 1..32768 (got 100000000000000000000)"),
]


@pytest.mark.reliability("bad input", "the issue's examples: stats adapter --ridge nan, stats compare --threshold nan, "
                         "serve --max-upload-mb nan and inf, caption --max-new-tokens 100000000000000000000",
                         "one line naming the flag and its range, exit 2, nothing written, no hang")
@pytest.mark.parametrize("args, message", ISSUE, ids=[" ".join(a[:2]) + " " + a[a.index("tiny") + 1]
                                                      for a, _ in ISSUE])
def test_the_issue_examples(args, message, ref, tmp_path, capsys, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started"))
    out = tmp_path / "out"
    _refused([a.format(o=out, ref=ref) for a in args], (message,), out, capsys)
    assert capsys.readouterr().err == "" and message.startswith("--")


def _commands(parser, path=()):
    """``(command words, subparser)`` of every leaf command of the parser."""
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, sub in subs[0].choices.items():
        yield from _commands(sub, (*path, name))


def _flag_kind(action) -> type | None:
    t = action.type
    name = getattr(t, "__name__", "")
    if t is float or name in ("number", "_target_std"):
        return float
    if t is int or name in ("count", "layer_index", "int_list"):
        return int
    return None


BASE = {  # what each command needs besides the flag under test ({o}: the output folder)
    ("generate",): ["--prompt", "a cat", "--image", "{ref}", "--out", "{o}/o.png"],
    ("compare",): ["--experiment", "alpha_sweep", "--image", "{ref}", "--prompt", "a cat", "--out", "{o}/run"],
    ("sweep",): ["--image", "{ref}", "--prompt", "a cat", "--alphas", "0.5,1", "--out", "{o}/run"],
    ("serve",): ["--runs", "{o}/runs"],
    ("extract",): ["--image", "{ref}", "--out", "{o}/e.safetensors"],
    ("caption",): ["--image", "{ref}", "--out", "{o}/c.txt"],
    ("stats", "reference"): ["--out", "{o}/r.safetensors"],
    ("stats", "compare"): ["--image", "{ref}", "--prompt", "a cat", "--out", "{o}/stats"],
    ("stats", "adapter"): ["--out", "{o}/a.safetensors"],
    ("config",): [],
    ("doctor",): [],
}
FLAGS = [(cmd, action.option_strings[-1], kind, action.dest)
         for cmd, sub in _commands(build_parser()) for action in sub._actions
         if action.option_strings and (kind := _flag_kind(action)) is not None]
CLI_CASES = [(cmd, flag, v, dest) for cmd, flag, kind, dest in FLAGS
             for v in (["nan", "inf", "-inf"] if kind is float else [str(HUGE), str(-HUGE)])]


def test_every_float_flag_checks_its_number():
    """No flag parses with plain ``float`` (which takes nan and inf): each uses ``number()``."""
    for cmd, sub in _commands(build_parser()):
        for action in sub._actions:
            assert action.type is not float, f"{' '.join(cmd)} {action.option_strings}: use common.number()"
    assert {("stats", "adapter", "--ridge"), ("caption", "--max-new-tokens"), ("generate", "--vl-alpha"),
            ("generate", "--steps"), ("serve", "--max-upload-mb"), ("sweep", "--weight")} <= {
        (*cmd, flag) for cmd, flag, _, _ in FLAGS}
    assert set(BASE) >= {cmd for cmd, *_ in FLAGS}  # every command with a number flag has its base here


@pytest.mark.reliability("bad input", "nan, inf and -inf to every float flag and +-10^20 to every int flag of every "
                         "command (walked from the parser)", "one line naming the flag or its field, exit 2, nothing "
                         "written, before any model loads")
@pytest.mark.parametrize("cmd, flag, value, dest", CLI_CASES,
                         ids=[f"{' '.join(c)} {f}={v}" for c, f, v, _ in CLI_CASES])
def test_every_number_flag(cmd, flag, value, dest, ref, tmp_path, capsys, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started"))
    out = tmp_path / "out"
    base = [a.format(o=out, ref=ref) for a in BASE[cmd]]
    if flag == "--caption-tokens":  # a prompt or caption tokens, not both
        base = base[2:] if base[:1] == ["--prompt"] else [a for a in base if a not in ("--prompt", "a cat")]
    args = [*cmd, "--profile", "tiny", *base, f"{flag}={value}"]
    leaf = dest.split(".")[-1]
    _refused(args, (flag, f"'{dest}", f"{leaf}", leaf.replace("_", " ")), out, capsys)


MORE_CLI = [  # numbers given as text that the flag's own parser does not type
    (["sweep", "--image", "{ref}", "--prompt", "a cat", "--alphas", "0.5,nan", "--out", "{o}/run"], "alpha"),
    (["sweep", "--image", "{ref}", "--prompt", "a cat", "--vary", "shift=nan,3", "--out", "{o}/run"], "'shift'"),
    (["sweep", "--image", "{ref}", "--prompt", "a cat", "--vary", "guidance_scale=1,inf", "--out", "{o}/run"],
     "'guidance_scale'"),
    (["sweep", "--image", "{ref}", "--prompt", "a cat", "--vary", "steps=2,100000000000000000000", "--out",
      "{o}/run"], "'steps'"),
    (["sweep", "--image", "{ref}", "--prompt", "a cat", "--target-stds", "text,inf", "--out", "{o}/run"],
     "target_std"),
    (["sweep", "--image", "{ref}", "--prompt", "a cat", "--alphas", "0.5,1", "--seeds", str(HUGE), "--out",
      "{o}/run"], "--seeds"),
    (["compare", "--experiment", "alpha_sweep", "--image", "{ref}", "--prompt", "a cat", "--set", "gem_p=inf",
      "--out", "{o}/run"], "gem_p"),
    (["compare", "--experiment", "alpha_sweep", "--image", "{ref}", "--prompt", "a cat", "--set",
      f"max_pixels={HUGE}", "--out", "{o}/run"], "max_pixels"),
    (["generate", "--prompt", "a cat", "--image", "{ref}", "--schedule", "linear:nan:0.2", "--out", "{o}/o.png"],
     "schedule"),
]


@pytest.mark.parametrize("args, needle", MORE_CLI, ids=[" ".join(a[:1] + a[-3:-2]) for a, _ in MORE_CLI])
def test_numbers_in_lists_and_fields(args, needle, ref, tmp_path, capsys):
    out = tmp_path / "out"
    _refused([args[0], "--profile", "tiny", *[a.format(o=out, ref=ref) for a in args[1:]]], (needle,), out, capsys)


# -- TOML files ------------------------------------------------------------------------------------


def _toml(value) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    return json.dumps(value)


TOML_CASES = [("config", name, v) for name, kind, bounds, _ in CONFIG_NUMBERS
              for v in _bad_values(kind, bounds)[:2]] + [
    ("recipe", name, v) for name, kind, bounds, _ in RECIPE_NUMBERS + REFERENCE_NUMBERS + SCHEDULE_NUMBERS
    for v in _bad_values(kind, bounds)[:2]] + [
    ("grid", "alpha", NAN), ("grid", "shift", INF), ("grid", "steps", HUGE), ("grid", "seed", 2**63),
    ("grid", "gem_p", -INF), ("suggested", "shift", NAN), ("suggested", "steps", HUGE)]


def _toml_file(door: str, name: str, value, ref: str) -> tuple[str, str]:
    """(flag, text) of a TOML file with ``name = value``."""
    v = _toml(value)
    if door == "config":
        section, key = name.split(".")
        is_list = next(c[3] for c in CONFIG_NUMBERS if c[0] == name)
        return "--config", f"[tiny.{section}]\n{key} = {'[' + v + ']' if is_list else v}\n"
    if door == "recipe":
        head = f'backend = "vl"\n[[references]]\nimage = "{ref}"\n'
        if name in {n for n, *_ in REFERENCE_NUMBERS}:
            return "--recipe", f'backend = "vl"\n[[references]]\nimage = "{ref}"\n{name} = {v}\n'
        if name in {n for n, *_ in SCHEDULE_NUMBERS}:
            table = {"start": 'kind = "constant"\nstart = ', "values": 'kind = "list"\nvalues = ',
                     "end": 'kind = "linear"\nstart = 0.5\nend = ',
                     "at": 'kind = "step"\nstart = 0.8\nend = 0.2\nat = '}
            shown = f"[{v}]" if name == "values" else v
            return "--recipe", f"{head}[schedule]\n{table[name]}{shown}\n"
        return "--recipe", f"{name} = {v}\n{head}"
    if door == "grid":
        if name == "gem_p":
            return "--grid", f"[recipe]\ngem_p = {v}\n[axes]\nalpha = [0.5, 1.0]\n"
        return "--grid", f"[axes]\n{name} = [{v}, 1]\n" if name != "alpha" else f"[axes]\nalpha = [0.5, {v}]\n"
    # a shipped-style recipe file: [recipe] and the generation settings it suggests
    return "--recipe", f'[recipe]\nbackend = "vl"\n[generation]\n{name} = {v}\n'


@pytest.mark.reliability("bad input", "nan, inf and out-of-bound counts in TOML files: every number key of a config "
                         "profile and of a recipe (walked from the models), sweep grid axes and fixed fields, a "
                         "recipe file's suggested generation settings", "one line naming the key, exit 2, nothing "
                         "written")
@pytest.mark.parametrize("door, name, value", TOML_CASES, ids=[f"{d}-{n}-{v}" for d, n, v in TOML_CASES])
def test_toml_files(door, name, value, ref, tmp_path, capsys):
    flag, text = _toml_file(door, name, value, ref)
    (tmp_path / "numbers.toml").write_text(text)
    out = tmp_path / "out"
    if door == "config":
        args = ["config", "--profile", "tiny", "--config", str(tmp_path / "numbers.toml")]
    elif door == "grid":
        args = ["sweep", "--profile", "tiny", "--image", ref, "--prompt", "a cat", "--grid",
                str(tmp_path / "numbers.toml"), "--out", str(out / "run")]
    else:
        args = ["generate", "--profile", "tiny", "--prompt", "a cat", "--recipe", str(tmp_path / "numbers.toml"),
                "--out", str(out / "o.png")]
    _refused(args, (name, name.split(".")[-1]), out, capsys)


# -- the web API -----------------------------------------------------------------------------------


def _web_cases() -> list[tuple[str, dict, str]]:
    """(route, body with "UPLOAD" for the upload id, the field named)."""
    refs = {"references": [{"image": "UPLOAD"}]}
    cases = []
    for name, kind, bounds, _ in RECIPE_NUMBERS:
        for v in _bad_values(kind, bounds)[:2]:
            cases.append(("/api/generate", {"prompt": "a cat", "recipe": {**refs, name: v}}, f"recipe.{name}"))
    for v in NOT_NUMBERS:
        weighted = {"references": [{"image": "UPLOAD", "weight": v}]}
        cases.append(("/api/generate", {"prompt": "a cat", "recipe": weighted}, "recipe.references.0.weight"))
        cases.append(("/api/generate", {"prompt": "a cat", "recipe": {**refs, "schedule": {"kind": "constant",
                                                                                          "start": v}}},
                      "recipe.schedule.start"))
    from llm_dit.web.form import GENERATION_FIELDS  # what a request's "generation" may set

    for name, kind, bounds, _ in CONFIG_NUMBERS:
        section, key = name.split(".")
        if section == "generation" and key in GENERATION_FIELDS:
            for v in _bad_values(kind, bounds)[:2]:
                cases.append(("/api/generate", {"prompt": "a cat", "generation": {key: v}}, name))
    cases += [
        ("/api/generate", {"recipe": refs, "caption_tokens": HUGE}, "caption_tokens"),
        ("/api/generate", {"recipe": refs, "caption_tokens": INF}, "caption_tokens"),
        ("/api/sweeps", {"prompt": "a cat", "recipe": refs, "axes": {"shift": [NAN, 3.0]}}, "axes.shift"),
        ("/api/sweeps", {"prompt": "a cat", "recipe": refs, "axes": {"steps": [2, HUGE]}}, "axes.steps"),
        ("/api/sweeps", {"prompt": "a cat", "recipe": refs, "axes": {"alpha": "0.5,nan"}}, "axes.alpha"),
        ("/api/sweeps", {"prompt": "a cat", "recipe": refs, "axes": {"alpha": [0.5, INF]}}, "axes.alpha"),
        ("/api/sweeps", {"prompt": "a cat", "recipe": {**refs, "svd_k": HUGE}, "axes": {"alpha": [0.5, 1]}},
         "recipe.svd_k"),
        ("/api/experiments", {"experiment": "alpha_sweep", "prompt": "a cat", "images": ["UPLOAD"],
                              "generation": {"guidance_scale": NAN}}, "generation.guidance_scale"),
        ("/api/recipe", {"recipe": {"gem_p": INF}}, "recipe.gem_p"),
    ]
    return cases


WEB = _web_cases()


@pytest.mark.reliability("bad input", "NaN, Infinity and out-of-bound counts in web API requests (JSON as Python "
                         "writes it): every recipe number, the generation settings, caption tokens, sweep axes as "
                         "lists and as text, an experiment's settings", "422 with one sentence and the field; "
                         "nothing queued, no run folder")
@pytest.mark.parametrize("route, body, field", WEB, ids=[f"{r[5:]}-{f}-{i}" for i, (r, _, f) in enumerate(WEB)])
def test_web_api(route, body, field, client, upload):
    before, runs_before = client.get("/api/jobs").json(), client.get("/api/runs").json()
    text = json.dumps(body).replace("UPLOAD", upload["id"])  # NaN, Infinity: what Python's json writes
    r = client.post(route, content=text.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    _one_sentence(r.json()["detail"], field.split(".")[-1], "caption tokens")
    assert r.json()["field"] == field, r.json()
    assert client.get("/api/jobs").json() == before and client.get("/api/runs").json() == runs_before
