"""Several processes pulling the cells of one run folder (experiments/claims.py, lock.enter): the
same `llm-dit sweep` started on several "hosts" (``LLM_DIT_HOST``) joins one run; every cell is made
once, by whichever process claimed it, with the pictures and records of a one-process run; a process
killed mid-cell leaves a claim that expires, and another makes the cell."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_args import PROMPT, SMALL, check_complete

#: ``python -c _WORKER FLAGS HOLD_AT ARGS...``: ``llm-dit ARGS``; with HOLD_AT = k > 0, the k-th
#: picture is never made: the process writes FLAGS/held-PID and sleeps there (it is then killed).
#: Every process waits for FLAGS/start first, so they begin together.
_WORKER = r"""
import os, sys, time
flags, hold_at = sys.argv[1], int(sys.argv[2])
if hold_at:
    from llm_dit.generate import ZImage
    real, calls = ZImage.generate, []
    def generate(self, *a, **k):
        calls.append(1)
        if len(calls) == hold_at:
            open(os.path.join(flags, f"held-{os.getpid()}"), "w").close()
            time.sleep(3600)
        return real(self, *a, **k)
    ZImage.generate = generate
while not os.path.exists(os.path.join(flags, "start")):
    time.sleep(0.02)
from llm_dit.cli import main
sys.exit(main(sys.argv[3:]))
"""


def sweep_args(refs, out: Path) -> list[str]:
    """13 cells, 13 pictures: the pure-text baseline and 4 alphas x 3 layers (no alpha 0, so no cell
    shares another's picture)."""
    return ["sweep", "--image", refs[0], "--prompt", PROMPT, "--alphas", "0.2,0.4,0.6,0.8", "--layers=-2,-6,-10",
            "--out", str(out), *SMALL]


def start(tmp: Path, host: str, args: list[str], hold_at: int = 0, lease: float = 120.0) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LLM_DIT_HOST": host, "LLM_DIT_LEASE_S": str(lease)}
    with open(tmp / f"{host}.out", "w") as so, open(tmp / f"{host}.err", "w") as se:
        return subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp / "flags"), str(hold_at), *args],
                                stdout=so, stderr=se, env=env)


def finish(tmp: Path, host: str, proc: subprocess.Popen) -> str:
    rc = proc.wait(timeout=600)
    err = (tmp / f"{host}.err").read_text()
    assert rc == 0 and "Traceback" not in err, err[-3000:]
    return (tmp / f"{host}.out").read_text()


@pytest.fixture(scope="module")
def one_process(refs, tmp_path_factory):
    """The oracle: the same sweep made by one process alone, started as the workers are (the same
    threads: the CPU's sums depend on how many share them)."""
    tmp = tmp_path_factory.mktemp("one")
    (tmp / "flags").mkdir()
    (tmp / "flags" / "start").touch()
    out = tmp / "run"
    finish(tmp, "solo", start(tmp, "solo", sweep_args(refs, out)))
    return out


def same_as_one_process(out: Path, one: Path) -> int:
    """Every cell's PNG byte-identical to the one-process run's, and its record's numbers (conditioning,
    metrics) equal; the number of cells."""
    meta = check_complete(out, len(json.loads((one / "metadata.json").read_text())["results"]))
    for r in meta["results"]:
        assert (out / r["file"]).read_bytes() == (one / r["file"]).read_bytes(), r["name"]
        mine, theirs = (json.loads((d / "cells" / f"{r['name']}.json").read_text()) for d in (out, one))
        for rec in (mine, theirs):
            rec["conditioning"].pop("generation_time")  # seconds: the one field that may differ
        for k in ("cell_key", "generation_key", "fingerprint", "conditioning", "metrics"):
            assert mine[k] == theirs[k], (r["name"], k)
    return len(meta["results"])


@pytest.mark.reliability("faults", "the same sweep started on three hosts sharing one --out (LLM_DIT_HOST)",
                         "the three join one run and pull its cells: every cell made once in all, pictures and records "
                         "identical to one process's, the report written once by the last process out")
def test_three_hosts_pull_one_runs_cells_once(refs, tmp_path, one_process):
    (tmp_path / "flags").mkdir()
    out = tmp_path / "run"
    hosts = ["host0", "host1", "host2"]
    procs = {h: start(tmp_path, h, sweep_args(refs, out)) for h in hosts}
    (tmp_path / "flags" / "start").touch()
    outputs = {h: finish(tmp_path, h, p) for h, p in procs.items()}
    n = same_as_one_process(out, one_process)
    run = json.loads((out / "run.json").read_text())
    sessions = run["sessions"]
    assert sorted(s["worker"].split(":")[0] for s in sessions) == hosts
    assert sum(s["pictures_generated"] for s in sessions) == n  # each picture made once, in all
    assert sum(f"report: {out / 'report.html'}" in o for o in outputs.values()) == 1
    assert (out / ".lock").read_bytes() == b"" and not list((out / ".claims").iterdir())


@pytest.mark.reliability("faults", "one of two hosts SIGKILLed while making a picture (its claim held)",
                         "its claim expires after the lease and the other host makes the cell: every cell once, "
                         "pictures and records identical to one process's, the report written")
