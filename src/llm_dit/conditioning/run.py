"""Running a recipe with real models, in stages that keep GPU memory low.

    1. check everything a user can get wrong (recipe, images, schedule vs steps, the files it names):
       :func:`prepare` returns a :class:`Prepared` holding what the checks loaded (references,
       adapter, reference statistics, planned extractions); nothing loads a model before
    2. VL stage (``vl`` backend): load Qwen3-VL, run every planned extraction, unload it
    3. Z-Image stage: load the pipeline, encode the prompt with its text encoder; the ``splice`` and
       ``dopsd`` backends borrow that encoder (dopsd shares its tensors); reference statistics come from a file, or are
       computed once with that encoder (cached on disk)
    4. build the conditioning and generate (a per-step hook when the alpha follows a schedule)

The experiment runner calls the same stage functions with the requests of many cells at once.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from PIL import Image

from ..config import MAX_CAPTION_TOKENS, Config
from ..errors import InputError, LlmDitError
from ..images import load_image
from ..protocols import OnStep
from ..vl.adapter import LinearAdapter
from ..vl.reference import ReferenceStats
from .build import Conditioning, ExtractionRequest, build_conditioning, plan_extractions, reference_stats_layers
from .recipe import Recipe, check_prompt_or_caption
from .style import neutral_image

Log = Callable[[str], None]
#: Stands for a caption not written yet, when a recipe is checked before captioning.
CAPTION_STANDIN = "a caption"

if TYPE_CHECKING:
    from ..protocols import Models


def load_references(recipe: Recipe) -> dict[str, Image.Image]:
    """Every reference image, loaded and validated (one clear error for a bad one)."""
    from ..vl.chat import check_aspect_ratio

    images = {}
    for i, ref in enumerate(recipe.references):
        if ref.image not in images:
            im = load_image(ref.image, f"reference image {i + 1}")
            check_aspect_ratio(im, f"reference image {i + 1} {ref.image}")
            images[ref.image] = im
    return images


def request_image(req: ExtractionRequest, images: dict[str, Image.Image]) -> Image.Image | None:
    if req.image is None:
        return None
    im = images[req.image] if req.image in images else load_image(req.image, "reference image")
    return neutral_image(im) if req.neutral else im


def run_extractions(extractor, requests: list[ExtractionRequest], images: dict[str, Image.Image],
                    log: Log | None = None, seconds: dict | None = None) -> dict:
    """``{request: VLExtractionResult}`` (raw states, full selection) for every request; the time of
    each pass goes into ``seconds`` when given."""
    out = {}
    for i, req in enumerate(requests):
        if log:
            log(f"extract {i + 1}/{len(requests)}: {req.label()}")
        t0 = time.perf_counter()
        out[req] = extractor.extract(
            request_image(req, images), req.text, hidden_layer=list(req.layers), system_prompt=req.system_prompt,
            max_pixels=req.max_pixels, pool=req.pool,
        )
        if seconds is not None:
            seconds[req] = time.perf_counter() - t0
    return out


def reference_stats_for(recipe: Recipe, config: Config, tokenizer, text_encoder, log: Log | None = None,
                        given: ReferenceStats | None = None) -> dict[int, ReferenceStats] | None:
    """``{layer: ReferenceStats}`` for the layers the recipe's normalization or masking needs.

    From ``recipe.reference_stats`` when given (one file, ``given`` when the checks loaded it already:
    used for every layer, and refused by the layer check where it does not match), else computed with
    Z-Image's text encoder over the shipped prompt corpus and cached under the cache folder.
    """
    layers = reference_stats_layers(recipe)
    if not layers:
        return None
    if recipe.reference_stats:
        stats = given if given is not None else ReferenceStats.load(recipe.reference_stats)
        return {k: stats for k in layers}
    from ..io import cache_root, confined
    from ..models.single_file import identity as z_image_identity
    from ..vl.reference import compute_reference_stats, read_prompts

    prompts = read_prompts()
    covariance = recipe.normalization_mode == "whiten"
    out = {}
    for k in layers:
        key = hashlib.sha256(repr((z_image_identity(config.models), str(text_encoder.dtype), k, covariance,
                                   prompts)).encode()).hexdigest()[:24]
        path = cache_root() / "reference" / f"{key}.safetensors"
        if path.is_file():
            out[k] = ReferenceStats.load(path)
            continue
        if log:
            log(f"reference statistics for layer {k}: {len(prompts)} prompts through the text encoder")
        out[k] = compute_reference_stats(tokenizer, text_encoder, prompts, [k], z_image_identity(config.models),
                                         covariance=covariance)[k]
        with confined(path.parent):  # the cache, not the run folder a run confines its writes to
            out[k].save(path)
    return out


@dataclass
class Generated:
    image: Image.Image
    conditioning: Conditioning
    record: dict
    prompt: str  # the prompt the picture was made from (a caption when one was asked for)
    config: Config  # the configuration it was made with


def _num_layers(config: Config, backend: str) -> int | None:
    """Decoder layers of the model whose hidden states the backend reads, from its config file alone
    (None when it cannot be read here: loading the model reports that)."""
    return _layers_in(config.models.vl if backend == "vl" else config.models, backend)


@functools.lru_cache(maxsize=16)
def _layers_in(spec, backend: str) -> int | None:
    """``spec``: the Qwen3-VL id or folder (``vl``), or the whole ModelsConfig (Z-Image's encoder:
    a single text-encoder file counts its layers from its header)."""
    from transformers import AutoConfig

    from ..models.loading import resolve_model_path
    from ..models.single_file import resolve_files, text_encoder_layers

    try:
        if backend == "vl":
            return AutoConfig.from_pretrained(resolve_model_path(spec, "vl")).text_config.num_hidden_layers
        files = resolve_files(spec)
        if files is not None and files.text_encoder is not None:
            return text_encoder_layers(files)
        z_image = resolve_model_path(files.base if files is not None and files.base else spec.z_image, "z_image")
        return AutoConfig.from_pretrained(z_image, subfolder="text_encoder").num_hidden_layers
    except Exception:
        return None


@dataclass(frozen=True)
class Checked:
    """What checking a resolved recipe for one prompt found and loaded (:func:`check_recipe`)."""

    requests: list[ExtractionRequest]  # the extractions the recipe plans for the prompt
    adapter: LinearAdapter | None  # the recipe's adapter file, loaded (None: it names none)
    stats: ReferenceStats | None  # its reference statistics file, loaded when its modes need one


@dataclass
class Loaded:
    """Files the checks loaded, by path: cells of one run naming the same file share one load.
    ``digests``: the SHA-256 of the bytes each file was decoded from (reference images too), which
    a run's keys cover: what the run records is what its pictures were made from."""

    objects: dict[str, Any] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)


