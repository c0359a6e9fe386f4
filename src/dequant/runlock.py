"""One run per folder: a lock file that a training run holds in its run folder from start to end.

The lock is `<run dir>/.dequant.lock`, JSON naming its holder (host, pid, start time, the process's start tick and
the machine's boot id, SLURM job id). Taking it is atomic from creation to content: the record is written and
flushed to a temporary file, which is then hard-linked to the lock's name (a link fails when the name exists), so
no process ever sees a lock file without its holder. While it runs, the holder also keeps an OS lock
(`fcntl.flock`) on that file; the kernel drops it when the holder's process ends in any way (SIGKILL, OOM killer),
before the process becomes a zombie. A second run in the same folder refuses at startup, naming the holder.

A lock whose holder is not a living process is taken over with a log line, so resuming after a SIGKILL or a lost
node needs nothing but `ckpt_path=last`:
- on this host, when nobody holds the OS lock and the holder's pid is gone, a zombie (ended, not yet reaped: a
  container whose PID 1 does not reap), or another process (its start tick or the boot id differs: a reused pid);
- an earlier run of the same SLURM job (SLURM never runs two copies of one job: this is its requeued rerun);
- a holder on another host whose heartbeat (the lock's mtime, touched every `HEARTBEAT_S`) is older than
  `STALE_AFTER_S` (an OS lock held through a network file system is not trusted here: a lost node's lock outlives
  it until the file server's lease runs out).
Taking over happens while holding the OS lock of the stale file and replaces it by rename, so of several runs that
race for a folder exactly one wins. Where the file system keeps no OS locks (or no hard links) the checks fall back
to the record alone.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: the record alone decides
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_NAME = ".dequant.lock"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0
# How long a contender keeps trying an OS lock that is held: another contender may hold it for a moment, only to
# read the record; a live run holds it for good.
BUSY_RETRY_S = 0.25
_TMP_PREFIX = f"{LOCK_NAME}."
_TMP_SUFFIX = ".tmp"

# The locks this process holds, by lock path: a RunLock of the same folder inside it (a sweep job around train())
# shares the lock instead of refusing. An OS lock cannot tell: it belongs to an open file, not to a process.
_HELD: dict[str, RunLock] = {}
_HELD_GUARD = threading.RLock()


class RunFolderBusy(ValueError):
    """Another live run holds the run folder (a ValueError: the scripts print it as one line, exit code 2)."""


# ------------------------------------------------------------------------------------------------ processes


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks after boot) of `pid` from /proc, or None where there is no /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[19])


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _not_the_holder(holder: dict[str, Any]) -> str | None:
    """Why the process the record names (on this host) is not the run that wrote it, or None when it may be."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return "its lock names no process"
    if holder.get("boot_id") and _boot_id() and holder["boot_id"] != _boot_id():
        return "the machine has restarted since"
    if not _pid_exists(pid):
        return "its process is no longer running"
    stat = _proc_stat(pid)
    if stat is None:
        return None  # no /proc: an existing pid is all there is to go on
    state, start = stat
    if state in ("Z", "X"):
        return "its process has ended (a zombie, not yet reaped by its parent)"
    if isinstance(holder.get("pid_start"), int) and holder["pid_start"] != start:
        return f"its process id {pid} now belongs to another process (started at another time)"
    return None


def _identity() -> dict[str, Any]:
    stat = _proc_stat(os.getpid())
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "start_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "pid_start": stat[1] if stat else None, "boot_id": _boot_id(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


# ------------------------------------------------------------------------------------------------ OS lock


def _try_os_lock(fd: int) -> bool | None:
    """Take the exclusive OS lock of `fd` without waiting: True taken, False held elsewhere, None: not supported."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return None  # ENOLCK, EOPNOTSUPP, EINVAL: this file system keeps no such locks
    return True


def _os_lock_with_retry(fd: int) -> bool | None:
    deadline = time.monotonic() + BUSY_RETRY_S
    while True:
        got = _try_os_lock(fd)
        if got is not False or time.monotonic() > deadline:
            return got
        time.sleep(0.01)


def _read_fd(fd: int) -> dict[str, Any]:
    """The record of an open lock file; {} when it is empty or not JSON (a lock of an older version cut short)."""
    try:
        data = os.pread(fd, 1 << 16, 0)
        holder = json.loads(data.decode() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _unlink_quietly(path: Path) -> None:
    """Remove a temporary record file; one left behind is removed by a later run (`_remove_leftover_temporaries`)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# ------------------------------------------------------------------------------------------------ decisions


