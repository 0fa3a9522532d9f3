"""llm-dit: zero-shot vision conditioning of Z-Image-Turbo with Qwen3-VL hidden states.

The library is the product; the CLI (``llm-dit``), the experiment runner and the web app are thin
doors to it. Start from :func:`resolve_config` and :class:`ZImage`.
"""

# First, before the imports below (pydantic, then torch for most commands): a Ctrl-C from here on
# ends `llm-dit` and `python -m llm_dit` in one line (llm_dit.interrupt); nothing for `import llm_dit`.
from . import interrupt as _interrupt

_interrupt.at_start()

from .config import MAX_CAPTION_TOKENS, Config, resolve_config  # noqa: E402
from .errors import ConfigError, InputError, LlmDitError, ModelLoadError  # noqa: E402

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


def __getattr__(name):  # ZImage pulls in torch and diffusers: import it only when asked for
    if name == "ZImage":
        from .generate import ZImage

        return ZImage
    if name == "__version__":  # read when first asked for: importing importlib.metadata costs start-up
        from .provenance import version

        globals()["__version__"] = value = version()
        return value
    raise AttributeError(name)
