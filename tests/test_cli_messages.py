"""What the command line says: one error prefix, "did you mean", the '=' hint for values with a leading
minus, -v/-q anywhere on the line, a closed pipe, a hub id without weights, a refused run folder that
names what differs, and progress while captioning and fitting an adapter."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import llm_dit
from llm_dit.cli import main
from llm_dit.errors import InputError

SRC = Path(llm_dit.__file__).resolve().parents[1]


def _refused(args, capsys, code=2) -> str:
    assert main(args) == code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("llm-dit: error: "), err
    assert "llm-dit: error: llm-dit" not in err and "Traceback" not in err
    return lines[0].removeprefix("llm-dit: error: ")


@pytest.mark.parametrize("args, says", [
    (["config", "--stesp", "3"], "unrecognized arguments: --stesp 3 (did you mean '--steps'?)"),
    (["stats", "reference", "--layr", "3", "--out", "x.safetensors"], "(did you mean '--layer'?)"),
    (["generat"], "invalid choice: 'generat'"),
    (["generat"], "(did you mean 'generate'?)"),
    (["config", "--profile", "tine"], "unknown profile 'tine'; available: 12gb, 16gb, default, low_vram, rtx4090, tiny "
                                      "(did you mean 'tiny'?)"),
    (["config", "--offload", "modle"], "(got 'modle'; did you mean 'model'?)"),
    (["config", "--long-prompt-mode", "atention_pool"], "did you mean 'attention_pool'?"),
    (["compare", "--experiment", "alpha_swep", "--out", "x"], "did you mean alpha_sweep?"),
    (["extract", "--layers", "-6,-2", "--out", "x.safetensors"],
     "argument --layers: expected one argument: a value that starts with '-' goes after '=', as in --layers=-6,-2"),
    (["config", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_usage_errors_say_what_was_meant(args, says, capsys):
    line = _refused(args, capsys)
    assert says in line
    if args == ["config", "--bogus"]:  # nothing close: no guess
        assert "did you mean" not in line


def test_recipe_modes_suggest_the_closest(tmp_path, capsys):
    Image.new("RGB", (64, 64)).save(tmp_path / "ref.png")
    line = _refused(["generate", "--profile", "tiny", "--prompt", "a", "--out", str(tmp_path / "x.png"),
                     "--image", str(tmp_path / "ref.png"), "--blend", "interpolat"], capsys)
    assert "recipe field 'blend'" in line and "(got 'interpolat'; did you mean 'interpolate'?)" in line
    assert not (tmp_path / "x.png").exists()


def test_library_modes_suggest_the_closest():
    import torch

    from llm_dit.conditioning.blend import blend
    from llm_dit.conditioning.schedule import parse_schedule
    from llm_dit.vl.normalize import normalize

    x = torch.zeros(2, 4)
    for call, says in ((lambda: blend("adian", x, x, 0.5), "unknown blend mode 'adian'; choose one of interpolate, "),
                       (lambda: normalize(x, "per-dim"), "unknown normalization 'per-dim'; choose one of none, "),
                       (lambda: parse_schedule("linaer:1:0"), "unknown schedule 'linaer'; choose one of constant")):
        with pytest.raises(InputError) as e:
            call()
        assert str(e.value).startswith(says) and "(did you mean '" in str(e.value), str(e.value)


# -- -v / -q ------------------------------------------------------------------------------------


@pytest.fixture
def talking_config(monkeypatch):
    """``llm-dit config`` replaced by a command that logs at each level through the library's logger."""
    from llm_dit.cli import generate

    def talk(args):
        log = logging.getLogger("llm_dit.some.module")
        log.debug("a detail")
        log.info("a progress line")
        log.warning("a warning")
        print("the result")
        return 0

    monkeypatch.setattr(generate, "cmd_config", talk)


@pytest.mark.parametrize("args, shown", [
    (["config"], ["a progress line", "warning: a warning"]),
    (["-v", "config"], ["a detail", "a progress line", "warning: a warning"]),
    (["config", "--verbose"], ["a detail", "a progress line", "warning: a warning"]),
    (["config", "-q"], ["warning: a warning"]),
    (["--quiet", "config"], ["warning: a warning"]),
    (["-qq", "config"], []),
])
def test_verbosity_flags_anywhere_set_the_llm_dit_level(talking_config, capsys, args, shown):
    level = logging.getLogger("llm_dit").level
    assert main(args) == 0
    cap = capsys.readouterr()
    assert cap.out == "the result\n"  # results stay on stdout whatever the level
    assert [ln.removeprefix("debug: ") for ln in cap.err.splitlines()] == shown
    assert logging.getLogger("llm_dit").level == level  # main leaves the logger as it found it


def test_split_verbosity_keeps_arguments_after_double_dash():
    from llm_dit.cli.logs import split_verbosity

    assert split_verbosity(["-q", "generate", "-v", "-v", "--", "-q"]) == (["generate", "--", "-q"], logging.DEBUG)


# -- pipes, hub ids, run folders -------------------------------------------------------------------


def test_a_closed_pipe_ends_quietly():
    env = dict(os.environ, PYTHONPATH=str(SRC))
    p = subprocess.Popen([sys.executable, "-m", "llm_dit", "config"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env)
    p.stdout.close()  # as `| head -0`: the reader is gone before the first line
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0, err
    assert err == "", err


def test_a_hub_id_without_weights_suggests_the_tiny_profile(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(SRC), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "llm_dit", "generate", "--prompt", "a cat", "--out",
                        str(tmp_path / "x.png"), "--z-image", "no-such-org/no-such-model"],
                       capture_output=True, text=True, env=env, timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "|" not in ln]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("llm-dit: error: could not load Z-Image from 'no-such-org/no-such-model': ")
    assert lines[0].endswith("; no weights here? try --profile tiny")


