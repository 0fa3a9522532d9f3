"""Claims on a run's cells (experiments/claims.py): several processes and hosts pulling one folder's
cells, each made once; a killed holder's cell taken over when its lease expires."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llm_dit.experiments.claims import CLAIMS_DIR, CellClaims

#: One worker: pull every cell of NAMES until all are made; making a cell is creating made/NAME
#: exclusively (a second make of one cell would find it there and is written to dups/).
WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from llm_dit.experiments.claims import CellClaims

    out, host, names = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split(",")
    lease, hang = float(sys.argv[4]), sys.argv[5]
    made = out / "made"
    made.mkdir(exist_ok=True)
    (out / "dups").mkdir(exist_ok=True)
    with CellClaims(out, lease_s=lease, host=host) as claims:
        while not all((made / n).exists() for n in names):
            for n in names:
                if (made / n).exists() or not claims.claim(n):
                    continue
                if (made / n).exists():  # finished between the look and the claim
                    claims.release(n)
                    continue
                if n == hang:  # killed mid-cell: holds the claim, never makes it
                    print("holding", n, flush=True)
                    time.sleep(3600)
                time.sleep(0.01)  # the work
                if not claims.owns(n):  # taken over while this process was slow: not recorded twice
                    continue
                try:
                    fd = os.open(made / n, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                    os.write(fd, host.encode())
                    os.close(fd)
                except FileExistsError:
                    (out / "dups" / f"{n}.{os.getpid()}").touch()
                claims.release(n)
            time.sleep(0.02)
""")

NAMES = [f"cell_{i:02d}" for i in range(24)]


def start(out: Path, host: str, lease: float = 30.0, hang: str = "-") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, str(out), host, ",".join(NAMES), str(lease), hang],
                            stdout=subprocess.PIPE, text=True)


def made(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in (out / "made").iterdir()}


def test_three_workers_make_every_cell_exactly_once(tmp_path):
    workers = [start(tmp_path, f"host{i}") for i in range(3)]
    for w in workers:
        assert w.wait(timeout=120) == 0
    assert sorted(made(tmp_path)) == NAMES
    assert not list((tmp_path / "dups").iterdir())
    assert not list((tmp_path / CLAIMS_DIR).iterdir())  # every claim released


def test_a_killed_workers_cell_is_made_by_another_once_its_lease_expires(tmp_path):
    lease = 1.0
    hung = start(tmp_path, "hostA", lease, hang="cell_00")
    assert hung.stdout is not None and hung.stdout.readline().split() == ["holding", "cell_00"]
    os.kill(hung.pid, signal.SIGKILL)
    hung.wait()
    other = start(tmp_path, "hostB", lease)
    assert other.wait(timeout=120) == 0  # it waited for the dead claim's lease, then made cell_00
    assert sorted(made(tmp_path)) == NAMES and set(made(tmp_path).values()) == {"hostB"}
    assert not list((tmp_path / "dups").iterdir())


def test_a_live_lease_is_respected_and_an_expired_one_taken_over(tmp_path):
    """Two hosts sharing one folder: B cannot take A's renewed claim; once A stops renewing, B takes
    it over at the next generation, and A, renewing late, learns that it lost the cell."""
    a = CellClaims(tmp_path, lease_s=0.4, host="hostA", worker="hostA:1")
    b = CellClaims(tmp_path, lease_s=0.4, host="hostB", worker="hostB:2")
    assert a.claim("x") and a.owns("x")
    assert not b.claim("x")
    for _ in range(4):  # A renews: its lease stays alive past several lease lengths
        time.sleep(0.15)
        a.renew()
        assert not b.claim("x")
    time.sleep(0.5)  # A stops renewing: expired
    assert b.claim("x") and b.owns("x")
    claim = b.current("x")
    assert claim is not None and claim.gen == 1 and claim.holder["took_over"] == "hostA:1"
    assert not a.owns("x")
    a.renew()
    assert a.lost() == {"x"} and "x" not in a.held
    b.release("x")
    assert b.current("x") is None
    assert a.claim("x")  # released: free again, from generation 0
    a.stop()
    assert not list((tmp_path / CLAIMS_DIR).iterdir())


def test_one_winner_among_many_for_an_expired_claim(tmp_path):
    holder = CellClaims(tmp_path, lease_s=0.2, worker="gone:1")
    assert holder.claim("x")
    time.sleep(0.3)
    racers = [CellClaims(tmp_path, lease_s=0.2, worker=f"r:{i}") for i in range(8)]
    won = [r for r in racers if r.claim("x")]
    assert len(won) == 1
    files = os.listdir(tmp_path / CLAIMS_DIR)
    assert files == ["1.x"] and json.loads((tmp_path / CLAIMS_DIR / "1.x").read_text())["worker"] == won[0].worker


@pytest.mark.parametrize("name", ["a.b", "7.x", "cell with spaces"])
def test_cell_names_with_dots_and_digits_round_trip(tmp_path, name):
    c = CellClaims(tmp_path, lease_s=5)
    assert c.claim(name) and c.current(name) is not None and c.current(name).name == name
    other = CellClaims(tmp_path, lease_s=5, worker="other:1")
    assert not other.claim(name)
    c.release(name)
    assert other.claim(name)


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b"])
def test_a_claim_name_that_would_leave_the_claims_folder_is_refused(tmp_path, name):
    with pytest.raises(ValueError, match="a claim's name is a file name"):
        CellClaims(tmp_path / "run").claim(name)
    assert not (tmp_path / "x").exists() and not (tmp_path / "run").exists()
