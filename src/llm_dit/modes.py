"""The names of the modes a recipe or a configuration can choose, without importing torch.

The functions behind the names live where they compute (:data:`llm_dit.conditioning.blend.BLEND_MODES`,
:func:`llm_dit.vl.normalize.normalize`); the recipe, the configuration and the command line check a
name against these tuples, so reading a recipe or printing ``llm-dit --help`` loads no tensor library.
A test keeps each tuple equal to the registry it names.
"""

from __future__ import annotations

#: Every blend mode, in the order of :data:`llm_dit.conditioning.blend.BLEND_MODES`.
BLEND_MODE_NAMES = (
    "interpolate", "linear", "concat", "replace", "adain", "adain_per_dim", "style_delta", "style_mean", "style_gem",
    "style_svd",
)
#: Modes that add to or restyle the text, keeping its tokens (usable for ``style`` references).
STYLE_MODES = ("adain", "adain_per_dim", "style_delta", "style_mean", "style_gem", "style_svd")
#: How VL hidden states are scaled toward the text encoder's (:func:`llm_dit.vl.normalize.normalize`).
NORMALIZATION_MODES = ("none", "global", "per_dim", "hybrid", "whiten", "cross")
