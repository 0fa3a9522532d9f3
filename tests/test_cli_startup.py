"""Start-up of the command line: the commands that load no model import no tensor library, and there
is one version string (pyproject.toml's, through the package metadata)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

import llm_dit

SRC = Path(llm_dit.__file__).resolve().parents[1]
ROOT = SRC.parent
HEAVY = ("torch", "diffusers", "transformers", "matplotlib", "PIL")

PROBE = f"""
import contextlib, io, json, sys
from llm_dit.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    rc = main(sys.argv[1:])
print(json.dumps({{"rc": rc, "out": out.getvalue(), "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def _probe(*args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [["--help"], ["experiments"], ["profiles"], ["config", "--profile", "tiny"],
                                  ["--version"], ["-q", "config", "-v"]], ids=" ".join)
def test_commands_without_models_import_no_tensor_library(args):
    got = _probe(*args)
    assert got["rc"] == 0 and got["out"].strip()
    assert got["heavy"] == [], f"llm-dit {' '.join(args)} imported {got['heavy']}"


def test_reading_a_recipe_imports_no_torch():
    code = ("import sys; from llm_dit.conditioning.recipe import Recipe; from llm_dit.experiments.presets import "
            "EXPERIMENTS; Recipe.from_dict({'blend': 'adain'}); "
            "print([m for m in ('torch', 'PIL') if m in sys.modules])")
    env = dict(os.environ, PYTHONPATH=str(SRC))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_the_mode_names_match_their_registries():
    from llm_dit import modes
    from llm_dit.conditioning.blend import BLEND_MODES, STYLE_MODES
    from llm_dit.vl.normalize import NORMALIZATION_MODES

    assert tuple(BLEND_MODES) == modes.BLEND_MODE_NAMES
    assert STYLE_MODES == modes.STYLE_MODES and set(STYLE_MODES) <= set(BLEND_MODES)
    assert NORMALIZATION_MODES == modes.NORMALIZATION_MODES


def test_one_version_string(capsys):
    from importlib import metadata

    from llm_dit.cli import main
    from llm_dit.provenance import versions

    try:
        installed = metadata.version("llm-dit")
    except metadata.PackageNotFoundError:
        installed = "0+unknown"
    assert llm_dit.__version__ == installed and versions()["llm-dit"] == installed
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"llm-dit {installed}\n"
    # pyproject.toml holds the one literal: no module spells it again
    literal = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    spelled = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
               if re.search(rf"""["']{re.escape(literal)}["']""", p.read_text(encoding="utf-8"))]
    assert spelled == [], spelled