_T = TypeVar("_T")


def _load_once(loaded: Loaded | None, path: str, load: Callable[[str, dict[str, str] | None], _T]) -> _T:
    if loaded is None:
        return load(path, None)
    if path not in loaded.objects:
        loaded.objects[path] = load(path, loaded.digests)
    return loaded.objects[path]


def check_recipe(recipe: Recipe, config: Config, prompt: str, loaded: Loaded | None = None) -> Checked:
    """Everything that can be refused before a model loads (the error's ``field`` names what was
    wrong); returns the planned extractions and the files the recipe names, loaded (once per path
    when ``loaded`` keeps them)."""
    from ..text import check_prompt
    from ..text.capture import canonical_layer
    from ..vl.reference import check_layer_match
    from .build import recipe_layers

    try:
        check_prompt(prompt)
    except InputError as e:
        e.field = "prompt"
        raise
    if recipe.schedule is not None:
        try:
            recipe.schedule.check_steps(config.generation.steps)
        except InputError as e:
            e.field = "schedule"
            raise
    requests = plan_extractions(recipe, prompt)
    if not requests:
        return Checked(requests, None, None)
    assert recipe.backend is not None, "a resolved recipe names its backend (Recipe.resolve)"
    n = _num_layers(config, recipe.backend)
    if n is not None:
        for k in recipe_layers(recipe):
            try:
                canonical_layer(k, n, f"{recipe.backend} model")
            except LlmDitError as e:  # the field that asked for the layer
                e.field = next((f for f in ("image_layer", "text_layer") if getattr(recipe, f) == k), "hidden_layer")
                raise
    adapter: LinearAdapter | None = None
    if recipe.adapter:
        if not Path(recipe.adapter).is_file():
            raise InputError(f"adapter file {recipe.adapter} does not exist")
        adapter = _load_once(loaded, recipe.adapter, LinearAdapter.load)  # a broken file fails here, not later
        for k in recipe_layers(recipe):
            adapter.check_layer(k, n if n is not None else adapter.vl_num_layers)
    stats: ReferenceStats | None = None
    if recipe.reference_stats and reference_stats_layers(recipe):
        stats = _load_once(loaded, recipe.reference_stats, ReferenceStats.load)  # a missing or broken file: here
        if recipe.normalization_mode == "whiten" and stats.covariance is None:
            raise InputError("whiten needs reference statistics with a covariance (stats reference --covariance)")
        for k in reference_stats_layers(recipe):
            check_layer_match(stats, k, n if n is not None else stats.num_layers)
    return Checked(requests, adapter, stats)


