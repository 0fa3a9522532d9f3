"""llm-dit: zero-shot vision conditioning of Z-Image-Turbo with Qwen3-VL hidden states.

The library is the product; the CLI (``llm-dit``), the experiment runner and the web app are thin
doors to it. Start from :func:`resolve_config` and :class:`ZImage`.
"""

from .config import MAX_CAPTION_TOKENS, Config, resolve_config
from .errors import ConfigError, InputError, LlmDitError, ModelLoadError

__version__ = "0.1.0"

__all__ = [
    "MAX_CAPTION_TOKENS",
    "Config",
    "ConfigError",
    "InputError",
    "LlmDitError",
    "ModelLoadError",
    "ZImage",
    "resolve_config",
]


def __getattr__(name):  # ZImage pulls in torch and diffusers: import it only when asked for
    if name == "ZImage":
        from .generate import ZImage

        return ZImage
    raise AttributeError(name)
