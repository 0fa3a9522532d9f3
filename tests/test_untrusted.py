"""Inputs nobody checked: edited records whose names would leave their folder, damaged run folders,
and input files that change while a run reads them.

A run folder may come from someone else, or from a power cut. Every name that becomes a path is
checked where it enters; every write of a run or a report stays inside its folder whatever slipped
through; a damaged folder resumes (what is whole kept, the rest made again) or is named in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from run_args import PROMPT, SMALL

from llm_dit.cli import main
from llm_dit.conditioning.recipe import FILE_FIELDS

#: What an edited record may put where a name or a path is expected.
TRAVERSAL = ["../escaped", "../../escaped", "a/../../escaped", "..", ".hidden", "~/escaped", "cells/../../x"]


def absolute(tmp_path: Path) -> str:
    return str(tmp_path / "abs-escaped")


def sweep_args(image: str, out: Path) -> list[str]:
    """A small sweep (alpha 0.5 at two layers): two cells and the baseline."""
    return ["sweep", "--image", image, "--prompt", PROMPT, "--alphas", "0.5", "--layers=-2,-6", "--out", str(out),
            *SMALL]


#: A grid entry added to the plans the walks edit (the small sweep has none of its own).
GRID = {"file": "grid_layer-2.png", "title": "layer -2", "where": {"layer": -2}, "rows": None, "cols": None}
CELL = "layer-2"


@pytest.fixture(scope="module")
def finished(refs, tmp_path_factory) -> tuple[Path, list[str]]:
    """A finished sweep folder and its command."""
    out = tmp_path_factory.mktemp("finished") / "run"
    args = sweep_args(refs[0], out)
    assert main(args) == 0
    assert json.loads((out / "metadata.json").read_text())["counts"]["done"] == 3
    return out, args


def at_out(args: list[str], out: Path) -> list[str]:
    """The command ``args`` with ``--out`` set to ``out``."""
    i = args.index("--out")
    return [*args[:i + 1], str(out), *args[i + 2:]]


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def one_line(err: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("llm-dit: error: ") and "Traceback" not in err, err


def path_fields(plan: dict) -> Iterator[tuple]:
    """Every kind of field of a run plan that becomes a path, in a text cell and in a VL cell: the
    cells' names and caption lengths (files of the folder), the files a recipe reads, the grids'
    files, the reference images."""
    kinds = {}
    for i, c in enumerate(plan["cells"]):
        kinds.setdefault(c["recipe"]["backend"], i)
    for i in kinds.values():
        yield ("cells", i, "name")
        yield ("cells", i, "caption")
        for f in FILE_FIELDS:
            yield ("cells", i, "recipe", f)
        for j, _ in enumerate(plan["cells"][i]["recipe"].get("references") or []):
            yield ("cells", i, "recipe", "references", j, "image")
    for i, _ in enumerate(plan.get("grids") or []):
        yield ("grids", i, "file")
    for i, _ in enumerate(plan["images"]):
        yield ("images", i)


def set_at(data: dict, at: tuple, value) -> dict:
    node = data
    for k in at[:-1]:
        node = node[k]
    node[at[-1]] = value
    return data


@pytest.mark.reliability("bad input", "every path-forming field of metadata.json (cell names and caption lengths, "
                         "grid files, reference images, the files recipes read) set to traversal, hidden and "
                         "absolute values, then `compare --from`", "refused in one line or run inside --out; no file "
                         "written outside --out")
@pytest.mark.parametrize("value", ["../escaped", "a/../../escaped", ".hidden", "ABSOLUTE"])
def test_metadata_fields_never_write_outside_out(finished, tmp_path, capsys, value):
    src, _ = finished
    meta = json.loads((src / "metadata.json").read_text())
    meta["plan"]["grids"] = [GRID]
    value = absolute(tmp_path) if value == "ABSOLUTE" else value
    fields = list(path_fields(meta["plan"]))
    assert {f[0] for f in fields} == {"cells", "grids", "images"} and len(fields) >= 10
    for at in fields:
        box = tmp_path / "box"
        shutil.rmtree(box, ignore_errors=True)
        box.mkdir()
        edited = box / "metadata.json"
        edited.write_text(json.dumps(set_at(json.loads(json.dumps(meta)), ("plan", *at), value)))
        before = files_under(tmp_path)
        rc = main(["compare", "--from", str(edited), "--out", str(box / "deep" / "out")])
        err = capsys.readouterr().err
        assert rc in (0, 2), (at, err)
        if rc:
            one_line(err)
        written = files_under(tmp_path) - before
        assert all(box / "deep" / "out" in p.parents for p in written), (at, value, written)


@pytest.mark.reliability("bad input", "every path-forming field of run.json, and the name and file of a cell's "
                         "record, set to traversal, hidden and absolute values; then `llm-dit report`, the web app's "
                         "list and page, and the same command again", "the report rebuilds or names the damage in one "
                         "line; the web app lists the folder; the command resumes; nothing written outside the folder")
@pytest.mark.parametrize("value", ["../escaped", "ABSOLUTE"])
def test_run_folder_fields_never_write_outside_it(finished, tmp_path, capsys, value):
    from llm_dit.web import files

    src, args = finished
    value = absolute(tmp_path) if value == "ABSOLUTE" else value
    plan = {**json.loads((src / "run.json").read_text()), "grids": [GRID]}
    edits = [("run.json", at) for at in path_fields(plan)] + [("record", "name"), ("record", "file")]
    for what, at in edits:
        runs = tmp_path / "runs"
        shutil.rmtree(runs, ignore_errors=True)
        out = runs / "run"
        shutil.copytree(src, out)
        if what == "run.json":
            (out / "run.json").write_text(json.dumps(set_at(json.loads(json.dumps(plan)), at, value)))
        else:
            rec = out / "cells" / f"{CELL}.json"
            rec.write_text(json.dumps({**json.loads(rec.read_text()), at: value}))
        before = files_under(tmp_path)
        rc = main(["report", str(out)])
        err = capsys.readouterr().err
        assert rc in (0, 2), err
        if rc:
            one_line(err)
        listed = {r["name"]: r for r in files.list_runs(runs, set())}
        assert listed["run"]["status"] in ("complete", "incomplete", "damaged")
        assert files.run_detail(runs, "run", set())["status"] == listed["run"]["status"]
        assert main(at_out(args, out)) == 0, capsys.readouterr().err
        written = files_under(tmp_path) - before
        assert all(out in p.parents for p in written), (what, at, value, written)
        capsys.readouterr()


@pytest.mark.reliability("bad input", "a trials.json whose trial names are traversal, hidden or absolute",
                         "`llm-dit report` names the file in one line; nothing written outside the folder")
@pytest.mark.parametrize("value", ["../escaped", ".hidden", "ABSOLUTE"])
def test_trial_names_never_leave_the_folder(finished, tmp_path, capsys, value):
    src, _ = finished
    out = tmp_path / "trials"
    out.mkdir()
    name = absolute(tmp_path) if value == "ABSOLUTE" else value
    shutil.copytree(src, out / "t1")
    (out / "trials.json").write_text(json.dumps({"name": "sweep", "trials": [
        {"name": name, "image": "a.png", "seed": 1}, {"name": "t1", "image": "a.png", "seed": 2}]}))
    before = files_under(tmp_path)
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    one_line(err)
    assert "trials.json lists a trial whose name is not a folder name" in err
    assert files_under(tmp_path) == before


@pytest.mark.reliability("faults", "a run folder whose cells/ is a link to a folder outside it, then the same "
                         "command", "refused in one line naming the write; nothing written through the link")
def test_a_link_out_of_the_folder_takes_no_write(finished, tmp_path, capsys):
    src, args = finished
    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    shutil.copytree(src, out)
    shutil.move(out / "cells", elsewhere)
    (out / "cells").symlink_to(elsewhere)
    (elsewhere / f"{CELL}.json").unlink()  # one cell to make again: its record would go through the link
    before = {p: p.stat().st_mtime_ns for p in files_under(elsewhere)}
    rc = main(at_out(args, out))
    err = capsys.readouterr().err
    assert rc == 1, err
    one_line(err)
    assert "refusing to write" in err and "outside the folder" in err
    assert {p: p.stat().st_mtime_ns for p in files_under(elsewhere)} == before


# -- damaged run folders --------------------------------------------------------------------------


def _record(out: Path, edit) -> None:
    p = out / "cells" / f"{CELL}.json"
    p.write_text(json.dumps(edit(json.loads(p.read_text()))))


def _plan(out: Path, edit) -> None:
    p = out / "run.json"
    p.write_text(json.dumps(edit(json.loads(p.read_text()))))


#: name -> (what it does to a finished folder, the cells the same command must make again)
DAMAGE = {
    "record file a number": (lambda d: _record(d, lambda r: {**r, "file": 3}), 1),
    "record only success": (lambda d: _record(d, lambda r: {"success": True}), 1),
    "record metrics a string": (lambda d: _record(d, lambda r: {**r, "metrics": "x"}), 1),
    "record a list": (lambda d: _record(d, lambda r: [r]), 1),
    "record name of another cell": (lambda d: _record(d, lambda r: {**r, "name": "layer-6"}), 1),
    "run.json deleted": (lambda d: (d / "run.json").unlink(), 0),
    "run.json zeroed": (lambda d: (d / "run.json").write_bytes(bytes(300)), 0),
    "run.json empty": (lambda d: (d / "run.json").write_bytes(b""), 0),
    "run.json cut short": (lambda d: (d / "run.json").write_bytes((d / "run.json").read_bytes()[:500]), 0),
    "run.json without config": (lambda d: _plan(d, lambda p: {k: v for k, v in p.items() if k != "config"}), 0),
    "run.json cells null": (lambda d: _plan(d, lambda p: {**p, "cells": None}), 0),
    "run.json without name": (lambda d: _plan(d, lambda p: {k: v for k, v in p.items() if k != "name"}), 0),
    "run.json images null": (lambda d: _plan(d, lambda p: {**p, "images": None}), 0),
    "run.json sessions a string": (lambda d: _plan(d, lambda p: {**p, "sessions": "x"}), 0),
    "run.json a cell without params": (lambda d: _plan(d, lambda p: {**p, "cells": [
        {k: v for k, v in p["cells"][0].items() if k != "params"}, *p["cells"][1:]]}), 0),
    "run.json config.generation a list": (lambda d: _plan(d, lambda p: {**p, "config": {
        **p["config"], "generation": []}}), 0),
}


@pytest.mark.reliability("faults", "damaged run folders: a record whose file is a number, reduced to "
                         "{\"success\": true}, of another cell; run.json deleted, zeroed, empty, cut short, without "
                         "config or name, with cells or images null, a cell without params",
                         "`llm-dit report` rebuilds or names the damage in one line; the web app lists it (marked "
                         "damaged) beside the others; the same command resumes: the damaged cells made again, the "
                         "whole ones kept")
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_run_folder_resumes(finished, tmp_path, capsys, damage):
    from llm_dit.web import files

    src, args = finished
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(src, runs / "good")
    out = runs / "run"
    shutil.copytree(src, out)
    harm, remade = DAMAGE[damage]
    harm(out)
    kept = {p.name: p.read_bytes() for p in out.glob("*.png") if p.stem != CELL and "grid" not in p.name}

    rc = main(["report", str(out)])
    err = capsys.readouterr().err
    assert rc in (0, 2), err
    if rc:
        one_line(err)
        assert "run.json" in err
    listed = {r["name"]: r for r in files.list_runs(runs, set())}
    assert listed["good"]["status"] == "complete"
    assert listed["run"]["status"] == ("damaged" if rc else "incomplete" if remade else "complete")
    detail = files.run_detail(runs, "run", set())
    assert detail["status"] == listed["run"]["status"]

    assert main(at_out(args, out)) == 0
    summary = capsys.readouterr().out
    assert f"{remade} picture(s) generated" in summary, summary
    assert {p.name: p.read_bytes() for p in out.glob("*.png") if p.name in kept} == kept
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["counts"] == {"done": len(meta["results"]), "failed": 0, "pending": 0}


@pytest.mark.reliability("faults", "a folder whose run.json is damaged or deleted and whose records are of another "
                         "run, then a command", "refused in one line; nothing in the folder changed")
@pytest.mark.parametrize("how", ["deleted", "zeroed"])
def test_a_damaged_folder_of_another_run_is_refused(finished, tmp_path, capsys, how):
    src, args = finished
    out = tmp_path / "run"
    shutil.copytree(src, out)
    if how == "deleted":
        (out / "run.json").unlink()
    else:
        (out / "run.json").write_bytes(bytes(100))
    before = {p: p.read_bytes() for p in files_under(out)}
    assert main([*at_out(args, out), "--seed", "7"]) == 2
    err = capsys.readouterr().err
    one_line(err)
    assert f"run.json is {'missing' if how == 'deleted' else 'damaged'}" in err
    assert {p: p.read_bytes() for p in files_under(out)} == before


@pytest.mark.reliability("bad input", "`compare --from` a metadata.json with each field of its plan deleted, or "
                         "set to null, a number or a list", "one line naming the file, exit 2, nothing written")
def test_compare_from_a_plan_with_fields_deleted(finished, tmp_path, capsys):
    src, _ = finished
    meta = json.loads((src / "metadata.json").read_text())
    for key in [*meta["plan"], "plan", "config"]:
        for how in ("deleted", None, 3, ["x"]):
            edited = json.loads(json.dumps(meta))
            where = edited if key in ("plan", "config") else edited["plan"]
            if how == "deleted":
                del where[key]
            else:
                where[key] = how
            if key in ("quick", "details", "given_caption", "grids") and how in ("deleted", None):
                continue  # optional: a run without them is whole
            path = tmp_path / "metadata.json"
            path.write_text(json.dumps(edited))
            rc = main(["compare", "--from", str(path), "--out", str(tmp_path / "out")])
            err = capsys.readouterr().err
            if rc == 0:  # a value this version reads as the run's (quick = 3 is true)
                shutil.rmtree(tmp_path / "out")
                continue
            assert rc == 2, (key, how, err)
            one_line(err)
            assert not (tmp_path / "out").exists()


# -- inputs read once -------------------------------------------------------------------------------


class Opens:
    """Counts the opens of one file through the interpreter's audit hook (every ``open`` of Python,
    PIL's included); the hook stays installed, inactive while ``path`` is None."""

    path: str | None = None
    count = 0

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if event == "open" and cls.path is not None and args and isinstance(args[0], (str, bytes, os.PathLike)) \
                and os.fsdecode(args[0]) == cls.path:
            cls.count += 1


