"""The names of the modes a recipe or a configuration can choose, without importing torch.

Each is a ``Literal`` type (what a recipe's or a configuration's field accepts, for pydantic and the
type checker) and the tuple of its names (``typing.get_args``, for messages and ``--help``). The
functions behind the names live where they compute (:data:`llm_dit.conditioning.blend.BLEND_MODES`,
:func:`llm_dit.vl.normalize.normalize`), which carry each mode's facts; reading a recipe or printing
``llm-dit --help`` loads no tensor library. A test keeps each tuple equal to the registry it names.
"""

from __future__ import annotations

from typing import Literal, get_args

#: Every blend mode, in the order of :data:`llm_dit.conditioning.blend.BLEND_MODES`.
BlendMode = Literal["interpolate", "linear", "concat", "replace", "adain", "adain_per_dim", "style_delta",
                    "style_mean", "style_gem", "style_svd"]
BLEND_MODE_NAMES: tuple[str, ...] = get_args(BlendMode)
#: Blend modes whose alpha 0 gives back the text embedding exactly (``0 * x + 1 * text``; concat adds
#: no token), so that a cell at alpha 0 is its pure-text picture (``experiments.cells.effective_recipe``).
#: Not ``replace``: it gives the VL tokens whatever alpha. A test checks each, bit for bit.
ALPHA0_IS_TEXT: tuple[str, ...] = tuple(m for m in BLEND_MODE_NAMES if m != "replace")
#: Modes that add to or restyle the text, keeping its tokens (usable for ``style`` references).
StyleMode = Literal["adain", "adain_per_dim", "style_delta", "style_mean", "style_gem", "style_svd"]
STYLE_MODES: tuple[str, ...] = get_args(StyleMode)
#: How VL hidden states are scaled toward the text encoder's (:func:`llm_dit.vl.normalize.normalize`).
NormalizationMode = Literal["none", "global", "per_dim", "hybrid", "whiten", "cross"]
NORMALIZATION_MODES: tuple[str, ...] = get_args(NormalizationMode)
