"""Ctrl-C at any moment of an ``llm-dit`` command: one line, ``llm-dit: interrupted``, and exit 130.

Python turns SIGINT into a ``KeyboardInterrupt`` wherever the main thread happens to be, and that is
not safe everywhere: inside an import before ``main`` has started, or in an ``atexit`` callback
after it returned, nothing catches it and a traceback ends the process; inside an import that a
library wraps (diffusers' lazy modules) it becomes "RuntimeError: Failed to import ..."; inside C
code that clears errors it is lost and the command runs on. So a process started as the command
line (:func:`started_as_cli`) handles SIGINT itself, from the first line of the package
(``llm_dit/__init__.py`` calls :func:`at_start` before its imports) to the process's end:

* by default it quits at once (:func:`quit_now`: the line on stderr, stdout flushed, ``os._exit(130)``).
  Nothing needs undoing: every file is written to a temporary and renamed, and a run folder is
  made to survive a kill at any point (tests/test_faults.py);
* while a file is being written (:func:`writing`, which ``llm_dit.io.atomic_path`` holds) the quit
  waits until no thread is writing, so no temporary is left behind; a second Ctrl-C does not wait;
* inside :func:`unwinding` (a run: its session, metadata and report are written as it stops) the
  first Ctrl-C raises ``KeyboardInterrupt`` where the main thread is, so that the ``finally`` blocks
  run and ``main`` prints the line and returns 130 -- unless the main thread is importing, where a
  ``KeyboardInterrupt`` leaves half-imported modules behind: then it quits at once as well. A second
  Ctrl-C quits (after the file being written, if any); a third does not wait;
* the last ``atexit`` callback ignores SIGINT for the end of the teardown, where Python hands SIGINT
  back to the default action (killed, nothing said) and runs no code a Ctrl-C should stop.

What runs before the package's first line (the interpreter's own start, ``site``, ``runpy``: a few
milliseconds, more on a busy machine) is the interpreter's: a SIGINT there kills it before it has a
handler (the shell reports 130, nothing is printed), or CPython reports it itself.

``main`` called in a program (tests, a notebook), or ``import llm_dit``, leaves SIGINT alone: Python's
``KeyboardInterrupt``, which ``main`` turns into the same line and 130.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import FrameType

MESSAGE = "llm-dit: interrupted"
#: 128 + SIGINT: what shells report for a command stopped by Ctrl-C.
EXIT_CODE = 130
#: Names the console script has (pip's launcher; on Windows with a suffix).
_SCRIPTS = ("llm-dit", "llm-dit.exe", "llm-dit-script.py")

_cli = False  # this process was started as the command line (at_start)
_unwinding = 0  # main is inside unwinding(): the first Ctrl-C raises KeyboardInterrupt
_writing = 0  # threads inside writing(): a quit waits for them
_lock = threading.Lock()  # guards _writing's updates (never taken in the handler)
_presses = 0  # Ctrl-Cs so far
_pending = False  # a quit waits for the writes to end


def started_as_cli() -> bool:
    """Whether this process is ``llm-dit ...`` or ``python [options] -m llm_dit ...`` (read from the
    interpreter's own command line: ``import llm_dit`` in a program, or ``python -m pytest``, is not)."""
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    i = 1
    while i < len(argv):
        a = argv[i]
        if a == "-m":
            return i + 1 < len(argv) and argv[i + 1] == "llm_dit"
        if a.startswith("-m"):
            return a[2:] == "llm_dit"
        if a in ("-X", "-W"):  # options that take a value
            i += 2
            continue
        if a == "-" or a.startswith("-c"):
            return False
        if not a.startswith("-"):  # the script
            return os.path.basename(a) in _SCRIPTS
        i += 1
    return False


def quit_now() -> None:
    """Flush what was printed, say the line, leave with 130 without unwinding (any thread)."""
    with suppress(Exception):  # a closed pipe, or the very flush this signal interrupted
        sys.stdout.flush()
    with suppress(OSError):
        os.write(2, (_fresh_line() + MESSAGE + "\n").encode())
    os._exit(EXIT_CODE)


def _fresh_line() -> str:
    """What starts the line on stderr: a newline after the ``^C`` a terminal echoed, or after a
    progress bar still open (its line ends in ``\r``, not a newline); else nothing."""
    if os.isatty(2):
        return "\n"
    bars = getattr(getattr(sys.modules.get("tqdm.std"), "tqdm", None), "_instances", None)
    return "\n" if bars else ""


def _importing(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    global _presses, _pending
    _presses += 1
    if _presses == 1 and _unwinding and not _importing(frame):
        raise KeyboardInterrupt
    if _presses <= 1 + bool(_unwinding):  # not yet insisted: the files being written are finished first
        _pending = True
        if _writing:  # the last writer quits (writing()); read after _pending is set, so one of us does
            return
    quit_now()


def at_start() -> None:
    """Take over SIGINT in a process started as the command line (the package's first line)."""
    global _cli
    if _cli or not started_as_cli() or threading.current_thread() is not threading.main_thread():
        return
    _cli = True
    signal.signal(signal.SIGINT, _on_sigint)
    import atexit

    # registered before every library's callback, so it runs after them: see the module docstring
    atexit.register(signal.signal, signal.SIGINT, signal.SIG_IGN)


@contextmanager
def writing() -> Iterator[None]:
    """A file is being written (any thread): a Ctrl-C quits once it is finished (and the others)."""
    global _writing
    with _lock:
        _writing += 1
    try:
        yield
    finally:
        with _lock:
            _writing -= 1
            last = _writing == 0
        if last and _pending and _cli:
            quit_now()


@contextmanager
def unwinding() -> Iterator[None]:
    """Work that has something to write when stopped (a run): the first Ctrl-C raises
    ``KeyboardInterrupt`` in the main thread, outside imports (in the command line; elsewhere Python's
    own handler does anyway)."""
    global _unwinding
    _unwinding += 1
    try:
        yield
    finally:
        _unwinding -= 1
