"""The processes of one run: one, or several started by a launcher over GPUs and hosts.

A sweep or experiment scales out with an existing launcher, each process holding its own models::

    accelerate launch --num_processes 2 -m llm_dit sweep ...      # or
    torchrun --nproc_per_node 2 -m llm_dit sweep ...

The launcher sets ``WORLD_SIZE``; then accelerate's :class:`~accelerate.PartialState` joins the
processes (NCCL on GPUs, gloo on CPUs), puts process ``i`` of a host on its GPU ``i``, and
:meth:`Processes.share` hands each its part of a list (``split_between_processes``: contiguous,
sizes differing by at most one). Everything else is the run folder: every process plans the same
cells from the same files, finished cells are read from disk, so a run resumes under any process
count. Without a launcher this is one process and every method is trivial.
"""

from __future__ import annotations

import os
from datetime import timedelta

#: How long a process waits for the others at a barrier: a share of cells can take hours.
BARRIER_TIMEOUT = timedelta(hours=24)


class Processes:
    """This process's place among the run's processes."""

    def __init__(self) -> None:
        self.count = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.index = 0
        self.state = None
        if self.count > 1:
            import torch
            from accelerate import PartialState

            # cpu=True: gloo between CPU processes (accelerate would otherwise run them as one each)
            self.state = PartialState(cpu=not torch.cuda.is_available(), timeout=BARRIER_TIMEOUT)
            self.index = self.state.process_index

    @property
    def main(self) -> bool:
        return self.index == 0

    def cuda_device(self) -> str | None:
        """The GPU of this process (``cuda:local_rank``) when several processes run on GPUs, else None."""
        if self.state is None or self.state.device.type != "cuda":
            return None
        return str(self.state.device)

    def share(self, items: list) -> list:
        """This process's contiguous part of ``items`` (the same list in every process)."""
        if self.state is None:
            return list(items)
        with self.state.split_between_processes(list(items)) as mine:
            return list(mine)

    def wait(self) -> None:
        """Block until every process got here."""
        if self.state is not None:
            self.state.wait_for_everyone()

    def close(self) -> None:
        """Leave the process group (its threads must end before the interpreter does: torch aborts a
        process whose gloo threads are still running at exit)."""
        if self.state is not None:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.state = None

    def gather(self, obj) -> list:
        """``[obj of process 0, obj of process 1, ...]`` in every process."""
        if self.state is None:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])
