"""The bounds of the numbers a person gives llm-dit, and the one check of a number every door shares.

Every number a person sets must be a number: NaN compares false with every bound (``nan <= 0`` is
False, so a check like ``if ridge <= 0`` lets it through) and infinity overflows the arithmetic it
feeds. Every count has an upper bound, named here with the reason for it, so a typo of a few extra
digits is refused in one sentence instead of hanging a generation or planning a million pictures.

Where the checks live: the pydantic models (the configuration, the recipe, schedules, the web API's
request bodies) refuse NaN and infinity for every float field at once (``allow_inf_nan=False`` on
their base class) and carry ``le=`` bounds from here; the command line's flags that set no model field
parse through :func:`llm_dit.cli.common.number` / ``count`` (which call :func:`number_problem`); the
library functions that take numbers directly (``fit_adapter``'s ridge, a ``CaptionRequest``,
``CompareOptions``' threshold, ``create_app``'s upload limit) call :func:`check_number`, so Python
callers get an :class:`~llm_dit.errors.InputError` of the same sentence.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from .errors import InputError, LlmDitError

#: ``hidden_states`` indices run ``-(MAX_LAYER + 1)..MAX_LAYER``. The models llm-dit loads have 36
#: decoder layers (Qwen3-4B, Qwen3-VL-4B and -8B), the largest Qwen3 94: 256 admits any of them while a
#: mistyped index is refused before a model loads (the model's own count is checked when it has loaded).
MAX_LAYER = 256
#: Pixels per reference image: 16384 x 16384, about 262144 image tokens at ~1 token per 32 x 32
#: pixels, far beyond what fits in memory; the default is 1048576 (~1024 tokens).
MAX_PIXELS = 16384 * 16384
#: ``pool``: K x K neighbourhoods of the image-token grid; 32 x 32 tokens already cover 1024 x 1024 pixels.
MAX_POOL = 32
#: Seeds are signed 64-bit integers: TOML and JSON integers end at 2^63 - 1 (a run's record must read
#: back), and ``torch.Generator.manual_seed`` accepts them.
MAX_SEED = 2**63 - 1
#: A caption's generation budget, thinking included: Qwen3's model cards recommend 32768 output tokens
#: for most tasks; more takes hours on a GPU and is a typo, not a budget.
MAX_NEW_TOKENS = 32768
#: Caption attempts: each raises the temperature by 0.1, so past 10 the sampling is mostly noise.
MAX_CAPTION_ATTEMPTS = 10
#: Sampling temperature of captions: above 2 Qwen3 writes noise (APIs that sample it cap it at 2 too).
MAX_TEMPERATURE = 2.0
#: ``top_k`` of caption sampling: Qwen3's vocabulary has 151936 entries; 2^18 is all of them.
MAX_TOP_K = 2**18
#: ``llm-dit serve --max-upload-mb``: an upload is held in memory whole; 1024 MB is 40x a large photo.
MAX_UPLOAD_MB = 1024
#: ``stats adapter --ridge``, relative to the mean variance: at 1e6 the map is already ~1e-6 of the
#: least-squares one (the bias alone); larger values overflow the ridge term.
MAX_RIDGE = 1e6
#: The SVD style vector's directions: the rank of ``[n, D]`` tokens is at most D (2560 for the 4B
#: models, 4096 for 8B), so more directions than 4096 are all of them.
MAX_SVD_K = 4096
#: A reference's weight: weights are relative (only their ratios matter); 1e6 keeps ``w * x`` and the
#: sum of the weights far from float overflow.
MAX_WEIGHT = 1e6
#: A global normalization target std: text embeddings have stds of about 1 to 100; 1e4 is far outside
#: that and still far from overflowing the scaled embedding.
MAX_TARGET_STD = 1e4


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e16 else f"{v:g}"


def expectation(whole: bool = False, gt: float | None = None, ge: float | None = None, lt: float | None = None,
                le: float | None = None) -> str:
    """What a number must be, as the end of a sentence ``NAME must be ...``: ``"a whole number in
    1..32768"``, ``"a finite number in (0, 1000000]"``, ``"a finite number greater than 1"``."""
    if whole:
        lo = ge if ge is not None else (gt + 1 if gt is not None else None)
        hi = le if le is not None else (lt - 1 if lt is not None else None)
        if lo is not None and hi is not None:
            return f"a whole number in {_fmt(lo)}..{_fmt(hi)}"
        return "a whole number" + (f" of at least {_fmt(lo)}" if lo is not None else "") + (
            f" of at most {_fmt(hi)}" if hi is not None else "")
    low, high = (gt, "(") if gt is not None else (ge, "["), (lt, ")") if lt is not None else (le, "]")
    if low[0] is not None and high[0] is not None:
        return f"a finite number in {low[1]}{_fmt(low[0])}, {_fmt(high[0])}{high[1]}"
    if low[0] is not None:
        return f"a finite number {'greater than' if gt is not None else 'of at least'} {_fmt(low[0])}"
    if high[0] is not None:
        return f"a finite number {'less than' if lt is not None else 'of at most'} {_fmt(high[0])}"
    return "a finite number"


def number_problem(value: object, whole: bool = False, gt: float | None = None, ge: float | None = None,
                   lt: float | None = None, le: float | None = None) -> str | None:
    """None when ``value`` is a number (a finite one; an integer with ``whole``) within the bounds;
    else what it must be (:func:`expectation`)."""
    problem = expectation(whole, gt, ge, lt, le)
    if isinstance(value, bool) or not isinstance(value, Integral if whole else Real):
        return problem
    v: int | float = int(value) if isinstance(value, Integral) else float(value)  # ints stay exact
    if isinstance(v, float) and not math.isfinite(v):
        return problem
    inside = (gt is None or v > gt) and (ge is None or v >= ge) and (lt is None or v < lt) and (le is None or v <= le)
    return None if inside else problem


def check_number(value, name: str, whole: bool = False, gt: float | None = None, ge: float | None = None,
                 lt: float | None = None, le: float | None = None, field: str | None = None,
                 error: type[LlmDitError] = InputError):
    """``value`` when it is a number within the bounds (see :func:`number_problem`), else ``error``:
    ``"ridge must be a finite number in (0, 1000000] (got nan)"``."""
    problem = number_problem(value, whole, gt, ge, lt, le)
    if problem is not None:
        raise error(f"{name} must be {problem} (got {value!r})", field=field)
    return value
