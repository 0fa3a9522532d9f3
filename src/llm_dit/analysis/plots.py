"""Matplotlib without a display, and figures written the one safe way (atomically)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def warm() -> None:
    """Import matplotlib and draw one small figure with text (fonts loaded): what the first plot of
    a process pays, about 0.6 s, paid here instead (the runner calls this beside the GPU's work)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.bar([0], [1])
    ax.set_title("warm-up")
    fig.canvas.draw()
    plt.close(fig)


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    from ..io import atomic_path

    plt = pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return Path(path)
