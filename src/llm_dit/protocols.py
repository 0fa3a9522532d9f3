"""The typed joins between layers: what one part of llm-dit asks of another, as structural types.

* :class:`OnStep`: progress of a counted loop, ``on_step(done, total)``. The denoising loop calls it
  with ``done = 0`` before the first step and after each step (``total``: the steps that run);
  raising :class:`~llm_dit.errors.Cancelled` in it stops the work at once.
* :class:`Extractor`: hidden states of a Qwen3-VL chat (:class:`~llm_dit.vl.VLEmbeddingExtractor`,
  any backend: ``vl``, ``splice`` or ``dopsd``).
* :class:`Captioner`: an extractor with Qwen3-VL's language model head, which also writes text and
  scores answers (the ``vl`` backend only).
* :class:`Models`: where the layers above get loaded models from (:class:`~llm_dit.pool.ModelPool`:
  Z-Image, the VL extractor, the splice and dopsd extractors), and give them back.

Protocols rather than the classes themselves: a caller states what it uses, tests pass small fakes,
and importing this module imports nothing heavy (the classes it names are for the type checker only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .config import Config
    from .generate import ZImage
    from .vl.result import VLExtractionResult


class OnStep(Protocol):
    """``on_step(done, total)``: ``done`` of ``total`` steps are finished (``0 <= done <= total``)."""

    def __call__(self, done: int, total: int, /) -> None: ...


class Extractor(Protocol):
    """Hidden states of a Qwen3-VL chat ``[images..., text]`` (see :mod:`llm_dit.vl.extract`)."""

    backend: str  # "vl", "splice" or "dopsd"
    model_name: str  # the hub id or folder it was loaded from

    @property
    def num_layers(self) -> int:
        """Decoder layers of the language model whose states are read."""
        ...

    def fingerprint(self) -> str:
        """The loaded weights' identity (cache keys, run records)."""
        ...

    def extract(
        self,
        image: Any = None,
        text: str | None = None,
        hidden_layer: int | list[int] | None = ...,
        system_prompt: str | None = None,
        token_selection: str | None = None,
        *,
        max_pixels: int | None = ...,
        pool: int = 1,
        **select_kwargs: Any,
    ) -> VLExtractionResult:
        """The selected tokens' states of ``hidden_layer`` (one index or a list), float32 on the CPU."""
        ...

    def unload(self) -> None:
        """Free the models; the extractor cannot be used afterwards."""
        ...


class Captioner(Extractor, Protocol):
    """An :class:`Extractor` with Qwen3-VL's whole model: it also generates text and scores answers."""

    variant: str  # "instruct" or "thinking"
    tokenizer: Any  # the VL tokenizer (Qwen3-4B's vocabulary)
    model: Any  # Qwen3-VL itself (None once unloaded)

    def generate(
        self,
        prompt: str | None = None,
        image: Any = None,
        system_prompt: str | None = None,
        max_new_tokens: int = 512,
        temperature: float = 0.7,
        top_p: float = 0.8,
        top_k: int = 20,
        seed: int | None = None,
        max_pixels: int | None = ...,
    ) -> str:
        """The raw decoded reply to the chat (``<think>`` blocks kept)."""
        ...

    def answer_probability(self, image: Any, question: str, answer: str = "Yes", max_pixels: int | None = ...) -> float:
        """P(``answer``) as the first token of the reply to ``question`` about ``image``."""
        ...


class Models(Protocol):
    """Loaded models by configuration; loading (or keeping) them is the provider's business."""

    def z_image(self, config: Config) -> ZImage:
        """Z-Image, with ``config`` as its settings for encoding and generation."""
        ...

    def vl(self, config: Config) -> Captioner:
        """The Qwen3-VL extractor with its own language model (``vl`` backend)."""
        ...

    def splice(self, config: Config) -> Extractor:
        """The splice extractor: Qwen3-VL's vision tower into Z-Image's text encoder."""
        ...

    def dopsd(self, config: Config) -> Extractor:
        """The dopsd extractor: Qwen3-VL's forward with Z-Image's text-encoder weights (shared)."""
        ...

    def loaded(self) -> list[str]:
        """Names of the loaded models."""
        ...

    def release(self, which: str | None = None) -> None:
        """Unload ``which`` (``z_image``, ``vl``, ``splice``, ``dopsd``) or everything."""
        ...
