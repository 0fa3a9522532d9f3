"""The doors (command line, web app) hold no logic of their own: each shared decision is one library
function, and these tests show every door giving its answer (the same sentence for the same input)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from llm_dit.cli import main
from llm_dit.conditioning.recipe import check_prompt_or_caption
from llm_dit.errors import InputError

pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ref") / "ref.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path)
    return str(path)


def _cli_error(args: list[str], capsys) -> str:
    """The one line the command line prints for ``args`` (it must refuse them)."""
    rc = main(args)
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1, err
    assert err.startswith("llm-dit: error: "), err
    return err.removeprefix("llm-dit: error: ").strip()


def _refusal(call) -> InputError:
    with pytest.raises(InputError) as e:
        call()
    return e.value


# -- a. the prompt-or-caption check -----------------------------------------------------------------

PROMPT_CASES = {  # (prompt, caption tokens, with a reference image)
    "neither": (None, None, True),
    "blank prompt": ("   ", None, True),
    "both": ("a cat", 16, True),
    "caption without a reference": (None, 16, False),
    "caption tokens 0": (None, 0, True),
    "caption tokens 2000": (None, 2000, True),
}


@pytest.mark.parametrize("case", list(PROMPT_CASES))
def test_prompt_check_is_one_function_behind_every_door(case, ref, tmp_path, capsys, client, upload):
    from llm_dit.conditioning import Recipe
    from llm_dit.conditioning.run import generate_from_recipe
    from llm_dit.config import resolve_config
    from llm_dit.experiments.specs import sweep_spec

    prompt, tokens, with_ref = PROMPT_CASES[case]
    expected = _refusal(lambda: check_prompt_or_caption(prompt, tokens, 1 if with_ref else 0))
    flags = (["--prompt", prompt] if prompt is not None else []) + (
        ["--caption-tokens", str(tokens)] if tokens is not None else []) + (["--image", ref] if with_ref else [])

    # the command line: generate and sweep
    generate = ["generate", "--profile", "tiny", *flags, "--out", str(tmp_path / "o.png")]
    assert _cli_error(generate, capsys) == str(expected)
    assert _cli_error(["sweep", "--profile", "tiny", *flags, "--alphas", "0.3,0.5", "--no-progress",
                       "--out", str(tmp_path / "run")], capsys) == str(expected)
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "run").exists()

    # the library: one picture and a sweep
    cfg = resolve_config("tiny")
    refs = [{"image": ref}] if with_ref else []
    recipe = Recipe.from_dict({"backend": "vl", "references": refs})
    for call in (lambda: generate_from_recipe(cfg, recipe, prompt, caption_tokens=tokens),
                 lambda: sweep_spec(refs, prompt, {}, {"alpha": [0.3, 0.5]}, cfg, caption_tokens=tokens)):
        e = _refusal(call)
        assert (str(e), e.field) == (str(expected), expected.field)

    # the web app: generate and sweeps, with the field named
    body = {"prompt": prompt, "caption_tokens": tokens,
            "recipe": {"backend": "vl", "references": [{"image": upload["id"]}] if with_ref else []}}
    for route, extra in (("/api/generate", {}), ("/api/sweeps", {"axes": {"alpha": ["0.3", "0.5"]}})):
        r = client.post(route, json={**body, **extra})
        assert r.status_code == 422, r.text
        assert r.json() == {"detail": str(expected), "field": expected.field}


def test_prompt_check_passes_what_it_accepts():
    assert check_prompt_or_caption("a cat", None, 0) == "a cat"
    assert check_prompt_or_caption(None, 16, 1) is None
    assert check_prompt_or_caption("", 16, 1) is None  # a blank prompt is no prompt


# -- b. the experiment catalog ----------------------------------------------------------------------


def test_experiment_catalog_is_one_list_for_the_cli_and_the_web(client, capsys):
    from llm_dit.experiments.presets import EXPERIMENTS, catalog

    entries = catalog()
    assert [e["name"] for e in entries] == list(EXPERIMENTS)
    assert client.get("/api/experiments").json() == entries
    assert main(["experiments"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(entries)
    for line, e in zip(lines, entries, strict=True):
        m = re.fullmatch(r"(\S+) +(\d+) cells \((\d+) quick\)  (.+)", line)
        assert m is not None, line
        assert m.groups() == (e["name"], str(e["cells"]), str(e["quick_cells"]), e["summary"])


# -- c. sweep-axis parsing --------------------------------------------------------------------------


def test_sweep_axis_parsing_is_one_function_for_the_cli_and_the_web(ref, tmp_path, capsys, client, upload,
                                                                     monkeypatch):
    from llm_dit.experiments import cells

    assert cells.sweep_axis("generation.steps", " 2, 4") == ("steps", [2, 4])
    assert cells.sweep_axis("token_budget", "none,16") == ("token_budget", [None, 16])
    assert cells.sweep_axis("alpha", [0.3, "0.5"]) == ("alpha", [0.3, 0.5])  # typed values pass as they are

    seen: list[tuple] = []
    real = cells.sweep_axis
    monkeypatch.setattr(cells, "sweep_axis", lambda key, values: seen.append((key, values)) or real(key, values))
    for text in ("0.3,,0.5", "0.3, 1.5"):  # an empty value; a value the field refuses
        expected = _cli_error(["sweep", "--profile", "tiny", "--image", ref, "--prompt", "a cat", "--vary",
                               f"alpha={text}", "--no-progress", "--out", str(tmp_path / "run")], capsys)
        r = client.post("/api/sweeps", json={"prompt": "a cat", "recipe": {"references": [{"image": upload["id"]}]},
                                             "axes": {"alpha": text}})
        assert r.status_code == 422 and r.json() == {"detail": expected, "field": "axes.alpha"}, r.text
        assert seen == [("alpha", text), ("alpha", text)]  # the command line's call, then the web's
        seen.clear()
    # the sweep flags (--alphas, ...) go the same way
    _cli_error(["sweep", "--profile", "tiny", "--image", ref, "--prompt", "a cat", "--alphas", "0.3,,0.5",
                "--out", str(tmp_path / "run")], capsys)
    assert seen == [("alpha", "0.3,,0.5")]


# -- d. the command line's choices come from the types ----------------------------------------------


def _flag_help(command: list[str], flag: str) -> str:
    """The help text of ``flag`` of ``llm-dit COMMAND...`` as the parser holds it."""
    from llm_dit.cli import build_parser

    parser = build_parser()
    for name in command:
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[name]
    return next(a.help for a in parser._actions if flag in a.option_strings)


def _choice_flags():
    """(command, flag, the field's values as its type states them)."""
    import typing

    from llm_dit.conditioning.recipe import Backend, BlendMode, Recipe, Reference, StyleMode, TokenSelection
    from llm_dit.config import (
        EncoderConfig,
        LongPromptMode,
        MetricsConfig,
        RuntimeConfig,
        VLConfig,
        field_choices,
    )

    args = typing.get_args
    recipe = {"--backend": args(Backend), "--tokens": args(TokenSelection), "--blend": args(BlendMode),
              "--style-blend": args(StyleMode), "--budget-mode": args(LongPromptMode),
              "--role": field_choices(Reference, "role")}
    for flag, name in (("--image-tokens", "image_tokens"), ("--text-tokens", "text_tokens"),
                       ("--norm", "normalization_mode"), ("--outlier-mask", "outlier_mask"),
                       ("--resample", "resample"), ("--magnitude", "magnitude")):
        recipe[flag] = args(Recipe.model_fields[name].annotation)
    out = [(["generate"], flag, values) for flag, values in recipe.items()]
    runtime = {"--dtype": "dtype", "--offload": "offload", "--attention": "attention"}
    for command in (["generate"], ["compare"], ["sweep"], ["extract"], ["serve"]):
        out += [(command, flag, args(RuntimeConfig.model_fields[name].annotation)) for flag, name in runtime.items()]
    out += [(["generate"], "--long-prompt-mode", args(EncoderConfig.model_fields["long_prompt_mode"].annotation)),
            (["extract"], "--tokens", args(VLConfig.model_fields["token_selection"].annotation)),
            (["extract"], "--backend", args(VLConfig.model_fields["backend"].annotation)),
            (["sweep"], "--vqa", args(MetricsConfig.model_fields["vqa"].annotation)),
            (["sweep"], "--role", field_choices(Reference, "role"))]
    axes = {"--tokens": TokenSelection, "--norms": Recipe.model_fields["normalization_mode"].annotation,
            "--blends": BlendMode, "--masks": Recipe.model_fields["outlier_mask"].annotation, "--backends": Backend}
    out += [(["sweep"], flag, args(ann), ", ") for flag, ann in axes.items()]
    return [c if len(c) == 4 else (*c, " | ") for c in out]


@pytest.mark.parametrize("command, flag, values, sep", _choice_flags(),
                         ids=lambda v: " ".join(v) if isinstance(v, list) else v if isinstance(v, str) else None)
def test_cli_choices_are_the_types_values(command, flag, values, sep):
    assert len(values) >= 2
    assert sep.join(values) in _flag_help(command, flag)


def test_no_mode_list_is_typed_again_in_the_cli():
    """No list of a field's values (two or more of them in a row) is written out in cli/*.py."""
    from pydantic import BaseModel

    import llm_dit.cli
    from llm_dit.conditioning.recipe import Recipe, Reference
    from llm_dit.config import Config, field_choices

    sections = [f.annotation for f in Config.model_fields.values()]
    models = [Recipe, Reference, *(s for s in sections if isinstance(s, type) and issubclass(s, BaseModel))]
    lists = [field_choices(m, f) for m in models for f in m.model_fields]
    lists = [values for values in lists if len(values) >= 2]
    assert len(lists) >= 15  # the test reads the types it means to
    source = "\n".join(p.read_text() for p in Path(llm_dit.cli.__file__).parent.glob("*.py"))
    for values in lists:
        for sep in (" | ", ", ", "|", ","):
            assert sep.join(map(str, values[:2])) not in source, (values, sep)


# -- e. the web page's presets are the shipped recipe files that --recipe reads ---------------------


def test_shipped_recipes_are_the_web_presets_and_load_with_recipe(client, ref, tmp_path):
    from llm_dit.cli import build_parser
    from llm_dit.cli.conditioning import recipe_from_args
    from llm_dit.conditioning.recipe import SHIPPED, Recipe, read_recipe_file, shipped_recipes
    from llm_dit.config import resolve_config

    names = shipped_recipes()
    assert {"style_transfer", "recommended", "pure_text"} <= set(names)
    offered = client.get("/api/options").json()["presets"]
    assert sorted(offered) == names
    cfg = resolve_config("tiny")
    for name in names:
        web = offered[name]
        expected = Recipe.from_dict(web["recipe"])
        # --recipe NAME and --recipe path/NAME.toml: the recipe the page fills in
        for given in (name, str(SHIPPED / f"{name}.toml")):
            args = build_parser().parse_args(["generate", "--recipe", given, "--prompt", "x", "--out", "o.png"])
            assert recipe_from_args(args, cfg) == expected, (name, given)
        f = read_recipe_file(name)
        assert (f.title, f.note, f.generation, f.caption_tokens) == (
            web["title"], web["note"], web["generation"], web["caption_tokens"])
    assert offered["style_transfer"]["generation"] == {"steps": 4}
    assert offered["recommended"]["caption_tokens"] == 1024
    # they ship in the package (package data), and a copy elsewhere reads the same
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "recipes/*.toml" in pyproject["tool"]["setuptools"]["package-data"]["llm_dit"]
    copy = tmp_path / "mine.toml"
    copy.write_text((SHIPPED / "style_transfer.toml").read_text())
    assert Recipe.load(copy) == Recipe.load("style_transfer")


def test_generate_applies_a_shipped_recipes_suggestions_under_the_flags(ref, tmp_path, capsys, monkeypatch):
    from llm_dit.conditioning import run

    seen = {}

    def stop(prepared, *_, **__):
        seen.update(steps=prepared.config.generation.steps, prompt=prepared.prompt,
                    caption_tokens=prepared.caption_tokens, blend=prepared.recipe.blend, alpha=prepared.recipe.alpha)
        raise InputError("stopped before any model loads")

    monkeypatch.setattr(run, "generate", stop)
    base = ["generate", "--profile", "tiny", "--image", ref, "--out", str(tmp_path / "o.png")]
    assert _cli_error([*base, "--recipe", "style_transfer", "--prompt", "a cat"], capsys) == \
        "stopped before any model loads"
    assert seen == {"steps": 4, "prompt": "a cat", "caption_tokens": None, "blend": "adain_per_dim", "alpha": 0.4}
    _cli_error([*base, "--recipe", "style_transfer", "--prompt", "a cat", "--steps", "2", "--vl-alpha", "0.6"], capsys)
    assert (seen["steps"], seen["alpha"]) == (2, 0.6)  # flags win
    _cli_error([*base, "--recipe", "recommended"], capsys)
    assert (seen["prompt"], seen["caption_tokens"]) == (None, 1024)  # the caption method
    _cli_error([*base, "--recipe", "recommended", "--prompt", "a cat"], capsys)
    assert (seen["prompt"], seen["caption_tokens"]) == ("a cat", None)


def test_an_unknown_recipe_name_says_what_is_shipped(tmp_path, capsys):
    from llm_dit.conditioning.recipe import shipped_recipes

    base = ["generate", "--profile", "tiny", "--prompt", "a cat", "--out", str(tmp_path / "o.png")]
    assert "did you mean style_transfer?" in _cli_error([*base, "--recipe", "style_transfr"], capsys)
    assert f"shipped: {', '.join(shipped_recipes())}" in _cli_error([*base, "--recipe", "zzz"], capsys)
    assert _cli_error([*base, "--recipe", str(tmp_path / "none.toml")], capsys) == \
        f"recipe file {tmp_path / 'none.toml'} does not exist"
