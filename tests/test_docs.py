"""The manual's examples run as written, and its links lead somewhere.

README.md and docs/*.md are read block by block, in order, each page in a fresh temporary folder
holding a copy of ``examples/`` (so outputs never land in the repository):

* a fenced ``toml file=NAME`` block is written to ``NAME`` (later commands read it);
* a ``bash`` block runs command by command (continuation lines joined, comments dropped): a
  ``.venv/bin/llm-dit`` command in this process through ``llm_dit.cli.main``, which must return 0;
  any other command with bash;
* a ``python`` block runs as a script in a subprocess (this interpreter, the worktree's ``src``);
* a block that cannot run here says why in its info string, ``bash notest:KIND`` or
  ``python notest:KIND``, with KIND one of ``NOTEST``: it is listed as a skipped test with that
  reason. Other blocks (``toml`` without a file name, ``text``, bare fences) are not examples.

docs/development.md documents this convention.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from llm_dit.cli import main
from llm_dit.config import load_profiles

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Why a block may not run here. Each one is a kind of machine or set-up this CPU-only test lacks.
NOTEST = {
    "real": "needs the real models (about 20 GB from the model hub)",
    "gpu": "needs a CUDA GPU",
    "make": "sets up .venv itself (make)",
    "launch": "starts several processes (accelerate launch, torchrun)",
    "server": "starts or needs a running llm-dit serve",
    "repo": "works on the repository itself (the test suite, lint, types)",
}
# The marked blocks stay few: an example that can run on the tiny profile must run.
MAX_NOTEST = 14
# Subcommands that load models, so an example must say which ones (never the 20 GB default).
LOADS_MODELS = {"generate", "compare", "sweep", "extract", "caption", "stats", "config", "serve"}

FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.S | re.M)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str  # bash, python, toml, text, ""
    options: tuple[str, ...]  # the rest of the info string: notest:KIND, file=NAME
    body: str

    @property
    def notest(self) -> str | None:
        kinds = [o.partition(":")[2] for o in self.options if o.startswith("notest:")]
        return kinds[0] if kinds else None

    @property
    def file(self) -> str | None:
        names = [o.partition("=")[2] for o in self.options if o.startswith("file=")]
        return names[0] if names else None

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page`` in order, with the line its fence opens on."""
    text = page.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        lang, *options = m.group(1).split() or [""]
        out.append(Block(page, text.count("\n", 0, m.start()) + 1, lang, tuple(options), m.group(2)))
    return out


EXPECT = re.compile(r"#\s*exits (\d+) with: (.*)$")


def commands(body: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, blank and comment lines dropped."""
    return [cmd for cmd, _ in expected_commands(body)]


def expected_commands(body: str) -> list[tuple[str, tuple[int, str] | None]]:
    """Each command with what it must end in: a comment ``# exits N with: MESSAGE`` right before a
    command says it fails with exit code N and MESSAGE on stderr; any other command exits 0."""
    out: list[tuple[str, tuple[int, str] | None]] = []
    expect = None
    for ln in body.replace("\\\n", " ").splitlines():
        ln = ln.strip()
        if ln.startswith("#"):
            m = EXPECT.match(ln)
            expect = (int(m.group(1)), m.group(2).strip()) if m else None
        elif ln:
            out.append((ln, expect))
            expect = None
    return out


def strip_comment(cmd: str) -> str:
    """``cmd`` without a trailing `` # comment`` (outside quotes)."""
    lex = shlex.shlex(cmd, posix=True, punctuation_chars=False)
    lex.whitespace_split = True
    lex.commenters = "#"
    return shlex.join(list(lex))


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in blocks(page)]


def test_examples_are_marked_as_one_of_the_known_kinds():
    """Shell and Python examples are fenced as bash / python; marked ones are few and of a known kind."""
    found = all_blocks()
    assert not [str(b) for b in found if b.lang in {"sh", "shell", "console", "py", "python3", "zsh"}], (
        "fence shell examples as bash and Python as python, so the test runs them"
    )
    marked = [b for b in found if b.notest is not None]
    assert all(b.notest in NOTEST for b in marked), [(str(b), b.notest) for b in marked if b.notest not in NOTEST]
    assert not [str(b) for b in marked if b.lang not in {"bash", "python"}], "notest marks shell or Python only"
    assert len(marked) <= MAX_NOTEST, f"{len(marked)} examples do not run: {[str(b) for b in marked]}"
    runnable = [b for b in found if b.lang in {"bash", "python"} and b.notest is None]
    assert len(runnable) >= 20, "the pages lost their examples"


