"""The Recipe (validation, TOML/JSON round trips, resolution) and alpha schedules."""

from __future__ import annotations

import math

import pytest

from llm_dit.conditioning import Recipe, Reference, parse_schedule
from llm_dit.conditioning.schedule import Schedule
from llm_dit.config import resolve_config
from llm_dit.errors import ConfigError, InputError, LlmDitError

# -- schedules ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 9])
def test_schedule_formulas(n):
    def p(i):
        return i / (n - 1) if n > 1 else 0.0

    assert parse_schedule("0.3").alphas(n) == [0.3] * n
    assert parse_schedule("constant:0.3").alphas(n) == [0.3] * n
    for i, a in enumerate(parse_schedule("linear:0.8:0.2").alphas(n)):
        assert a == pytest.approx(0.8 - 0.6 * p(i))
    for i, a in enumerate(parse_schedule("cosine:0.8:0.2").alphas(n)):
        assert a == pytest.approx(0.2 + 0.6 * (0.5 + 0.5 * math.cos(math.pi * p(i))))
    step = parse_schedule("step:0.9:0.1:0.5").alphas(n)
    assert step == [0.9 if i / n < 0.5 else 0.1 for i in range(n)]
    assert parse_schedule("step:1:0:0.34").alphas(3) == [1, 1, 0]  # 0.34 of 3 steps: steps 0 and 1


@pytest.mark.parametrize("f,n,first", [(0.28, 25, 7), (0.14, 50, 7), (0.56, 25, 14), (0.5, 9, 5), (0.0, 4, 0),
                                        (1.0, 4, 4), (0.34, 3, 2)])
def test_step_schedules_count_steps_exactly(f, n, first):
    """a0 on the first ceil(f N) steps, with f N computed exactly (0.28 * 25 is 7.000000000000001 in floats)."""
    assert parse_schedule(f"step:1:0:{f}").alphas(n) == [1.0] * first + [0.0] * (n - first)


def test_schedule_ends_and_list():
    a = parse_schedule("cosine:1:0").alphas(9)
    assert a[0] == pytest.approx(1) and a[-1] == pytest.approx(0) and a[4] == pytest.approx(0.5)
    assert parse_schedule("list:0.9,0.5,0.1").alphas(3) == [0.9, 0.5, 0.1]
    assert parse_schedule("0.9,0.5,0.1").alphas(3) == [0.9, 0.5, 0.1]
    for spec in ("linear:0.8:0.2", "step:0.9:0.1:0.25", "list:0.1,0.2", "constant:0.3"):
        assert parse_schedule(parse_schedule(spec).spec()) == parse_schedule(spec)


@pytest.mark.parametrize("spec,message", [
    ("linear:0.8", "linear takes 2 number(s)"),
    ("wave:1", "unknown schedule 'wave'; choose one of constant, linear, cosine, step, list"),
    ("linear:1.2:0", "less than or equal to 1"),
    ("list:0.5,nan", "must lie in [0, 1]"),
    ("step:1:0:2", "less than or equal to 1"),
    ("linear:a:b", "is not valid"),
])
def test_bad_schedules(spec, message):
    with pytest.raises(InputError) as e:
        parse_schedule(spec)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_list_must_cover_the_steps():
    s = parse_schedule("list:0.5,0.4")
    with pytest.raises(InputError, match="lists 2 values but the run has 9 steps"):
        s.check_steps(9)
    with pytest.raises(ConfigError, match="a step schedule needs end, at"):
        Recipe.from_dict({"schedule": {"kind": "step", "start": 0.5}})


# -- the recipe ---------------------------------------------------------------------------------


def full_recipe(tmp_path) -> Recipe:
    return Recipe(
        backend="splice",
        references=[Reference(image=str(tmp_path / "a.png"), weight=2.0),
                    Reference(image=str(tmp_path / "b.png"), weight=0.5, role="style")],
        vl_text="Describe: {prompt}", hidden_layer=-8, token_selection="image_no_markers", pool=2,
        vl_intra_blend_ratio=0.3, dual_extraction=True, image_layer=-5, text_layer=-15,
        normalization_mode="per_dim", outlier_mask="clamp", outlier_threshold=5.0, token_budget=256,
        blend="adain", schedule=parse_schedule("cosine:0.9:0.1"), magnitude="match_rms", style_blend="style_gem",
        style_alpha=0.2, gem_p=4.0, target_std=61.0,
    )


def test_recipe_round_trips_through_toml_and_json(tmp_path):
    r = full_recipe(tmp_path)
    for name in ("r.toml", "r.json"):
        path = r.save(tmp_path / name)
        assert Recipe.load(path) == r
    assert Recipe.from_dict(r.to_dict()) == r
    assert Recipe.load(r.save(tmp_path / "d.toml")) == r
    plain = Recipe()
    assert Recipe.load(plain.save(tmp_path / "p.toml")) == plain  # None fields survive TOML (no null)


