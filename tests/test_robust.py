"""Reliability, issue 20: four classes of failure that ended in a traceback or "internal error".

A. ``generate --out``: a full disk, a read-only folder, paths that cannot be written (a folder, a
   parent that is a file, a sidecar that is a folder, ``~nosuchuser``): one line naming the file,
   nothing half-written, and an existing picture never left beside the sidecar of another.
B. Images: every refusal names the file (the aspect-ratio check named none).
C. Ctrl-C at any moment of a real ``python -m llm_dit`` process: ``llm-dit: interrupted``, exit 130.
D. TOML and JSON nested thousands deep, through every door that reads one: one line naming the file
   (the web app: 422, and it stays up).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from test_faults import _fail_writes_after
from test_images import _png_claiming

from llm_dit.cli import main
from llm_dit.images import read_png_parameters

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = ["--profile", "tiny", "--steps", "2", "--width", "32", "--height", "32"]


def _generate(out, seed: int = 2, *extra: str) -> int:
    return main(["generate", *TINY, "--prompt", "a red house", "--seed", str(seed), "--out", str(out), *extra])


def _errors(err: str) -> list[str]:
    """stderr's lines without progress bars."""
    return [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "|" not in ln]


def _pair_agrees(folder: Path, name: str = "x") -> None:
    """A picture in ``folder`` has its own sidecar beside it (same seed, same record), and no temporary
    is left."""
    png, sidecar = folder / f"{name}.png", folder / f"{name}.json"
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]
    if png.exists():
        record = json.loads(sidecar.read_text())
        shown = read_png_parameters(png)
        assert shown == {k: v for k, v in record.items() if k not in ("generation_time", "seconds")}


@pytest.fixture(scope="module")
def old_pair(tmp_path_factory) -> Path:
    """x.png and x.json of seed 1: the pair a new generate (seed 2) must never be mixed with."""
    d = tmp_path_factory.mktemp("old")
    assert _generate(d / "x.png", 1) == 0
    return d


def _with_old_pair(old_pair: Path, tmp_path: Path) -> dict[str, bytes]:
    for name in ("x.png", "x.json"):
        (tmp_path / name).write_bytes((old_pair / name).read_bytes())
    return {p.name: p.read_bytes() for p in tmp_path.iterdir()}


# -- A. the single picture ------------------------------------------------------------------------------


def _enospc_in_png(monkeypatch):
    import llm_dit.images

    real = llm_dit.images.write_png

    def half(image, path, *a, **k):  # half a file, then the disk is full (a write has no filename)
        real(image, path, *a, **k)
        Path(path).write_bytes(Path(path).read_bytes()[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(llm_dit.images, "write_png", half)


def _enospc_in_sidecar(monkeypatch):
    real = Path.write_text

    def half(self, data, *a, **k):
        if self.name.startswith(".x.json."):
            real(self, data[:50], *a, **k)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data, *a, **k)

    monkeypatch.setattr(Path, "write_text", half)


def _enospc_in_flush(monkeypatch):
    real, seen = os.fsync, [0]

    def fsync(fd):  # the second flush: the picture's, after the sidecar's went through
        seen[0] += 1
        if seen[0] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


FULL = {
    "at the picture's temporary": (lambda m: _fail_writes_after(m, 0, errno.ENOSPC), "x.png", errno.ENOSPC),
    "at the sidecar's temporary": (lambda m: _fail_writes_after(m, 1, errno.ENOSPC), "x.json", errno.ENOSPC),
    "halfway through the picture": (_enospc_in_png, "x.png", errno.ENOSPC),
    "halfway through the sidecar": (_enospc_in_sidecar, "x.json", errno.ENOSPC),
    "flushing the picture to the disk": (_enospc_in_flush, "x.png", errno.ENOSPC),
    "a read-only folder": (lambda m: _fail_writes_after(m, 0, errno.EROFS), "x.png", errno.EROFS),
}


@pytest.mark.reliability("faults", "generate --out onto a full disk (when the picture's or the sidecar's temporary is "
                         "made, halfway through either, while flushing) and into a read-only folder, with and without "
                         "an earlier x.png/x.json there",
                         "one line naming the file and the reason, exit 1, no traceback; the earlier pair untouched, "
                         "nothing new and no temporary left")
@pytest.mark.parametrize("old", [True, False], ids=["old pair", "empty folder"])
@pytest.mark.parametrize("when", list(FULL))
def test_a_full_disk_under_generate_is_one_line_and_changes_nothing(old_pair, tmp_path, capsys, monkeypatch,
                                                                      when, old):
    fail, file, err = FULL[when]
    before = _with_old_pair(old_pair, tmp_path) if old else {}
    with monkeypatch.context() as m:
        fail(m)
        assert _generate(tmp_path / "x.png") == 1
    lines = _errors(capsys.readouterr().err)
    assert lines == [f"llm-dit: error: cannot write {tmp_path / file} ({os.strerror(err)})"]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


class Crash(BaseException):
    """The process dies here (a power cut, SIGKILL): nothing after it runs, not even a cleanup."""


@pytest.mark.reliability("faults", "generate over an earlier x.png/x.json, the process dying just before or after "
                         "each of its two renames",
                         "a picture on disk always has its own sidecar beside it (never the old picture with the new "
                         "sidecar or the reverse); no temporary left")
@pytest.mark.parametrize("k, when", [(1, "before"), (1, "after"), (2, "before"), (2, "after")])
def test_dying_between_the_renames_never_pairs_two_pictures(old_pair, tmp_path, monkeypatch, k, when):
    _with_old_pair(old_pair, tmp_path)
    real, seen = os.replace, [0]

    def replace(src, dst, *a, **kw):
        if Path(dst).parent != tmp_path:
            return real(src, dst, *a, **kw)
        seen[0] += 1
        if seen[0] == k and when == "before":
            raise Crash
        real(src, dst, *a, **kw)
        if seen[0] == k:
            raise Crash

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Crash):
        _generate(tmp_path / "x.png")
    monkeypatch.undo()
    _pair_agrees(tmp_path)
    if (k, when) == (2, "after"):
        assert read_png_parameters(tmp_path / "x.png")["config"]["generation"]["seed"] == 2