sys.addaudithook(Opens.hook)


@pytest.mark.reliability("faults", "the reference image replaced by another while a sweep starts (between its "
                         "checks and its run), then the same command", "every input read once: the run's key, "
                         "reference.png and the pictures are of the image as it was read; the command afterwards "
                         "notices the change and refuses the folder in one line")
def test_a_reference_replaced_while_a_run_starts(refs, tmp_path, capsys):
    from llm_dit.config import resolve_config
    from llm_dit.experiments.plan import run_key
    from llm_dit.experiments.runner import prepare_run, run_prepared
    from llm_dit.experiments.specs import sweep_spec

    image = tmp_path / "ref.png"
    first = Image.open(refs[0]).convert("RGB")
    first.save(image)
    cfg = resolve_config(profile="tiny", overrides={"generation.steps": 4, "generation.width": 64,
                                                    "generation.height": 64})
    spec, cfg = sweep_spec([{"image": str(image)}], PROMPT, {}, {"alpha": [0.3, 0.6]}, cfg)
    Opens.path, Opens.count = str(image), 0
    try:
        prepared = prepare_run(spec, cfg)
        Opens.path = None  # (the write below is no read)
        Image.new("RGB", (64, 64), (0, 200, 0)).save(image)  # replaced after the checks read it
        Opens.path = str(image)
        run_prepared(prepared, tmp_path / "run", progress=False)
    finally:
        Opens.path = None
    assert Opens.count == 1, "the reference image is read once, by the checks"
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    first.save(image)  # the same bytes as the file the checks read: its key is the run's
    assert saved["run_key"] == run_key(spec, cfg)
    with Image.open(tmp_path / "run" / "reference.png") as im:
        assert im.convert("RGB").tobytes() == first.tobytes()
    Image.new("RGB", (64, 64), (0, 200, 0)).save(image)  # the new image again: the same command notices
    rc = main(["sweep", "--image", str(image), "--prompt", PROMPT, "--alphas", "0.3,0.6", "--out",
               str(tmp_path / "run"), *SMALL])
    assert rc == 2
    err = capsys.readouterr().err
    one_line(err)
    assert "the reference images' contents differ" in err