def _holder_text(holder: dict[str, Any]) -> str:
    if not holder:
        return "holder unknown: its lock file is unreadable"
    return (f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('start_time')}"
            + (f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""))


def _stale_reason(holder: dict[str, Any], lock_age_s: float, os_lock: bool | None) -> str | None:
    """Why the holder is not a living run, or None when it may be one.

    `os_lock`: whether this process got the lock file's OS lock (True), found it held (False), or the file system
    has none (None). A held OS lock proves a live holder on this host; through a network file system it may be a
    lost node's lock that the file server has not dropped yet, so another host's holder is judged by its record.
    """
    here = holder.get("host") == socket.gethostname()
    if os_lock is False and (here or not holder):
        return None  # a process on this host holds it (two runs inside one SLURM allocation included)
    job = os.environ.get("SLURM_JOB_ID")
    if job and holder.get("slurm_job_id") == job and holder.get("pid") != os.getpid():
        return f"it is an earlier run of this SLURM job ({job}), which SLURM has ended"
    if not holder:
        # This version never shows a lock without its record (it links a written file into place).
        return "its lock file is empty or unreadable (a crash of an older version)"
    if here:
        reason = _not_the_holder(holder)
        if reason is None and os_lock and "pid_start" in holder:
            # This version holds the OS lock as long as its process lives (an older one kept none).
            reason = "its process no longer holds the lock (it has ended)"
        return reason
    if lock_age_s > STALE_AFTER_S:
        return f"its heartbeat stopped {lock_age_s:.0f} s ago (more than {STALE_AFTER_S:.0f} s)"
    return None


def _busy_text(folder: Path, path: Path, holder: dict[str, Any], os_lock: bool | None = None) -> str:
    if os_lock is False and holder.get("host") == socket.gethostname() and _not_the_holder(holder):
        # The OS lock of a dead run's file is held: another run is taking it over right now.
        return (f"run folder {folder} is being taken over by another run (from {_holder_text(holder)}, which "
                "ended); wait for that run to end or choose another folder")
    return (f"run folder {folder} is in use by another run ({_holder_text(holder)}); wait for it to end or choose "
            f"another folder (if that run is gone, delete {path})")


def _age(fd: int) -> float:
    try:
        return time.time() - os.fstat(fd).st_mtime
    except OSError:
        return 0.0


