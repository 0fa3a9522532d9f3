"""Matplotlib without a display, and figures written the one safe way (atomically)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110, durable: bool = True) -> Path:
    from ..io import atomic_path

    plt = pyplot()
    with atomic_path(path, durable) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return Path(path)