def test_generate_over_an_old_pair_replaces_both(old_pair, tmp_path, capsys):
    _with_old_pair(old_pair, tmp_path)
    assert _generate(tmp_path / "x.png") == 0
    _pair_agrees(tmp_path)
    assert json.loads((tmp_path / "x.json").read_text())["config"]["generation"]["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.png"]


OUT_CASES = {
    "~nosuchuser": (["--out", "~nosuchuser-llm-dit/x.png"], "~nosuchuser-llm-dit/x.png: cannot expand "
                                                             "~nosuchuser-llm-dit"),
    "--out a folder": (["--out", "{d}/dir.png"], "output {d}/dir.png is a folder"),
    "the sidecar a folder": (["--out", "{d}/side.png"], "sidecar {d}/side.json is a folder"),
    "the parent a file": (["--out", "{d}/file/x.png"], "cannot write output {d}/file/x.png: {d}/file is a file, "
                                                      "not a folder"),
    "a grandparent a file": (["--out", "{d}/file/new/x.png"], "{d}/file is a file, not a folder"),
    "a name too long": (["--out", "{d}/" + "n" * 250 + ".png"], "its name is too long"),
    "a read-only folder": (["--out", "{d}/ro/x.png"], "cannot write output {d}/ro/x.png: the folder {d}/ro is not "
                                                      "writable"),
    "--image ~nosuchuser": (["--out", "{d}/x.png", "--image", "~nosuchuser-llm-dit/r.png"],
                            "--image ~nosuchuser-llm-dit/r.png: cannot expand ~nosuchuser-llm-dit"),
    "--save-recipe ~nosuchuser": (["--out", "{d}/x.png", "--save-recipe", "~nosuchuser-llm-dit/r.toml"],
                                  "--save-recipe ~nosuchuser-llm-dit/r.toml: cannot expand"),
    "--save-recipe a folder": (["--out", "{d}/x.png", "--save-recipe", "{d}/dir.toml"],
                               "--save-recipe {d}/dir.toml is a folder"),
}


@pytest.mark.reliability("bad input", "generate --out paths that cannot be written: ~nosuchuser, a folder, a sidecar "
                         "path that is a folder, a parent or grandparent that is a file, a name too long, a read-only "
                         "folder; --image and --save-recipe with ~nosuchuser, --save-recipe a folder",
                         "one line naming the path, exit 2, before any model loads; nothing written")
