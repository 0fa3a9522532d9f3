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

#: Largest first. ``16gb`` and ``12gb`` have the same settings, each run under its own cap.
CLASSES = (
    MemoryClass("rtx4090", "24 GB", "RTX 3090, 4090", 18.0, 14.2, 0.99),
    MemoryClass("16gb", "16 GB", "RTX 4060 Ti 16GB, 4070 Ti Super, 4080, 5080", 13.5, 9.77, 1.03),
    MemoryClass("12gb", "12 GB", "RTX 3060 12GB, 4070, 5070", 10.0, 9.77, 0.96),
    MemoryClass("low_vram", "8 GB", "RTX 3070, 4060, 4060 Ti 8GB", 6.0, 2.45, 1.54),
)

#: GiB a card keeps beside a class's cap for the CUDA context (and a desktop, say).
CONTEXT_GIB = 1.0


def fitting_class(card_gib: float | None) -> MemoryClass | None:
    """The largest class whose cap plus :data:`CONTEXT_GIB` fits a card of ``card_gib`` (the
    largest class when the card is unknown; None when even the smallest does not fit)."""
    for c in CLASSES:
        if card_gib is None or c.cap_gib + CONTEXT_GIB <= card_gib:
            return c
    return None


def out_of_memory_message(err: BaseException, offload: str | None = None) -> str | None:
    """One sentence for a GPU out-of-memory error, naming the memory class that fits this GPU (None
    for any other error). ``offload``: the run's ``runtime.offload``, when known."""
    if type(err).__name__ != "OutOfMemoryError" and "out of memory" not in str(err).lower():
        return None
    total = None
    try:
        import torch

        if torch.cuda.is_available():
            total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
    except Exception:  # no CUDA to ask: the advice stays general
        total = None
    where = f"this GPU's {total:.0f} GiB" if total else "the GPU's memory"
    smallest = CLASSES[-1]
    if offload is not None and offload.startswith("group_"):
        return (f"out of GPU memory: the run needs more than {where} even with layers offloaded "
                f"(--profile {smallest.profile}); make smaller pictures (--width/--height) or use --batch-size 1")
    fits = fitting_class(total)
    if fits is None:
        return (f"out of GPU memory ({where}): even --profile {smallest.profile} peaked at {smallest.peak_gib:g} GiB "
                "for a whole 1024x1024 experiment; make smaller pictures (--width/--height)")
    return (f"out of GPU memory ({where}): use --profile {fits.profile}, which peaked at {fits.peak_gib:.1f} GiB for "
            "a whole 1024x1024 experiment, or a smaller memory class (llm-dit profiles lists them)")
