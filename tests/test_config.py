import pytest
from pydantic import ValidationError

from llm_dit.config import Config, GenerationConfig, NotesVL, notes_unused, notes_vl, profile_names, resolve_config
from llm_dit.errors import ConfigError


def test_shipped_profiles_resolve_and_validate():
    assert {"default", "rtx4090", "low_vram", "tiny"} <= set(profile_names())
    for name in profile_names():
        assert resolve_config(name).profile == name


def test_default_profile_is_z_image_turbo():
    c = resolve_config("default")
    assert c.models.z_image == "Tongyi-MAI/Z-Image-Turbo"
    assert c.models.vl == "Qwen/Qwen3-VL-4B-Instruct"
    assert (c.runtime.device, c.runtime.dtype) == ("auto", "auto")
    g = c.generation
    assert (g.steps, g.guidance_scale, g.width, g.height, g.shift) == (9, 0.0, 1024, 1024, 3.0)
    assert (c.encoder.hidden_layer, c.encoder.max_length) == (-2, 512)


def test_defaults_agree_everywhere():
    # The default profile, the dataclass defaults and the CLI (which only overrides what is passed)
    # must not disagree: upstream had three different hidden-layer defaults.
    shipped = resolve_config("default").to_dict()
    built_in = Config().to_dict()
    assert shipped == built_in
    from llm_dit.cli import build_parser

    args = build_parser().parse_args(["generate", "--prompt", "x", "--out", "x.png"])
    assert all(v is None for k, v in vars(args).items() if "." in k)


def test_profiles_inherit_and_override():
    tiny = resolve_config("tiny")
    assert (tiny.runtime.device, tiny.runtime.dtype, tiny.models.z_image) == ("cpu", "float32", "tiny")
    assert tiny.generation.steps == 9  # inherited from default
    low = resolve_config("low_vram")
    assert low.runtime.offload == "group_block" and low.runtime.device == "cuda"


def test_user_file_extends_and_defines_profiles(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text(
        '[tiny.generation]\nsteps = 3\n\n[mine]\ninherits = "tiny"\n[mine.encoder]\nhidden_layer = -3\n'
    )
    assert resolve_config("tiny", f).generation.steps == 3
    mine = resolve_config("mine", f)
    assert mine.encoder.hidden_layer == -3 and mine.generation.steps == 3 and mine.models.z_image == "tiny"
    assert "mine" in profile_names(f)


def test_flags_override_file_and_profile(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[tiny.generation]\nsteps = 3\n")
    c = resolve_config("tiny", f, {"generation.steps": 5, "generation.seed": None})
    assert c.generation.steps == 5 and c.generation.seed == 42


def test_float_fields_accept_integers():
    assert resolve_config("default", overrides={"generation.guidance_scale": 2}).generation.guidance_scale == 2.0


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"generation.steps": 0}, "'generation.steps'"),
        ({"generation.width": 1000}, "multiple of 16"),
        ({"generation.stpes": 3}, "allowed keys here: steps"),
        ({"encoder.long_prompt_mode": "squash"}, "'truncate', 'interpolate', 'pool' or 'attention_pool'"),
        ({"encoder.max_length": 1505}, "1504"),
        ({"generation.steps": "9"}, "valid integer"),
        ({"generation.steps": True}, "valid integer"),
        ({"runtime.device": "gpu"}, "auto, cpu, cuda"),
        ({"generation.strength": 1.5}, "'generation.strength'"),
        ({"bogus.key": 1}, "unknown config key 'bogus'"),
    ],
)
@pytest.mark.reliability('bad input', 'config values: steps 0, width 1000, a misspelt key, an unknown mode, '
                         'max_length 1505, a string and a bool for an int, an unknown device, strength 1.5, '
                         'an unknown section',
                         'ConfigError in one line naming the key')
