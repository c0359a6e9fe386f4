"""Progress of long work: a live bar on a terminal, a plain periodic log line elsewhere (a SLURM log, a pipe).

`Progress` counts any loop (evaluation batches, sampling steps); `progress_bar` is the training callback, a rich bar
or `LogProgressBar`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import Any, TextIO

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

log = logging.getLogger(__name__)

MODES = ("auto", "live", "log")


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether `stream` (default stderr, where progress goes) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"progress mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def _live(mode: str, stream: TextIO | None = None) -> bool:
    return _check_mode(mode) == "live" or (mode == "auto" and is_terminal(stream))


def duration(seconds: float) -> str:
    """`seconds` as H:MM:SS."""
    return str(timedelta(seconds=round(max(0.0, seconds))))


def progress_line(label: str, done: int, total: int, unit: str, elapsed: float, note: str = "") -> str:
    """`label: 12/40 images (30%), 0:00:42 elapsed, about 0:01:38 left[, note]`."""
    text = f"{label}: {done}/{total} {unit}"
    if total > 0:
        text += f" ({100 * done // total}%)"
    text += f", {duration(elapsed)} elapsed"
    if 0 < done < total:
        text += f", about {duration(elapsed / done * (total - done))} left"
    return f"{text}, {note}" if note else text


class Progress:
    """Counts `total` units of work: a rich bar on a terminal (`mode=auto`/`live`), else a log line at most every
    `interval_s` seconds and one at the end through `emit` (`mode=log`, or `auto` when `stream`, default stderr,
    is not a terminal); `enabled=False` is silent."""

    def __init__(self, label: str, total: int, unit: str = "steps", *, mode: str = "auto", interval_s: float = 30.0,
                 enabled: bool = True, emit: Callable[[str], None] = log.info, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s}")
        self.label, self.total, self.unit, self.interval_s = label, int(total), unit, float(interval_s)
        self.enabled = enabled
        self._stream = sys.stderr if stream is None else stream
        self.live = enabled and _live(mode, self._stream)
        self.done = 0
        self._emit, self._clock = emit, clock
        self._bar: Any = None

    def __enter__(self) -> Progress:
        self._start = self._last = self._clock()
        if self.live:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn(f"[bold]{self.label}[/] {{task.description}}"), BarColumn(),
                                     MofNCompleteColumn(), TextColumn(self.unit), TimeElapsedColumn(),
                                     TimeRemainingColumn(), console=Console(file=self._stream))
            self._bar.__enter__()
            self._task = self._bar.add_task("", total=self.total)
        return self

    def advance(self, n: int = 1, note: str = "") -> None:
        """`n` more units done; `note` says what (e.g. the test setting)."""
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, advance=n, description=note)
            return
        now = self._clock()
        if now - self._last >= self.interval_s and self.done < self.total:
            self._last = now
            self._emit(progress_line(self.label, self.done, self.total, self.unit, now - self._start, note))

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, err, tb)
        elif self.enabled and kind is None:
            self._emit(progress_line(self.label, self.done, self.total, self.unit, self._clock() - self._start))


class LogProgressBar(ProgressBar):
    """Training progress as a log line at most every `interval_s` seconds: step / max steps, epoch, time left and
    the progress-bar metrics (what a SLURM log file can hold; a live bar writes control codes there)."""

    def __init__(self, interval_s: float = 60.0) -> None:
        super().__init__()
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s}")
        self.interval_s = float(interval_s)
        self._enabled = True
        self._last = self._start = 0.0
        self._first_step = 0
        self._last_step = -1

    def disable(self) -> None:
        """Silence (Lightning calls this on every rank but 0)."""
        self._enabled = False

    def enable(self) -> None:
        """Speak again."""
        self._enabled = True

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Start the clock; a resumed run estimates time left from its own steps only."""
        self._start = self._last = time.monotonic()
        self._first_step = int(trainer.global_step)

    def line(self, trainer: Any, pl_module: Any) -> str:
        """`train: step 120/600 (20%), epoch 3, 0:01:10 elapsed, about 0:04:40 left, loss=0.0123`."""
        step, total = int(trainer.global_step), _max_steps(trainer)
        text = f"train: step {step}" + (f"/{total} ({100 * step // total}%)" if total else "")
        text += f", {epoch_text(trainer)}, {duration(time.monotonic() - self._start)} elapsed"
        done = step - self._first_step
        if total and 0 < done and step < total:
            text += f", about {duration((time.monotonic() - self._start) / done * (total - step))} left"
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        if metrics:
            text += ", " + " ".join(f"{k}={_number(v)}" for k, v in metrics.items())
        return text

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Log a line when `interval_s` has passed since the last one."""
        now = time.monotonic()
        if self._enabled and now - self._last >= self.interval_s:
            self._last, self._last_step = now, int(trainer.global_step)
            log.info(self.line(trainer, pl_module))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """The last line, whatever the interval (unless the last batch's line said it)."""
        if self._enabled and self._last_step != int(trainer.global_step):
            log.info(self.line(trainer, pl_module))


class EpochRichProgressBar(RichProgressBar):
    """Lightning's rich bar, whose epoch reads `Epoch 3` (not `Epoch 3/-2`) when training is bounded by steps."""

    def _get_train_description(self, current_epoch: int) -> str:
        # Lightning appends `/{max_epochs - 1}`, which is -2 when max_epochs is -1 (step-bounded runs).
        text = epoch_text(self.trainer).capitalize()
        if len(self.validation_description) > len(text):
            text = f"{text:{len(self.validation_description)}}"  # as Lightning: no flicker between the two bars
        return text


def _max_steps(trainer: Any) -> int | None:
    steps = trainer.max_steps
    if steps is not None and steps > 0:
        return int(steps)
    return None


def epoch_text(trainer: Any) -> str:
    """`epoch 3` for a step-bounded run, `epoch 3/9` (0-based, of max_epochs) for an epoch-bounded one."""
    epochs = trainer.max_epochs
    if epochs is None or epochs < 1 or _max_steps(trainer) is not None:
        return f"epoch {trainer.current_epoch}"
    return f"epoch {trainer.current_epoch}/{epochs - 1}"


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def progress_bar(mode: str = "auto", leave: bool = True, interval_s: float = 60.0) -> ProgressBar:
    """The training progress callback: a rich bar on a terminal, log lines every `interval_s` seconds elsewhere
    (`mode`: auto, live or log)."""
    if _live(mode):
        return EpochRichProgressBar(leave=leave)
    return LogProgressBar(interval_s=interval_s)