def test_every_model_loading_command_names_its_profile():
    """A copy-paste command never falls back to the 20 GB default profile by accident: it names
    ``--profile tiny`` or a profile of its own (which must then run on the tiny models to pass)."""
    real = set(load_profiles()) - {"tiny"}
    missing = []
    for b in all_blocks():
        if b.lang != "bash" or b.notest is not None:
            continue
        for cmd in commands(b.body):
            argv = shlex.split(strip_comment(cmd))
            if argv[0].endswith("llm-dit") and argv[1] in LOADS_MODELS and "--from" not in argv:
                if "--profile" not in argv or argv[argv.index("--profile") + 1] in real:
                    missing.append(f"{b}: {cmd}")
    assert not missing, missing


@pytest.mark.parametrize("block", [b for b in all_blocks() if b.notest is not None], ids=str)
def test_marked_examples_are_skipped(block):
    pytest.skip(f"{block} ({block.lang} notest:{block.notest}): {NOTEST.get(block.notest, 'unknown kind')}")


def run_bash(cmd: str, expect: tuple[int, str] | None, cwd: Path, env: dict[str, str], capsys) -> None:
    """One command of a bash block: llm-dit in this process, anything else with bash."""
    argv = shlex.split(strip_comment(cmd))
    if argv[0] == ".venv/bin/llm-dit" and not re.search(r"[|;&<>`$]", strip_comment(cmd)):
        capsys.readouterr()
        rc = main(argv[1:])
        out, err = capsys.readouterr()
    else:
        done = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        rc, out, err = done.returncode, done.stdout, done.stderr
    code, message = expect or (0, "")
    assert rc == code, f"{cmd}\nexit {rc}, the page says {code}\n{out}\n{err}"
    assert message in err, f"{cmd}\nstderr lacks the page's {message!r}:\n{err}"
    if code == 0 and argv[1:2] in (["compare"], ["sweep"]):
        assert "report:" in out, f"{cmd} printed no report path:\n{out}"


# One interpreter per page runs its python blocks in order, each as its own ``__main__`` script (a
# fresh namespace, as when pasted alone): the imports are paid once per page, not once per block.
RUNNER = """
import runpy, sys, traceback
for script in sys.argv[1:]:
    try:
        runpy.run_path(script, run_name="__main__")
    except BaseException:
        traceback.print_exc()
        print("FAILED " + script, file=sys.stderr)
        sys.exit(1)
"""


def run_python(scripts: list[tuple[Block, Path]], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-c", RUNNER, *[str(p) for _, p in scripts]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    failed = [str(b) for b, p in scripts if f"FAILED {p}" in done.stderr]
    assert done.returncode == 0, f"{failed or [str(b) for b, _ in scripts]}\n{done.stdout}\n{done.stderr}"


# A page runs all its examples in order (later commands read what earlier ones wrote); docs/cli.md has
# about 35 commands, over the suite's 300 s per test on a busy 2-core machine.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_examples_run(page, tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    for name in (".venv", "bench", "experiments"):  # `.venv/bin/python bench/...` lines work as in the repository
        (tmp_path / name).symlink_to(ROOT / name)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.chdir(tmp_path)
    ran = 0
    scripts: list[tuple[Block, Path]] = []  # run after the page's shell examples, whose files they may read
    for block in blocks(page):
        if block.notest is not None:
            continue
        if block.file is not None:
            (tmp_path / block.file).write_text(block.body, encoding="utf-8")
        elif block.lang == "bash":
            for cmd, expect in expected_commands(block.body):
                run_bash(cmd, expect, tmp_path, env, capsys)
                ran += 1
        elif block.lang == "python":
            script = tmp_path / f"example_{page.stem}_{block.line}.py"
            script.write_text(block.body, encoding="utf-8")
            scripts.append((block, script))
            ran += 1
    if scripts:
        run_python(scripts, tmp_path, env)
    assert ran, f"{page.name} shows no example that runs"


# --- links ---------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, broken


def test_the_readme_stays_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines (at most 200; the rest belongs in docs/)"
    first = next(b for b in blocks(ROOT / "README.md") if b.lang == "bash")
    assert [c.split()[:2] for c in commands(first.body)] == [["make", "demo"], ["make", "test"]]
