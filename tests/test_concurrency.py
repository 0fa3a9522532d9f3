"""Two commands, one folder: the run folder's lock (``experiments/lock.py``) with real processes.

The same command started twice joins the first (each cell made once, by one or the other); another
run is refused in one line; a process killed while it holds the folder blocks nothing; the web app
refuses to resume a run that a command is writing. Processes are held at precise points (inside the
run, the folder locked; or once the first cell is finished) by a wrapper that waits for a file the
test writes, so nothing here depends on timing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_args import PROMPT, SMALL, check_complete

from llm_dit.cli import main

#: ``python -c _HOLDER OUT FLAGS WHERE ARGS...``: ``llm-dit ARGS``, held at WHERE until FLAGS/go exists:
#: ``start`` (inside the run, its folder locked and prepared, before a model loads) or ``cell`` (once
#: the first cell's record is in place). It first writes FLAGS/ready-PID and waits for FLAGS/start
#: (two processes let go together); FLAGS/held-PID says it is being held.
_HOLDER = r"""
import os, sys, time
out, flags, where = os.path.realpath(sys.argv[1]), sys.argv[2], sys.argv[3]
go = os.path.join(flags, "go")

def hold():
    open(os.path.join(flags, f"held-{os.getpid()}"), "w").close()
    while not os.path.exists(go):
        time.sleep(0.02)

if where == "start":
    import llm_dit.experiments.runner as runner
    real_pending = runner.run_pending
    def run_pending(*a, **k):
        if not os.path.exists(go):
            hold()
        return real_pending(*a, **k)
    runner.run_pending = run_pending
else:
    real_replace, seen = os.replace, []
    def replace(src, dst, *a, **k):
        result = real_replace(src, dst, *a, **k)
        if os.path.realpath(os.fspath(dst)).startswith(os.path.join(out, "cells") + os.sep) and not seen:
            seen.append(dst)
            hold()
        return result
    os.replace = replace
open(os.path.join(flags, f"ready-{os.getpid()}"), "w").close()
while not os.path.exists(os.path.join(flags, "start")):
    time.sleep(0.02)
from llm_dit.cli import main
sys.exit(main(sys.argv[4:]))
"""


def sweep_args(refs, out: Path, alphas: str = "0.3,0.6") -> list[str]:
    """A sweep of 5 cells and 5 pictures (no alpha 0: no cell shares another's picture)."""
    return ["sweep", "--image", refs[0], "--prompt", PROMPT, "--alphas", alphas, "--layers=-2,-6", "--out", str(out),
            *SMALL]


class Held:
    """``llm-dit`` processes started through :data:`_HOLDER`, their output in files; killed at the end."""

    def __init__(self, tmp: Path):
        self.flags = tmp / "flags"
        self.flags.mkdir()
        self.tmp, self.procs = tmp, []

    def start(self, out: Path, where: str, args: list[str]) -> subprocess.Popen:
        i = len(self.procs)
        with open(self.tmp / f"{i}.out", "w") as so, open(self.tmp / f"{i}.err", "w") as se:
            proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out), str(self.flags), where, *args],
                                    stdout=so, stderr=se, env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.procs.append(proc)
        return proc

    def output(self, proc: subprocess.Popen) -> tuple[str, str]:
        i = self.procs.index(proc)
        return (self.tmp / f"{i}.out").read_text(), (self.tmp / f"{i}.err").read_text()

    def flag(self, name: str) -> None:
        (self.flags / name).touch()

    def held(self) -> list[int]:
        """The pids of the processes being held now."""
        return [int(p.name.split("-")[1]) for p in self.flags.glob("held-*")]

    def until(self, check, what: str, timeout: float = 300):
        """Poll ``check()`` until it gives something true (a process that ends first fails the test)."""
        end = time.monotonic() + timeout
        while not (value := check()):
            for p in self.procs:
                if p.poll() is not None and p.returncode != 0:
                    pytest.fail(f"waiting for {what}, a process ended ({p.returncode}): {self.output(p)[1][-2000:]}")
            if time.monotonic() > end:
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.05)
        return value

    def finish(self, proc: subprocess.Popen) -> tuple[int, str, str]:
        rc = proc.wait(timeout=300)
        return (rc, *self.output(proc))

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def held(tmp_path):
    h = Held(tmp_path)
    yield h
    h.close()


def summary(stdout: str) -> tuple[int, int, int]:
    """``(cells, already done, pictures generated)`` of a run's summary line."""
    m = re.search(r"^(\d+) cells: (\d+) already done, (\d+) picture\(s\) generated", stdout, re.M)
    assert m, stdout
    return int(m[1]), int(m[2]), int(m[3])


@pytest.mark.reliability("faults", "the same `llm-dit sweep` started twice at the same moment on one --out",
                         "the second joins the first, saying so, and takes the cells it does not hold: both exit 0, "
                         "every cell made once in all, the folder complete, the report written by the last one")
