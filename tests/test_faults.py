"""Faults: a run killed (SIGKILL) at many points, then re-run, loses nothing and repeats nothing.

Every file of a run folder is written to a temporary name and renamed, so the points where a kill
changes what is on disk are those renames. The killed process counts the renames into its run folder
and kills itself at the K-th, just before it (a temporary left behind) or just after (the file in
place, nothing after it): ten different K, each in a fresh process, each followed by a re-run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from run_args import check_complete, compare_args

from llm_dit.cli import main

#: (K, before or after the rename): from the run's first file to its report.
KILL_POINTS = [(1, "after"), (2, "before"), (3, "after"), (4, "before"), (6, "after"), (8, "before"),
               (11, "after"), (14, "before"), (17, "after"), (20, "before")]

_KILLER = """
import os, signal, sys, threading
out = os.path.realpath(sys.argv[1]); k = int(sys.argv[2]); when = sys.argv[3]
real, seen, lock = os.replace, [0], threading.Lock()
def replace(src, dst, *a, **kw):
    if not os.path.realpath(os.fspath(dst)).startswith(out + os.sep):
        return real(src, dst, *a, **kw)
    with lock:  # renames come from several threads (cells are finished and written beside the GPU)
        seen[0] += 1
        n = seen[0]
    if n == k and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    result = real(src, dst, *a, **kw)
    if n == k:
        os.kill(os.getpid(), signal.SIGKILL)
    return result
os.replace = replace
from llm_dit.cli import main
sys.exit(main(sys.argv[4:]))
"""


@pytest.mark.reliability('faults', "SIGKILL at 10 different points of a 4-cell run (just before or after a file's "
                         "rename, from run.json to the report), then the same command",
                         'every cell exactly once, every PNG whole, metadata.json valid and in agreement with the '
                         'files, no temporary left')
@pytest.mark.parametrize("k, when", KILL_POINTS)
def test_killed_at_a_rename_then_rerun_loses_and_repeats_nothing(refs, tmp_path, capsys, k, when):
    out = tmp_path / "run"
    args = compare_args("alpha_sweep", refs, out)
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(out), str(k), when, *args], capture_output=True,
                          env=os.environ.copy(), timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"not killed at rename {k}: {proc.stderr[-500:]!r}"
    done_before = {p.stem for p in (out / "cells").glob("*.json")} if (out / "cells").is_dir() else set()
    assert main(args) == 0
    summary = [ln for ln in capsys.readouterr().out.splitlines() if " cells: " in ln][0]
    assert summary.startswith(f"4 cells: {len(done_before)} already done")
    check_complete(out, 4)


def _oom(*a, **k):
    import torch

    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 15.7 GiB total)")


@pytest.mark.reliability('faults', 'CUDA out of memory (simulated) in generate and in every cell of a run',
                         'one line naming the profile that fits; failed cells recorded, exit 1')
def test_out_of_gpu_memory_is_one_line_naming_the_profile_that_fits(refs, tmp_path, capsys, monkeypatch):
    from llm_dit.generate import ZImage

    monkeypatch.setattr(ZImage, "generate", _oom)
    out = tmp_path / "one.png"
    assert main(["generate", "--profile", "tiny", "--prompt", "a cat", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llm-dit: error: out of GPU memory") and "--profile rtx4090" in err[0]
    assert "Traceback" not in err[0] and not out.exists()
    import torch

    from llm_dit.models.classes import out_of_memory_message

    already = out_of_memory_message(torch.cuda.OutOfMemoryError("CUDA out of memory"), "group_block")
    assert "make smaller pictures" in already  # already offloaded: a smaller size is the way
    assert out_of_memory_message(RuntimeError("shapes do not match")) is None

    run = tmp_path / "run"  # in a run: each cell fails with that sentence, the run says so at the end
    assert main(compare_args("alpha_sweep", refs, run)) == 1
    err = capsys.readouterr().err
    assert "llm-dit: error: 4 of 4 cells failed" in err and "Traceback" not in err
    meta = json.loads((run / "metadata.json").read_text())
    assert all(r["status"] == "failed" and r["error"].startswith("out of GPU memory") for r in meta["results"])


@pytest.mark.parametrize("card_gib,profile", [(79.6, "rtx4090"), (23.6, "rtx4090"), (15.6, "16gb"),
                                              (11.6, "12gb"), (7.6, "low_vram"), (5.8, None)])
def test_out_of_memory_advice_names_the_class_that_fits_the_card(monkeypatch, card_gib, profile):
    """The class named is the largest whose cap plus a GiB for the CUDA context fits the card, with
    that class's measured peak (the table `llm-dit profiles` prints)."""
    import torch

    from llm_dit.models.classes import CLASSES, out_of_memory_message

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: type("Props", (), {"total_memory": int(card_gib * 2**30)})())
    msg = out_of_memory_message(torch.cuda.OutOfMemoryError("CUDA out of memory"), "encoder")
    assert msg is not None and f"this GPU's {card_gib:.0f} GiB" in msg and "\n" not in msg
    if profile is None:
        assert "even --profile low_vram" in msg and "smaller pictures" in msg
    else:
        peak = next(c.peak_gib for c in CLASSES if c.profile == profile)
        assert f"--profile {profile}, which peaked at {peak:.1f} GiB" in msg


def _fail_writes_after(monkeypatch, k: int, err: int) -> None:
    """Every file written through ``atomic_path`` after the k-th fails with ``err`` (a full disk, a
    folder that became read-only: as root, a chmod would not stop the writes)."""
    import contextlib
    import errno

    import llm_dit.images
    import llm_dit.io

    real, seen = llm_dit.io.atomic_path, [0]

    @contextlib.contextmanager
    def failing(path, durable=True):
        seen[0] += 1
        if seen[0] > k:
            raise OSError(err, os.strerror(err), str(Path(path).parent / f".{Path(path).name}.x1y2z3.tmp"))
        with real(path, durable) as tmp:
            yield tmp

    assert err in (errno.ENOSPC, errno.EROFS)
    monkeypatch.setattr(llm_dit.io, "atomic_path", failing)
    monkeypatch.setattr(llm_dit.images, "atomic_path", failing)


@pytest.mark.reliability("faults", "a full disk (after 1, 4, 9 and 20 files of a 4-cell run) and a folder that turns "
                         "read-only (after 6), then the same command with room again",
                         "stops at the first failed write with one line naming the folder, the file and the reason, "
                         "exit 1, no traceback; the re-run finishes every cell once")
@pytest.mark.parametrize("k, err", [(1, "ENOSPC"), (4, "ENOSPC"), (9, "ENOSPC"), (20, "ENOSPC"), (6, "EROFS")])
def test_a_full_disk_or_read_only_folder_stops_the_run_in_one_line_and_it_resumes(refs, tmp_path, capsys,
                                                                                    monkeypatch, k, err):
    import errno

    out = tmp_path / "run"
    args = compare_args("alpha_sweep", refs, out)
    with monkeypatch.context() as m:
        _fail_writes_after(m, k, getattr(errno, err))
        assert main(args) == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("llm-dit")]
    assert len(lines) == 1 and lines[0].startswith(f"llm-dit: error: cannot write into the run folder {out} (")
    assert os.strerror(getattr(errno, err)) in lines[0]
    assert ".tmp" not in lines[0] and "run the same command" in lines[0]
    assert main(args) == 0
    check_complete(out, 4)
