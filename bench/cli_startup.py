"""Start-up of the commands that load no model: wall and CPU time of a fresh ``llm-dit`` process.

    PYTHONPATH=src python bench/cli_startup.py [--repeats 7] [--out DIR]

Each command runs ``--repeats`` times in a new interpreter (``python -m llm_dit``, stdout to
/dev/null); the table gives the median and the fastest wall time, and the median CPU time (user +
system of the child). CPU time is the steadier number on a shared machine: wall time also counts the
time other processes hold the cores. The bare interpreter (``python -c pass``) is the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

COMMANDS = [["--help"], ["--version"], ["experiments"], ["profiles"], ["config"]]


def _time(argv: list[str]) -> tuple[float, float]:
    """``(wall seconds, CPU seconds)`` of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", metavar="DIR", help="also write cli_startup.json and cli_startup.md here")
    args = p.parse_args()
    src = Path(__file__).resolve().parent.parent / "src"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])
    rows = []
    for name, argv in [("python -c pass", [sys.executable, "-c", "pass"])] + [
            ("llm-dit " + " ".join(c), [sys.executable, "-m", "llm_dit", *c]) for c in COMMANDS]:
        runs = [_time(argv) for _ in range(args.repeats)]
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        rows.append([name, f"{statistics.median(walls):.3f}", f"{min(walls):.3f}", f"{statistics.median(cpus):.3f}"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = ["command", "wall median (s)", "wall min (s)", "CPU median (s)"]
    lines = [f"# CLI start-up, {date.today()}, {platform.node() or 'this machine'}: {os.cpu_count()} cores, "
             f"load {load:.1f}, Python {platform.python_version()}, {args.repeats} runs each", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    table = "\n".join(lines)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "cli_startup.md").write_text(table + "\n")
        (out / "cli_startup.json").write_text(json.dumps({"header": header, "rows": rows, "load": load,
                                                          "repeats": args.repeats,
                                                          "command": "python bench/cli_startup.py"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
