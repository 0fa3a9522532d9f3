"""The manual's examples run as written (docs/*.md: every `.venv/bin/llm-dit` line of a bash block)."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from llm_dit.cli import main

ROOT = Path(__file__).resolve().parent.parent


def commands(doc: Path) -> list[str]:
    """The llm-dit commands of ``doc``'s bash blocks, continuation lines joined, comments dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", doc.read_text(encoding="utf-8"), re.S):
        text = block.replace("\\\n", " ")
        out += [ln.split(" #")[0].strip() for ln in text.splitlines() if ln.strip().startswith(".venv/bin/llm-dit")]
    return out


@pytest.mark.parametrize("doc", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_the_docs_examples_run(doc, tmp_path, monkeypatch, capsys):
    cmds = commands(doc)
    assert cmds, f"{doc.name} shows no command"
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    for cmd in cmds:
        assert main(shlex.split(cmd)[1:]) == 0, cmd
        out = capsys.readouterr().out
        assert "report:" in out, cmd