@pytest.mark.parametrize("case", list(OUT_CASES))
def test_unwritable_output_paths_are_one_line(tmp_path, capsys, monkeypatch, case):
    args, needle = OUT_CASES[case]
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "dir.toml").mkdir()
    (tmp_path / "side.json").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "ro").mkdir()
    if case == "a read-only folder":  # as root a chmod would not stop the writes: the check is what is tested
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: Path(p) != tmp_path / "ro" and real(p, mode))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    monkeypatch.chdir(tmp_path)  # a relative ~nosuchuser... would be made here if it were taken literally
    rc = main(["generate", *TINY, "--prompt", "a cat", *[a.format(d=tmp_path) for a in args]])
    lines = _errors(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith("llm-dit: error: ") and needle.format(d=tmp_path) in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_a_home_path_is_expanded(tmp_path, monkeypatch):
    from llm_dit.images import check_output_path

    monkeypatch.setenv("HOME", str(tmp_path))
    assert check_output_path("~/pictures/x.png") == tmp_path / "pictures" / "x.png"


# -- B. images: every refusal names the file ----------------------------------------------------------


@pytest.fixture
def long_image(tmp_path) -> Path:
    p = tmp_path / "strip.png"
    Image.new("RGB", (8, 2000), (10, 200, 10)).save(p)
    return p


@pytest.mark.reliability("bad input", "a too-elongated image (8x2000) through every door that takes one: generate "
                         "--image, extract, caption, stats compare, compare",
                         "one line naming the file and its size, exit 2; nothing written")
@pytest.mark.parametrize("command", ["generate", "extract", "caption", "stats compare", "compare"])
def test_a_too_elongated_image_is_refused_naming_the_file(tmp_path, capsys, long_image, command):
    out = tmp_path / "out"
    args = {
        "generate": ["generate", *TINY, "--prompt", "a cat", "--image", str(long_image), "--out", f"{out}.png"],
        "extract": ["extract", "--profile", "tiny", "--image", str(long_image), "--out", f"{out}.safetensors"],
        "caption": ["caption", "--profile", "tiny", "--image", str(long_image), "--out", f"{out}.txt"],
        "stats compare": ["stats", "compare", "--profile", "tiny", "--image", str(long_image), "--prompt", "a cat",
                          "--out", str(out)],
        "compare": ["compare", "--experiment", "alpha_sweep", "--quick", *TINY, "--prompt", "a cat", "--image",
                    str(long_image), "--out", str(out)],
    }[command]
    rc = main(args)
    lines = _errors(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1, lines
    assert str(long_image) in lines[0] and "8x2000 pixels, too elongated" in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["strip.png"]


def test_the_python_door_names_the_image_too(long_image):
    from llm_dit.errors import InputError
    from llm_dit.vl.extract import VLEmbeddingExtractor

    with pytest.raises(InputError, match=f"image 1 {long_image} is 8x2000 pixels, too elongated"):
        VLEmbeddingExtractor._images(None, [str(long_image)])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="image 2 is 8x2000 pixels"):  # a PIL image has no file to name
        VLEmbeddingExtractor._images(None, [Image.new("RGB", (8, 8)), Image.open(long_image)])  # type: ignore


@pytest.mark.reliability("bad input", "every kind of image refusal (missing, a folder, empty, not an image, truncated, "
                         "too many pixels, too elongated)", "the sentence names the file")
def test_every_image_refusal_names_the_file(tmp_path, long_image):
    from llm_dit.errors import InputError
    from llm_dit.images import MAX_INPUT_PIXELS, load_image
    from llm_dit.vl.chat import check_aspect_ratio

    Image.new("RGB", (16, 16)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "dir.png").mkdir()
    _png_claiming(tmp_path, "big.png", MAX_INPUT_PIXELS, 2)
    for name in ("missing.png", "dir.png", "empty.png", "text.png", "truncated.png", "big.png"):
        with pytest.raises(InputError) as e:
            load_image(tmp_path / name, "reference image 1")
        assert str(tmp_path / name) in str(e.value), str(e.value)
    with pytest.raises(InputError) as e:
        check_aspect_ratio(load_image(long_image), f"image {long_image}")
    assert str(long_image) in str(e.value)


# -- C. Ctrl-C -------------------------------------------------------------------------------------------


class Child:
    """``python -m llm_dit ARGS`` as a person starts it, its output read as it comes."""

    def __init__(self, args: list[str]):
        env = dict(os.environ, PYTHONPATH=str(SRC), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "llm_dit", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
        self.out, self.err = bytearray(), bytearray()
        self.readers = [threading.Thread(target=self._read, args=(s, b), daemon=True)
                        for s, b in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self.readers:
            t.start()

    @staticmethod
    def _read(stream, into: bytearray) -> None:
        for chunk in iter(lambda: stream.read1(4096), b""):
            into += chunk

    def wait_for(self, ready, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while not ready(self):
            assert self.proc.poll() is None, f"ended before the moment: {bytes(self.err)[-500:]!r}"
            assert time.monotonic() < end, "the moment never came"
            time.sleep(0.002)

    def maps(self) -> str:
        try:
            return Path(f"/proc/{self.proc.pid}/maps").read_text()
        except OSError:
            return ""

    def interrupt(self) -> tuple[int, str, str, bool]:
        """SIGINT now; (exit code, stdout, stderr, whether it had ended before the signal)."""
        ended = self.proc.poll() is not None
        if not ended:
            self.proc.send_signal(signal.SIGINT)
        rc = self.proc.wait(timeout=120)
        for t in self.readers:
            t.join(30)
        return rc, self.out.decode(), self.err.decode(), ended


#: Moments of a generate: each a function that waits for it. "the package's first line" is the
#: moment llm_dit/__init__.py imports pydantic (right after it took SIGINT over), seen from outside as
#: pydantic's compiled core mapped into the process; torch likewise (imported inside the command).
MOMENTS = {
    "at once": lambda c: None,
    "the package importing pydantic": lambda c: c.wait_for(lambda c: "pydantic_core" in c.maps()),
    "50 ms after that": lambda c: (c.wait_for(lambda c: "pydantic_core" in c.maps()), time.sleep(0.05)),
    "the command importing torch": lambda c: c.wait_for(lambda c: "libtorch" in c.maps()),
    "0.5 s after that": lambda c: (c.wait_for(lambda c: "libtorch" in c.maps()), time.sleep(0.5)),
    "the first progress output": lambda c: c.wait_for(lambda c: b"%|" in c.err),
    "the result printed (teardown)": lambda c: c.wait_for(lambda c: b"wrote " in c.out),
}


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="the moments are read from /proc")
@pytest.mark.reliability("faults", "Ctrl-C (SIGINT) to a real `python -m llm_dit generate` at 7 moments: at once, "
                         "while the package imports pydantic and 50 ms later, while the command imports torch and "
                         "0.5 s later, at the first progress output, after the result line (teardown)",
                         "`llm-dit: interrupted` as the last line and exit 130 (after the result line: that, or exit "
                         "0), no traceback; no half-written or temporary file, a picture only with its own sidecar")
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_ctrl_c_at_any_moment_ends_in_one_line(tmp_path, moment):
    out = tmp_path / "x.png"
    child = Child(["generate", *TINY, "--prompt", "a red house", "--out", str(out)])
    MOMENTS[moment](child)
    rc, stdout, err, ended = child.interrupt()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "Exception ignored" not in err, err
    lines = err.replace("\r", "\n").strip().splitlines()
    if moment == "at once" and rc == -signal.SIGINT:
        # before CPython installed its SIGINT handler (the first milliseconds of its start, before any line of
        # llm-dit runs): the default action, as for any program; the shell shows 130, nothing was printed
        assert err == "" and stdout == ""
    elif moment.startswith("the result printed") and rc == 0:
        assert ended or lines[-1] != "llm-dit: interrupted"  # done: SIGINT came after the last Python code
    else:
        assert rc == 130 and lines[-1] == "llm-dit: interrupted", (rc, err[-500:])
    _pair_agrees(tmp_path)
    if rc == 0 or "wrote " in stdout:
        assert out.is_file() and "wrote " in stdout
    elif moment != "the first progress output":  # it was stopped before writing
        assert list(tmp_path.iterdir()) == []


@pytest.mark.reliability("faults", "Ctrl-C to a real `python -m llm_dit compare` run after its first cell",
                         "`llm-dit: interrupted` as the last line and exit 130, no traceback, no temporary left; the "
                         "finished cells recorded as done (none as failed), the report written")
def test_ctrl_c_stops_a_run_through_its_report(tmp_path, refs):
    from run_args import compare_args

    out = tmp_path / "run"
    child = Child(compare_args("alpha_sweep", refs, out))
    child.wait_for(lambda c: (out / "cells").is_dir() and any((out / "cells").glob("*.json")), timeout=240)
    rc, _, err, _ = child.interrupt()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "FAILED" not in err, err
    assert rc == 130 and err.replace("\r", "\n").strip().splitlines()[-1] == "llm-dit: interrupted", err[-500:]
    assert not list(out.rglob(".*.tmp"))
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert records and all(r["success"] for r in records)  # the cell being finished was finished, not failed
    meta = json.loads((out / "metadata.json").read_text())  # the run stopped through its finally blocks
    assert meta["counts"]["done"] == len(records) and meta["counts"]["failed"] == 0


def test_the_policy_waits_for_a_file_being_written(monkeypatch):
    """In the command line: a Ctrl-C quits, but not halfway through a file; inside a run it raises
    KeyboardInterrupt first (not during an import); the next one insists."""
    from llm_dit import interrupt

    quits: list[int] = []
    monkeypatch.setattr(interrupt, "_cli", True)
    monkeypatch.setattr(interrupt, "quit_now", lambda: quits.append(interrupt._presses))
    for name, value in (("_presses", 0), ("_pending", False), ("_writing", 0), ("_unwinding", 0)):
        monkeypatch.setattr(interrupt, name, value)
    frame = sys._getframe()
    with interrupt.writing():
        interrupt._on_sigint(signal.SIGINT, frame)
        assert quits == []  # waits for the file
    assert quits == [1]  # ... and quits when it is in place
    interrupt._on_sigint(signal.SIGINT, frame)
    assert quits == [1, 2]

    monkeypatch.setattr(interrupt, "_presses", 0)
    monkeypatch.setattr(interrupt, "_pending", False)
    quits.clear()
    with interrupt.unwinding():
        with pytest.raises(KeyboardInterrupt):
            interrupt._on_sigint(signal.SIGINT, frame)
        with interrupt.writing():
            interrupt._on_sigint(signal.SIGINT, frame)  # the second waits for the file
            assert quits == []
            interrupt._on_sigint(signal.SIGINT, frame)  # the third does not
            assert quits == [3]

    monkeypatch.setattr(interrupt, "_presses", 0)
    monkeypatch.setattr(interrupt, "_pending", False)
    quits.clear()

    class Importing:  # a frame of importlib: a KeyboardInterrupt there would leave half-imported modules
        f_code = type("code", (), {"co_filename": "<frozen importlib._bootstrap>"})
        f_back = None

    with interrupt.unwinding():
        interrupt._on_sigint(signal.SIGINT, Importing)  # type: ignore[arg-type]
    assert quits == [1]


@pytest.mark.parametrize("argv, cli", [
    (["/usr/bin/python3", "-m", "llm_dit", "generate"], True),
    (["python", "-X", "importtime", "-m", "llm_dit"], True),
    (["python", "-mllm_dit", "config"], True),
    (["/venv/bin/python", "/venv/bin/llm-dit", "generate"], True),
    (["python", "-m", "pytest", "tests"], False),
    (["python", "-m", "llm_dit.experiments.report_plots"], False),
    (["python", "-c", "import llm_dit"], False),
    (["python", "script.py"], False),
    (["python"], False),
])
def test_started_as_cli(monkeypatch, argv, cli):
    from llm_dit import interrupt

    monkeypatch.setattr(sys, "orig_argv", argv)
    assert interrupt.started_as_cli() is cli


def test_import_llm_dit_leaves_sigint_alone():
    code = "import signal, llm_dit, llm_dit.cli; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(SRC)))
    assert r.stdout.strip() == "True", r.stderr


# -- D. nesting ------------------------------------------------------------------------------------------

DEPTH = 10_000


def _deep_files(d: Path) -> dict[str, Path]:
    files = {
        "inline.toml": "[tiny]\nx = " + "{a = " * DEPTH + "1" + "}" * DEPTH + "\n",
        "tables.toml": "[" + ".".join(["a"] * DEPTH) + "]\nx = 1\n",
        "tables100.toml": "[" + ".".join(["a"] * 100) + "]\nx = 1\n",
        "object.json": '{"a": ' * DEPTH + "1" + "}" * DEPTH,
        "list.json": "[" * DEPTH + "]" * DEPTH,
        "object100.json": '{"recipe": ' + '{"a": ' * 100 + "1" + "}" * 101,
    }
    for name, text in files.items():
        (d / name).write_text(text)
    return {name: d / name for name in files}


DOORS = {
    "config --config": (["config", "--config", "{f}"], "config file {f}", ".toml"),
    "profiles --config": (["profiles", "--config", "{f}"], "config file {f}", ".toml"),
    "generate --config": (["generate", "--config", "{f}", *TINY, "--prompt", "a", "--out", "{d}/x.png"],
                          "config file {f}", ".toml"),
    "generate --recipe": (["generate", *TINY, "--prompt", "a", "--recipe", "{f}", "--out", "{d}/x.png"],
                          "recipe file {f}", ".toml .json"),
    "sweep --grid": (["sweep", *TINY, "--prompt", "a", "--image", "{img}", "--grid", "{f}", "--out", "{d}/run"],
                     "grid file {f}", ".toml"),
    "sweep --recipe": (["sweep", *TINY, "--prompt", "a", "--image", "{img}", "--recipe", "{f}", "--out", "{d}/run"],
                       "recipe file {f}", ".toml .json"),
    "compare --from": (["compare", "--from", "{f}", "--out", "{d}/run"], "{f}", ".json"),
}


@pytest.mark.reliability("bad input", "TOML and JSON nested 100 and 10000 deep (tables [a.a.a...], inline tables, "
                         "objects, lists) as --config (config, profiles, generate), --recipe (generate, sweep), "
                         "--grid and compare --from",
                         "one line naming the file: 'nests deeper than 64 levels', exit 2; nothing written")
@pytest.mark.parametrize("door", list(DOORS))
def test_deep_nesting_is_one_line_naming_the_file(tmp_path, capsys, door):
    args, names, kinds = DOORS[door]
    img = tmp_path / "ref.png"
    Image.new("RGB", (32, 32)).save(img)
    files = _deep_files(tmp_path)
    tried = 0
    for name, f in files.items():
        if f.suffix not in kinds.split():
            continue
        before = sorted(p.name for p in tmp_path.iterdir())
        rc = main([a.format(f=f, d=tmp_path, img=img) for a in args])
        lines = _errors(capsys.readouterr().err)
        assert rc == 2 and lines == [f"llm-dit: error: {names.format(f=f)} nests deeper than 64 levels"], (name, lines)
        assert sorted(p.name for p in tmp_path.iterdir()) == before
        tried += 1
    assert tried >= 2


@pytest.mark.reliability("bad input", "a run folder whose run.json and cell records nest 10000 deep (report, "
                         "compare into it)", "read as unreadable: one line, exit 2, the files left as they are")
def test_a_run_folder_nested_too_deep_is_unreadable(tmp_path, capsys):
    from llm_dit.experiments.folder import read_json

    run = tmp_path / "run"
    (run / "cells").mkdir(parents=True)
    deep = '{"a": ' * DEPTH + "1" + "}" * DEPTH
    for name in ("run.json", "metadata.json", "cells/x.json"):
        (run / name).write_text(deep)
    assert read_json(run / "run.json") is None
    assert main(["report", str(run)]) == 2
    lines = _errors(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"llm-dit: error: {run / 'run.json'} ")
    assert (run / "run.json").read_text() == deep


def test_nesting_is_measured_without_recursion():
    from llm_dit.io import MAX_NESTING, nesting, parse_json, parse_toml

    deep: dict = {}
    inner = deep
    for _ in range(100_000):
        inner["a"] = inner = {}
    assert nesting(deep) == MAX_NESTING + 1  # it stops once past the limit
    assert nesting({"a": [1, {"b": 2}]}) == 3 and nesting(5) == 0
    assert parse_toml("[a.b]\nc = [1, {d = 2}]", "f") == {"a": {"b": {"c": [1, {"d": 2}]}}}
    ok = '{"a": ' * MAX_NESTING + "1" + "}" * MAX_NESTING
    assert nesting(parse_json(ok, "f")) == MAX_NESTING


@pytest.mark.reliability("bad input", "web request bodies nested 10000 deep (as the body, the recipe, the generation "
                         "settings, the axes) to the generate, sweep, experiment and recipe endpoints",
                         "422 with one sentence; the server stays up")
@pytest.mark.parametrize("where", ["body", "recipe", "generation", "axes"])
def test_a_deep_web_body_is_422_and_the_server_stays_up(client, where):
    deep = '{"a": ' * DEPTH + "1" + "}" * DEPTH
    body = deep if where == "body" else '{"prompt": "a", "' + where + '": ' + deep + '}'
    for path in ("/api/generate", "/api/sweeps", "/api/experiments", "/api/recipe"):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, (path, r.text)
        assert r.json() == {"detail": "the request body nests deeper than 64 levels", "field": None}
    assert client.get("/api/health").status_code == 200
    # a body deep but within what JSON reads gets the usual sentences about its fields
    r = client.post("/api/generate", json={"prompt": "a", "generation": json.loads('{"a": ' * 200 + "1" + "}" * 200)})
    assert r.status_code == 422 and r.json()["field"] == "generation.a"