# -- the web app ------------------------------------------------------------------------------------

#: Every request field that names a file or a folder: (route, body with VALUE where the name goes).
WEB_FIELDS = [
    ("/api/sweeps", {"prompt": PROMPT, "axes": {"seed": ["1", "2"]}, "name": "VALUE"}),
    ("/api/experiments", {"experiment": "alpha_sweep", "prompt": PROMPT, "images": ["UPLOAD"], "name": "VALUE"}),
    ("/api/experiments", {"experiment": "alpha_sweep", "prompt": PROMPT, "images": ["VALUE"]}),
    *[("/api/generate", {"prompt": PROMPT, "recipe": {"backend": "vl", f: "VALUE"}}) for f in FILE_FIELDS],
    ("/api/generate", {"prompt": PROMPT, "recipe": {"references": [{"image": "VALUE"}]}}),
    ("/api/sweeps", {"prompt": PROMPT, "axes": {"seed": ["1", "2"]}, "recipe": {"references": [{"image": "VALUE"}]}}),
]


@pytest.mark.reliability("bad input", "every web request field that names a file or folder (run names, images, "
                         "recipe files, upload file names, resume and file paths) set to traversal, hidden and "
                         "absolute values", "refused (422 naming the field, or 404); no job queued; nothing written "
                         "outside the runs folder")
