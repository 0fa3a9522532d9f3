"""Image generation from caption embeddings, through diffusers' own Z-Image pipelines.

No denoising loop lives here: :class:`ZImage` holds one loaded ``ZImagePipeline`` (and an
``ZImageImg2ImgPipeline`` sharing its components) and calls it with ``prompt_embeds``, a list of
``[L, D]`` tensors (one per image of a batch) with ``1 <= L <= 1504``. Seeds go through a CPU
``torch.Generator`` so the same seed gives the same starting noise on any device. The scheduler's
shift is set explicitly on every call (Z-Image-Turbo: 3.0, static; sigmas ``s' = shift*s / (1 + (shift-1)*s)`` over
``linspace(1, 1/N, N)``).

Per-step conditioning: pass a function ``(i, n) -> [L, D]`` instead of a tensor; it gives the
embeddings for step ``i`` of the ``n`` steps that run (img2img runs fewer than ``steps``). Step 0
uses it directly; diffusers' ``callback_on_step_end`` after step ``i`` swaps in ``f(i + 1, n)``.
Progress: ``on_step(done, n)`` is called before the first step and after each one, from the same
hook; raising :class:`~llm_dit.errors.Cancelled` there stops the pipeline at once (diffusers'
``interrupt`` would still decode a half-denoised picture).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch
from PIL import Image, ImageOps

from .config import MAX_CAPTION_TOKENS, Config, GenerationConfig
from .embeddings import check_embedding
from .models.loading import Placement, load_z_image_pipeline, resolve_placement
from .protocols import OnStep
from .text import TextEncoding, encode_prompt

#: Per-step conditioning: ``(i, n) -> [L, D]``, the embeddings for step ``i`` of the ``n`` that run.
StepEmbeds = Callable[[int, int], torch.Tensor]


class ZImagePipe(Protocol):
    """What is used of diffusers' ``ZImagePipeline`` and ``ZImageImg2ImgPipeline`` (diffusers registers
    a pipeline's modules when it is built, so its classes declare none of them)."""

    transformer: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any

    @property
    def components(self) -> dict[str, Any]: ...

    def __call__(self, **kwargs: Any) -> Any: ...

    def set_progress_bar_config(self, **kwargs: Any) -> None: ...


def check_embeddings(emb: torch.Tensor, dim: int) -> torch.Tensor:
    """Refuse what Z-Image cannot take: wrong rank or width, 0 or > 1504 tokens, NaN/inf."""
    return check_embedding(emb, "the caption embedding", dim=dim, max_tokens=MAX_CAPTION_TOKENS)


