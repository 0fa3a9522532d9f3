"""Z-Image's own text path (Qwen3-4B): prompt encoding, long-prompt fitting, hidden-state capture.

``encoder`` (prompt -> chat template -> tokens -> hidden states of one layer, exactly as diffusers),
``long_prompt`` (a sequence longer than the DiT takes -> ``MAX_CAPTION_TOKENS`` tokens), ``capture``
(the hidden states of chosen layers, stopping the forward pass after the last one needed).
"""

from .capture import canonical_layer, capture_hidden_states
from .encoder import TextEncoding, check_prompt, encode_prompt, format_prompt, run_text_encoder
from .long_prompt import LONG_PROMPT_MODES, fit_length

__all__ = [
    "LONG_PROMPT_MODES",
    "TextEncoding",
    "canonical_layer",
    "capture_hidden_states",
    "check_prompt",
    "encode_prompt",
    "fit_length",
    "format_prompt",
    "run_text_encoder",
]
