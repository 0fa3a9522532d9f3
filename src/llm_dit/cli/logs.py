"""What the command line shows on stderr: the ``llm_dit`` logger's level (``-v``/``-q``) and the few
messages of other libraries it hides.

The library logs through ``logging.getLogger("llm_dit")`` and its per-module children and installs
no handler (a program that imports it decides). The command line installs one handler on stderr:

* default: INFO, the progress lines people see today (``extract 1/1: vl: ...``, ``loading Qwen3-VL``);
* ``-v``: DEBUG as well; ``-q``: warnings and errors only; ``-qq``: errors only.

The flags are taken from anywhere on the line (before or after the subcommand): they are removed
from the argument list before argparse reads it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable

#: Each verbosity flag and the steps it moves the level (one step = 10, logging's spacing).
VERBOSITY_FLAGS = {"-v": -1, "--verbose": -1, "-vv": -2, "-q": 1, "--quiet": 1, "-qq": 2}
#: The level with no flag: INFO, so progress messages stay visible as they were.
DEFAULT_LEVEL = logging.INFO

#: Library messages the command line hides, by library (their loggers' handlers drop them), each
#: named by the start of its text; every other message of these libraries shows. Until 0.1.0 the
#: command line set transformers and diffusers to errors only and ignored every FutureWarning and
#: UserWarning. With both off, every command on the tiny profile (generate text / vl / splice /
#: img2img / caption-tokens, caption, extract, the three stats, a compare run; 2026-12-05) met no
#: Python warning and no library log record at all; a hub id that cannot be reached met this one:
QUIET_LOG_MESSAGES: dict[str, tuple[str, ...]] = {
    # diffusers retries from its cache; then llm-dit says in one line why the load failed (ending
    # "no weights here? try --profile tiny")
    "diffusers": (r"Couldn't connect to the Hub: ",),
}


def split_verbosity(argv: list[str]) -> tuple[list[str], int]:
    """``(argv without the verbosity flags, the level they ask for)``; flags after ``--`` are arguments."""
    rest, steps = [], 0
    for i, a in enumerate(argv):
        if a == "--":
            rest += argv[i:]
            break
        if a in VERBOSITY_FLAGS:
            steps += VERBOSITY_FLAGS[a]
        else:
            rest.append(a)
    return rest, min(max(DEFAULT_LEVEL + 10 * steps, logging.DEBUG), logging.CRITICAL)


class _Stderr(logging.StreamHandler):
    """A handler on whatever ``sys.stderr`` is when a record comes (tests swap it per test)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ sets it; the property reads sys.stderr instead
        pass


class _Format(logging.Formatter):
    """INFO as the bare message (as the progress lines always read); others say their level."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return text if record.levelno == logging.INFO else f"{record.levelname.lower()}: {text}"


def setup(level: int) -> Callable[[], None]:
    """The ``llm_dit`` logger at ``level``, written to stderr; returns the call that undoes it (the
    command line called in-process, as the tests do, leaves the logger as it found it). Records still
    propagate: a program or test that listens at the root sees them as well."""
    log = logging.getLogger("llm_dit")
    handler, before = _Stderr(), log.level
    handler.setFormatter(_Format())
    log.addHandler(handler)
    log.setLevel(level)

    def undo() -> None:
        log.removeHandler(handler)
        log.setLevel(before)

    return undo


class _DropNamed(logging.Filter):
    """Drops the records whose message starts with one of the named patterns."""

    def __init__(self, patterns: tuple[str, ...]):
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def quiet_libraries() -> None:
    """Hide the named library messages (:data:`QUIET_LOG_MESSAGES`) and the loading bars of many
    small files; the denoising bar (the long part) stays."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # transformers' advisory-only warnings
    try:
        import diffusers
        import transformers
    except ImportError:
        return
    # Loading bars of many small files are noise; the denoising bar (the long part) stays.
    transformers.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    for name, patterns in QUIET_LOG_MESSAGES.items():
        # on the library's handlers: a logger's own filters would not see its children's records
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _DropNamed) for f in handler.filters):
                handler.addFilter(_DropNamed(patterns))