def test_the_weights_hint_only_for_hub_ids_that_lack_weights():
    from llm_dit.models.loading import load_failure

    offline = OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    assert str(load_failure("Qwen3-VL", "Qwen/Qwen3-VL-4B-Instruct", offline)).endswith("try --profile tiny")
    broken = ValueError("size mismatch for weight")
    assert "tiny" not in str(load_failure("Qwen3-VL", "Qwen/Qwen3-VL-4B-Instruct", broken))
    assert "tiny" not in str(load_failure("Qwen3-VL", "/models/missing", offline))


def _run_folder(out: Path, plan: dict) -> None:
    out.mkdir()
    (out / "run.json").write_text(json.dumps({**plan, "run_key": "old", "sessions": []}))
    (out / "cells").mkdir()
    (out / "cells" / "alpha0.json").write_text("{}")


PLAN = {"name": "alpha_sweep", "prompt": "a cat", "images": ["/r.png"],
        "cells": [{"name": "alpha0", "params": {"alpha": 0.0}, "recipe": {"alpha": 0.0}},
                  {"name": "alpha1", "params": {"alpha": 1.0}, "recipe": {"alpha": 1.0}}],
        "grids": [], "config": {"generation": {"steps": 9, "seed": 42, "width": 64, "height": 64},
                                "models": {"z_image": "tiny", "vl": "tiny"}, "metrics": {"vqa": "auto"},
                                "runtime": {"device": "cuda:0", "batch_size": 1}, "vl": {"cache_gb": 4.0}}}


def test_a_refused_run_folder_names_the_settings_that_differ(tmp_path):
    from llm_dit.experiments import folder

    _run_folder(tmp_path / "r", PLAN)
    new = json.loads(json.dumps(PLAN))
    new["config"]["generation"]["seed"] = 7
    new["cells"][1]["recipe"]["alpha"] = 0.5
    new["config"]["runtime"].update(batch_size=4, device="cuda:1")  # speed and GPU: not the run's identity
    new["config"]["metrics"]["vqa"] = "off"
    with pytest.raises(InputError) as e:
        folder.prepare(tmp_path / "r", "new", new)
    assert str(e.value) == (f"{tmp_path / 'r'} holds a different run (alpha_sweep; settings that differ: "
                            "cells[alpha1].recipe.alpha: 1.0 -> 0.5, config.generation.seed: 42 -> 7); give a new "
                            "--out or remove it")


def test_a_refused_run_folder_with_the_same_settings_names_the_files(tmp_path):
    from llm_dit.experiments import folder

    _run_folder(tmp_path / "r", PLAN)
    many = {**PLAN, "prompt": "a dog", "name": "x", "images": ["/s.png"], "cells": []}
    with pytest.raises(InputError, match=r"settings that differ: name: 'alpha_sweep' -> 'x', prompt: 'a cat' -> "
                                         r"'a dog', images.0: '/r.png' -> '/s.png' and 1 more\)"):
        folder.prepare(tmp_path / "r", "new", many)
    with pytest.raises(InputError, match="the same settings, but the reference images' contents differ"):
        folder.prepare(tmp_path / "r", "new", PLAN)


# -- progress -------------------------------------------------------------------------------------------


def test_progress_lines_at_tenths_and_none_when_quiet(caplog):
    from llm_dit.progress import progress

    log = logging.getLogger("llm_dit.test_progress")
    with caplog.at_level(logging.INFO, logger="llm_dit"):
        assert list(progress(range(20), 20, "fit", "prompts", log)) == list(range(20))
    assert [r.getMessage() for r in caplog.records] == [f"fit: {i}/20 prompts" for i in range(2, 21, 2)]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llm_dit"):
        assert list(progress(range(20), 20, "fit", "prompts", log)) == list(range(20))
    assert caplog.records == []


def test_captioning_and_fitting_an_adapter_show_progress(tmp_path, capsys):
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "ref.png")
    assert main(["caption", "--profile", "tiny", "--image", str(tmp_path / "ref.png"), "--out",
                 str(tmp_path / "c.txt"), "--max-new-tokens", "8", "--temperature", "0"]) == 0
    err = capsys.readouterr().err
    assert "caption: attempt 1/3, up to 8 new tokens (temperature 0)" in err
    assert "caption: " in err.split("caption: attempt 1/3", 1)[1]  # the tokens it got
    (tmp_path / "prompts.txt").write_text("a red house by the sea\na cat on a chair\na bowl of fruit\n")
    assert main(["stats", "adapter", "--profile", "tiny", "--prompts", str(tmp_path / "prompts.txt"),
                 "--out", str(tmp_path / "a.safetensors")]) == 0
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if ln.startswith("adapter: states of")] == \
        [f"adapter: states of: {i}/3 prompts" for i in (1, 2, 3)]
    assert "adapter: ridge fit on " in err
    assert main(["-q", "stats", "adapter", "--profile", "tiny", "--prompts", str(tmp_path / "prompts.txt"),
                 "--out", str(tmp_path / "b.safetensors")]) == 0
    assert "adapter:" not in capsys.readouterr().err
