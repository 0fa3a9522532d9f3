"""The research notes' module path for the extractor (``from llm_dit.vl.qwen3_vl import
VLEmbeddingExtractor``): an alias of :mod:`llm_dit.vl.extract` and :mod:`llm_dit.vl.result`."""

from .caption import parse_thinking_content
from .extract import VLEmbeddingExtractor
from .result import VLExtractionResult

__all__ = ["VLEmbeddingExtractor", "VLExtractionResult", "parse_thinking_content"]
