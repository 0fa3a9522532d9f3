"""The processes of one run: one, or several started by a launcher over GPUs and hosts.

A sweep or experiment scales out with an existing launcher, each process holding its own models::

    accelerate launch --num_processes 2 -m llm_dit sweep ...      # or
    torchrun --nproc_per_node 2 -m llm_dit sweep ...

The launcher sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``: process ``i`` of a host works on its
GPU ``i``. A run's processes need nothing more from each other: they pull the run's cells from its
folder (:mod:`claims`), as the same command started by hand on several hosts does. Only trials (runs
in a row, whose folder is not joined) still split their cells between the processes and wait for
each other: :meth:`Processes.share` (accelerate's ``split_between_processes``: contiguous, sizes
differing by at most one) and :meth:`Processes.wait`, whose process group (NCCL on GPUs, gloo on
CPUs, through accelerate's :class:`~accelerate.PartialState`) is joined at their first use, not before.
Without a launcher this is one process and every method is trivial.
"""

from __future__ import annotations

import os
from datetime import timedelta

#: How long a process waits for the others at a barrier: a share of cells can take hours.
BARRIER_TIMEOUT = timedelta(hours=24)


class Processes:
    """This process's place among the run's processes (from the launcher's environment)."""

    def __init__(self) -> None:
        self.count = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.index = int(os.environ.get("RANK", "0") or 0) if self.count > 1 else 0
        self.local_index = int(os.environ.get("LOCAL_RANK", "0") or 0) if self.count > 1 else 0
        self._state = None

    @property
    def main(self) -> bool:
        return self.index == 0

    @property
    def state(self):
        """accelerate's :class:`~accelerate.PartialState`: the process group, joined at first use."""
        if self._state is None and self.count > 1:
            import torch
            from accelerate import PartialState

            # cpu=True: gloo between CPU processes (accelerate would otherwise run them as one each)
            self._state = PartialState(cpu=not torch.cuda.is_available(), timeout=BARRIER_TIMEOUT)
        return self._state

    def cuda_device(self) -> str | None:
        """The GPU of this process (``cuda:LOCAL_RANK``) when several processes run on GPUs, else None."""
        if self.count == 1:
            return None
        import torch

        return f"cuda:{self.local_index}" if torch.cuda.is_available() else None

    def share(self, items: list) -> list:
        """This process's contiguous part of ``items`` (the same list in every process)."""
        if self.count == 1:
            return list(items)
        with self.state.split_between_processes(list(items)) as mine:
            return list(mine)

    def wait(self) -> None:
        """Block until every process got here."""
        if self.count > 1:
            self.state.wait_for_everyone()

    def close(self) -> None:
        """Leave the process group if it was joined (its threads must end before the interpreter
        does: torch aborts a process whose gloo threads are still running at exit)."""
        if self._state is not None:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._state = None

    def gather(self, obj) -> list:
        """``[obj of process 0, obj of process 1, ...]`` in every process."""
        if self.count == 1:
            return [obj]
        from accelerate.utils import gather_object

        assert self.state is not None  # the process group, joined before gathering over it
        return gather_object([obj])