@dataclass(frozen=True)
class Prepared:
    """One generation, checked and ready: the stages below take it and check nothing again."""

    config: Config  # for a caption prompt, with ``encoder.max_length`` raised to the DiT's limit
    recipe: Recipe  # resolved against ``config``
    prompt: str | None  # None: Qwen3-VL's caption of the first reference is the prompt
    caption_tokens: int | None
    images: dict[str, Image.Image]  # every reference image, loaded and checked
    checked: Checked  # for ``prompt`` (or a stand-in caption: planned again once it is written)


def prepare(config: Config, recipe: Recipe, prompt: str | None, caption_tokens: int | None = None) -> Prepared:
    """Check a generation and load what the checks need (see :class:`Prepared`); an error names its
    ``field`` (``prompt``, ``caption_tokens``, or the recipe's own)."""
    prompt = check_prompt_or_caption(prompt, caption_tokens, len(recipe.references))
    if caption_tokens is not None:
        config = config.replace(**{"encoder.max_length": MAX_CAPTION_TOKENS})
    recipe = recipe.resolve(config)
    checked = check_recipe(recipe, config, prompt if prompt is not None else CAPTION_STANDIN)
    return Prepared(config, recipe, prompt, caption_tokens, load_references(recipe), checked)


def generate_from_recipe(
    config: Config,
    recipe: Recipe,
    prompt: str | None,
    init_image: Image.Image | None = None,
    log: Log | None = None,
    models: Models | None = None,
    on_step: OnStep | None = None,
    caption_tokens: int | None = None,
) -> Generated:
    """One image for ``prompt`` conditioned by ``recipe``: :func:`prepare`, then :func:`generate`.

    ``caption_tokens``: the prompt is Qwen3-VL's caption of the first reference, about that many
    tokens (seed 004's caption method; the VL chat's ``{prompt}`` is then the caption too).
    """
    return generate(prepare(config, recipe, prompt, caption_tokens), init_image, log, models, on_step)


def generate(prepared: Prepared, init_image: Image.Image | None = None, log: Log | None = None,
             models: Models | None = None, on_step: OnStep | None = None) -> Generated:
    """The picture of a :class:`Prepared` generation (stages 2-4 of the module docstring).

    ``models``: a :class:`~llm_dit.pool.ModelPool` whose models are used and kept (a server);
    without one, each model is loaded for this call and freed after its stage. ``on_step(done, n)``
    reports denoising progress (and may raise :class:`~llm_dit.errors.Cancelled`).
    """
    from ..generate import img2img_steps
    from ..pool import ModelPool

    t0 = time.perf_counter()
    config, recipe, images, prompt = prepared.config, prepared.recipe, prepared.images, prepared.prompt
    requests = prepared.checked.requests
    own = models is None
    pool = models if models is not None else ModelPool()
    try:
        caption = None
        if prompt is None:
            from ..vl.caption import make_caption

            n = prepared.caption_tokens
            assert n is not None  # prepare() gave a prompt or caption_tokens
            if log:
                log(f"caption of about {n} tokens")
            prompt, caption = make_caption(pool.vl(config), images[recipe.references[0].image], n, config)
            requests = check_recipe(recipe, config, prompt).requests  # its chat holds the caption now
        extractions: dict = {}
        if requests and recipe.backend == "vl":
            extractions = run_extractions(pool.vl(config), requests, images, log)
        if own:
            pool.release("vl")  # one model at a time in a one-shot call
        model = pool.z_image(config)
        text = model.encode(prompt)
        if requests and recipe.backend in ("splice", "dopsd"):
            borrowing = pool.splice(config) if recipe.backend == "splice" else pool.dopsd(config)
            extractions = run_extractions(borrowing, requests, images, log)
            if own:
                pool.release(recipe.backend)  # its vision tower is not needed to generate
        pipe = model.pipe
        assert pipe is not None, "a loaded ZImage has its pipeline"
        stats = reference_stats_for(recipe, config, pipe.tokenizer, pipe.text_encoder, log, prepared.checked.stats)
        cond = build_conditioning(recipe, prompt, text.embeddings, extractions, stats, prepared.checked.adapter)
        g = config.generation
        t_gen = time.perf_counter()
        image = model.generate(cond.step_embeds(g.steps), init_image=init_image, on_step=on_step)
        now = time.perf_counter()
        placement = model.placement.to_dict()
    finally:
        if own:
            pool.release()
    n_run = img2img_steps(g.steps, g.strength) if init_image is not None else g.steps
    alphas = [recipe.alpha_at(i + g.steps - n_run, g.steps) for i in range(n_run)]
    record = conditioning_record(cond, alphas, text.summary())
    if caption is not None:
        record["caption"] = caption
    record.update(generation_time=round(now - t_gen, 3), seconds=round(now - t0, 3), placement=placement)
    if set(model.sources) - {"z_image"}:  # single files: what it was made from, with absolute paths
        record["z_image_files"] = model.sources
    return Generated(image, cond, record, prompt, config)


