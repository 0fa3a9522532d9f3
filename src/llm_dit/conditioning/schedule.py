"""Alpha over the denoising steps (seed 001 #9): early steps set the structure, late ones the detail.

A schedule gives ``alpha_i`` for step ``i`` of ``N`` configured steps, with progress
``p = i / (N - 1)`` (``p = 0`` when ``N = 1``):

* ``constant``: ``alpha_i = a``
* ``linear``:   ``alpha_i = a0 + (a1 - a0) p``
* ``cosine``:   ``alpha_i = a1 + (a0 - a1) (1 + cos(pi p)) / 2``  (flat near both ends)
* ``step``:     ``alpha_i = a0`` while ``i < f N`` (the first ``ceil(f N)`` steps), else ``a1``
* ``list``:     ``alpha_i = v_i``; exactly ``N`` values

img2img runs only the last steps of the schedule; step ``j`` of those reads ``alpha_{j + N - n}``.
It is applied through diffusers' ``callback_on_step_end``, which swaps ``prompt_embeds`` between
steps; the denoise loop itself is diffusers'.

Text form (CLI, web): ``0.3`` | ``constant:0.3`` | ``linear:0.8:0.2`` | ``cosine:0.8:0.2`` |
``step:0.8:0.2:0.5`` | ``list:0.8,0.6,0.4`` (or just ``0.8,0.6,0.4``).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import InputError, unknown_choice

SCHEDULE_KINDS = ("constant", "linear", "cosine", "step", "list")
_Alpha = Field(None, ge=0.0, le=1.0)


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    kind: Literal["constant", "linear", "cosine", "step", "list"]
    start: float | None = _Alpha
    end: float | None = _Alpha
    at: float | None = Field(None, ge=0.0, le=1.0)
    # nan among the values reaches _fields' sentence ("must lie in [0, 1] (got nan)")
    values: list[Annotated[float, Field(allow_inf_nan=True)]] | None = None

    @model_validator(mode="after")
    def _fields(self) -> Schedule:
        need = {"constant": ("start",), "linear": ("start", "end"), "cosine": ("start", "end"),
                "step": ("start", "end", "at"), "list": ("values",)}[self.kind]
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"a {self.kind} schedule needs {', '.join(missing)}")
        extra = [k for k in ("start", "end", "at", "values") if k not in need and getattr(self, k) is not None]
        if extra:
            raise ValueError(f"a {self.kind} schedule takes no {', '.join(extra)}")
        if self.values is not None:
            if not self.values:
                raise ValueError("a list schedule needs at least one value")
            bad = [v for v in self.values if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0)]
            if bad:
                raise ValueError(f"schedule values must lie in [0, 1] (got {bad[0]})")
        return self

    def _listed(self) -> list[float]:
        assert self.values is not None, "a list schedule has its values (checked in _fields)"
        return self.values

    def check_steps(self, steps: int) -> None:
        """Refuse a list that does not cover exactly ``steps`` steps."""
        if self.kind == "list" and len(self._listed()) != steps:
            raise InputError(f"the alpha schedule lists {len(self._listed())} values but the run has {steps} steps")

    def alpha(self, i: int, steps: int) -> float:
        p = i / (steps - 1) if steps > 1 else 0.0
        if self.kind == "list":
            self.check_steps(steps)
            return float(self._listed()[i])
        start, end = self.start, self.end
        assert start is not None, f"a {self.kind} schedule has its start (checked in _fields)"
        if self.kind == "constant":
            return start
        assert end is not None, f"a {self.kind} schedule has its end (checked in _fields)"
        if self.kind == "linear":
            return start + (end - start) * p
        if self.kind == "cosine":
            return end + (start - end) * (1 + math.cos(math.pi * p)) / 2
        assert self.at is not None, "a step schedule has its switch point (checked in _fields)"
        # f N can land a hair above an integer (0.28 * 25 = 7.000000000000001): count steps exactly.
        return start if i < math.ceil(round(self.at * steps, 9)) else end

    def alphas(self, steps: int) -> list[float]:
        self.check_steps(steps)
        return [self.alpha(i, steps) for i in range(steps)]

    def is_constant(self) -> bool:
        return self.kind == "constant"

    def spec(self) -> str:
        """The text form."""
        if self.kind == "list":
            return "list:" + ",".join(f"{v:g}" for v in self._listed())
        parts = [self.start, self.end, self.at][: {"constant": 1, "linear": 2, "cosine": 2, "step": 3}[self.kind]]
        return ":".join([self.kind, *(f"{v:g}" for v in parts)])


def parse_schedule(text: str) -> Schedule:
    """The text form -> :class:`Schedule` (one-line errors)."""
    from pydantic import ValidationError

    s = text.strip()
    try:
        if ":" in s:
            kind, _, rest = s.partition(":")
        else:
            kind, rest = ("list" if "," in s else "constant"), s
        kind = kind.strip()
        if kind not in SCHEDULE_KINDS:
            raise InputError(unknown_choice("schedule", kind, SCHEDULE_KINDS))
        if kind == "list":
            return Schedule(kind="list", values=[float(v) for v in rest.split(",") if v.strip()])
        nums = [float(v) for v in rest.split(":")]
        names = {"constant": ["start"], "linear": ["start", "end"], "cosine": ["start", "end"],
                 "step": ["start", "end", "at"]}[kind]
        if len(nums) != len(names):
            raise InputError(f"schedule '{s}': {kind} takes {len(names)} number(s) ({':'.join(names)})")
        return Schedule.model_validate({"kind": kind, **dict(zip(names, nums, strict=True))})
    except InputError:
        raise
    except ValueError as e:
        if isinstance(e, ValidationError):
            err = e.errors()[0]
            msg = err["msg"].removeprefix("Value error, ")
            loc = ".".join(str(p) for p in err["loc"])
            raise InputError(f"schedule '{s}': {loc + ': ' if loc else ''}{msg}") from None
        raise InputError(f"schedule '{s}' is not valid: expected e.g. 0.3, linear:0.8:0.2, step:0.8:0.2:0.5 "
                         "or list:0.8,0.5,0.2") from None
