"""What a checkpoint's weight files hold, read from their headers alone (no tensor is loaded).

A safetensors file is 8 bytes (little-endian u64) ``n``, ``n`` bytes of JSON header mapping each
tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into the data that
follows), then the data. So the header tells each tensor's dtype and size, and whether the file is
complete: its length must be at least ``8 + n + max(end)``. A sharded checkpoint lists its shards
in ``*.safetensors.index.json`` (``weight_map``: tensor name -> shard file).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

#: Bytes per element of the safetensors dtypes a checkpoint uses.
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
               "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
#: A header larger than this is not a safetensors header (the real ones are well under 1 MB).
MAX_HEADER_BYTES = 100 * 2**20


class BadWeights(ValueError):
    """A weight file that is not a complete safetensors file; ``str()`` is one line."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor name -> dtype and shape of the safetensors file ``path``; :class:`BadWeights` when the
    file is not one, or is shorter than its header says (an interrupted download)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
                raise BadWeights(f"{path} is not a safetensors file (header length {n}, file {size} bytes)")
            header = json.loads(f.read(n))
    except OSError as e:
        raise BadWeights(f"{path} cannot be read: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadWeights(f"{path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise BadWeights(f"{path} is not a safetensors file (its header is not a JSON object)")
    tensors: dict[str, TensorInfo] = {}
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            tensors[name] = TensorInfo(str(entry["dtype"]), tuple(int(d) for d in entry["shape"]))
            end = max(end, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise BadWeights(f"{path} has a malformed header entry for {name!r}") from None
    if size < 8 + n + end:
        raise BadWeights(f"{path} is truncated: {size} bytes of {8 + n + end} (an interrupted download?)")
    return tensors


@dataclass
class Weights:
    """The weight files of one component: which are listed, which are present, what they hold."""

    folder: Path
    files: list[str] = field(default_factory=list)  # listed (index) or found, in order
    missing: list[str] = field(default_factory=list)  # listed in the index, absent
    broken: list[str] = field(default_factory=list)  # one line each: not safetensors, truncated
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    index: str | None = None  # the index file's name, if sharded

    @property
    def complete(self) -> bool:
        return bool(self.files) and not self.missing and not self.broken

    @property
    def params(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    @property
    def bytes_on_disk(self) -> int:
        return sum((self.folder / f).stat().st_size for f in self.files if (self.folder / f).is_file())

    def dtypes(self) -> dict[str, int]:
        """Parameters per dtype, e.g. ``{"BF16": 4022468096}``."""
        count: Counter[str] = Counter()
        for t in self.tensors.values():
            count[t.dtype] += t.numel
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
            w.tensors.update(safetensors_header(path))
        except BadWeights as e:
            w.broken.append(str(e))
    return w


def gib(n: int | float) -> str:
    """``n`` bytes as GiB with the precision a person reads (``9.3 GiB``, ``0.004 GiB``)."""
    g = n / 2**30
    return f"{g:.1f} GiB" if g >= 1 else f"{g:.2g} GiB"
