"""Reading W&B's offline record log (`<run dir>/wandb/offline-run-*/run-<id>.wandb`) in tests.

The installed SDK (0.31) keeps no Python reader of its own (its Go core writes and syncs the file), so this reads the
format directly: a 7-byte header (`:W&B`, magic 0xBEE1, version 0), then 32 KiB blocks of LevelDB-log chunks (CRC-32
of type + data, little-endian length, type FULL/FIRST/MIDDLE/LAST), each record a `wandb.proto` `Record` message
(`wandb.proto.wandb_internal_pb2`), parsed with the SDK's own protobuf classes. A bad checksum fails the test.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

_BLOCK = 32768
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def records(path: str | Path) -> Iterator[Any]:
    """The `Record` messages of one `.wandb` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1, f"{path} is not a W&B record log"
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # the rest of a block too short for a chunk header is padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, f"bad checksum in {path} at {pos}"
        pos += _HEADER + length
        if kind == _FULL:
            yield pb.Record.FromString(chunk)
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pb.Record.FromString(pending + chunk)
            pending = b""


def _key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


class Segment:
    """One offline run folder read back: run record, config, history rows, summary, preempting mark, exit code."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.run: Any = None
        self.config: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.preempting = False
        # How many history rows came before the preempting mark (None: no mark).
        self.preempting_at: int | None = None
        self.exit_code: int | None = None
        (path,) = folder.glob("*.wandb")
        for record in records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                self.run = record.run
                self.config.update({_key(i): json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "config":
                self.config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
            elif kind == "history":
                self.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
            elif kind == "summary":
                self.summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
            elif kind == "preempting":
                self.preempting = True
                self.preempting_at = len(self.history)
            elif kind == "exit":
                self.exit_code = record.exit.exit_code

    def history_keys(self) -> set[str]:
        """Every key logged in the history."""
        return {k for row in self.history for k in row}


def segments(run_dir: Path) -> list[Segment]:
    """Every offline segment of a run folder (`<run>/wandb/offline-run-*`), oldest first."""
    return [Segment(p) for p in sorted((run_dir / "wandb").glob("offline-run-*"))]


class SignalAtStep(Callback):
    """Sends this process `signal` once, at the end of the training batch that brings the global step to `step`
    (what SLURM's preemption looks like to the run; `+callbacks.x._target_=wandb_records.SignalAtStep`)."""

    def __init__(self, step: int, signal_name: str = "SIGUSR1") -> None:
        self.step = int(step)
        self.signal = signal.Signals[signal_name]
        self.sent = False

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Send the signal once."""
        if not self.sent and trainer.global_step == self.step:
            self.sent = True
            os.kill(os.getpid(), self.signal)