def test_a_host_killed_mid_cell_leaves_its_cell_to_another(refs, tmp_path, one_process):
    (tmp_path / "flags").mkdir()
    out = tmp_path / "run"
    lease = 2.0
    a = start(tmp_path, "hostA", sweep_args(refs, out), hold_at=2, lease=lease)  # killed in its 2nd picture
    (tmp_path / "flags" / "start").touch()
    end = time.monotonic() + 300
    while not list((tmp_path / "flags").glob("held-*")):
        assert a.poll() is None, (tmp_path / "hostA.err").read_text()[-3000:]
        assert time.monotonic() < end, "hostA never reached its second picture"
        time.sleep(0.05)
    claimed = [p.name.split(".", 1)[1] for p in (out / ".claims").iterdir()]
    assert claimed  # the picture being made (and the next batch, blended beside it)
    a.send_signal(signal.SIGKILL)
    assert a.wait(timeout=60) == -signal.SIGKILL
    made_by_a = len(list((out / "cells").glob("*.json")))  # its first picture, if finished before the kill
    assert made_by_a <= 1
    b = start(tmp_path, "hostB", sweep_args(refs, out), lease=lease)  # another host: only the lease tells
    stdout = finish(tmp_path, "hostB", b)
    n = same_as_one_process(out, one_process)
    assert f"report: {out / 'report.html'}" in stdout
    sessions = json.loads((out / "run.json").read_text())["sessions"]
    assert [s["worker"].split(":")[0] for s in sessions] == ["hostB"]  # hostA, killed, left no account
    assert sessions[0]["pictures_generated"] == n - made_by_a
    assert not list((out / ".claims").iterdir())


def run_workers(tmp: Path, args: list[str], **kw) -> subprocess.Popen:
    """``llm-dit ARGS`` as a user types it (the console entry point's ``python -m llm_dit``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "llm_dit", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kw)


def test_workers_flag_starts_processes_that_make_every_cell_once(refs, tmp_path, one_process):
    out = tmp_path / "run"
    proc = run_workers(tmp_path, [*sweep_args(refs, out), "--workers", "3"])
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr[-3000:]
    assert "starting 3 workers on the CPU (no GPU is visible)" in stderr
    # one summary, the workers' added up, and the report that the last of them wrote
    assert stdout.count("picture(s) generated") == 1, stdout
    assert "13 cells: 0 already done, 13 picture(s) generated, 0 failed" in stdout
    assert stdout.rstrip().endswith(f"report: {out / 'report.html'}")
    same_as_one_process(out, one_process)
    sessions = json.loads((out / "run.json").read_text())["sessions"]
    assert len(sessions) == 3 and len({s["worker"] for s in sessions}) == 3
    assert sum(s["pictures_generated"] for s in sessions) == 13
    assert not list((out / ".claims").iterdir())


@pytest.mark.parametrize("workers, says", [
    ("0", "--workers takes a number of processes (1 or more) or 'auto', not '0'"),
    ("two", "--workers takes a number of processes (1 or more) or 'auto', not 'two'"),
])
def test_workers_flag_refuses_a_count_that_is_not_one(refs, tmp_path, capsys, workers, says):
    from llm_dit.cli import main

    out = tmp_path / "run"
    assert main([*sweep_args(refs, out), "--workers", workers]) == 2
    assert capsys.readouterr().err.strip() == f"llm-dit: error: {says}"
    assert not out.exists()


def test_workers_flag_checks_the_command_once_before_starting_any(refs, tmp_path, capsys):
    from llm_dit.cli import main

    out = tmp_path / "run"
    assert main([*sweep_args(refs, out), "--workers", "2", "--image", str(tmp_path / "missing.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("llm-dit: error:") == 1 and "missing.png" in err and "starting" not in err
    assert not out.exists()


def test_workers_flag_does_not_go_with_trials(refs, tmp_path, capsys):
    from llm_dit.cli import main

    out = tmp_path / "run"
    assert main(["sweep", "--images", *refs, "--prompt", PROMPT, "--alphas", "0.3,0.6", "--out", str(out), *SMALL,
                 "--workers", "2"]) == 2
    assert "--workers runs the cells of one run" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.reliability("faults", "Ctrl-C to `sweep --workers 2` (the parent alone, as a terminal sends it)",
                         "each worker stops and writes its session, exit 130, no worker left running; the same "
                         "command finishes the run with one process's pictures")
def test_a_ctrl_c_to_the_workers_parent_stops_every_worker_and_the_run_resumes(refs, tmp_path, one_process):
    out = tmp_path / "run"
    args = [*sweep_args(refs, out), "--workers", "2"]
    proc = run_workers(tmp_path, args)
    end = time.monotonic() + 300
    while not (out / "cells").is_dir() or not list((out / "cells").glob("*.json")):
        assert proc.poll() is None and time.monotonic() < end, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # to the parent only: the workers run in their own process group
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.rstrip().endswith("llm-dit: interrupted")
    sessions = json.loads((out / "run.json").read_text())["sessions"]
    assert len(sessions) == 2  # both workers stopped through their finally blocks
    assert not list((out / ".claims").iterdir())
    done = sum(s["cells_run"] for s in sessions)
    proc = run_workers(tmp_path, args)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert f"13 cells: {done} already done, {13 - done} picture(s) generated" in stdout
    same_as_one_process(out, one_process)
