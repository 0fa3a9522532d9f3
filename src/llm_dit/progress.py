"""Progress of a long loop, told through a logger: a tqdm bar at a terminal, lines elsewhere.

At a terminal (stderr a TTY) the loop gets a bar that closes when it ends; in a pipe or a log file a
bar would be a stream of carriage returns, so the loop instead logs a line at about every tenth of
the way (``adapter: 20/50 prompts``). Either shows only while the logger lets INFO through, so
``llm-dit -q`` hides it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int, what: str, unit: str, log: logging.Logger) -> Iterator[T]:
    """Yield ``items`` (``total`` of them) and show how far the loop is: ``"{what}: i/total {unit}"``."""
    if not log.isEnabledFor(logging.INFO) or total <= 0:
        yield from items
        return
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        yield from tqdm(items, total=total, desc=what, unit=unit.rstrip("s") or unit, leave=False, file=sys.stderr)
        return
    step = max(1, total // 10)
    for i, item in enumerate(items, 1):
        yield item
        if i % step == 0 or i == total:
            log.info(f"{what}: {i}/{total} {unit}")