@pytest.mark.parametrize("value", [*TRAVERSAL, "ABSOLUTE"])
def test_web_request_names_never_leave_the_runs_folder(client, upload, tmp_path, value):
    from urllib.parse import quote

    from web_client import png_bytes

    runs = client.app.server.runs
    value = absolute(tmp_path) if value == "ABSOLUTE" else value
    jobs = len(client.get("/api/jobs").json())
    before = files_under(tmp_path)
    for route, body in WEB_FIELDS:
        body = json.loads(json.dumps(body).replace('"UPLOAD"', json.dumps(upload["id"]))
                          .replace('"VALUE"', json.dumps(value)))
        r = client.post(route, json=body)
        assert r.status_code == 422, (route, body, r.text)
        assert r.json()["field"], r.json()
    for path in (f"/api/runs/{quote(value, safe='')}/resume", f"/api/runs/{quote(value)}/resume"):
        assert client.post(path).status_code in (404, 405), path
    for path in (f"/api/files/{quote(value, safe='')}", f"/api/files/{quote(value)}", f"/api/runs/{quote(value)}"):
        assert client.get(path).status_code == 404, path
    r = client.post("/api/uploads", files={"file": (value, png_bytes(), "image/png")})  # a name, never a path
    assert r.status_code == 201 and (runs / "uploads" / f"{r.json()['id']}.png").is_file()
    assert len(client.get("/api/jobs").json()) == jobs
    assert files_under(tmp_path) == before
    assert not [p for p in runs.parent.iterdir() if "escaped" in p.name]


