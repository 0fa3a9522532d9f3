"""Qwen3-VL hidden states for Z-Image: extraction, token positions, normalization, outliers, captions."""

from .caption import parse_thinking_content
from .extract import BACKENDS, VLEmbeddingExtractor
from .normalize import NORMALIZATION_MODES, normalize
from .outliers import MASK_MODES, get_outlier_dimensions, mask_outlier_dimensions
from .reference import ReferenceStats
from .result import VLExtractionResult
from .tokens import TOKEN_SELECTIONS, TokenMasks, compute_token_masks

__all__ = [
    "BACKENDS",
    "MASK_MODES",
    "NORMALIZATION_MODES",
    "TOKEN_SELECTIONS",
    "ReferenceStats",
    "TokenMasks",
    "VLEmbeddingExtractor",
    "VLExtractionResult",
    "compute_token_masks",
    "get_outlier_dimensions",
    "mask_outlier_dimensions",
    "normalize",
    "parse_thinking_content",
]