def test_the_same_command_twice_joins_and_makes_each_cell_once(refs, tmp_path, held):
    out = tmp_path / "run"
    args = sweep_args(refs, out)
    a, b = held.start(out, "start", args), held.start(out, "start", args)
    held.until(lambda: len(list(held.flags.glob("ready-*"))) == 2, "both processes to start")
    held.flag("start")  # both let go together: one takes the folder first; both are held inside the run
    held.until(lambda: len(held.held()) == 2, "both processes inside the run")
    joined = [p for p in (a, b) if "joining the processes of the same run" in held.output(p)[1]]
    assert len(joined) == 1
    held.flag("go")
    ends = {p.pid: held.finish(p) for p in (a, b)}
    assert [rc for rc, _, _ in ends.values()] == [0, 0], [err[-2000:] for _, _, err in ends.values()]
    assert all("Traceback" not in err for _, _, err in ends.values())
    counts = [summary(stdout) for _, stdout, _ in ends.values()]
    n = counts[0][0]
    assert all(c[:2] == (n, 0) for c in counts) and sum(c[2] for c in counts) == n  # each cell generated once
    check_complete(out, n)
    run = json.loads((out / "run.json").read_text())
    assert sorted(s["pictures_generated"] for s in run["sessions"]) == sorted(c[2] for c in counts)
    reported = [stdout for _, stdout, _ in ends.values() if f"report: {out / 'report.html'}" in stdout]
    assert len(reported) == 1  # the last one out; the other says so
    assert sum("report: written by the last process of this run to finish" in s for _, s, _ in ends.values()) == 1
    assert (out / ".lock").read_bytes() == b""  # let go at the end
    assert not list((out / ".claims").iterdir())


@pytest.mark.reliability("faults", "another sweep (other alphas) started on the --out of a sweep that is running",
                         "refused in one line naming the process and asking for another --out, exit 2, nothing "
                         "written; the first run unharmed and complete")
def test_another_run_on_a_folder_being_written_is_refused_in_one_line(refs, tmp_path, held, capsys):
    out = tmp_path / "run"
    held.flag("start")
    first = held.start(out, "start", sweep_args(refs, out))
    held.until(held.held, "the first run to hold the folder")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(sweep_args(refs, out, alphas="0.2,0.4,0.8")) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("llm-dit")]
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(f"llm-dit: error: {out} is being written by another run (sweep, process {first.pid}, "
                               "started ")
    assert lines[0].endswith("); give another --out")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing written
    held.flag("go")
    rc, stdout, stderr = held.finish(first)
    assert rc == 0, stderr[-2000:]
    n = summary(stdout)[0]
    assert summary(stdout) == (n, 0, n)
    check_complete(out, n)


@pytest.mark.reliability("faults", "SIGKILL of a process holding the folder's lock (a cell finished), then the "
                         "same command", "the lock file left behind blocks nothing: the run resumes, every cell once")
def test_a_process_killed_holding_the_folder_blocks_nothing(refs, tmp_path, held, capsys):
    out = tmp_path / "run"
    args = sweep_args(refs, out)
    held.flag("start")
    proc = held.start(out, "cell", args)
    held.until(held.held, "a finished cell")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert json.loads((out / ".lock").read_text())["pid"] == proc.pid  # left as the killed process wrote it
    finished = len(list((out / "cells").glob("*.json")))
    assert finished >= 1
    assert main(args) == 0
    n, done, generated = summary(capsys.readouterr().out)
    assert (done, generated) == (finished, n - finished)
    check_complete(out, n)


@pytest.mark.reliability("faults", "the web app asked to resume a run that an `llm-dit sweep` process is writing",
                         "409 with one sentence naming the process (no job); the same run started as a job is "
                         "refused too; resumed once the process ended")
def test_the_web_app_refuses_to_resume_a_run_a_command_is_writing(refs, tmp_path, held, config):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from llm_dit.errors import FolderBusy
    from llm_dit.experiments.runner import prepare_run, run_prepared
    from llm_dit.experiments.specs import spec_from_run
    from llm_dit.web.app import create_app

    runs = tmp_path / "runs"
    out = runs / "cli"
    held.flag("start")
    proc = held.start(out, "start", sweep_args(refs, out))
    held.until(held.held, "the command to hold the run folder")
    with TestClient(create_app(config, runs, start_worker=False)) as c:
        r = c.post("/api/runs/cli/resume")
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert detail.startswith(f"the run 'cli' is being written by another process (process {proc.pid}, started ")
        assert detail.endswith("); resume it once that process has ended") and c.get("/api/jobs").json() == []
        # listed as running (a command writes it), on the list and on its page
        assert [r["status"] for r in c.get("/api/runs").json() if r["name"] == "cli"] == ["running"]
        assert c.get("/api/runs/cli").json()["status"] == "running"
        # a job that got as far as running it (the command started after the check): refused by the runner
        with pytest.raises(FolderBusy, match=rf"^{re.escape(str(out))} is being written by the same run in another "
                                             rf"process \(process {proc.pid}, started .*\); wait for it to finish, "
                                             "then run the same command again to resume$"):
            run_prepared(prepare_run(*spec_from_run(out)), out, echo=lambda m: None, progress=False)
        held.flag("go")
        rc, _, stderr = held.finish(proc)
        assert rc == 0, stderr[-2000:]
        assert c.get("/api/runs/cli").json()["status"] == "complete"
        assert c.post("/api/runs/cli/resume").status_code == 202
