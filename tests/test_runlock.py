"""The run folder lock (`dequant.runlock`) against real processes: exactly one of many racing processes wins, the
lock file never exists without its record, a killed holder (a zombie included) and a reused pid are not holders,
the heartbeat keeps another host's lock alive and its stop makes it stale.

The rules users see (a second run refuses, a dead holder's lock is taken over) are in test_cluster.py; the killed
train.py that resumes at once, its process still a zombie, is in test_faults.py
(test_sigkill_at_a_random_step_then_resume_matches_the_uninterrupted_run).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dequant import runlock
from dequant.runlock import LOCK_NAME, RunFolderBusy, RunLock, busy_message

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}


def _python(code: str, *args: object, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *(str(a) for a in args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


# A process that takes the lock of argv[1], says so and holds it until killed. argv[2]: a host name to claim, or
# "-" (this host); argv[3]: whether it keeps the OS lock ("os" / "none": as a holder on another node whose lock
# this machine cannot see); argv[4]: heartbeat seconds.
HOLDER = """
    import socket, sys, time
    from dequant import runlock
    if sys.argv[2] != "-":
        socket.gethostname = lambda: sys.argv[2]
    if sys.argv[3] == "none":
        runlock._try_os_lock = lambda fd: None
    lock = runlock.RunLock(sys.argv[1], heartbeat_s=float(sys.argv[4])).acquire()
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(folder: Path, host: str = "-", os_lock: str = "os", heartbeat_s: float = 60.0) -> subprocess.Popen:
    proc = _python(HOLDER, folder, host, os_lock, heartbeat_s)
    line = proc.stdout.readline()
    if line.strip() != "held":
        proc.kill()
        pytest.fail(f"the holder did not take the lock: {line!r} {proc.stderr.read()[-2000:]}")
    return proc


def _state(pid: int) -> str:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()[0]


