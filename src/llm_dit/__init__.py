"""llm-dit: zero-shot vision conditioning of Z-Image-Turbo with Qwen3-VL hidden states.

The library is the product; the CLI (``llm-dit``), the experiment runner and the web app are thin
doors to it. Start from :func:`resolve_config` and :class:`ZImage`.
"""

from .config import MAX_CAPTION_TOKENS, Config, resolve_config
from .errors import ConfigError, InputError, LlmDitError, ModelLoadError

__all__ = [
    "MAX_CAPTION_TOKENS",
    "Config",
    "ConfigError",
    "InputError",
    "LlmDitError",
    "ModelLoadError",
    "__version__",
    "ZImage",
    "resolve_config",
]


def _version() -> str:
    """The installed package's version: pyproject.toml holds the one literal, the package metadata
    carries it here (read when first asked for: importing ``importlib.metadata`` costs start-up)."""
    from importlib import metadata

    try:
        return metadata.version("llm-dit")
    except metadata.PackageNotFoundError:  # a source tree on PYTHONPATH that was never installed
        return "0+unknown"


def __getattr__(name):  # ZImage pulls in torch and diffusers: import it only when asked for
    if name == "ZImage":
        from .generate import ZImage

        return ZImage
    if name == "__version__":
        globals()["__version__"] = version = _version()
        return version
    raise AttributeError(name)