@pytest.mark.reliability("bad input", "links inside the runs folder to a hidden file (the jobs record) and to a "
                         "hidden folder", "404: only plain, visible files inside the runs folder are served")
def test_a_link_to_a_hidden_file_is_not_served(client):
    runs = client.app.server.runs
    client.get("/api/runs")
    (runs / ".hidden").mkdir(exist_ok=True)
    (runs / ".hidden" / "secret.txt").write_text("secret")
    (runs / ".jobs.json").touch()
    for name, target in (("jobs_alias.json", runs / ".jobs.json"), ("hidden_alias", runs / ".hidden")):
        if not (runs / name).is_symlink():
            (runs / name).symlink_to(target)
    assert client.get("/api/files/jobs_alias.json").status_code == 404
    assert client.get("/api/files/hidden_alias/secret.txt").status_code == 404
    (runs / "plain.txt").write_text("plain")
    assert client.get("/api/files/plain.txt").status_code == 200  # the check refuses the hidden, not every file


@pytest.mark.parametrize("damage", [b"", bytes(50), b"[1, 2]", b'"trials"', b'{"trials": null}'])
def test_a_damaged_trials_plan_is_written_again(tmp_path, damage):
    from llm_dit.experiments.trials import _prepare

    out = tmp_path / "trials"
    out.mkdir()
    (out / "trials.json").write_bytes(damage)
    plan = {"name": "sweep", "trials": [{"name": "t1", "image": "a.png", "seed": 1}]}
    _prepare(out, plan)
    assert json.loads((out / "trials.json").read_text()) == plan
