"""``Recipe``: one whole conditioning, declared. The CLI, the experiment runner and the web app build
it; it round-trips through TOML and JSON and goes whole into every output's metadata.

Fields left ``None`` take their value from the configuration's ``[vl]`` section when the recipe is
resolved (:meth:`Recipe.resolve`); the resolved form is what gets recorded.

The path from a recipe to the caption embedding (see :mod:`llm_dit.conditioning.build`)::

    per reference:  extraction(s) -> token selection -> normalization -> outlier masking -> budget
                    (intra-VL / dual / multi-layer: image part and text part, mixed by the ratio)
    per role:       weighted mean of the references of that role     -> V (content), S (style)
    blend:          y = blend(text, V, alpha_i);  y = style_blend(y, S, style_alpha)
    length:         y fitted to <= 1504 tokens by budget_mode; never empty
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..config import DOPSD_DEFAULTS, MAX_CAPTION_TOKENS, Config, LayerIndex, LongPromptMode, validate_model
from ..errors import ConfigError, InputError, LlmDitError
from ..limits import MAX_PIXELS, MAX_POOL, MAX_SVD_K, MAX_TARGET_STD, MAX_WEIGHT, expectation
from ..modes import BlendMode, NormalizationMode, StyleMode
from .schedule import Schedule, parse_schedule

Backend = Literal["text", "vl", "splice", "dopsd"]
TokenSelection = Literal["full", "text_only", "user_text", "image_only", "image_no_markers"]
#: Recipe fields that name files (besides the references' images).
FILE_FIELDS = ("adapter", "reference_stats")
#: Weights whose sum is closer to zero than this are refused.
_MIN_WEIGHT_SUM = 1e-8
#: Recipes shipped with the package (``NAME.toml``): ``--recipe NAME`` and the web page's presets.
SHIPPED = Path(__file__).resolve().parent.parent / "recipes"


class _Strict(BaseModel):
    # allow_inf_nan=False: every float field refuses nan and inf (nan passes every ge/le test)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Reference(_Strict):
    """One reference image: its weight among the references of its role, and its role."""

    image: str = Field(min_length=1)
    weight: float = Field(1.0, ge=-MAX_WEIGHT, le=MAX_WEIGHT)
    role: Literal["content", "style"] = "content"


class Recipe(_Strict):
    """Everything that decides the caption embedding (the prompt and the models come from outside)."""

    backend: Backend | None = None  # None: the profile's vl.backend
    references: list[Reference] = Field(default_factory=list)
    # extraction
    vl_text: str = "{prompt}"  # "{prompt}" is replaced by the prompt; "" = no text in the VL chat
    system_prompt: str | None = None
    hidden_layer: LayerIndex | None = None
    token_selection: TokenSelection | None = None
    max_pixels: int | None = Field(None, ge=1024, le=MAX_PIXELS)
    pool: int | None = Field(None, ge=1, le=MAX_POOL)
    # intra-VL (seed 002 phase 2), dual extraction (phase 3), multi-layer (phase 4)
    vl_intra_blend_ratio: float | None = Field(None, ge=0.0, le=1.0)
    dual_extraction: bool = False
    image_layer: LayerIndex | None = None
    text_layer: LayerIndex | None = None
    image_tokens: Literal["image_no_markers", "image_only"] = "image_no_markers"
    text_tokens: Literal["text_only", "user_text"] = "text_only"
    # statistics
    adapter: str | None = None  # a linear map to the text encoder's space (llm-dit stats adapter), before normalizing
    normalization_mode: NormalizationMode = "global"
    # nan and inf reach _target_std (one sentence with the range), not the union's per-member errors
    target_std: Annotated[float, Field(allow_inf_nan=True)] | Literal["text"] = "text"
    reference_stats: str | None = None
    outlier_mask: Literal["none", "zero", "clamp", "scale", "restore"] = "none"
    outlier_threshold: float = Field(10.0, gt=1.0)
    # length
    token_budget: int | None = Field(None, ge=1, le=MAX_CAPTION_TOKENS)
    budget_mode: LongPromptMode = "pool"
    # blending
    blend: BlendMode = "interpolate"
    alpha: float = Field(0.3, ge=0.0, le=1.0)
    schedule: Schedule | None = None
    resample: Literal["linear", "area"] = "linear"
    magnitude: Literal["raw", "match_rms"] = "raw"
    style_blend: StyleMode = "adain_per_dim"
    style_alpha: float | None = Field(None, ge=0.0, le=1.0)
    gem_p: float = Field(3.0, gt=0.0, le=100.0)
    svd_k: int = Field(10, ge=1, le=MAX_SVD_K)

    @field_validator("target_std")
    @classmethod
    def _target_std(cls, v: float | str) -> float | str:
        if isinstance(v, float) and not (math.isfinite(v) and 0 < v <= MAX_TARGET_STD):
            raise ValueError(f"must be {expectation(gt=0, le=MAX_TARGET_STD)}, or 'text' (got {v})")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.backend == "text" and self.references:
            raise ValueError("backend 'text' takes no reference images (use backend vl, splice or dopsd)")
        if self.adapter and self.backend in ("splice", "dopsd"):
            raise ValueError(f"an adapter maps Qwen3-VL's states; the {self.backend} backend already reads Qwen3-4B's")
        if self.vl_intra_blend_ratio is None:
            for name in ("dual_extraction", "image_layer", "text_layer"):
                if getattr(self, name) not in (None, False):
                    raise ValueError(f"{name} mixes an image part and a text part: set vl_intra_blend_ratio too")
        for role in ("content", "style"):
            weights = [r.weight for r in self.references if r.role == role]
            if weights and abs(sum(weights)) < _MIN_WEIGHT_SUM:
                raise ValueError(f"the weights of the {role} references sum to zero ({weights})")
        return self

    # -- resolution ----------------------------------------------------------------------------

    def resolve(self, config: Config) -> Recipe:
        """A copy with every ``None`` field (backend and extraction settings) filled from ``config.vl``;
        under the ``dopsd`` backend an unset ``hidden_layer`` and ``max_pixels`` take D-OPSD's own
        values instead (:data:`~llm_dit.config.DOPSD_DEFAULTS`: -2 and 768 x 768)."""
        vl = config.vl
        backend = self.backend or vl.backend
        layer, max_pixels = (DOPSD_DEFAULTS["layer"], DOPSD_DEFAULTS["max_pixels"]) if backend == "dopsd" \
            else (vl.layers[0], vl.max_pixels)
        return self.model_copy(update=dict(
            backend=backend,
            hidden_layer=layer if self.hidden_layer is None else self.hidden_layer,
            token_selection=self.token_selection or vl.token_selection,
            max_pixels=self.max_pixels or max_pixels,
            pool=self.pool or vl.pool,
            system_prompt=vl.system_prompt if self.system_prompt is None else self.system_prompt,
        ))

    def vl_text_for(self, prompt: str) -> str | None:
        text = self.vl_text.replace("{prompt}", prompt)
        return text if text.strip() else None

    @property
    def uses_vl(self) -> bool:
        return self.backend != "text"

    def alpha_at(self, i: int, steps: int) -> float:
        return self.schedule.alpha(i, steps) if self.schedule is not None else self.alpha

    # -- serialization -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        if not isinstance(data, dict):
            raise ConfigError("a recipe must be a table of fields")
        data = dict(data)
        if isinstance(data.get("schedule"), str):
            try:
                data["schedule"] = parse_schedule(data["schedule"]).model_dump()
            except LlmDitError as e:
                e.field = "schedule"
                raise
        return validate_model(cls, data, "recipe field")

    def to_toml(self) -> str:
        import tomli_w

        # TOML has no null: unset fields are left out and come back as None.
        return tomli_w.dumps(_drop_none(self.to_dict()))

    def save(self, path: str | Path) -> Path:
        from ..io import write_text

        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2) + "\n" if path.suffix == ".json" else self.to_toml()
        return write_text(path, text)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Read a ``.toml`` or ``.json`` recipe, or a shipped one by name (:func:`recipe_file`); a file
        with a ``[recipe]`` table (a shipped recipe, a metadata file) gives that table. Relative image
        paths are taken from the file's folder."""
        path = recipe_file(path)
        data = _read_file(path)
        if isinstance(data, dict) and isinstance(data.get("recipe"), dict):
            data = data["recipe"]  # a metadata file: its recipe
        refs = data.get("references") if isinstance(data, dict) else None
        for ref in refs if isinstance(refs, list) else []:  # anything else: validation says what is wrong
            if isinstance(ref, dict) and isinstance(ref.get("image"), str) and not Path(ref["image"]).is_absolute():
                ref["image"] = str(path.parent / ref["image"])
        for key in FILE_FIELDS:
            value = data.get(key) if isinstance(data, dict) else None
            if isinstance(value, str) and value and not Path(value).is_absolute():
                data[key] = str(path.parent / value)
        return cls.from_dict(data)


