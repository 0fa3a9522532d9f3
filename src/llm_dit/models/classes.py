"""The memory classes: which shipped profile fits which card, and what it was measured to need.

Each class is a profile (``profiles.toml``) whose whole VL experiment (Qwen3-VL extraction, text
encoding, 9 steps at 1024 x 1024, VAE decode) ran under ``torch.cuda.set_per_process_memory_fraction``
at its cap, which leaves the rest of the card to the CUDA context, a desktop and other programs.
``llm-dit profiles`` prints this table; ``bench/memory_profiles.py`` measures it (BENCHMARKS.md,
section 4, has the rows, the levers each class uses, and the fidelity of each).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MemoryClass:
    profile: str
    card: str  # the card's memory
    examples: str
    cap_gib: float  # the peak the class must stay under (its runs are measured under this cap)
    peak_gib: float | None  # measured: the highest torch.cuda.max_memory_allocated of the run
    time_vs_default: float | None  # measured: the run's seconds over the default profile's, same machine

    def line(self) -> str:
        measured = (f"peak {self.peak_gib:.1f} GiB (cap {self.cap_gib:g}), {self.time_vs_default:.2f}x the "
                    "default's time" if self.peak_gib is not None and self.time_vs_default is not None
                    else f"cap {self.cap_gib:g} GiB, not measured yet")
        return f"{self.profile:10s} {self.card:6s} {measured}; e.g. {self.examples}"


#: Where the measured numbers come from.
MEASURED_ON = "bench/memory_profiles.py, NVIDIA H100 80GB, 2026-12-05, full-size random weights"

#: ``16gb`` and ``12gb`` have the same settings; the run that measured them ran under 10 GiB.
CLASSES = (
    MemoryClass("rtx4090", "24 GB", "RTX 3090, 4090", 18.0, 14.13, 0.98),
    MemoryClass("16gb", "16 GB", "RTX 4060 Ti 16GB, 4070 Ti Super, 4080, 5080", 13.5, 9.77, 1.23),
    MemoryClass("12gb", "12 GB", "RTX 3060 12GB, 4070, 5070", 10.0, 9.77, 1.23),
    MemoryClass("low_vram", "8 GB", "RTX 3070, 4060, 4060 Ti 8GB", 6.0, 3.17, 1.55),
)
