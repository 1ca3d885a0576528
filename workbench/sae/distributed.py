"""The accelerate process group of SAE training (or a single process), and its reductions.

Under ``accelerate launch`` every process holds a full copy of the SAE; gradients and step
statistics are averaged with all-reduces so that every process applies the same update.
"""

from __future__ import annotations

import torch


class Distributed:
    """The accelerate process group (or a single process): rank, device and the reductions."""

    def __init__(self, device: str):
        from accelerate import Accelerator

        self.acc = Accelerator(cpu=device == "cpu")
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.device = self.acc.device
        if device.startswith("cuda") and self.world == 1:
            self.device = torch.device(device)
        self.main = self.acc.is_main_process

    def mean_(self, flat: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
            flat.div_(self.world)
        return flat

    def min(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            value = value.clone()
            torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
        return value

    def max(self, value: float) -> float:
        """The largest ``value`` over processes (a float64 all-reduce)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t[0])

    def barrier(self) -> None:
        if self.world > 1:
            self.acc.wait_for_everyone()
