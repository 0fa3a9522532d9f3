"""``VLEmbeddingExtractor``: hidden states of a Qwen3-VL chat, by one of three backends.

* ``vl``: transformers' ``Qwen3VLForConditionalGeneration`` runs the whole chat (vision tower,
  DeepStack, M-RoPE language model); we read its language model's hidden states.
* ``splice``: only Qwen3-VL's vision tower and merger run; their 2560-d outputs replace the input
  embeddings at the ``<|image_pad|>`` positions of Z-Image's own Qwen3-4B text encoder, whose hidden
  states are read instead (no DeepStack, plain 1-D RoPE: the language model the DiT was trained
  with). Same chat, same masks, same result object. Text-only input gives exactly the text path.
* ``dopsd``: D-OPSD's multimodal features (arXiv 2605.05204): Qwen3-VL's own forward (vision tower,
  DeepStack, M-RoPE with Qwen3-VL's ``text_config``), but its language model holds Z-Image's Qwen3-4B
  text-encoder weights, shared with the loaded encoder (the same tensors, never a copy;
  :mod:`llm_dit.vl.dopsd`). Qwen3-VL's own language weights are never read. Its defaults
  (:data:`~llm_dit.config.DOPSD_DEFAULTS`: layer -2, 512^2 .. 768^2 pixels per image, the chat cut to
  1024 tokens) are recorded with every result (``backend_settings``).

Every way one forward pass serves every requested layer and stops after the deepest one; no LM
head runs. Results are float32 on the CPU.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..config import DEFAULT_MAX_PIXELS, DEFAULT_VL_LAYER, DOPSD_DEFAULTS
from ..errors import InputError, ModelLoadError, unknown_choice
from ..images import load_image
from ..limits import MAX_NEW_TOKENS, MAX_POOL, MAX_TOP_K, check_number
from ..models.chat_template import ChatTemplate
from ..models.loading import load_failure, resolve_model_path
from ..text.capture import canonical_layer, capture_hidden_states
from .cache import ExtractionCache, image_digest, request_key
from .chat import (
    build_messages,
    check_aspect_ratio,
    decode_reply,
    detect_variant,
    load_processor,
    run_processor,
)
from .dopsd import build_dopsd_model, cut_chat, lent_weights
from .result import VLExtractionResult
from .tokens import SpecialIds, check_selection_possible, pool_image_tokens, resolve_token_selection, take_notes_flags

#: ``extract``'s ``max_pixels`` left unset: the backend's own budget (1024^2; dopsd's 768^2).
BACKEND_BUDGET = "backend"

BACKENDS = ("vl", "splice", "dopsd")


def _auto_device(device, dtype) -> tuple[torch.device, torch.dtype]:
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return dev, dtype


def load_vision_tower(path: str, device: torch.device, dtype: torch.dtype):
    """Qwen3-VL's vision tower + merger alone, read from the checkpoint's ``model.visual.*`` tensors.

    Builds ``Qwen3VLVisionModel`` directly on the target device and copies the tensors in, so the
    language model's weights are never read (about 0.4B of 4.4B parameters for the real model).
    """
    from safetensors import safe_open
    from transformers import AutoConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    folder = Path(path)
    if not folder.is_dir():  # a hub id: fetch the config, the index and the shards that hold the tower
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(path, allow_patterns=["*.json"]))
        index = folder / "model.safetensors.index.json"
        shards = sorted({v for k, v in json.loads(index.read_text())["weight_map"].items() if "visual." in k}) \
            if index.is_file() else ["model.safetensors"]
        folder = Path(snapshot_download(path, allow_patterns=["*.json", *shards]))
    config = AutoConfig.from_pretrained(folder)
    with torch.device(device):
        tower = Qwen3VLVisionModel._from_config(config.vision_config, dtype=dtype)
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for key in st.keys():
                for prefix in ("model.visual.", "visual."):
                    if key.startswith(prefix):
                        state[key[len(prefix):]] = st.get_tensor(key).to(dtype)
    missing, _ = tower.load_state_dict(state, strict=False)
    if missing:
        raise ModelLoadError(f"{path}: the checkpoint lacks vision-tower weights ({missing[0]}, ...)")
    return tower.eval()


def load_text_encoder(z_image, device: torch.device, dtype: torch.dtype):
    """Z-Image's text encoder (``Qwen3Model``) and tokenizer alone, from a Z-Image folder or hub id
    (``z_image``: that string), or from what a :class:`~llm_dit.config.ModelsConfig` names: its
    single text-encoder file (ComfyUI's ``qwen_3_4b.safetensors``) when it names one."""
    from transformers import AutoTokenizer, Qwen3Model

    if not isinstance(z_image, str):
        from ..models.single_file import load_text_encoder as from_file
        from ..models.single_file import resolve_files

        files = resolve_files(z_image)
        loaded = from_file(files, dtype) if files is not None else None
        if loaded is not None:
            encoder, tokenizer = loaded
            return encoder.to(device).eval(), tokenizer
        z_image = files.base if files is not None and files.base else z_image.z_image
    source = resolve_model_path(z_image, "z_image")
    try:
        encoder = Qwen3Model.from_pretrained(source, subfolder="text_encoder", dtype=dtype)
        # transformers types PreTrainedModel.to through a decorator that loses its device argument
        encoder = encoder.to(device).eval()  # type: ignore[arg-type]
        tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer")
    except Exception as e:
        raise load_failure("Z-Image's text encoder", z_image, e) from e
    return encoder, tokenizer


class VLEmbeddingExtractor:
    """Extract hidden states of a Qwen3-VL chat (see the module docstring)."""

    def __init__(self, processor, model_name: str, variant: str, device: torch.device, dtype: torch.dtype,
                 backend: str = "vl", model=None, vision=None, text_encoder=None,
                 cache: ExtractionCache | None = None, dopsd=None):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.model_name = model_name
        self.variant = variant
        self.device = device
        self.dtype = dtype
        self.backend = backend
        self.model = model  # Qwen3VLForConditionalGeneration (vl backend, captions)
        self.vision = vision  # Qwen3VLVisionModel (splice and dopsd backends)
        self.text_encoder = text_encoder  # Qwen3Model (splice and dopsd backends)
        self.dopsd = dopsd  # Qwen3VLModel over vision and text_encoder's tensors (dopsd backend)
        self.special = SpecialIds.from_tokenizer(self.tokenizer)
        self.cache = cache or ExtractionCache(0)
        self.offload = "none"  # runtime.offload it was placed under (from_pretrained)
        # The template the processor renders with and its source (from_pretrained resolves it).
        self.chat_template = ChatTemplate(processor.chat_template or "", "given")
        self._fingerprint: str | None = None  # computed once, on first use

    # -- loading -------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        id_or_path: str,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        backend: str = "vl",
        text_encoder=None,
        z_image=None,
        cache: ExtractionCache | None = None,
        vision=None,
        offload: str = "none",
    ) -> VLEmbeddingExtractor:
        """Load from a hub id or a local transformers folder (``tiny`` for the tiny model).

        ``backend="splice"`` and ``backend="dopsd"`` load only the vision tower (and, for dopsd,
        Qwen3-VL's config), and need Z-Image's text encoder: pass the loaded ``text_encoder`` (e.g.
        ``ZImage.pipe.text_encoder``; dopsd shares its tensors) or a ``z_image`` id/folder. A
        vision tower already loaded (``vision=``, e.g. a loaded Qwen3-VL's ``model.model.visual``) is
        used instead of loading a second copy. ``z_image`` may also be a
        :class:`~llm_dit.config.ModelsConfig` (single files: :func:`load_text_encoder`).
        ``offload``: ``runtime.offload``; under ``group_*`` Qwen3-VL's
        layers are moved to the GPU as they run (diffusers' group offloading at leaf level).
        """
        if backend not in BACKENDS:
            raise InputError(unknown_choice("backend", backend, BACKENDS))
        dev, dt = _auto_device(device, dtype)
        source = resolve_model_path(id_or_path, "vl")
        try:
            processor, template = load_processor(source)
        except ModelLoadError:
            raise
        except Exception as e:
            raise load_failure("the Qwen3-VL processor", str(id_or_path), e) from e
        variant = detect_variant(processor)
        model = dopsd = None
        if backend == "vl":
            from transformers import Qwen3VLForConditionalGeneration

            from ..models.loading import Placement, place_language_model

            try:
                model = Qwen3VLForConditionalGeneration.from_pretrained(source, dtype=dt).eval()
                model = place_language_model(model, Placement(dev, dt, offload))
            except Exception as e:
                raise load_failure("Qwen3-VL", str(id_or_path), e) from e
        else:
            if text_encoder is None:
                if z_image is None:
                    raise InputError(f"the {backend} backend needs Z-Image's text encoder (text_encoder= or z_image=)")
                text_encoder, _ = load_text_encoder(z_image, dev, dt)
            try:
                vision = vision if vision is not None else load_vision_tower(source, dev, dt)
            except ModelLoadError:
                raise
            except Exception as e:
                raise load_failure("the Qwen3-VL vision tower", str(id_or_path), e) from e
            if vision.config.out_hidden_size != text_encoder.config.hidden_size:
                raise ModelLoadError(
                    f"the vision tower emits {vision.config.out_hidden_size}-d features but the text encoder is "
                    f"{text_encoder.config.hidden_size}-d"
                )
            if backend == "dopsd":
                try:
                    dopsd = build_dopsd_model(source, text_encoder, vision, str(id_or_path))
                except ModelLoadError:
                    raise
                except Exception as e:
                    raise load_failure("Qwen3-VL's config", str(id_or_path), e) from e
        extractor = cls(processor, str(id_or_path), variant, dev, dt, backend, model, vision, text_encoder, cache,
                        dopsd)
        extractor.offload = offload
        extractor.chat_template = template
        return extractor

    @classmethod
    def from_config(cls, config, backend: str | None = None, text_encoder=None, vision=None) -> VLEmbeddingExtractor:
        """The configured model on the configured device, with the configured extraction cache.

        For the splice and dopsd backends pass the already loaded Z-Image text encoder if there is one, so its
        weights are not loaded twice; otherwise it is loaded from ``models.z_image`` (or the single
        text-encoder file ``models.text_encoder``).
        """
        from ..models.loading import resolve_placement

        placement = resolve_placement(config.runtime)
        return cls.from_pretrained(
            config.models.vl, device=placement.device, dtype=placement.dtype, backend=backend or config.vl.backend,
            text_encoder=text_encoder, z_image=config.models, vision=vision,
            cache=ExtractionCache(int(config.vl.cache_gb * 2**30)), offload=placement.offload,
        )

    @property
    def num_layers(self) -> int:
        if self.backend == "vl":
            return self.model.config.text_config.num_hidden_layers
        return self.text_encoder.config.num_hidden_layers

    def fingerprint(self) -> str:
        """The model's identity for the cache: name, backend, dtype, chat template, configs, and a checksum of the
        weights (the sum of every parameter tensor), so re-saved weights at the same path miss."""
        if self._fingerprint:
            return self._fingerprint
        # The template too: the same weights rendered with another template give other states.
        parts = [self.model_name, self.backend, str(self.dtype), self.chat_template.text]
        for m in (self.model, self.vision, self.text_encoder):
            if m is not None:
                # .cpu() per tensor: under offloading the parameters live on several devices
                sums = torch.stack([p.detach().float().sum().cpu() for p in m.parameters()])
                parts += [m.config.to_json_string(use_diff=False), hashlib.sha256(sums.numpy().tobytes()).hexdigest()]
        if self.dopsd is not None:  # Qwen3-VL's config (M-RoPE, DeepStack) over the weights summed above
            parts.append(self.dopsd.config.to_json_string(use_diff=False))
        self._fingerprint = hashlib.sha256("\n".join(parts).encode()).hexdigest()
        return self._fingerprint

    # -- extraction ----------------------------------------------------------------------------

    def _images(self, image) -> list[Image.Image]:
        if image is None:
            return []
        items = image if isinstance(image, (list, tuple)) else [image]
        images = [im.convert("RGB") if isinstance(im, Image.Image) else load_image(im) for im in items]
        for i, (im, item) in enumerate(zip(images, items, strict=True)):
            check_aspect_ratio(im, f"image {i + 1}" + ("" if isinstance(item, Image.Image) else f" {item}"))
        return images

    @torch.no_grad()
    def extract(
        self,
        image=None,
        text: str | None = None,
        hidden_layer: int | list[int] | None = None,
        system_prompt: str | None = None,
        token_selection: str | None = None,
        max_pixels: int | str | None = BACKEND_BUDGET,
        pool: int = 1,
        vl_intra_blend_ratio: float | None = None,
        **select_kwargs,
    ) -> VLExtractionResult:
        """Run the chat ``[images..., text]`` (after an optional system prompt) and select tokens.

        ``image``: a path, a PIL image, or a list of them (or None). ``hidden_layer``: one index or a
        list (transformers' ``hidden_states`` convention; None: -6, the dopsd backend's -2).
        ``token_selection`` picks the tokens (none:
        the full sequence); the seeds' flags (``image_tokens_only=True``, ...; see
        :data:`~llm_dit.vl.tokens.NOTES_FLAGS`) are accepted instead. ``max_pixels`` bounds each image's
        pixels (and so its tokens; None: the checkpoint's own limit; unset: 1024^2, the dopsd backend's
        768^2); the dopsd backend also enlarges smaller images to 512^2 pixels. ``pool`` averages
        ``pool x pool`` neighbourhoods of each image's token grid. ``vl_intra_blend_ratio`` (seed 002)
        mixes this one extraction's image and text tokens instead of selecting
        (:meth:`VLExtractionResult.intra_blend`). Remaining keyword arguments go to
        :meth:`VLExtractionResult.select` (normalization, the notes' ``scale_to_text``).
        """
        selection = resolve_token_selection(token_selection, **take_notes_flags(select_kwargs))
        if vl_intra_blend_ratio is not None and selection != "full":
            raise InputError("vl_intra_blend_ratio mixes the image and text tokens itself: drop the token selection")
        check_number(pool, "pool", whole=True, ge=1, le=MAX_POOL)
        if hidden_layer is None:
            hidden_layer = DOPSD_DEFAULTS["layer"] if self.backend == "dopsd" else DEFAULT_VL_LAYER
        if max_pixels == BACKEND_BUDGET:
            max_pixels = DOPSD_DEFAULTS["max_pixels"] if self.backend == "dopsd" else DEFAULT_MAX_PIXELS
        elif isinstance(max_pixels, str):
            raise InputError(f"max_pixels must be a number of pixels or None (got {max_pixels!r})")
        layers = list(dict.fromkeys([hidden_layer] if isinstance(hidden_layer, int) else list(hidden_layer)))
        canon = {k: canonical_layer(k, self.num_layers, f"{self.backend} model") for k in layers}
        images = self._images(image)
        if text is not None and not text.strip():
            text = None
        check_selection_possible(selection, len(images), text is not None)
        raw = self._extract_raw(images, text, system_prompt, layers, canon, max_pixels)
        states, ids, grids = pool_image_tokens(raw.hidden_states, raw.input_ids, self.special, raw.token_grids, pool)
        pooled = dataclasses.replace(raw, hidden_states=states, input_ids=ids, token_grids=grids, pool=pool)
        if vl_intra_blend_ratio is not None:
            check_selection_possible("image_no_markers", len(images), text is not None)
            return pooled.intra_blend(vl_intra_blend_ratio, **select_kwargs)
        return pooled.select(selection, **select_kwargs)

    def extract_with_style_injection(self, image, text: str | None, ratio: float = 0.3,
                                     hidden_layer: int = -8) -> torch.Tensor:
        """Seed 003's quoted sketch ("style vector injection"): ``h`` the hidden states of the chat at
        ``hidden_layer``, ``s`` the mean of the image's tokens ``h[vision_start:vision_end]`` (the
        start marker and the pads), ``y = h[vision_end:] + ratio * s`` (the end marker and every token
        after it). Returns ``[1, N, D]``, as the sketch does. Of several images, the last one's span.
        The recipe's ``style_mean`` blend mode is the same idea on any text embedding."""
        check_number(ratio, "ratio")
        r = self.extract(image, text, hidden_layer=hidden_layer)
        if not r.masks.image_spans:
            raise InputError("style injection needs an image in the chat")
        start, end = r.masks.image_spans[-1]  # the pads are [start, end): the markers sit at start - 1 and end
        h = r.hidden_states[hidden_layer]
        return (h[end:] + ratio * h[start - 1:end].mean(0))[None]

    def _extract_raw(self, images, text, system_prompt, layers, canon, max_pixels) -> VLExtractionResult:
        key = request_key(
            model=self.fingerprint(), images=[image_digest(im) for im in images], text=text,
            system_prompt=system_prompt, layers=sorted(set(canon.values())), max_pixels=max_pixels,
        )
        cached = self.cache.get(key)
        if cached is not None:
            cached_layers = {canon[k]: cached.hidden_states[canon[k]] for k in layers}
            cached.hidden_states = {k: cached_layers[canon[k]] for k in layers}
            cached.layers = layers
            return cached
        messages = build_messages(images, text, system_prompt)
        settings: dict = {}
        if self.backend == "dopsd":
            inputs = run_processor(self.processor, messages, images, max_pixels,
                                   min_pixels=DOPSD_DEFAULTS["min_pixels"])
            inputs, cut = cut_chat(inputs, DOPSD_DEFAULTS["max_tokens"], self.special)
            settings = {"defaults": dict(DOPSD_DEFAULTS), "tokens_cut": cut,
                        "language_weights": "Z-Image's text encoder (Qwen3-4B)",
                        "forward": "Qwen3-VL's: M-RoPE from its text_config, DeepStack"}
        else:
            inputs = run_processor(self.processor, messages, images, max_pixels)
        ids = inputs["input_ids"][0]
        wanted = sorted(set(canon.values()))
        if self.backend == "vl":
            states = self._forward_vl(inputs, wanted)
        elif self.backend == "dopsd":
            states = self._forward_dopsd(inputs, wanted)
        else:
            states = self._forward_splice(inputs, wanted)
        grids_thw = inputs.get("image_grid_thw", torch.zeros(0, 3)).tolist()
        patch_grids = [(int(t), int(h), int(w)) for t, h, w in grids_thw]
        merge = self.processor.image_processor.merge_size
        result = VLExtractionResult(
            hidden_states={k: states[k] for k in wanted},
            input_ids=ids.cpu(),
            special=self.special,
            layers=wanted,
            num_layers=self.num_layers,
            backend=self.backend,
            model=self.model_name,
            model_variant=self.variant,
            chat_template=self.chat_template.to_dict(),
            vl_text=text,
            system_prompt=system_prompt,
            full_prompt=self.tokenizer.decode(ids, skip_special_tokens=False),
            patch_grids=patch_grids,
            token_grids=[(h // merge, w // merge) for _, h, w in patch_grids],
            max_pixels=max_pixels,
            backend_settings=settings,
        )
        self.cache.put(key, result)
        result.hidden_states = {k: states[canon[k]] for k in layers}
        result.layers = layers
        return result

    def _batch(self, inputs) -> dict:
        batch = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
        return batch

    def _forward_vl(self, inputs, wanted: list[int]) -> dict[int, torch.Tensor]:
        lm = self.model.model.language_model
        batch = self._batch(inputs)
        states = capture_hidden_states(lm.layers, lm.norm, wanted, lambda: self.model.model(**batch, use_cache=False))
        return {k: v[0].float().cpu() for k, v in states.items()}

    def _forward_dopsd(self, inputs, wanted: list[int]) -> dict[int, torch.Tensor]:
        lm = self.dopsd.language_model
        batch = self._batch(inputs)
        with lent_weights(lm, self.text_encoder, self.device):
            states = capture_hidden_states(lm.layers, lm.norm, wanted, lambda: self.dopsd(**batch, use_cache=False))
        return {k: v[0].float().cpu() for k, v in states.items()}

    def _forward_splice(self, inputs, wanted: list[int]) -> dict[int, torch.Tensor]:
        from ..text import run_text_encoder

        features = None
        if "pixel_values" in inputs:
            out = self.vision(inputs["pixel_values"].to(self.device, self.dtype),
                              grid_thw=inputs["image_grid_thw"].to(self.device))
            features = out.pooler_output
        ids = inputs["input_ids"][0].tolist()
        # Pad as the text path does (diffusers' 512, the tokenizer's side; Qwen3-VL and Qwen3-4B
        # share their tokenizer), so text-only input reproduces it bit for bit.
        return run_text_encoder(
            self.text_encoder, ids, wanted, min_length=512, pad_id=self.tokenizer.pad_token_id,
            image_features=features, image_token_id=self.special.image_pad,
            padding_side=self.tokenizer.padding_side,
        )

    # -- captions ------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        prompt: str | None = None,
        image=None,
        system_prompt: str | None = None,
        max_new_tokens: int = 512,
        temperature: float = 0.7,
        top_p: float = 0.8,
        top_k: int = 20,
        seed: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        do_sample: bool | None = None,
    ) -> str:
        """Generate text (captions); greedy when ``temperature`` is 0 or ``do_sample=False`` (the notes'
        switch; ``do_sample=True`` needs a temperature above 0). Returns the raw decoded output,
        special tokens removed but ``<think>``/``</think>`` kept, special or not (:func:`decode_reply`)."""
        if self.model is None:
            raise InputError("text generation needs the full Qwen3-VL model (backend 'vl')")
        self._check_resident("caption generation")
        check_number(max_new_tokens, "max_new_tokens", whole=True, ge=1, le=MAX_NEW_TOKENS)
        check_number(temperature, "temperature", ge=0)  # a caption's retries raise it past MAX_TEMPERATURE
        check_number(top_p, "top_p", gt=0, le=1)
        check_number(top_k, "top_k", whole=True, ge=0, le=MAX_TOP_K)
        images = self._images(image)
        batch = self._batch(run_processor(self.processor, build_messages(images, prompt, system_prompt), images,
                                          max_pixels))
        if do_sample and temperature <= 0:
            raise InputError("do_sample=True needs a temperature above 0 (temperature 0 is greedy decoding)")
        sample = temperature > 0 if do_sample is None else bool(do_sample)
        kwargs: dict[str, Any] = dict(do_sample=sample, max_new_tokens=max_new_tokens)
        if sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k)
            if seed is not None:
                torch.manual_seed(seed)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        out = self.model.generate(**batch, **kwargs)
        return decode_reply(self.tokenizer, out[0, batch["input_ids"].shape[1]:].tolist())

    @torch.no_grad()
    def answer_probability(self, image, question: str, answer: str = "Yes",
                           max_pixels: int | None = DEFAULT_MAX_PIXELS) -> float:
        """P(``answer``) as the first token of the reply to ``question`` about ``image`` (VQAScore).

        One forward pass; the probability is the softmax over the whole vocabulary at the first
        answer position, of the first token of ``answer``. A Thinking model gets an empty reasoning
        block first (``<think></think>``, Qwen3's way to answer directly).
        """
        if self.model is None:
            raise InputError("answer probabilities need the full Qwen3-VL model (backend 'vl')")
        images = self._images(image)
        self._check_resident("VQA scoring")
        prefix = "\n</think>\n\n" if self.variant == "thinking" else ""
        batch = self._batch(run_processor(self.processor, build_messages(images, question, None), images,
                                          max_pixels, answer_prefix=prefix))
        logits = self.model(**batch, use_cache=False, logits_to_keep=1).logits[0, -1]
        token = self.tokenizer(answer, add_special_tokens=False).input_ids[0]
        return float(logits.float().softmax(-1)[token])

    def _check_resident(self, what: str) -> None:
        """Generation and the LM head need Qwen3-VL resident: diffusers' group offloading (which keeps
        extraction under 1 GiB) does not follow ``generate``'s module order and device handling."""
        if self.offload.startswith("group_"):
            raise InputError(
                f"{what} needs Qwen3-VL resident on the GPU (about 9 GB), but runtime.offload = "
                f"'{self.offload}' offloads it; use a profile without group offloading (e.g. --profile rtx4090), "
                "give the caption yourself (--caption), or turn VQA off (--vqa off)")

    def unload(self) -> None:
        """Free the models; the extractor cannot be used afterwards."""
        self.model = self.vision = self.text_encoder = self.dopsd = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