def write_generated(out: Path, result: Generated, init_image: str | None = None) -> dict:
    """The sidecar ``out.json`` (prompt, conditioning record, configuration, provenance) and the PNG
    (the record without its timings in a text chunk), written together: a PNG on disk has the
    sidecar of the same picture beside it, and a failed write changes nothing and is one
    :class:`~llm_dit.errors.WriteError` naming the file (:func:`~llm_dit.io.write_together`, which
    also says what a crash between the two renames leaves). Returns the record."""
    from ..images import write_png
    from ..io import json_text, write_together
    from ..provenance import provenance

    record = {
        "mode": "img2img" if init_image is not None else "txt2img",
        "prompt": result.prompt,
        "init_image": init_image,
        **result.record,
        "config": result.config.to_dict(),
        **provenance(),
    }
    # the PNG carries the same record less the timings, so the same command writes the same bytes
    in_png = {k: v for k, v in record.items() if k not in ("generation_time", "seconds")}
    write_together([(Path(out).with_suffix(".json"), lambda tmp: tmp.write_text(json_text(record), encoding="utf-8")),
                    (out, lambda tmp: write_png(result.image, tmp, in_png))])
    return record


def conditioning_record(cond: Conditioning, alphas: list[float], text_summary: dict | None = None) -> dict:
    """The metadata of one conditioning: the seeds' fields, the fingerprint of the caption embeddings
    handed to the DiT (one per step that runs, ``alphas[i]`` giving step ``i``'s; see
    :func:`~llm_dit.embeddings.fingerprint`), then the whole recipe."""
    from ..embeddings import fingerprint

    r = cond.recipe
    first = cond.stats(alphas[0])
    prints = fingerprint([cond.at(a) for a in alphas])
    if not r.uses_vl:
        alphas = [0.0] * len(alphas)  # pure text: no VL share, whatever the unused alpha field says
    record = {
        "backend": r.backend,
        "alpha": alphas[0] if len(set(alphas)) == 1 else alphas,
        "hidden_layer": r.hidden_layer,
        "token_selection": r.token_selection,
        "normalization_mode": r.normalization_mode,
        "blend_mode": r.blend if r.uses_vl else None,
        **{k: first[k] for k in ("vl_shape", "vl_std", "blended_std", "text_std", "blended_shape", "rms")},
        "sources": cond.sources,
        **prints,
        "recipe": r.to_dict(),
    }
    if r.backend == "dopsd":  # the backend's own settings beside the recipe's (D-OPSD's; docs/recipes.md)
        from ..config import DOPSD_DEFAULTS

        record["backend_settings"] = {"defaults": dict(DOPSD_DEFAULTS)}
    if len(set(alphas)) > 1:
        assert r.schedule is not None, "alphas that vary over the steps come from a schedule"
        record["schedule"] = {"spec": r.schedule.spec(), "alphas": alphas,
                              "blended_std_per_step": [cond.stats(a)["blended_std"] for a in alphas]}
    if text_summary is not None:
        record["text_encoding"] = text_summary
    if cond.style is not None:
        record["style_shape"] = list(cond.style.shape)
    return record

