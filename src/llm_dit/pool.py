"""Models kept loaded between jobs of a long-lived process (``llm-dit serve``).

A one-shot command loads each model once and frees it when done. A server answers many requests,
so a :class:`ModelPool` keeps what it loaded and hands it out again while the settings that decide
the loading (model path, device, dtype, offloading) are the same. The profile's
``runtime.keep_models`` is the memory policy:

* ``all``: Z-Image and Qwen3-VL stay side by side (a large GPU, or the CPU);
* ``one``: at most one of them is loaded; asking for the other unloads the first (24 GB cards).

The pool is not thread-safe: one worker uses it (the web app's job queue has one GPU worker).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import Config

if TYPE_CHECKING:
    from .generate import ZImage
    from .vl.extract import VLEmbeddingExtractor


def _z_key(config: Config) -> tuple:
    r = config.runtime
    m = config.models
    return m.z_image, m.dit, m.text_encoder, m.vae, m.tokenizer, r.device, r.dtype, r.offload, r.compile, r.attention


def _vl_key(config: Config) -> tuple:
    r = config.runtime
    return config.models.vl, r.device, r.dtype, r.offload, config.vl.cache_gb


class ModelPool:
    """Loaded models by loading key; see the module docstring for the memory policy."""

    def __init__(self, keep: str | None = None) -> None:
        """``keep``: ``all`` or ``one`` whatever the configuration says (a one-shot command that stages
        its models itself); None: each call's ``runtime.keep_models``."""
        self.keep = keep
        self._z: tuple[tuple, ZImage] | None = None  # (key, ZImage)
        self._vl: tuple[tuple, VLEmbeddingExtractor] | None = None  # (key, the extractor with its language model)
        # (key, the extractor borrowing Z-Image's text encoder), by backend: splice, dopsd
        self._borrowing: dict[str, tuple[tuple, VLEmbeddingExtractor]] = {}

    # -- what is loaded ----------------------------------------------------------------------

    def loaded(self) -> list[str]:
        """Names of the loaded models (for status pages)."""
        return [name for name, slot in (("z_image", self._z), ("vl", self._vl), *self._borrowing.items()) if slot]

    # -- getting models ----------------------------------------------------------------------

    def z_image(self, config: Config):
        """Z-Image for ``config`` (loaded now, or kept from an earlier call), with ``config`` as its
        settings for encoding and generation."""
        from .generate import ZImage

        key = _z_key(config)
        if self._z is None or self._z[0] != key:
            self.release("z_image")
            if (self.keep or config.runtime.keep_models) == "one":
                self.release("vl")
            self._z = (key, ZImage.load(config))
        model = self._z[1]
        model.config = config  # same weights; this request's encoder and generation settings
        return model

    def vl(self, config: Config):
        """The Qwen3-VL extractor (``vl`` backend: its own language model) for ``config``."""
        from .vl import VLEmbeddingExtractor

        key = _vl_key(config)
        if self._vl is None or self._vl[0] != key:
            self.release("vl")
            if (self.keep or config.runtime.keep_models) == "one":
                self.release("z_image")
            self._vl = (key, VLEmbeddingExtractor.from_config(config, backend="vl"))
        return self._vl[1]

    def splice(self, config: Config):
        """The splice extractor: Qwen3-VL's vision tower into Z-Image's loaded text encoder (the tower
        of a loaded Qwen3-VL is borrowed, not loaded twice)."""
        return self._borrowing_extractor(config, "splice")

    def dopsd(self, config: Config):
        """The dopsd extractor: Qwen3-VL's forward over Z-Image's loaded text encoder, whose tensors it
        shares (the vision tower of a loaded Qwen3-VL is borrowed too)."""
        return self._borrowing_extractor(config, "dopsd")

    def _borrowing_extractor(self, config: Config, backend: str):
        from .vl import VLEmbeddingExtractor

        model = self.z_image(config)
        key = (_z_key(config), config.models.vl)
        held = self._borrowing.get(backend)
        if held is None or held[0] != key:
            self._drop(backend)
            vision = self._vl[1].model.model.visual if self._vl is not None and self._vl[0][0] == config.models.vl \
                else None
            self._borrowing[backend] = (key, VLEmbeddingExtractor.from_config(
                config, backend=backend, text_encoder=model.pipe.text_encoder, vision=vision))
        return self._borrowing[backend][1]

    # -- letting go --------------------------------------------------------------------------

    def release(self, which: str | None = None) -> None:
        """Unload ``which`` (``z_image``, ``vl``, ``splice`` or ``dopsd``: its vision tower) or
        everything; frees the CUDA cache."""
        if which in ("splice", "dopsd"):
            self._drop(which)
        if which in (None, "z_image") and self._z is not None:
            self._drop()  # they borrow its text encoder
            self._z[1].unload()
            self._z = None
        if which in (None, "vl") and self._vl is not None:
            self._drop()  # they may hold its vision tower
            self._vl[1].unload()
            self._vl = None

    def _drop(self, backend: str | None = None) -> None:
        """Unload the extractor of ``backend`` that borrows Z-Image's text encoder, or both."""
        for name in [backend] if backend else list(self._borrowing):
            held = self._borrowing.pop(name, None)
            if held is not None:
                held[1].unload()
