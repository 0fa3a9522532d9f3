"""What a checkpoint's weight files hold, read from their headers alone (no tensor is loaded).

A sharded checkpoint lists its shards in ``*.safetensors.index.json`` (``weight_map``: tensor name
-> shard file); each shard's safetensors header (:func:`~llm_dit.models.file_header.read_header`,
the one reader of that format) tells each tensor's dtype and shape, and safetensors refuses a file
shorter than its header says (an interrupted download).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelLoadError
from .file_header import read_header


@dataclass
class Weights:
    """The weight files of one component: which are listed, which are present, what they hold."""

    folder: Path
    files: list[str] = field(default_factory=list)  # listed (index) or found, in order
    missing: list[str] = field(default_factory=list)  # listed in the index, absent
    broken: list[str] = field(default_factory=list)  # one line each: not safetensors, truncated
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)  # safetensors' names: BF16, F32, F8_E4M3
    index: str | None = None  # the index file's name, if sharded

    @property
    def complete(self) -> bool:
        return bool(self.files) and not self.missing and not self.broken

    @property
    def params(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    @property
    def bytes_on_disk(self) -> int:
        return sum((self.folder / f).stat().st_size for f in self.files if (self.folder / f).is_file())

    def params_by_dtype(self) -> dict[str, int]:
        """Parameters per dtype, e.g. ``{"BF16": 4022468096}``."""
        count: Counter[str] = Counter()
        for name, shape in self.shapes.items():
            count[self.dtypes[name]] += math.prod(shape)
        return dict(count.most_common())

    def bytes_as(self, element_bytes: int) -> int:
        """The weights' size once loaded with ``element_bytes`` per parameter (the run's dtype)."""
        return self.params * element_bytes


def read_weights(folder: Path, stem: str) -> Weights:
    """The ``stem.safetensors`` weights of ``folder`` (``model``, ``diffusion_pytorch_model``), sharded
    (``stem.safetensors.index.json``) or not."""
    w = Weights(folder)
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        w.index = index.name
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            w.files = sorted(set(weight_map.values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            w.broken.append(f"{index} is not a safetensors index (no weight_map)")
            return w
    elif (folder / f"{stem}.safetensors").is_file():
        w.files = [f"{stem}.safetensors"]
    for name in w.files:
        path = folder / name
        if not path.is_file():
            w.missing.append(name)
            continue
        try:
            header = read_header(path, "weight file")
        except ModelLoadError as e:
            w.broken.append(str(e))
            continue
        w.shapes.update(header.shapes)
        w.dtypes.update(header.dtypes)
    return w


def gib(n: int | float) -> str:
    """``n`` bytes as GiB with the precision a person reads (``9.3 GiB``, ``0.004 GiB``)."""
    g = n / 2**30
    return f"{g:.1f} GiB" if g >= 1 else f"{g:.2g} GiB"
