"""Resuming runs: skipped cells, refused folders, failures, SIGKILL, changed files, model mistakes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from run_args import PROMPT, SMALL, compare_args

from llm_dit.cli import main


def test_rerun_skips_finished_cells_and_refuses_a_different_run(refs, tmp_path, capsys):
    out = tmp_path / "r"
    args = compare_args("alpha_sweep", refs, out)
    assert main(args) == 0
    capsys.readouterr()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png") if not p.name.startswith(("comparison",))}
    assert main(args) == 0
    assert "4 cells: 4 already done, 0 picture(s) generated" in capsys.readouterr().out
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("*.png") if p.name in stamps}
    assert main([*args, "--seed", "7"]) == 2
    assert "holds a different run (alpha_sweep; settings that differ: config.generation.seed: 42 -> 7)" \
        in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(compare_args("alpha_sweep", refs, tmp_path / "other")) == 2
    assert "not empty and holds no llm-dit run" in capsys.readouterr().err


@pytest.mark.reliability('faults', 'what a power cut can leave: a PNG of zeros, a cut PNG, a record of zeros',
                         'exactly those cells made again, the others untouched')
def test_what_a_power_cut_can_leave_is_made_again(refs, tmp_path, capsys):
    """A cell's files are not flushed to disk one by one: a picture or record that did not reach it
    (zeros of the right length, or cut short) must fail the resume check, and only those cells rerun."""
    out = tmp_path / "r"
    args = compare_args("alpha_sweep", refs, out)
    assert main(args) == 0
    capsys.readouterr()
    recs = sorted((out / "cells").glob("*.json"))
    assert len(recs) == 4
    pictures = [out / json.loads(r.read_text())["file"] for r in recs]
    pictures[0].write_bytes(bytes(pictures[0].stat().st_size))  # data blocks never written
    data = pictures[1].read_bytes()
    pictures[1].write_bytes(data[: len(data) - 200])  # cut short
    recs[2].write_bytes(bytes(recs[2].stat().st_size))  # the record itself lost
    kept = pictures[3].read_bytes()
    assert main(args) == 0
    assert "4 cells: 1 already done, 3 picture(s) generated" in capsys.readouterr().out
    for p in pictures:
        with Image.open(p) as im:
            im.verify()
    assert pictures[3].read_bytes() == kept


def test_a_record_from_before_fingerprints_is_made_again(refs, tmp_path, capsys):
    """Records written before the fingerprint of the conditioning was recorded (by versions that could
    give a vl cell the splice extraction of the same chat) are not trusted on resume."""
    out = tmp_path / "old"
    args = compare_args("splice_vs_vl", refs, out)
    assert main(args) == 0
    capsys.readouterr()
    old = out / "cells" / "vl_full.json"
    rec = json.loads(old.read_text())
    del rec["fingerprint"]
    old.write_text(json.dumps(rec))
    assert main(args) == 0
    assert "5 cells: 4 already done, 1 picture(s) generated" in capsys.readouterr().out
    assert "fingerprint" in json.loads(old.read_text())


@pytest.mark.reliability('faults', 'a cell that raises',
                         'recorded with its error, the run goes on and exits 1 naming it; a re-run retries it')
def test_a_failing_cell_is_recorded_and_the_run_goes_on(refs, tmp_path, capsys, monkeypatch):
    import llm_dit.experiments.pictures as R

    real = R.build_conditioning

    def flaky(recipe, *a, **k):
        if recipe.alpha == 0.5:
            raise RuntimeError("simulated failure")
        return real(recipe, *a, **k)

    monkeypatch.setattr(R, "build_conditioning", flaky)
    out = tmp_path / "r"
    assert main(compare_args("alpha_sweep", refs, out)) == 1
    cap = capsys.readouterr()
    errors = [ln for ln in cap.err.splitlines() if ln.startswith("llm-dit: error")]
    assert len(errors) == 1 and "1 of 4 cells failed (alpha0.5)" in errors[0] and "Traceback" not in cap.err
    assert "alpha0.5: FAILED: RuntimeError: simulated failure" in cap.err  # said when it happened
    meta = json.loads((out / "metadata.json").read_text())
    failed = [r for r in meta["results"] if r["status"] == "failed"]
    assert [r["name"] for r in failed] == ["alpha0.5"] and "simulated failure" in failed[0]["error"]
    assert meta["counts"] == {"done": 3, "failed": 1, "pending": 0} and not (out / "alpha0.5.png").exists()
    monkeypatch.setattr(R, "build_conditioning", real)
    assert main(compare_args("alpha_sweep", refs, out)) == 0  # the failed cell is retried
    assert "4 cells: 3 already done, 1 picture(s) generated" in capsys.readouterr().out


def _count(folder: Path) -> int:
    return len(list((folder / "cells").glob("*.json"))) if (folder / "cells").is_dir() else 0


@pytest.mark.reliability('faults', 'SIGKILL from outside once 3 of 11 cells are done',
                         'the re-run makes the rest, every cell once, finished PNGs untouched')
def test_killed_mid_run_then_resumed_every_cell_exactly_once(refs, tmp_path, capsys):
    """SIGKILL once cells have started to finish; the rerun completes the rest and redoes nothing."""
    out = tmp_path / "killed"
    args = ["compare", "--experiment", "alpha_sweep", "--image", refs[0], "--prompt", PROMPT, "--out", str(out),
            *SMALL]  # the full sweep: 11 cells
    proc = subprocess.Popen([sys.executable, "-m", "llm_dit", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 120
    while _count(out) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.stem for p in (out / "cells").glob("*.json")}
    assert 3 <= len(finished) < 11, "the kill came too late to test resuming"
    before = {n: (out / f"{n}.png").read_bytes() for n in finished}
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert f"11 cells: {len(finished)} already done, {11 - len(finished)} picture(s) generated" in stdout
    meta = json.loads((out / "metadata.json").read_text())
    names = [r["name"] for r in meta["results"]]
    assert len(names) == len(set(names)) == 11 and meta["counts"]["done"] == 11
    assert sorted(p.stem for p in (out / "cells").glob("*.json")) == sorted(names)
    for r in meta["results"]:
        with Image.open(out / r["file"]) as im:
            im.verify()
    assert all((out / f"{n}.png").read_bytes() == b for n, b in before.items())  # finished cells untouched
    assert not list(out.rglob(".*.tmp"))


def test_resume_keeps_baseline_metrics_and_sees_changed_files(refs, tmp_path, capsys, extractor, zimage):
    from llm_dit.vl.adapter import fit_adapter

    adapter = tmp_path / "ad.safetensors"
    fit_adapter(extractor, zimage.pipe.tokenizer, zimage.pipe.text_encoder, ["a cat", "a red house", "a boat"],
                -6, -2).save(adapter)
    out = tmp_path / "r"
    args = ["sweep", "--image", refs[0], "--prompt", PROMPT, "--vary", f"adapter=none,{adapter}", "--blends",
            "replace", "--out", str(out), *SMALL]
    assert main(args) == 0
    (out / "cells" / "adapter-none.json").unlink()  # as if killed before this record
    assert main(args) == 0
    assert "3 cells: 2 already done, 1 picture(s) generated" in capsys.readouterr().out
    rec = json.loads((out / "cells" / "adapter-none.json").read_text())
    assert "ssim_text" in rec["metrics"]  # the baseline of an earlier session still counts
    fit_adapter(extractor, zimage.pipe.tokenizer, zimage.pipe.text_encoder, ["a dog", "a tree"], -6, -2).save(adapter)
    assert main(args) == 0
    assert "3 cells: 2 already done, 1 picture(s) generated" in capsys.readouterr().out  # the refitted one
    assert main([*args, "--save-embeddings"]) == 0  # finished cells without their embeddings are redone
    assert len(list((out / "embeddings").glob("*.safetensors"))) == 3


def test_a_mistake_in_the_models_writes_nothing_and_blocks_nothing(refs, tmp_path, capsys):
    out = tmp_path / "r"
    assert main([*compare_args("alpha_sweep", refs, out), "--vl-model", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err and not out.exists()
    assert main([*compare_args("alpha_sweep", refs, out), "--device", "mps"]) == 2
    assert not out.exists()
    assert main(compare_args("alpha_sweep", refs, out)) == 0


@pytest.mark.reliability('reproducibility',
                         'compare --from DIR/metadata.json of a sweep, with its reference in place and moved',
                         'the same run key and byte-identical PNGs; the same pixels once moved')
@pytest.mark.reliability('reproducibility',
                         "what a sweep records of what made it: metadata.json and each run.json session",
                         "the installed torch, diffusers and transformers versions, the checkout's "
                         "git revision, the whole resolved config")
def test_compare_from_metadata_reruns_the_run_byte_for_byte(refs, tmp_path, capsys):
    """`compare --from DIR/metadata.json` repeats a run (here a sweep) with its recorded cells and
    settings: the same run key and byte-identical PNGs, also once the reference has moved."""
    import shutil

    ref = tmp_path / "ref.png"
    shutil.copy(refs[0], ref)
    first = tmp_path / "first"
    assert main(["sweep", "--image", str(ref), "--prompt", PROMPT, "--alphas", "0.3,0.7", "--blends",
                 "interpolate,adain", "--seed", "7", "--out", str(first), *SMALL]) == 0
    capsys.readouterr()
    again, moved = tmp_path / "again", tmp_path / "moved"
    assert main(["compare", "--from", str(first / "metadata.json"), "--out", str(again), "--no-progress"]) == 0
    assert "5 cells: 0 already done, 5 picture(s) generated" in capsys.readouterr().out
    ref.unlink()  # moved away: the run folder's reference.png stands in
    assert main(["compare", "--from", str(first / "metadata.json"), "--out", str(moved), "--no-progress"]) == 0
    capsys.readouterr()
    m1, m2 = (json.loads((d / "metadata.json").read_text()) for d in (first, again))
    assert m1["run_key"] == m2["run_key"] and m1["config"] == m2["config"] and m1["plan"] == m2["plan"]
    _records_what_made_it(first, m1)
    for r in m1["results"]:
        assert (first / r["file"]).read_bytes() == (again / r["file"]).read_bytes(), r["name"]
        with Image.open(first / r["file"]) as a, Image.open(moved / r["file"]) as b:
            assert a.tobytes() == b.tobytes(), r["name"]  # same pixels (the PNG's text names the new path)
    for bad, needle in ((["--experiment", "alpha_sweep"], "give only --out"),
                        (["--steps", "3"], "generation.steps"),
                        ([], None)):
        path = first / "metadata.json" if needle else tmp_path / "nope.json"
        assert main(["compare", "--from", str(path), "--out", str(tmp_path / "x"), *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and (needle or "does not exist") in err[0] and not (tmp_path / "x").exists()


def _records_what_made_it(out: Path, meta: dict) -> None:
    """The run's versions, revision and config, against the installed packages, git and the config
    resolved from the command's own flags."""
    import diffusers
    import torch
    import transformers

    from llm_dit.config import resolve_config

    installed = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                 "transformers": transformers.__version__}
    repo = Path(__file__).resolve().parents[1]
    git = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    head = git.stdout.strip() if git.returncode == 0 else None
    config = resolve_config("tiny", overrides={"generation.steps": 4, "generation.width": 64, "generation.height": 64,
                                               "generation.seed": 7}).to_dict()
    run = json.loads((out / "run.json").read_text())
    for where in (meta, run["sessions"][0]):
        assert {k: where["versions"][k] for k in installed} == installed
        assert (where["git_revision"] or "").split("+")[0] == (head or ""), where["git_revision"]
    assert meta["config"] == run["config"] == config