def _open_existing(path: Path) -> int | None:
    """An fd of the existing lock file (read-write where allowed: NFS grants exclusive locks to writers), or None
    when it is gone."""
    for flags in (os.O_RDWR, os.O_RDONLY):
        try:
            return os.open(path, flags | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except PermissionError:
            continue
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def busy_message(folder: str | os.PathLike) -> str | None:
    """The refusal `RunLock(folder).acquire()` would raise while a live run holds `folder`, else None; changes
    nothing.

    The scripts ask before Hydra starts, because Hydra writes `.hydra/` and its log into the folder first.
    """
    lock = RunLock(folder)
    with _HELD_GUARD:
        if lock._key in _HELD:
            return None
    for _ in range(5):
        fd = _open_existing(lock.path)
        if fd is None:
            return None
        try:
            os_lock = _os_lock_with_retry(fd)
            if os_lock and not _same_file(fd, lock.path):
                continue  # released or replaced meanwhile: look again
            holder = _read_fd(fd)
            if _stale_reason(holder, _age(fd), os_lock) is None:
                return _busy_text(lock.folder, lock.path, holder, os_lock)
            return None
        finally:
            os.close(fd)  # drops the OS lock, if taken
    return None


# ------------------------------------------------------------------------------------------------ the lock


class RunLock:
    """Holds `<folder>/.dequant.lock` while a run works in `folder`; use `acquire()` / `release()` or `with`."""

    def __init__(self, folder: str | os.PathLike, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.heartbeat_s = float(heartbeat_s)
        self.held = False
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def _key(self) -> str:
        return os.path.realpath(self.path)

    # -------------------------------------------------------------------------------------- taking it
    def _written_file(self) -> tuple[Path, int]:
        """A temporary file beside the lock holding this process's record, flushed, under this process's OS lock."""
        tmp = self.folder / f"{_TMP_PREFIX}{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}"
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o644)
        try:
            _try_os_lock(fd)  # a new file nobody else knows: taken at once (or not supported)
            os.write(fd, json.dumps(_identity()).encode())
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quietly(tmp)
            raise
        return tmp, fd

    def _create(self) -> int | None:
        """Create the lock file with its record in one step; its fd, or None when the lock file exists."""
        tmp, fd = self._written_file()
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            os.close(fd)
            return None
        except OSError:
            # No hard links on this file system: create the name exclusively and write into it (the record is
            # then briefly empty; the OS lock, taken before the write, still tells contenders it is held).
            os.close(fd)
            return self._create_without_link()
        finally:
            _unlink_quietly(tmp)
        return fd

    def _create_without_link(self) -> int | None:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return None
        _try_os_lock(fd)
        os.write(fd, json.dumps(_identity()).encode())
        os.fsync(fd)
        return fd

    def _take_over(self) -> int:
        """Replace the (stale) lock file by one holding this process's record; its fd."""
        tmp, fd = self._written_file()
        try:
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            _unlink_quietly(tmp)
            raise
        return fd

    def acquire(self) -> RunLock:
        """Take the lock, or raise RunFolderBusy naming the folder and the live holder."""
        if self.held:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        with _HELD_GUARD:
            if self._key in _HELD:
                return self  # an outer RunLock of this process (a sweep job around train()) holds it
            for _ in range(10):
                fd = self._create()
                if fd is None:
                    fd = self._from_existing()
                if fd is not None:
                    self._fd, self.held = fd, True
                    _HELD[self._key] = self
                    self._remove_leftover_temporaries()
                    self._start_heartbeat()
                    return self
        raise RunFolderBusy(f"run folder {self.folder}: could not take the lock {self.path} (others keep taking it)")

    def _from_existing(self) -> int | None:
        """The fd of this process's lock after taking over a stale one; None to try again (it went away or was
        replaced meanwhile); RunFolderBusy when a live run holds it."""
        old = _open_existing(self.path)
        if old is None:
            return None
        try:
            os_lock = _os_lock_with_retry(old)
            if os_lock and not _same_file(old, self.path):
                return None  # its holder released it (or another run replaced it) before we got its OS lock
            holder = _read_fd(old)
            reason = _stale_reason(holder, _age(old), os_lock)
            if reason is None:
                raise RunFolderBusy(_busy_text(self.folder, self.path, holder, os_lock))
            log.warning("run folder %s: taking over the lock of %s: %s", self.folder,
                        _holder_text(holder) if holder else "an unknown run", reason)
            # Still holding the stale file's OS lock: a contender that opened it gets it only after the rename and
            # then sees that the name points to another file.
            return self._take_over()
        finally:
            os.close(old)

    def _remove_leftover_temporaries(self) -> None:
        """Temporary record files of runs killed between writing and linking them (older than a minute)."""
        for p in self.folder.glob(f"{_TMP_PREFIX}*{_TMP_SUFFIX}"):
            try:
                if time.time() - p.stat().st_mtime > 60:
                    p.unlink()
            except OSError:
                pass

    # -------------------------------------------------------------------------------------- holding it
    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="dequant-run-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        warned = False
        while not self._stop.wait(self.heartbeat_s):
            fd = self._fd
            if fd is None:
                return
            try:
                os.utime(fd)  # this process's file, even if its name now points elsewhere
            except OSError:
                return
            if not warned and not _same_file(fd, self.path):
                warned = True
                log.error("run folder %s: the lock %s is no longer this run's (another run took it over after its "
                          "heartbeat stopped for %.0f s)", self.folder, self.path, STALE_AFTER_S)

    def release(self) -> None:
        """Drop the lock (only if this process still holds it)."""
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with _HELD_GUARD:
            if _HELD.get(self._key) is self:
                del _HELD[self._key]
            fd, self._fd, self.held = self._fd, None, False
            if fd is None:
                return
            try:
                # Unlink before closing: a contender that opened the file gets its OS lock only once it is closed,
                # and then sees that the name no longer points to it.
                if _same_file(fd, self.path):
                    self.path.unlink(missing_ok=True)
            finally:
                os.close(fd)

    def _forget_after_fork(self) -> None:
        """In a forked child (a data worker): the parent holds the lock, not the child."""
        if self._fd is not None:
            try:
                os.close(self._fd)  # the child's copy only: the OS lock stays with the parent's
            except OSError:
                pass
        self._fd, self.held, self._thread = None, False, None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _after_fork_in_child() -> None:
    global _HELD_GUARD
    _HELD_GUARD = threading.RLock()  # another thread of the parent may have held it at the fork
    for lock in list(_HELD.values()):
        lock._forget_after_fork()
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
