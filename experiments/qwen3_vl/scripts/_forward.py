"""Shared by the seed scripts: parse the research notes' flags, forward everything to ``llm-dit``.

Flags a script does not know are passed through unchanged (``--profile tiny``, ``--steps 4``, ...).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from datetime import datetime


def parser(description: str):
    """The CLI's one-line-error parser, except that flags it does not know are handed back (they
    go on to ``llm-dit``), not refused."""
    import argparse

    from llm_dit.cli.common import Parser

    class Forwarding(Parser):
        def parse_known_args(self, args=None, namespace=None):
            return argparse.ArgumentParser.parse_known_args(self, args, namespace)

    return Forwarding(description=description, prog=sys.argv[0].rsplit("/", 1)[-1])


def default_dir(name: str) -> str:
    return f"experiments/results/{name}_{datetime.now().strftime('%Y%m%d_%H%M%S')}"


def run(build: Callable[[list[str]], list[str]], args: list[str] | None = None,
        after: Callable[[list[str]], int] | None = None) -> int:
    """``build(script args) -> llm-dit argv``, then run it, then ``after(argv)`` when it succeeded
    (a script's own files made from the run); errors are one line, as the CLI's."""
    from llm_dit.cli import main
    from llm_dit.errors import LlmDitError

    try:
        argv = build(sys.argv[1:] if args is None else args)
    except LlmDitError as e:
        print(f"llm-dit: error: {e}", file=sys.stderr)
        return e.exit_code
    print(command(argv), file=sys.stderr)
    rc = main(argv)
    if rc != 0 or after is None:
        return rc
    try:
        return after(argv)
    except LlmDitError as e:
        print(f"llm-dit: error: {e}", file=sys.stderr)
        return e.exit_code


def command(argv: list[str]) -> str:
    """The ``llm-dit`` command line of ``argv``, quoted for a POSIX shell: it pastes back as it ran
    (``shlex.split`` of it gives ``["llm-dit", *argv]``)."""
    return shlex.join(["llm-dit", *argv])
