"""Preemption signals outside training: record SLURM's SIGTERM / SIGUSR1 and let the caller stop at a clean point.

Training has its own owner (`callbacks.PreemptionCheckpoint`); an evaluation run uses `StopFlag` around its loop and
checks `stop_requested()` between batches, so the signal never interrupts a batch half-way.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

PREEMPTION_SIGNALS = ("SIGTERM", "SIGUSR1")


class StopFlag:
    """Context manager: while active, the given signals only set `received` (the first one's name); on exit the
    previous handlers come back. Outside the main thread it installs nothing (Python allows handlers only there)."""

    def __init__(self, signals: Sequence[str] = PREEMPTION_SIGNALS) -> None:
        try:
            self.signals = [signal.Signals[str(s).upper()] for s in signals]
        except KeyError as err:
            raise ValueError(f"signals: unknown signal {err.args[0]!r} (use names such as SIGTERM, SIGUSR1)") from err
        self.received: str | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def __enter__(self) -> StopFlag:
        self.received = None
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def stop_requested(self, fabric: Any = None) -> bool:
        """Whether to stop now; with a multi-process Fabric, True on every rank as soon as any rank got a signal."""
        if fabric is None or getattr(fabric, "world_size", 1) <= 1:
            return self.received is not None
        import torch

        flag = torch.tensor(float(self.received is not None), device=fabric.device)
        return bool(fabric.all_reduce(flag, reduce_op="max") > 0)