def _wait_for_zombie(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while _state(pid) != "Z":
        assert time.monotonic() < deadline, f"process {pid} did not end"
        time.sleep(0.005)


@pytest.fixture(params=["os_lock", "record_only"])
def os_locks(request, monkeypatch) -> str:
    """Both ways the lock decides: with the OS lock (local disks, NFS with locking), and from the record alone
    (file systems that keep no OS locks)."""
    if request.param == "record_only":
        monkeypatch.setattr(runlock, "_try_os_lock", lambda fd: None)
    return request.param


# ------------------------------------------------------------------------------------------------ atomic, one winner


# argv: base folder, rounds, processes. Even rounds race for a fresh folder; odd rounds for the folder of the round
# before, whose winner was SIGKILLed and is left a zombie until this round ends (a lock to take over). Prints one
# JSON line: the number of winners of each round and one refusal message.
RACE = """
    import json, os, signal, sys, time
    from dequant.runlock import RunFolderBusy, RunLock
    base, rounds, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    winners, message, zombie = [], None, None
    for r in range(rounds):
        folder = os.path.join(base, f"folder{r // 2}")
        go = time.time() + 0.2
        children = []
        for _ in range(n):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read)
                while time.time() < go:
                    pass
                try:
                    RunLock(folder).acquire()
                    os.write(write, b"W")
                    time.sleep(600)  # hold it until killed
                except RunFolderBusy as err:
                    os.write(write, b"B" + str(err).encode())
                os._exit(0)
            os.close(write)
            children.append((pid, read))
        said = {pid: os.read(read, 4096).decode() for pid, read in children}
        won = [pid for pid, s in said.items() if s == "W"]
        message = message or next((s[1:] for s in said.values() if s.startswith("B")), None)
        winners.append(len(won))
        for pid in won:
            os.kill(pid, signal.SIGKILL)  # dies holding the lock; not reaped before the next round has raced
        for pid, read in children:
            os.close(read)
            if pid not in won:
                os.waitpid(pid, 0)
        if zombie:
            for pid in zombie:
                os.waitpid(pid, 0)
        zombie = won
    for pid in zombie or []:
        os.waitpid(pid, 0)
    print(json.dumps({"winners": winners, "message": message}))
"""


@pytest.mark.slow
def test_racing_processes_exactly_one_winner_every_round(tmp_path: Path) -> None:
    """6 processes race for one folder, 30 rounds: a fresh folder, then that folder with its killed winner's lock."""
    proc = _python(RACE, tmp_path, 30, 6)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["winners"] == [1] * 30, result
    assert "is in use by another run" in result["message"] or "is being taken over" in result["message"]


# Acquires and releases the lock of argv[1] for argv[2] seconds, then prints how many times it held it.
CYCLE = """
    import sys, time
    from dequant.runlock import RunLock
    end, n = time.monotonic() + float(sys.argv[2]), 0
    while time.monotonic() < end:
        RunLock(sys.argv[1]).acquire().release()
        n += 1
    print(n)
"""

# Reads the lock file of argv[1] in a tight loop until argv[2] exists; prints how often it found the file and how
# often what it read was not a whole record.
WATCH = """
    import json, os, sys
    path, stop = os.path.join(sys.argv[1], ".dequant.lock"), sys.argv[2]
    seen = partial = 0
    while not os.path.exists(stop):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        seen += 1
        try:
            assert isinstance(json.loads(data)["pid"], int)
        except Exception:
            partial += 1
    print(seen, partial)
"""


@pytest.mark.slow
def test_the_lock_file_never_exists_without_its_record(tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    watcher = _python(WATCH, tmp_path, stop)
    cycler = _python(CYCLE, tmp_path, 2.0)
    cycles, cycle_err = cycler.communicate(timeout=60)
    stop.touch()
    out, err = watcher.communicate(timeout=60)
    assert cycler.returncode == 0 and watcher.returncode == 0, cycle_err[-2000:] + err[-2000:]
    seen, partial = (int(v) for v in out.split())
    assert int(cycles) > 20 and seen > 20, (cycles, seen)  # the watcher did look while the lock came and went
    assert partial == 0, f"{partial} of {seen} reads found a lock file without a whole record"


# ------------------------------------------------------------------------------------------------ living holders


def test_a_live_holder_on_this_host_keeps_the_folder(tmp_path: Path, os_locks: str) -> None:
    holder = _holder(tmp_path)
    try:
        with pytest.raises(RunFolderBusy) as err:
            RunLock(tmp_path).acquire()
        record = json.loads((tmp_path / LOCK_NAME).read_text())
        assert record["pid"] == holder.pid and f"pid {holder.pid}" in str(err.value)
        assert busy_message(tmp_path) == str(err.value)
        # Both ways tell the holder apart from other processes: the OS lock, and its start tick and boot id.
        assert isinstance(record["pid_start"], int) and record["boot_id"]
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("how", ["reaped", "zombie"])
def test_a_killed_holder_is_not_the_holder_and_the_run_resumes_at_once(how: str, tmp_path: Path, os_locks: str,
                                                                       caplog) -> None:
    """Issue 26's zombie lock: a holder killed with SIGKILL and never reaped (a container whose PID 1 does not
    reap) still answers `kill(pid, 0)`; the lock is taken over at once, in the same second it was killed."""
    holder = _holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    killed = time.time()
    if how == "zombie":
        _wait_for_zombie(holder.pid)
        os.kill(holder.pid, 0)  # no error: to the old check a zombie looked alive
    else:
        holder.wait()
    try:
        assert busy_message(tmp_path) is None
        with caplog.at_level(logging.WARNING, logger="dequant.runlock"):
            lock = RunLock(tmp_path).acquire()
        assert time.time() - killed < 1.0
        assert f"taking over the lock of host {socket.gethostname()}, pid {holder.pid}" in caplog.text
        if how == "zombie" and os_locks == "record_only":
            assert "a zombie, not yet reaped by its parent" in caplog.text
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
        lock.release()
        assert not (tmp_path / LOCK_NAME).exists()
    finally:
        holder.wait()


def test_a_reused_pid_is_not_the_holder(tmp_path: Path, os_locks: str, caplog) -> None:
    """A lock whose pid now belongs to another living process (started at another time) is stale; the same pid
    with its own start tick is a holder."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        start = runlock._proc_stat(other.pid)[1]
        record = {"host": socket.gethostname(), "pid": other.pid, "start_time": "2026-01-01T00:00:00+00:00",
                  "pid_start": start, "boot_id": runlock._boot_id(), "slurm_job_id": None}
        (tmp_path / LOCK_NAME).write_text(json.dumps(record))
        if os_locks == "record_only":  # with the OS lock free, the holder would be gone whatever the record says
            with pytest.raises(RunFolderBusy, match=f"pid {other.pid}"):
                RunLock(tmp_path).acquire()
        (tmp_path / LOCK_NAME).write_text(json.dumps({**record, "pid_start": start - 1}))
        with caplog.at_level(logging.WARNING, logger="dequant.runlock"):
            RunLock(tmp_path).acquire().release()
        assert "now belongs to another process" in caplog.text
        (tmp_path / LOCK_NAME).write_text(json.dumps({**record, "boot_id": "another-boot"}))
        RunLock(tmp_path).acquire().release()
        assert "the machine has restarted since" in caplog.text
    finally:
        other.kill()
        other.wait()


def test_an_empty_lock_file_is_stale_only_when_nobody_holds_it(tmp_path: Path, caplog) -> None:
    """An older version could leave a lock file without its record (a crash between creating and writing it):
    taken over when no process holds its OS lock, refused while one does (it is being written)."""
    path = tmp_path / LOCK_NAME
    path.write_bytes(b"")
    holder = _python("""
        import fcntl, sys, time
        f = open(sys.argv[1], "rb+")
        fcntl.flock(f, fcntl.LOCK_EX)
        print("held", flush=True)
        time.sleep(600)
    """, path)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match="holder unknown"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with caplog.at_level(logging.WARNING, logger="dequant.runlock"):
        RunLock(tmp_path).acquire().release()
    assert "empty or unreadable" in caplog.text


# ------------------------------------------------------------------------------------------------ heartbeat


def test_the_heartbeat_touches_the_lock_until_release(tmp_path: Path) -> None:
    lock = RunLock(tmp_path, heartbeat_s=0.05).acquire()
    path = tmp_path / LOCK_NAME
    try:
        hour_ago = time.time() - 3600
        os.utime(path, (hour_ago, hour_ago))
        deadline = time.monotonic() + 10
        while path.stat().st_mtime < hour_ago + 3000:
            assert time.monotonic() < deadline, "the heartbeat did not touch the lock"
            time.sleep(0.01)
    finally:
        lock.release()
    assert not path.exists() and not lock._thread.is_alive()


@pytest.mark.slow
def test_another_hosts_lock_lives_by_its_heartbeat(tmp_path: Path, monkeypatch, caplog) -> None:
    """A holder on another node (whose OS lock this machine cannot see) keeps its lock while its heartbeat runs;
    once the heartbeat stops (the process frozen: as a node cut off), the lock is stale after STALE_AFTER_S and is
    taken over, and the old holder, once it runs again, logs that it lost the lock."""
    monkeypatch.setattr(runlock, "STALE_AFTER_S", 1.0)
    holder = _holder(tmp_path, host="node-b", os_lock="none", heartbeat_s=0.1)
    path = tmp_path / LOCK_NAME
    try:
        hour_ago = time.time() - 3600
        os.utime(path, (hour_ago, hour_ago))
        deadline = time.monotonic() + 10
        while time.time() - path.stat().st_mtime > 0.5:  # the holder's heartbeat brings it back
            assert time.monotonic() < deadline, "the holder's heartbeat did not touch the lock"
            time.sleep(0.02)
        with pytest.raises(RunFolderBusy, match="host node-b"):
            RunLock(tmp_path).acquire()
        holder.send_signal(signal.SIGSTOP)
        time.sleep(1.5)
        with caplog.at_level(logging.WARNING, logger="dequant.runlock"):
            lock = RunLock(tmp_path).acquire()
        assert "taking over the lock of host node-b" in caplog.text and "heartbeat stopped" in caplog.text
        holder.send_signal(signal.SIGCONT)
        time.sleep(0.5)
        lock.release()
    finally:
        holder.kill()
        _, err = holder.communicate()
    assert "is no longer this run's" in err, err[-2000:]


# ------------------------------------------------------------------------------------------------ one process


def test_a_forked_child_does_not_hold_or_drop_its_parents_lock(tmp_path: Path) -> None:
    """Data workers are forked from the run: they neither keep the lock alive after the run nor release it."""
    with RunLock(tmp_path) as lock:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            try:
                lock.release()
                os._exit(0 if not lock.held and not runlock._HELD else 3)
            finally:
                os._exit(4)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert lock.held and busy_message(tmp_path) is None
    assert not (tmp_path / LOCK_NAME).exists()


def test_busy_message_only_looks(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "start_time": "x"}))
    before = path.read_bytes(), path.stat().st_mtime_ns
    assert busy_message(tmp_path) is None
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before  # a stale lock is left for acquire() to take
    assert busy_message(tmp_path / "elsewhere") is None