def shipped_recipes() -> list[str]:
    """The names of the shipped recipes (``src/llm_dit/recipes/NAME.toml``), sorted."""
    return sorted(p.stem for p in SHIPPED.glob("*.toml"))


def recipe_file(name_or_path: str | Path) -> Path:
    """The file ``--recipe`` means: a path as given, or the shipped recipe of that name (a bare word
    that is no file here, e.g. ``style_transfer``)."""
    path = Path(name_or_path)
    if path.is_file() or path.suffix or len(path.parts) != 1:
        if not path.is_file():
            raise InputError(f"recipe file {path} does not exist")
        return path
    if (SHIPPED / f"{path.name}.toml").is_file():
        return SHIPPED / f"{path.name}.toml"
    import difflib

    names = shipped_recipes()
    close = difflib.get_close_matches(path.name, names, n=1)
    hint = f"did you mean {close[0]}?" if close else f"shipped: {', '.join(names)}"
    raise InputError(f"no recipe file {path} here and no shipped recipe of that name; {hint}")


def _read_file(path: Path) -> Any:
    """The table a ``.json`` or ``.toml`` file holds."""
    from ..io import parse_json, parse_toml

    try:
        text = path.read_text(encoding="utf-8")
        parse = parse_json if path.suffix == ".json" else parse_toml
        return parse(text, f"recipe file {path}", ConfigError)
    except LlmDitError:  # nested too deep: the sentence names the file
        raise
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"recipe file {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: "
                          f"{e}") from None


