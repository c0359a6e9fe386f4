"""One run per folder: a lock file that a training run holds in its run folder from start to end.

The lock (`<run dir>/.dequant.lock`, JSON: host, pid, start time, SLURM job id) is created atomically (O_EXCL). A
second run in the same folder refuses at startup, naming the holder. A lock left behind by a run that cannot be
alive any more is taken over with a log line, so resuming after a SIGKILL or a lost node needs nothing but
`ckpt_path=last`: a dead process on this host, the same SLURM job id (SLURM never runs two copies of one job: this
is its requeued rerun), or a holder on another host whose heartbeat (the lock's mtime, touched every
`HEARTBEAT_S`) is older than `STALE_AFTER_S`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCK_NAME = ".dequant.lock"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0


class RunFolderBusy(ValueError):
    """Another live run holds the run folder (a ValueError: the scripts print it as one line, exit code 2)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _holder_text(holder: dict[str, Any]) -> str:
    return (f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('start_time')}"
            + (f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""))


def _stale_reason(holder: dict[str, Any], lock_age_s: float) -> str | None:
    """Why the holder cannot be alive any more, or None when it may be."""
    me = socket.gethostname()
    job = os.environ.get("SLURM_JOB_ID")
    if job and holder.get("slurm_job_id") == job and holder.get("pid") != os.getpid():
        return f"it is an earlier run of this SLURM job ({job}), which SLURM has ended"
    if holder.get("host") == me:
        pid = holder.get("pid")
        if not isinstance(pid, int) or not _pid_alive(pid):
            return "its process is no longer running"
        return None
    if lock_age_s > STALE_AFTER_S:
        return f"its heartbeat stopped {lock_age_s:.0f} s ago (more than {STALE_AFTER_S:.0f} s)"
    return None


def _busy_text(folder: Path, path: Path, holder: dict[str, Any]) -> str:
    return (f"run folder {folder} is in use by another run ({_holder_text(holder)}); wait for it to end or choose "
            f"another folder (if that run is gone, delete {path})")


def busy_message(folder: str | os.PathLike) -> str | None:
    """The refusal `RunLock(folder).acquire()` would raise while a live run holds `folder`, else None; reads only.

    The scripts ask before Hydra starts, because Hydra writes `.hydra/` and its log into the folder first.
    """
    lock = RunLock(folder)
    try:
        holder, age = lock._read()
    except FileNotFoundError:
        return None
    if not holder or (holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()):
        return None
    return _busy_text(lock.folder, lock.path, holder) if _stale_reason(holder, age) is None else None


class RunLock:
    """Holds `<folder>/.dequant.lock` while a run works in `folder`; use `acquire()` / `release()` or `with`."""

    def __init__(self, folder: str | os.PathLike, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.heartbeat_s = float(heartbeat_s)
        self.held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(),
                "start_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "slurm_job_id": os.environ.get("SLURM_JOB_ID")}

    def _read(self) -> tuple[dict[str, Any], float]:
        try:
            age = time.time() - self.path.stat().st_mtime
            return json.loads(self.path.read_text() or "{}"), age
        except FileNotFoundError:
            raise
        except (OSError, ValueError):
            # A lock file cut short by a crash between create and write: its writer is gone or about to be.
            return {}, time.time() - self.path.stat().st_mtime

    def acquire(self) -> RunLock:
        """Take the lock, or raise RunFolderBusy naming the folder and the live holder."""
        if self.held:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder, age = self._read()
                except FileNotFoundError:
                    continue  # released meanwhile: try again
                if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                    return self  # an outer RunLock of this process (a sweep job around train()) holds it
                reason = _stale_reason(holder, age) if holder else "its lock file is empty (a crash while locking)"
                if reason is None:
                    raise RunFolderBusy(_busy_text(self.folder, self.path, holder))
                log.warning("run folder %s: taking over the lock of %s: %s", self.folder,
                            _holder_text(holder) if holder else "an unknown run", reason)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._record(), f)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            self._start_heartbeat()
            return self
        raise RunFolderBusy(f"run folder {self.folder}: could not take the lock {self.path} (others keep taking it)")

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="dequant-run-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        """Drop the lock (only if this process still holds it)."""
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            holder = json.loads(self.path.read_text())
            if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)
        except (OSError, ValueError):
            pass
        self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