def test_recipe_file_paths_are_relative_to_the_file_and_metadata_files_load(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "r.toml").write_text('blend = "adain"\nschedule = "linear:0.8:0.2"\n'
                                             '[[references]]\nimage = "ref.png"\n')
    r = Recipe.load(tmp_path / "sub" / "r.toml")
    assert r.references[0].image == str(tmp_path / "sub" / "ref.png")
    assert r.schedule == Schedule(kind="linear", start=0.8, end=0.2)
    meta = tmp_path / "image.json"
    meta.write_text('{"prompt": "x", "recipe": {"blend": "concat", "alpha": 0.5}}')
    assert Recipe.load(meta).blend == "concat"


def test_recipe_resolves_unset_fields_from_the_config():
    cfg = resolve_config("tiny", overrides={"vl.layers": [-3, -2], "vl.token_selection": "text_only", "vl.pool": 2})
    r = Recipe().resolve(cfg)
    assert (r.hidden_layer, r.token_selection, r.pool, r.max_pixels) == (-3, "text_only", 2, cfg.vl.max_pixels)
    assert Recipe(hidden_layer=-8).resolve(cfg).hidden_layer == -8
    assert r.backend == "vl" and Recipe().resolve(cfg.replace(**{"vl.backend": "splice"})).backend == "splice"
    assert Recipe(backend="text").resolve(cfg.replace(**{"vl.backend": "splice"})).backend == "text"
    assert Recipe().vl_text_for("a cat") == "a cat" and Recipe(vl_text="").vl_text_for("a cat") is None
    assert Recipe(vl_text="Draw {prompt}.").vl_text_for("a cat") == "Draw a cat."


@pytest.mark.parametrize("data,message", [
    ({"alpha": 1.5}, "recipe field 'alpha': input should be less than or equal to 1 (got 1.5)"),
    ({"alpha": -0.1}, "greater than or equal to 0"),
    ({"blend": "mix"}, "'interpolate', 'linear', 'concat', 'replace', 'adain', 'adain_per_dim', 'style_delta'"),
    ({"normalization_mode": "perdim"}, "'none', 'global', 'per_dim', 'hybrid', 'whiten' or 'cross'"),
    ({"outlier_mask": "cut"}, "'none', 'zero', 'clamp', 'scale' or 'restore'"),
    ({"style_blend": "interpolate"}, "recipe field 'style_blend'"),
    ({"references": [{"image": "a.png", "weight": 1.0}, {"image": "b.png", "weight": -1.0}]},
     "the weights of the content references sum to zero"),
    ({"references": [{"image": "a.png", "weight": float("nan")}]}, "references.0.weight"),
    ({"references": [{"image": "a.png", "role": "layout"}]}, "'content' or 'style'"),
    ({"backend": "text", "references": [{"image": "a.png"}]}, "backend 'text' takes no reference images"),
    ({"dual_extraction": True}, "dual_extraction mixes an image part and a text part"),
    ({"image_layer": -5}, "set vl_intra_blend_ratio too"),
    ({"target_std": -3.0}, "'target_std': must be a finite number in (0, 10000]"),
    ({"target_std": float("inf")}, "'target_std': must be a finite number in (0, 10000]"),
    ({"references": None}, "recipe field 'references'"),
    ({"references": 5}, "recipe field 'references'"),
    ({"token_budget": 2000}, "less than or equal to 1504"),
    ({"alpha": "0.5"}, "valid number"),
    ({"colour": 1}, "unknown recipe field 'colour'; allowed keys here: backend, references"),
    ({"schedule": "linear:0.5"}, "linear takes 2 number(s)"),
])
def test_bad_recipes_give_one_line(data, message):
    with pytest.raises(LlmDitError) as e:
        Recipe.from_dict(data)
    assert message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_integers_are_numbers_in_toml(tmp_path):
    (tmp_path / "r.toml").write_text("alpha = 1\ntarget_std = 61\n")
    r = Recipe.load(tmp_path / "r.toml")
    assert r.alpha == 1.0 and r.target_std == 61.0


def test_unreadable_recipe_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        Recipe.load(tmp_path / "none.toml")
    (tmp_path / "null.json").write_text('{"references": null}')
    with pytest.raises(ConfigError, match="recipe field 'references'"):
        Recipe.load(tmp_path / "null.json")
    (tmp_path / "bad.toml").write_text("alpha = = 1")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        Recipe.load(tmp_path / "bad.toml")
