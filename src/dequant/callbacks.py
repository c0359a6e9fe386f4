"""Fault tolerance for training: atomic checkpoint writes, finding the newest usable checkpoint, a bounded checkpoint
folder, a clean stop on preemption signals, and (for tests and audits) fault injection and a per-batch data log.

Checkpoints are written by `AtomicCheckpointIO` (a Lightning CheckpointIO plugin that train.py always installs):
to a hidden temporary file in the target folder, flushed to disk, then renamed over the target, so that a reader
never sees a half-written file and a crash mid-write leaves the previous checkpoint in place. On resume
(`ckpt_path=last`) `resumable_checkpoint` checks the candidates (zip CRCs and a full unpickle) and falls back from a
bad `last.ckpt` to the newest good `step*.ckpt`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import signal
import threading
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dequant.atomic import PARTIAL_SUFFIX, atomic_path

log = logging.getLogger(__name__)

LAST_NAME = "last.ckpt"
# Keys every checkpoint that can resume training has (weights-only checkpoints lack `loops`).
RESUME_KEYS = ("state_dict", "global_step", "loops")
_STEP_RE = re.compile(r"step[=_-]?(\d+)")


# ------------------------------------------------------------------------------------------------ writing


def nonfinite_entries(state_dict: dict[str, Any], limit: int = 5) -> list[str]:
    """Names of (up to `limit`) floating-point tensors of a state dict that hold NaN or inf."""
    bad = []
    for name, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad.append(name)
            if len(bad) >= limit:
                break
    return bad


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temporary file beside the target, fsync, then an atomic rename over the target.

    Lightning's own writer stages the file in the system temp folder and moves it, which is a copy (not atomic)
    whenever that folder is on another filesystem than the checkpoints (the usual case on clusters). With
    `check_finite`, a checkpoint whose weights hold NaN/inf is refused (FloatingPointError), so a diverged run can
    never overwrite the last good checkpoint.
    """

    def __init__(self, check_finite: bool = True) -> None:
        super().__init__()
        self.check_finite = bool(check_finite)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Write `checkpoint` to `path` atomically (local paths; URLs go through Lightning's writer)."""
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError("storage_options is not supported by AtomicCheckpointIO (local files only)")
        path = Path(path)
        if self.check_finite:
            bad = nonfinite_entries(checkpoint.get("state_dict") or {})
            if bad:
                raise FloatingPointError(f"refusing to write checkpoint {path}: non-finite weights in {bad}; the "
                                         "checkpoints already on disk are left as they were")
        with atomic_path(path, durable=True) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)


@rank_zero_only
def remove_partial_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files left by writes that were killed midway (call before training starts)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = sorted(folder.glob(f".*{PARTIAL_SUFFIX}"))
    for p in removed:
        p.unlink(missing_ok=True)
        log.warning("removed %s: an unfinished checkpoint write from an earlier, interrupted run", p)
    return removed


# ------------------------------------------------------------------------------------------------ reading


def load_checkpoint_data(path: str | os.PathLike) -> Any:
    """torch.load with `weights_only=True`: tensors and plain data only, so a file whose pickle carries code is
    refused before any of it runs (a checkpoint is data, never code)."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def one_line_error(err: BaseException) -> str:
    """`Type: message` on one line; an UnpicklingError from weights_only loading says what was refused."""
    if isinstance(err, pickle.UnpicklingError):
        lines = str(err).strip().splitlines()
        what = next((ln.strip() for ln in lines if "Unsupported" in ln or "GLOBAL" in ln), lines[0] if lines else "")
        return ("refused unrun: it holds pickled objects other than tensors and plain data (loaded with "
                f"weights_only=True; {what[:200]})")
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first}"


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot resume training (missing, empty, truncated, corrupt, weights-only), or None if it can."""
    path = Path(path)
    if not path.is_file():
        return "no such file"
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    try:
        # torch.load does not check the zip CRCs, so flipped bytes in the weights would load silently.
        with zipfile.ZipFile(path) as zf:
            bad_member = zf.testzip()
    except Exception as err:  # noqa: BLE001 - BadZipFile, OSError, zlib errors: all mean unusable
        return f"truncated or not a torch checkpoint ({type(err).__name__}: {err})"
    if bad_member is not None:
        return f"corrupt (checksum mismatch in {bad_member})"
    try:
        ckpt = load_checkpoint_data(path)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the file is unusable
        return f"unreadable ({one_line_error(err)})"
    if not isinstance(ckpt, dict):
        return f"not a Lightning checkpoint (holds a {type(ckpt).__name__})"
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        return f"cannot resume training (no {', '.join(missing)}: a weights-only or foreign checkpoint)"
    return None


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step number in a checkpoint's file name (`step0000500.ckpt`, `step=500.ckpt`), or None."""
    m = _STEP_RE.search(Path(path).stem)
    return int(m.group(1)) if m else None