@dataclass(frozen=True)
class RecipeFile:
    """A recipe file as ``--recipe`` and the web page's presets read it: the recipe, and what a
    shipped recipe suggests beside it (a title and note for the page, generation settings such as
    ``{"steps": 4}``, and ``caption_tokens`` for the caption method). Plain recipe files have none."""

    name: str
    recipe: Recipe
    title: str = ""
    note: str = ""
    generation: dict[str, Any] = field(default_factory=dict)
    caption_tokens: int | None = None

    def config_overrides(self) -> dict[str, Any]:
        """The suggested generation settings as dotted config overrides (flags given still win)."""
        return {f"generation.{k}": v for k, v in self.generation.items()}


def read_recipe_file(name_or_path: str | Path) -> RecipeFile:
    """Read a recipe file or a shipped recipe (:func:`recipe_file`); the recipe through
    :meth:`Recipe.load`, the suggestions from the top of a ``.toml`` file with a ``[recipe]`` table."""
    from ..config import GenerationConfig

    path = recipe_file(name_or_path)
    recipe = Recipe.load(path)
    data = _read_file(path) if path.suffix == ".toml" else {}
    if not isinstance(data.get("recipe"), dict):
        return RecipeFile(path.stem, recipe)
    generation = data.get("generation", {})
    if not isinstance(generation, dict) or set(generation) - set(GenerationConfig.model_fields):
        raise ConfigError(f"recipe file {path}: [generation] takes {', '.join(GenerationConfig.model_fields)}")
    tokens = data.get("caption_tokens")
    if tokens is not None and (not isinstance(tokens, int) or not 1 <= tokens <= MAX_CAPTION_TOKENS):
        raise ConfigError(f"recipe file {path}: caption_tokens must be a whole number in 1..{MAX_CAPTION_TOKENS}")
    return RecipeFile(path.stem, recipe, str(data.get("title", "")), str(data.get("note", "")), dict(generation),
                      tokens)


def check_prompt_or_caption(prompt: str | None, caption_tokens: int | None, references: int) -> str | None:
    """The prompt a generation uses, after the one rule every door applies: a prompt, or
    ``caption_tokens`` (the prompt is then Qwen3-VL's caption of the first of the ``references``
    reference images, about that many tokens, 1..1504), never both and never neither.

    A prompt of only white space counts as none given (and the sentence says it is empty). Returns
    the prompt, or None when a caption will be the prompt. The command line, the web app,
    :func:`~llm_dit.conditioning.run.generate_from_recipe` and sweeps all call this, so they refuse
    the same input with the same sentence (and field).
    """
    blank = prompt is not None and not prompt.strip()
    if blank:
        prompt = None
    if caption_tokens is None:
        if prompt is None:
            give = "give a prompt, or caption tokens N to use a caption of the first reference image"
            raise InputError(f"the prompt is empty ({give})" if blank else give, field="prompt")
        return prompt
    if prompt is not None:
        raise InputError("give a prompt or caption tokens, not both", field="caption_tokens")
    if references < 1:
        raise InputError("caption tokens caption the first reference image: give one", field="caption_tokens")
    if not 1 <= caption_tokens <= MAX_CAPTION_TOKENS:
        raise InputError(f"caption tokens must be in 1..{MAX_CAPTION_TOKENS} (got {caption_tokens})",
                         field="caption_tokens")
    return None


def _drop_none(value):
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value
