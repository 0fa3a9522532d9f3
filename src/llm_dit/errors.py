"""The one exception type users see.

Every failure a person can cause (a missing file, a bad config value, a model path that does not
exist) is raised as :class:`LlmDitError` with one sentence that names the problem. The CLI prints
that sentence and exits non-zero; anything else is a bug and is reported as such.
"""

from __future__ import annotations

from collections.abc import Iterable


def closest(given: object, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The one of ``choices`` closest to ``given`` (difflib's ratio ``2 M / (len(a) + len(b))`` of
    ``M`` matching characters at least ``cutoff``), or None: what a "did you mean" names."""
    if not isinstance(given, str):
        return None
    import difflib

    close = difflib.get_close_matches(given, list(choices), n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(given: object, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """``" (did you mean 'tiny'?)"`` when one of ``choices`` is close to ``given``, else ``""``: the
    tail of an "unknown X" sentence."""
    close = closest(given, choices, cutoff)
    return f" (did you mean '{close}'?)" if close else ""


def unknown_choice(what: str, given: object, choices: Iterable[str]) -> str:
    """``"unknown blend mode 'interpolat'; choose one of interpolate, linear, ... (did you mean
    'interpolate'?)"``: the one sentence for a name that is not one of the choices."""
    choices = list(choices)
    return f"unknown {what} '{given}'; choose one of {', '.join(choices)}{did_you_mean(given, choices)}"


class LlmDitError(Exception):
    """A user-facing error: ``str(err)`` is one clear sentence; ``field`` names the setting at fault
    (``"recipe.alpha"``, ``"generation.steps"``) when one is."""

    exit_code = 2

    def __init__(self, message: str = "", field: str | None = None):
        super().__init__(message)
        self.field = field


class ConfigError(LlmDitError, ValueError):
    """A configuration value, profile or config file is invalid."""


class InputError(LlmDitError, ValueError):
    """An input file, prompt or argument is invalid."""


class ModelLoadError(LlmDitError):
    """A model could not be found or loaded."""


class WriteError(LlmDitError):
    """An output could not be written (a full disk, a read-only or forbidden folder): the machine's
    state, not the input; what was finished is kept, and the same command resumes."""

    exit_code = 1


class FolderBusy(LlmDitError):
    """A run folder that another process is writing now, for the same run (its lock is held): the
    machine's state, not the input; the same command succeeds once that process has ended."""

    exit_code = 1


class Cancelled(BaseException):
    """Raised from a progress hook to stop work at once (the web app's cancel button).

    A ``BaseException`` like ``KeyboardInterrupt``: code that records a failed cell and goes on
    (``except Exception``) must not swallow it.
    """