def test_invalid_values_give_one_line_naming_the_key(overrides, needle):
    with pytest.raises(ConfigError) as e:
        resolve_config("default", overrides=overrides)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError,
                       match="unknown profile 'nope'; available: 12gb, 16gb, default, low_vram, rtx4090, tiny"):
        resolve_config("nope")


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config("default", tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[default\nsteps = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_config("default", bad)
    loop = tmp_path / "loop.toml"
    loop.write_text('[a]\ninherits = "b"\n[b]\ninherits = "a"\n')
    with pytest.raises(ConfigError, match="loops"):
        resolve_config("a", loop)
    flat = tmp_path / "flat.toml"
    flat.write_text("steps = 3\n")
    with pytest.raises(ConfigError, match="profile table"):
        resolve_config("default", flat)


@pytest.mark.reliability("bad input", "config files whose tables make no valid profile, the selected profile "
                         "another: [profiles.tiny], a misspelt key in an unused profile, "
                         "an unused profile inheriting an unknown one", "one line naming the file and the table")
@pytest.mark.parametrize("text, table", [
    ("[profiles.tiny]\nsteps = 4\n", "profiles"),
    ('[mine]\ninherits = "tiny"\n[mine.generation]\nstepz = 4\n', "mine"),
    ('[mine]\ninherits = "tinny"\n', "mine"),
])
def test_every_table_of_a_config_file_is_validated(tmp_path, text, table):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        resolve_config("tiny", path)
    assert str(e.value).startswith(f"config file {path}: [{table}] is not a valid profile (")
    assert "\n" not in str(e.value)
    good = tmp_path / "good.toml"  # a partial profile and an extended shipped one are valid
    good.write_text('[mine]\ninherits = "tiny"\n[mine.generation]\nsteps = 4\n[tiny.generation]\nseed = 3\n')
    assert resolve_config("tiny", good).generation.seed == 3
    assert resolve_config("mine", good).generation.steps == 4


def test_round_trip_through_metadata():
    c = resolve_config("tiny", overrides={"generation.seed": 7, "encoder.hidden_layer": -3})
    assert Config.from_dict(c.to_dict()) == c
    assert c.replace(**{"generation.steps": 2}).generation.steps == 2
    with pytest.raises(ConfigError):
        c.replace(**{"generation.steps": -1})


def test_config_is_frozen():
    g = GenerationConfig()
    with pytest.raises(ValidationError, match="frozen"):
        g.steps = 3


def test_vl_defaults_agree_with_the_python_api():
    import inspect

    from llm_dit.vl import VLEmbeddingExtractor
    from llm_dit.vl.caption import CaptionRequest
    from llm_dit.vl.tokens import resolve_token_selection

    c = resolve_config("default").vl
    extract = inspect.signature(VLEmbeddingExtractor.extract).parameters
    # None: the backend's layer, the profile's for vl and splice, D-OPSD's for dopsd
    from llm_dit.config import DEFAULT_VL_LAYER, DOPSD_DEFAULTS

    assert extract["hidden_layer"].default is None and [DEFAULT_VL_LAYER] == c.layers and DOPSD_DEFAULTS["layer"] == -2
    from llm_dit.config import DEFAULT_MAX_PIXELS
    from llm_dit.vl.extract import BACKEND_BUDGET

    # unset: the backend's budget, the profile's for vl and splice (checked on an extractor in test_dopsd.py)
    assert extract["max_pixels"].default == BACKEND_BUDGET and DEFAULT_MAX_PIXELS == c.max_pixels
    assert inspect.signature(VLEmbeddingExtractor.generate).parameters["max_pixels"].default == c.max_pixels
    assert CaptionRequest().max_pixels == c.max_pixels
    assert extract["pool"].default == c.pool and resolve_token_selection() == c.token_selection


def test_the_notes_config_files_are_understood(tmp_path):
    # seed 003's config.toml: the text encoder's layer and length are llm-dit's own settings
    seed003 = tmp_path / "003.toml"
    seed003.write_text("[default.encoder]\nhidden_layer = -6\nmax_length = 1400\n")
    cfg = resolve_config("default", seed003)
    assert (cfg.encoder.hidden_layer, cfg.encoder.max_length) == (-6, 1400)
    # seed 004's [vl] table (beside the profiles, not one): hidden_layer is the VL layer of any profile
    seed004 = tmp_path / "004.toml"
    seed004.write_text('[vl]\nhidden_layer = -4       # Most stable\nalpha = 0.5\nmethod = "caption"\n'
                       "caption_tokens = 1024\n")
    assert resolve_config("tiny", seed004).vl.layers == [-4]
    assert resolve_config("default", seed004, {"vl.layers": [-2]}).vl.layers == [-2]  # flags win
    assert notes_vl(seed004) == NotesVL(hidden_layer=-4, alpha=0.5, method="caption", caption_tokens=1024)
    assert "vl" not in profile_names(seed004) and notes_vl(None) == NotesVL()
    # alpha, method, caption_tokens are read by sweep and the caption scripts; others name them
    assert notes_unused(seed004) == (f"config file {seed004}: [vl] alpha = 0.5 is a default of llm-dit sweep and the "
                                     "notes' caption scripts only; this command would not use it (llm-dit generate "
                                     "takes --vl-alpha A)")


@pytest.mark.reliability("bad input", "the research notes' config keys llm-dit has no setting for, or out of range: "
                         "seed 003's [default.vl] device, keys and tables the notes' [vl] table does not take, "
                         "[vl] values out of range", "one line naming the file, the key and what llm-dit has instead")
@pytest.mark.parametrize("text, message", [
    ('[default.encoder]\nhidden_layer = -6\n[default.vl]\ndevice = "cpu"\n',
     '[default.vl] device is not an llm-dit setting: llm-dit runs Qwen3-VL on runtime.device, as every model '
     '([default.runtime] device = "cpu"); a one-shot run frees it before Z-Image loads, and [default.runtime] '
     'keep_models = "one" frees it in a server'),
    ('[vl]\nhidden_layer = -6\ndevice = "cpu"\n', "[vl] holds the key 'device'; the notes' [vl] table takes "
     "hidden_layer, alpha, method, caption_tokens (a profile's Qwen3-VL settings go in [NAME.vl]"),
    ("[vl]\nlayers = [-6, -8]\n", "[vl] holds the key 'layers'"),
    ("[vl]\n[vl.generation]\nsteps = 4\n", "[vl] holds a table; the notes' [vl] table takes"),
    ("[vl]\nalpha = 1.5\n", "[vl] key 'alpha': input should be less than or equal to 1 (got 1.5)"),
    ('[vl]\nmethod = "aligned"\n', "[vl] key 'method': input should be 'caption' or 'generic'"),
    ("[vl]\ncaption_tokens = 4000\n", "[vl] key 'caption_tokens': input should be less than or equal to 1504"),
    ("vl = 3\n", "[vl] must be a table"),
])
def test_notes_keys_llm_dit_lacks_are_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        resolve_config("tiny", path)
    assert str(e.value).startswith(f"config file {path}: {message}") and "\n" not in str(e.value), str(e.value)