def fit_init_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale and center-crop to ``width x height`` (keeps the aspect ratio; no distortion)."""
    if image.size == (width, height):
        return image
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS)


@dataclass
class ZImage:
    """Z-Image-Turbo loaded once: text encoding with its own encoder, and generation."""

    config: Config
    pipe: ZImagePipe | None  # None once unloaded
    placement: Placement
    _img2img: ZImagePipe | None = None
    #: what it was loaded from: ``{"z_image": spec}``, or the single files' absolute paths
    sources: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, config: Config) -> ZImage:
        from .models.single_file import describe

        placement = resolve_placement(config.runtime)
        pipe = load_z_image_pipeline(config, placement)
        return cls(config=config, pipe=pipe, placement=placement, sources=describe(config.models))

    def _loaded(self) -> ZImagePipe:
        assert self.pipe is not None, "this ZImage was unloaded (unload() frees it for good)"
        return self.pipe

    # -- text ---------------------------------------------------------------------------------

    @property
    def caption_dim(self) -> int:
        return int(self._loaded().transformer.config.cap_feat_dim)

    def encode(
        self,
        prompt: str,
        hidden_layer: int | None = None,
        max_length: int | None = None,
        long_prompt_mode: str | None = None,
    ) -> TextEncoding:
        """Encode ``prompt`` with the pipeline's own text encoder; unset options come from the config."""
        enc = self.config.encoder
        pipe = self._loaded()
        return encode_prompt(
            pipe.tokenizer,
            pipe.text_encoder,
            prompt,
            hidden_layer=enc.hidden_layer if hidden_layer is None else hidden_layer,
            max_length=max_length or enc.max_length,
            long_prompt_mode=long_prompt_mode or enc.long_prompt_mode,
        )

    # -- images -------------------------------------------------------------------------------

    def _to_dit(self, emb: torch.Tensor) -> torch.Tensor:
        check_embeddings(emb, self.caption_dim)
        return emb.to(device=self.placement.device, dtype=self._loaded().transformer.dtype)

    def _set_shift(self, shift: float) -> None:
        pipe = self._loaded()
        scheduler = pipe.scheduler
        if scheduler.config.get("use_dynamic_shifting", False):
            # A resolution-dependent shift would silently override ours (upstream ran at 1.15).
            scheduler = type(scheduler).from_config(scheduler.config, use_dynamic_shifting=False, shift=shift)
            pipe.scheduler = scheduler
            self._img2img = None
        scheduler.set_shift(shift)

    def img2img_pipeline(self) -> ZImagePipe:
        if self._img2img is None:
            from diffusers import ZImageImg2ImgPipeline

            # shares weights, loads nothing; cast: diffusers' class declares none of its modules
            self._img2img = cast(ZImagePipe, ZImageImg2ImgPipeline(**self._loaded().components))
            self._img2img.set_progress_bar_config(leave=False)
        return self._img2img

    def generate(
        self,
        conditioning: torch.Tensor | StepEmbeds,
        generation: GenerationConfig | None = None,
        init_image: Image.Image | None = None,
        negative_embeds: torch.Tensor | None = None,
        on_step: OnStep | None = None,
    ) -> Image.Image:
        """One image (txt2img, or img2img when ``init_image`` is given).

        ``conditioning`` is the caption embedding ``[L, D]`` for every step, or a function
        ``(i, n) -> [L, D]`` giving the embedding for step ``i`` of the ``n`` steps that run.
        ``on_step(done, n)``: progress, before the first step and after each step.
        """
        return self.generate_batch([conditioning], generation, init_image, negative_embeds, on_step)[0]

    @torch.no_grad()
    def generate_batch(
        self,
        conditionings: list[torch.Tensor | StepEmbeds],
        generation: GenerationConfig | None = None,
        init_image: Image.Image | None = None,
        negative_embeds: torch.Tensor | None = None,
        on_step: OnStep | None = None,
    ) -> list[Image.Image]:
        """One image per conditioning, all in one pipeline call (a batch of ``B``; ``B = 1`` is
        :meth:`generate`). Same settings and seed for each: every image starts from the noise the
        seed gives alone (one CPU generator per image), and the DiT masks the padding between
        captions of different lengths, so each image is the one :meth:`generate` would make (up to
        the rounding of batched kernels)."""
        if not conditionings:
            return []
        g = generation or self.config.generation
        self._set_shift(g.shift)
        if init_image is None:
            pipe, n_steps, extra = self._loaded(), g.steps, {}
        elif len(conditionings) > 1:
            raise ValueError("img2img generates one image at a time")
        else:
            pipe, n_steps = self.img2img_pipeline(), img2img_steps(g.steps, g.strength)
            extra = dict(image=fit_init_image(init_image, g.width, g.height), strength=g.strength)
        firsts = [c(0, n_steps) if callable(c) else c for c in conditionings]
        per_step = [c if callable(c) else None for c in conditionings]
        if any(per_step) or on_step is not None:
            extra.update(callback_on_step_end=self._step_callback(per_step if any(per_step) else None, firsts,
                                                                  on_step),
                         callback_on_step_end_tensor_inputs=[])
        if g.guidance_scale > 0:
            if negative_embeds is None:  # diffusers' negative prompt default: the empty prompt
                negative_embeds = self.encode_negative()
            extra["negative_prompt_embeds"] = [self._to_dit(negative_embeds)] * len(conditionings)
        prompt_embeds = [self._to_dit(e) for e in firsts]
        if on_step is not None:
            on_step(0, n_steps)
        generators = [torch.Generator("cpu").manual_seed(g.seed) for _ in conditionings]
        return pipe(
            prompt_embeds=prompt_embeds,
            height=g.height,
            width=g.width,
            num_inference_steps=g.steps,
            guidance_scale=g.guidance_scale,
            generator=generators[0] if len(generators) == 1 else generators,
            output_type="pil",
            **extra,
        ).images

    def encode_negative(self) -> torch.Tensor:
        """The empty prompt, which diffusers uses as the negative prompt for guidance."""
        enc, pipe = self.config.encoder, self._loaded()
        return encode_prompt(
            pipe.tokenizer, pipe.text_encoder, "", enc.hidden_layer, enc.max_length, allow_empty=True
        ).embeddings

    def _step_callback(self, step_embeds: list[StepEmbeds | None] | None, firsts: list[torch.Tensor],
                       on_step: OnStep | None):
        """diffusers' ``callback_on_step_end``: progress, and the next step's embeddings of the images
        whose conditioning changes per step (the others keep theirs)."""
        def on_step_end(pipe, i, t, callback_kwargs):
            n = pipe.num_timesteps
            if on_step is not None:
                on_step(i + 1, n)
            if step_embeds is None or i + 1 >= n:
                return {}
            return {"prompt_embeds": [self._to_dit(f(i + 1, n) if f is not None else e)
                                      for f, e in zip(step_embeds, firsts, strict=True)]}

        return on_step_end

    def unload(self) -> None:
        """Drop the pipeline and free its memory."""
        import gc

        self.pipe = None
        self._img2img = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def img2img_steps(steps: int, strength: float) -> int:
    """How many of ``steps`` img2img runs at ``strength`` (diffusers' ``get_timesteps`` rule)."""
    init = min(steps * strength, steps)
    return steps - int(max(steps - init, 0))
