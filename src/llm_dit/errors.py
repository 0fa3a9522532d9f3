"""The one exception type users see.

Every failure a person can cause (a missing file, a bad config value, a model path that does not
exist) is raised as :class:`LlmDitError` with one sentence that names the problem. The CLI prints
that sentence and exits non-zero; anything else is a bug and is reported as such.
"""

from __future__ import annotations


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


class Cancelled(BaseException):
    """Raised from a progress hook to stop work at once (the web app's cancel button).

    A ``BaseException`` like ``KeyboardInterrupt``: code that records a failed cell and goes on
    (``except Exception``) must not swallow it.
    """
