"""A bounded on-disk cache of raw extractions, so an identical request does no forward pass.

Path: ``$LLM_DIT_CACHE/extractions/<key>.safetensors`` (``~/.cache/llm-dit`` by default). The key
is a SHA-256 over everything the hidden states depend on: the model's identity (name or path, its
config, dtype and a checksum of its weights), the backend, each image's decoded RGB pixels and size, the VL
text, the system prompt, the layers and the pixel budget. Pooling, token selection and
normalization are applied after the cache, so they are not part of the key. Least recently used
entries are evicted beyond ``max_bytes``; ``max_bytes = 0`` disables the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from PIL import Image

from ..io import cache_root, confined


def image_digest(image: Image.Image) -> str:
    h = hashlib.sha256()
    h.update(f"{image.mode}:{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def request_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class ExtractionCache:
    def __init__(self, max_bytes: int, root: str | os.PathLike | None = None):
        self.max_bytes = int(max_bytes)
        self.root = Path(root) if root is not None else cache_root() / "extractions"

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def get(self, key: str):
        from .result import VLExtractionResult

        if not self.enabled:
            return None
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            result = VLExtractionResult.load(p)
        except Exception:  # a damaged entry is a miss, and goes
            with contextlib.suppress(OSError):
                p.unlink()
            return None
        with contextlib.suppress(OSError):
            os.utime(p)  # recently used
        return result

    def put(self, key: str, result) -> None:
        if not self.enabled:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with confined(self.root):  # the cache, not the run folder a run confines its writes to
            result.save(self.path(key))
        self.evict()

    def evict(self) -> None:
        entries = []
        for p in self.root.glob("*.safetensors"):
            with contextlib.suppress(OSError):
                st = p.stat()
                entries.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(OSError):
                p.unlink()
                total -= size
