"""A one-line warning when the paper-sized networks train on a CPU, with the time per step measured there.

The paper's 12-block encoder and style-modulated decoder need a GPU: on a CPU a step takes seconds and the
paper's 200,000 steps take days. The training loop calls :meth:`PaperSizeOnCPU.observe` after each step; on the
second step (the first carries one-time set-up costs) it prints, once, the measured time per step, the
projected total and where the CPU-sized settings are (``configs/demo.yaml``).
"""

from __future__ import annotations

import sys
from typing import TextIO

import torch

PAPER_NETWORK = "paper"
CPU_CONFIG = "configs/demo.yaml"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


class PaperSizeOnCPU:
    """Watches the first steps of a run; warns once if paper-sized networks train on a CPU.

    Args:
        device_type: ``torch.device.type`` of the run (``"cpu"``, ``"cuda"``, ...).
        encoder, decoder: the architecture settings; ``"paper"`` is the paper's size.
        total_steps: the run's ``steps``.
        stream: where the line goes (default stderr).
    """

    def __init__(
        self, device_type: str, encoder: str, decoder: str, total_steps: int, stream: TextIO | None = None
    ) -> None:
        main_process = not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
            torch.distributed.get_rank() == 0
        )
        self.active = device_type == "cpu" and PAPER_NETWORK in (encoder, decoder) and main_process
        self.encoder, self.decoder = encoder, decoder
        self.total_steps = int(total_steps)
        self.stream = stream
        self.seen = 0
        self.message: str | None = None

    def observe(self, step_seconds: float) -> None:
        """Record one step's wall time; prints the warning after the second step (or the only one)."""
        if not self.active or self.message is not None:
            return
        self.seen += 1
        if self.seen < 2 and self.total_steps > 1:
            return
        networks = " and ".join(
            f"{part}={name}"
            for part, name in (("encoder", self.encoder), ("decoder", self.decoder))
            if name == PAPER_NETWORK
        )
        self.message = (
            f"warning: the paper-sized networks ({networks}) on a CPU take ~{step_seconds:.1f} s per step here, "
            f"~{_duration(step_seconds * self.total_steps)} for {self.total_steps:,} steps; on a CPU use the "
            f"CPU-sized settings: latentquant train --config {CPU_CONFIG} (or encoder=cpu decoder=cpu), or a GPU"
        )
        print(self.message, file=self.stream or sys.stderr, flush=True)