def _saved_step(path: Path) -> int | None:
    try:
        return int(load_checkpoint_data(path)["global_step"])
    except Exception:  # noqa: BLE001 - checked by checkpoint_problem already
        return None


def resumable_checkpoint(folder: str | os.PathLike) -> tuple[Path | None, list[str]]:
    """The newest checkpoint in `folder` that can resume training, and a line for each newer one that cannot.

    Newest = highest global step: `step*.ckpt` files by the number in their name, others (`last.ckpt`) by the
    step stored inside; at equal steps `last.ckpt` wins. Candidates are checked newest first until one passes
    `checkpoint_problem`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None, []
    skipped: list[str] = []
    ranked: list[tuple[int, int, float, Path, bool]] = []  # (step, named-by-step, mtime, path, checked)
    for p in sorted(folder.glob("*.ckpt")):
        step = checkpoint_step(p)
        if step is None:
            problem = checkpoint_problem(p)
            if problem is not None:
                skipped.append(f"{p}: {problem}")
                continue
            step = _saved_step(p)
            ranked.append((-1 if step is None else step, 0, p.stat().st_mtime, p, True))
        else:
            ranked.append((step, 1, p.stat().st_mtime, p, False))
    ranked.sort(key=lambda r: (-r[0], r[1], -r[2]))
    for _, _, _, p, checked in ranked:
        problem = None if checked else checkpoint_problem(p)
        if problem is None:
            return p, skipped
        skipped.append(f"{p}: {problem}")
    return None, skipped


# ------------------------------------------------------------------------------------------------ callbacks


class StepCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that keeps only the newest `checkpoints_total_limit` step checkpoints (plus `last.ckpt`).

    After each periodic save, the `*.ckpt` files of the folder whose names carry a step number (`step0000500.ckpt`)
    are pruned to the newest `checkpoints_total_limit` by that number; None keeps every one. Not done with
    Lightning's top-k on a "step" monitor: with any monitor set, Lightning 2.6 defers the save of an epoch's last
    batch to the next validation, so with step-based validation that checkpoint (and its last.ckpt) never happens.
    The version counter is off by default so that `last.ckpt` is always replaced in place (never `last-v1.ckpt`),
    since that is the file `ckpt_path=last` looks for.
    """

    def __init__(self, checkpoints_total_limit: int | None = None, **kwargs: Any) -> None:
        if checkpoints_total_limit is not None:
            if (isinstance(checkpoints_total_limit, bool) or not isinstance(checkpoints_total_limit, int)
                    or checkpoints_total_limit < 1):
                raise ValueError("checkpoints_total_limit must be an int >= 1 or None (keep all), got "
                                 f"{checkpoints_total_limit!r}")
            for key, allowed in (("monitor", (None,)), ("save_top_k", (None, -1))):
                if kwargs.get(key) not in allowed:
                    raise ValueError(f"checkpoints_total_limit prunes by step itself: do not also pass "
                                     f"{key}={kwargs[key]!r}")
        kwargs["save_top_k"] = -1 if kwargs.get("save_top_k") is None else kwargs["save_top_k"]
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(**kwargs)
        self.checkpoints_total_limit = checkpoints_total_limit

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write `last.ckpt` when training stopped between periodic saves (`trainer.max_time`, a max_steps that is
        not a multiple of `every_n_train_steps`), so the last steps are never lost."""
        if self.save_last and trainer.global_step > 0 and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if self.checkpoints_total_limit is not None and not Path(filepath).name.startswith(self.CHECKPOINT_NAME_LAST):
            self.prune(trainer, keep=Path(filepath))

    def prune(self, trainer: L.Trainer, keep: Path | None = None) -> list[Path]:
        """Delete all but the newest `checkpoints_total_limit` step-numbered checkpoints of the folder."""
        if self.checkpoints_total_limit is None or self.dirpath is None or not trainer.is_global_zero:
            return []
        stepped = [(checkpoint_step(p), p) for p in Path(self.dirpath).glob(f"*{self.FILE_EXTENSION}")
                   if not p.name.startswith(self.CHECKPOINT_NAME_LAST)]
        stepped = sorted(((s, p) for s, p in stepped if s is not None), key=lambda sp: (-sp[0], sp[1].name))
        doomed = [p for _, p in stepped[self.checkpoints_total_limit:] if keep is None or p != keep]
        for p in doomed:
            p.unlink(missing_ok=True)
        return doomed


def _signal_number(sig: str | int) -> signal.Signals:
    try:
        return signal.Signals(sig) if isinstance(sig, int) else signal.Signals[str(sig).upper()]
    except (KeyError, ValueError) as err:
        raise ValueError(f"signals: unknown signal {sig!r} (use names such as SIGTERM, SIGUSR1)") from err


class PreemptionCheckpoint(Callback):
    """On a preemption signal (SIGTERM, SIGUSR1: what SLURM sends), finish the step, save `last.ckpt`, stop cleanly.

    The handler only records the signal; at the end of the current training batch the callback writes
    `<checkpoint dir>/last.ckpt` (atomically, through the trainer's CheckpointIO) and sets `trainer.should_stop`, so
    `train.py` returns normally and exits with status 0; resume with `ckpt_path=last`. The checkpoint is taken at
    the same point as the periodic ones (after the optimizer and EMA step), so the resumed run continues exactly.
    Outside SLURM Lightning 2.6 itself only notes SIGTERM and raises SystemExit after the batch without saving
    anything, and leaves SIGUSR1 at its default action (the process dies): during fit this callback replaces both
    handlers and restores the previous ones afterwards. Under DDP every rank stops once any rank got a signal.
    """

    def __init__(self, signals: Sequence[str | int] = ("SIGTERM", "SIGUSR1"), dirpath: str | None = None) -> None:
        self.signals = [_signal_number(s) for s in signals]
        if signal.SIGKILL in self.signals or signal.SIGSTOP in self.signals:
            raise ValueError("signals: SIGKILL and SIGSTOP cannot be caught")
        self.dirpath = dirpath
        self.received: str | None = None
        self.saved_path: Path | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        # Only record: saving here could interrupt the training step half-way.
        self.received = signal.Signals(signum).name

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Install the handlers (after Lightning's own, which are registered just before training starts)."""
        self.received, self.saved_path = None, None
        if threading.current_thread() is not threading.main_thread():
            log.warning("PreemptionCheckpoint: not in the main thread, signal handlers not installed")
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            if handler is not None and threading.current_thread() is threading.main_thread():
                signal.signal(sig, handler)
        self._previous = {}

    def _last_path(self, trainer: L.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath) / LAST_NAME
        cb = trainer.checkpoint_callback
        folder = getattr(cb, "dirpath", None) or Path(trainer.default_root_dir) / "checkpoints"
        return Path(folder) / LAST_NAME

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Save and stop if a signal came in during this step (on every rank if any rank got one)."""
        stop = self.received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop or self.saved_path is not None:
            return
        path = self._last_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)
        self.saved_path = path
        trainer.should_stop = True
        log.warning("received %s: saved %s at step %d and stopped; resume with ckpt_path=last (same run folder)",
                    self.received or "a signal on another rank", path, trainer.global_step)

    # Handlers go back at the end of training, not in `teardown`: Lightning restores its own originals before the
    # teardown hooks run, and putting Lightning's handlers back after that would leave a dead trainer's handler.
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Put the previous signal handlers back."""
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Put the previous signal handlers back."""
        self._restore()


class InjectFaults(Callback):
    """Fault injection for tests: NaN in the batch of the given steps, +inf in one gradient at the given steps, or a
    signal sent to this process when the given step starts.

    Steps are optimizer-step indices from 0 (the value of `trainer.global_step` while that step runs).
    """

    def __init__(self, nan_batch_steps: Iterable[int] = (), inf_grad_steps: Iterable[int] = (),
                 signal_at_step: int | None = None, signal_name: str = "SIGINT") -> None:
        self.nan_batch_steps = {int(s) for s in nan_batch_steps}
        self.inf_grad_steps = {int(s) for s in inf_grad_steps}
        self.signal_at_step = None if signal_at_step is None else int(signal_at_step)
        self.signal = _signal_number(signal_name)
        self.injected: list[tuple[int, str]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """Overwrite the batch's target with NaN at the chosen steps (in place: the module gets the same tensors);
        send the signal at its step."""
        if trainer.global_step in self.nan_batch_steps:
            batch["target"].fill_(float("nan"))
            self.injected.append((trainer.global_step, "nan_batch"))
        if trainer.global_step == self.signal_at_step:
            self.injected.append((trainer.global_step, self.signal.name))
            os.kill(os.getpid(), self.signal)

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Set one gradient entry to +inf at the chosen steps."""
        if trainer.global_step in self.inf_grad_steps:
            grad = next(p.grad for p in pl_module.parameters() if p.grad is not None)
            grad.view(-1)[0] = float("inf")
            self.injected.append((trainer.global_step, "inf_grad"))


def _append_json_line(path: Path, rank: int, row: dict[str, Any]) -> None:
    """Append `row` to `path` (`<path>.rank<r>` on rank r > 0), flushed, so the line survives a killed process."""
    if rank:
        path = path.with_name(f"{path.name}.rank{rank}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


class BatchLog(Callback):
    """Appends one JSON line per training batch to `path`: step, epoch, batch index, image ids and a batch hash.

    An audit of the data order (a resumed run must see the same batches as an uninterrupted one). Each line is
    flushed as it is written, so the log survives a killed process. Ranks other than 0 write `<path>.rank<r>`.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """Write the line for this batch."""
        digest = hashlib.sha1()
        for key in ("hint", "target"):
            digest.update(batch[key].detach().cpu().contiguous().numpy().tobytes())
        ids = batch.get("image_id")
        row = {"step": trainer.global_step, "epoch": trainer.current_epoch, "batch_idx": batch_idx,
               "image_id": [] if ids is None else [int(i) for i in ids.detach().cpu().reshape(-1)],
               "hash": digest.hexdigest()}
        _append_json_line(self.path, trainer.global_rank, row)


class MetricLog(Callback):
    """Appends one JSON line per validation to `path` (`<path>.rank<r>` on other ranks): the step and every
    scalar in `trainer.callback_metrics` as this rank sees it; an audit that ranks agree on what they log."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write the line for this validation."""
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
        _append_json_line(self.path, trainer.global_rank, {"step": trainer.global_step, "metrics": metrics})


def read_batch_log(path: str | os.PathLike) -> dict[int, dict[str, Any]]:
    """A BatchLog file as {step: row}; a step logged twice (redone after a resume) keeps its last row."""
    rows: dict[int, dict[str, Any]] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[int(row["step"])] = row
    return rows
