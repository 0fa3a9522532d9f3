"""RELIABILITY.md, produced from the tests: what was tried against llm-dit, how often, and how it ended.

A test that belongs in the table carries ``@pytest.mark.reliability(area, tried, expected)``: the
area (bad input, faults, reproducibility), what it throws at the tool, and what must happen. Each
parametrized case counts once; a hypothesis test counts its generated examples. With
``LLM_DIT_RELIABILITY=FILE`` set (``make reliability`` does it) the session writes the table to FILE.
"""

from __future__ import annotations

import os
import platform
import sys
from collections import defaultdict
from datetime import date

import pytest

COMMAND = "make reliability"
AREAS = ("bad input", "faults", "reproducibility")


class Collector:
    """Outcomes of the marked tests of one session, grouped by (area, tried, expected)."""

    def __init__(self) -> None:
        self.rows: dict[tuple, dict] = defaultdict(lambda: {"cases": 0, "examples": 0, "passed": 0, "failed": 0,
                                                            "skipped": 0, "tests": set()})
        self.keys: dict[str, list[tuple]] = {}  # test id -> its rows (a test may show two things)
        self.examples: dict[str, int] = {}  # test id -> hypothesis examples run

    def item(self, item) -> None:
        for mark in reversed(list(item.iter_markers("reliability"))):  # in the order they are written
            area, tried, expected = mark.args
            if area not in AREAS:
                raise ValueError(f"{item.nodeid}: reliability area must be one of {AREAS} (got {area!r})")
            self.keys.setdefault(item.nodeid, []).append((area, tried, expected))
            self.rows[(area, tried, expected)]["tests"].add(item.nodeid.split("[")[0])

    def report(self, report) -> None:
        if not (report.when == "call" or report.skipped or report.failed):
            return
        for key in self.keys.get(report.nodeid, []):
            row = self.rows[key]
            if report.when == "call" or report.skipped:
                row["cases"] += 1
                row["examples"] += self.examples.get(report.nodeid, 1)
            outcome = "skipped" if report.skipped else "failed" if report.failed else "passed"
            if report.when == "call" or outcome != "passed":
                row[outcome] += 1

    def write(self, path: str) -> None:
        import hypothesis
        import torch

        lines = [
            "# Reliability: what was tried, and the outcome",
            "",
            f"Produced by the test suite: `{COMMAND}` (it runs the tests marked `reliability` and writes",
            "this file). Each row is one kind of input or fault: how many cases were tried (each",
            "parametrized case once; hypothesis tests count their generated examples, derandomized, so",
            "every run tries the same ones), what must happen, and what happened.",
            "",
            f"Last produced {date.today().isoformat()} on {platform.system()} {platform.machine()}, Python "
            f"{platform.python_version()}, torch {torch.__version__}, hypothesis {hypothesis.__version__}.",
        ]
        for area in AREAS:
            rows = [(k, v) for k, v in self.rows.items() if k[0] == area]
            if not rows:
                continue
            lines += ["", f"## {area[0].upper() + area[1:]}", "",
                      "| what was tried | cases | what must happen | outcome | tests |", "|---|---|---|---|---|"]
            for (_, tried, expected), r in rows:
                cases = f"{r['cases']}" if r["examples"] == r["cases"] else f"{r['cases']} ({r['examples']} examples)"
                outcome = "not run" if not r["cases"] else "all passed" if not (r["failed"] or r["skipped"]) else \
                    f"{r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped"
                tests = ", ".join(f"`{t.removeprefix('tests/')}`" for t in sorted(r["tests"]))
                lines.append(f"| {tried} | {cases} | {expected} | {outcome} | {tests} |")
        total = sum(r["examples"] for r in self.rows.values())
        failed = sum(r["failed"] for r in self.rows.values())
        lines += ["", f"In all: {total} cases and examples, {failed} failed.", ""]
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines))
        os.replace(tmp, path)
        print(f"\nreliability table: {path}", file=sys.stderr)


COLLECTOR = Collector()


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "reliability(area, tried, expected): a row of RELIABILITY.md")


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        COLLECTOR.item(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Count a hypothesis test's examples: its inner test wrapped for the length of this call."""
    hyp = getattr(item.obj, "hypothesis", None)
    if hyp is None or item.nodeid not in COLLECTOR.keys:
        yield
        return
    inner = hyp.inner_test

    def counted(*a, **k):
        COLLECTOR.examples[item.nodeid] = COLLECTOR.examples.get(item.nodeid, 0) + 1
        return inner(*a, **k)

    hyp.inner_test = counted
    try:
        yield
    finally:
        hyp.inner_test = inner


def pytest_runtest_logreport(report) -> None:
    COLLECTOR.report(report)


def pytest_sessionfinish(session) -> None:
    path = os.environ.get("LLM_DIT_RELIABILITY")
    if path and any(r["cases"] for r in COLLECTOR.rows.values()):  # nothing ran (a collection error): no table
        COLLECTOR.write(path)
