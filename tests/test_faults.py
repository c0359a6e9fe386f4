"""Fault injection: killed and preempted runs resume exactly, Ctrl-C leaves the checkpoints as they were,
checkpoints are atomic (also when the disk fills up inside a real training run) and damaged ones are skipped,
non-finite steps are skipped and counted and stop training when they persist.

The reference is one uninterrupted 12-step run (5 batches per epoch, validation at step 6, a checkpoint every step,
deterministic, one thread). Every interrupted run must end at step 12 with the same batch at every step (hash of
hint + target, image ids, batch index, epoch; from the BatchLog callback) and bit for bit the same weights, EMA,
AdamW moments and step counts (torch.equal), as docs/robustness.md promises for CPU.
The same under DDP (2 processes, SIGTERM to the group) is tests/test_ddp_faults.py.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from dequant.callbacks import (
    AtomicCheckpointIO,
    PreemptionCheckpoint,
    StepCheckpoint,
    checkpoint_problem,
    checkpoint_step,
    read_batch_log,
    remove_partial_checkpoints,
    resumable_checkpoint,
)
from dequant.config import conf_dir
from dequant.data.datamodule import EpochSampler
from dequant.training import train

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 12
LIMIT = 3  # checkpoints_total_limit of these runs
# Overrides shared by the in-process runs and the train.py subprocesses.
COMMON = (
    "experiment=tiny", "sampler=ddim", "sampler.steps=2", f"trainer.max_steps={MAX_STEPS}",
    "trainer.val_check_interval=6", "data.samples_per_epoch=10", "data.batch_size=2", "trainer.deterministic=true",
    "callbacks.model_checkpoint.every_n_train_steps=1",
    f"callbacks.model_checkpoint.checkpoints_total_limit={LIMIT}", "logger=none", "~callbacks.lr_monitor",
    "~callbacks.progress_bar", "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
    "+callbacks.batch_log._target_=dequant.callbacks.BatchLog",
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_restored_torch_flags():
    """One thread (as in the subprocesses); the deterministic flag that Lightning sets is put back afterwards."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def _cfg(run_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return compose("train", overrides=[*COMMON, f"paths.run_dir={run_dir}",
                                           f"+callbacks.batch_log.path={run_dir / 'batches.jsonl'}", *overrides])


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_training_state(a: Path, b: Path) -> None:
    """Two checkpoints hold bit for bit the same training state: global step, weights and EMA, AdamW moments and
    step counts, the learning-rate schedule and the non-finite step counter."""
    ca, cb = _ckpt(a), _ckpt(b)
    assert ca["global_step"] == cb["global_step"]
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    for k, v in ca["state_dict"].items():
        assert torch.equal(v, cb["state_dict"][k]), k
    sa, sb = ca["optimizer_states"][0]["state"], cb["optimizer_states"][0]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(sa[i][name]), torch.as_tensor(sb[i][name])), f"{i}.{name}"
    assert ca["lr_schedulers"] == cb["lr_schedulers"]
    assert ca["nonfinite_steps"] == cb["nonfinite_steps"]


def _assert_same_data_order(reference: Path, run: Path) -> None:
    """Every step saw the same batch (last row per step: a step redone after a resume counts once)."""
    a, b = read_batch_log(reference / "batches.jsonl"), read_batch_log(run / "batches.jsonl")
    assert sorted(a) == sorted(b) == list(range(MAX_STEPS))
    for step in a:
        assert a[step] == b[step], f"step {step}: {a[step]} vs {b[step]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run."""
    run = tmp_path_factory.mktemp("reference")
    result = train(_cfg(run))
    assert result["global_step"] == MAX_STEPS and result["stopped_by_signal"] is None
    return run


@pytest.fixture(scope="module")
def stopped_at_6(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped cleanly after 6 steps (checkpoints step4, step5, step6 and last), to damage and resume."""
    run = tmp_path_factory.mktemp("stopped_at_6")
    assert train(_cfg(run, "trainer.max_steps=6"))["global_step"] == 6
    return run


# ----------------------------------------------------------------------------- kill / preempt a real train.py


# What Lightning's SLURMEnvironment reads: a one-task job step, as `srun` would set it up.
FAKE_SLURM = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "4242",
              "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NNODES": "1",
              "SLURM_NODELIST": "localhost"}


def _interruptible() -> None:
    """In the child before train.py starts: SIGINT at its default, as in a terminal (a suite started in the
    background by a shell without job control inherits SIGINT ignored, and Python then keeps ignoring it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# Every train.py a test starts; `kill_leftover_runs` ends the process groups still running when the test ends (a
# failed or timed-out test must not leave a training run, or a DDP rank waiting for its peer, behind).
LAUNCHED: list[subprocess.Popen] = []


def _launch(run_dir: Path, log_path: Path, *overrides: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """train.py in its own process group (so a signal can go to the group, as SLURM sends it to a job step)."""
    cmd = [sys.executable, "train.py", *COMMON, f"hydra.run.dir={run_dir}",
           f"+callbacks.batch_log.path={run_dir / 'batches.jsonl'}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_interruptible)
    LAUNCHED.append(proc)
    return proc


def end_leftover_runs() -> None:
    """SIGKILL the process group of every launched train.py that still runs, and reap it."""
    while LAUNCHED:
        proc = LAUNCHED.pop()
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


@pytest.fixture(autouse=True)
def kill_leftover_runs():
    """After each test: no train.py it started is left running."""
    yield
    end_leftover_runs()


def _wait_for(path: Path, proc: subprocess.Popen, log_path: Path, timeout: float = 240.0) -> None:
    """Poll until `path` exists; fail (with the run's log) if the run ends first or it takes too long."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"train.py exited ({proc.returncode}) before {path.name} appeared:\n"
                        + log_path.read_text()[-3000:])
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path.name} did not appear within {timeout} s:\n" + log_path.read_text()[-3000:])
        time.sleep(0.005)


def _kill_step(name: str) -> int:
    """The step whose checkpoint triggers the fault: a seeded draw in [2, 7] (at least 5 steps left to run)."""
    return int(np.random.default_rng([17, sum(name.encode())]).integers(2, 8))


def _wait_for_zombie(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Poll until `proc` has ended but is not reaped (a zombie: what a container whose PID 1 does not reap keeps)."""
    deadline = time.monotonic() + timeout
    while True:
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
        if stat[stat.rindex(")") + 2] == "Z":
            return
        assert time.monotonic() < deadline, f"train.py (pid {proc.pid}) did not end after SIGKILL"
        time.sleep(0.005)


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_matches_the_uninterrupted_run(reference: Path, tmp_path: Path,
                                                                          caplog) -> None:
    """Killed outright and resumed at once, its process still a zombie (not reaped, as under a PID 1 that does not
    reap): the lock is taken over, the run resumes at the exact batch and ends bit for bit as the reference."""
    run, log = tmp_path / "run", tmp_path / "train.log"
    step = _kill_step("SIGKILL")
    proc = _launch(run, log)
    _wait_for(run / "checkpoints" / f"step{step:07d}.ckpt", proc, log)
    proc.send_signal(signal.SIGKILL)
    _wait_for_zombie(proc)
    os.kill(proc.pid, 0)  # the pid still answers: a zombie
    # Whatever the kill interrupted, every visible checkpoint is complete (writes are temp file + rename).
    visible = sorted((run / "checkpoints").glob("*.ckpt"))
    assert visible and all(checkpoint_problem(p) is None for p in visible), visible
    killed_at = _ckpt(run / "checkpoints" / "last.ckpt")["global_step"]
    assert step - 1 <= killed_at < MAX_STEPS

    # The resume runs what train.py runs, in this process (as in the preemption tests below): the killed run's
    # process is gone either way.
    lightning_log = logging.getLogger("lightning.pytorch")
    lightning_log.addHandler(caplog.handler)  # in case Lightning stopped its records from reaching the root logger
    try:
        with caplog.at_level(logging.INFO):
            result = train(_cfg(run, "ckpt_path=last"))
    finally:
        lightning_log.removeHandler(caplog.handler)
    assert result["global_step"] == MAX_STEPS and Path(result["resumed_from"]).parent == run / "checkpoints"
    assert "Restored all states" in caplog.text
    # The killed run's lock (its process a zombie) is taken over: resuming needs nothing but ckpt_path=last.
    assert f"taking over the lock of host {socket.gethostname()}, pid {proc.pid}" in caplog.text
    assert "a zombie, not yet reaped" in caplog.text and not (run / ".dequant.lock").exists()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    _assert_same_data_order(reference, run)
    assert_same_training_state(reference / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files == ["last.ckpt"] + [f"step{s:07d}.ckpt" for s in range(MAX_STEPS - LIMIT + 1, MAX_STEPS + 1)]


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1"])
def test_preemption_signal_saves_last_and_exits_cleanly_then_resumes(sig: str, reference: Path,
                                                                     tmp_path: Path) -> None:
    """As on a cluster: the signal goes to the whole process group (train.py and its 2 data workers) under SLURM's
    environment variables; the project's callback alone handles it, once, after the step (no Lightning
    auto-requeue, no hpc_ckpt), the workers survive it, and ckpt_path=last resumes exactly."""
    run, log = tmp_path / "run", tmp_path / "train.log"
    step = _kill_step(sig)
    proc = _launch(run, log, "data.num_workers=2", "data.persistent_workers=true", env=FAKE_SLURM)
    _wait_for(run / "checkpoints" / f"step{step:07d}.ckpt", proc, log)
    os.killpg(proc.pid, getattr(signal, sig))
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert text.count(f"received {sig}: saved") == 1 and "resume with ckpt_path=last" in text, text[-3000:]
    assert "auto-requeue" not in text and "killed by signal" not in text, text[-3000:]
    assert not list(run.rglob("hpc_ckpt*")) and not (run / ".dequant.lock").exists()
    stopped_at = _ckpt(run / "checkpoints" / "last.ckpt")["global_step"]
    assert step < stopped_at < MAX_STEPS  # stopped early, after the step that was running when the signal came

    result = train(_cfg(run, "ckpt_path=last"))
    assert result["global_step"] == MAX_STEPS and result["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
    _assert_same_data_order(reference, run)
    assert_same_training_state(reference / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")


def _batch_rows(path: Path) -> list[dict]:
    """The BatchLog rows written so far (a line being written is left out)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.endswith("}")]


def _file_hashes(folder: Path) -> dict[str, str]:
    """Every file of `folder` (hidden partial files included) and a hash of its bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_ctrl_c_exits_1_and_leaves_the_checkpoints_as_they_were(tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) to the process group between two periodic saves (every 5 steps): Lightning's graceful
    shutdown, exit status 1, no checkpoint written or changed, and the run folder's lock released."""
    run, log = tmp_path / "run", tmp_path / "train.log"
    proc = _launch(run, log, "callbacks.model_checkpoint.every_n_train_steps=5")
    deadline = time.monotonic() + 240
    while not ((rows := _batch_rows(run / "batches.jsonl")) and rows[-1]["step"] >= 5):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("train.py did not reach step 5:\n" + log.read_text()[-3000:])
        time.sleep(0.005)
    # Frozen while the checkpoints are looked at: step 5's save is done, step 10's is not begun.
    os.killpg(proc.pid, signal.SIGSTOP)
    running = _batch_rows(run / "batches.jsonl")[-1]["step"]
    before = _file_hashes(run / "checkpoints")
    os.killpg(proc.pid, signal.SIGINT)
    os.killpg(proc.pid, signal.SIGCONT)
    assert proc.wait(timeout=120) == 1, log.read_text()[-3000:]
    text = log.read_text()
    assert "Detected KeyboardInterrupt, attempting graceful shutdown" in text and "received SIGINT" not in text
    assert 5 <= running <= 8, f"the signal came at step {running}, not between the saves at steps 5 and 10"
    assert sorted(before) == ["last.ckpt", "step0000005.ckpt"]
    assert _file_hashes(run / "checkpoints") == before, "Ctrl-C wrote or changed a checkpoint"
    assert _ckpt(run / "checkpoints" / "last.ckpt")["global_step"] == 5
    assert not (run / ".dequant.lock").exists()


def test_sigint_added_to_the_preemption_signals_saves_last_and_stops(tmp_path: Path) -> None:
    """`callbacks.preemption.signals` with SIGINT: Ctrl-C then stops as SIGTERM does (fresh last.ckpt, a normal
    return), and the previous SIGINT handler is back afterwards."""
    run = tmp_path / "run"
    previous = signal.getsignal(signal.SIGINT)
    result = train(_cfg(run, "callbacks.preemption.signals=[SIGTERM,SIGUSR1,SIGINT]",
                        "callbacks.model_checkpoint.every_n_train_steps=5",
                        "+callbacks.faults._target_=dequant.callbacks.InjectFaults",
                        "+callbacks.faults.signal_at_step=2", "+callbacks.faults.signal_name=SIGINT"))
    assert result["stopped_by_signal"] == "SIGINT" and result["global_step"] == 3
    assert _ckpt(run / "checkpoints" / "last.ckpt")["global_step"] == 3
    assert signal.getsignal(signal.SIGINT) is previous


def test_preemption_callback_rejects_bad_signals() -> None:
    with pytest.raises(ValueError, match=re.escape("signals: unknown signal 'SIGFOO' (use names such as SIGTERM, "
                                                   "SIGUSR1)")):
        PreemptionCheckpoint(signals=["SIGFOO"])
    with pytest.raises(ValueError, match="^signals: SIGKILL and SIGSTOP cannot be caught$"):
        PreemptionCheckpoint(signals=["SIGKILL"])


# --------------------------------------------------------------------------------------- atomic checkpoints

def _stall_during_a_write(target: Path, mode: str) -> int:
    """Fork a child that saves step 1 to `target` with AtomicCheckpointIO, then stalls inside the step-2 write
    (`half_written`: the disk stops half-way through the bytes; `before_rename`: all bytes written, it stalls before
    they are durable, so before the rename); return its pid once it has stalled.

    A fork, not a new interpreter: the child has this process's torch and dequant already imported, and what is
    tested (a process killed in the middle of a write) is the same.
    """
    first = {"state_dict": {"w": torch.zeros(4)}, "global_step": 1, "loops": {}}
    second = {"state_dict": {"w": torch.ones(100_000)}, "global_step": 2, "loops": {}}
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            writer = AtomicCheckpointIO()
            writer.save_checkpoint(first, target)
            real_save = torch.save

            def half_then_hang(obj, f):
                buf = io.BytesIO()
                real_save(obj, buf)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                os.write(write_end, b"STALLED\n")
                time.sleep(600)

            def hang(fd):
                os.write(write_end, b"STALLED\n")
                time.sleep(600)

            if mode == "half_written":
                torch.save = half_then_hang
            else:
                os.fsync = hang
            writer.save_checkpoint(second, target)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(1)
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], 120)
    said = os.read(read_end, 64) if ready else b""
    os.close(read_end)
    if said != b"STALLED\n":
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail(f"the writing child did not stall ({said!r})")
    return pid


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["half_written", "before_rename"])
def test_sigkill_during_a_checkpoint_write_leaves_the_previous_file_intact(mode: str, tmp_path: Path) -> None:
    target = tmp_path / "checkpoints" / "last.ckpt"
    pid = _stall_during_a_write(target, mode)
    try:
        partial = list(target.parent.glob(".last.ckpt.*.partial"))
        assert len(partial) == 1 and partial[0].stat().st_size > 0
    finally:
        os.kill(pid, signal.SIGKILL)
        status = os.waitpid(pid, 0)[1]
    assert os.waitstatus_to_exitcode(status) == -signal.SIGKILL  # killed, not exited
    assert checkpoint_problem(target) is None and _ckpt(target)["global_step"] == 1
    assert resumable_checkpoint(target.parent) == (target, [])  # the partial file is not a candidate
    assert remove_partial_checkpoints(target.parent) == partial and not partial[0].exists()


def test_failed_write_keeps_the_old_file_and_leaves_no_partial(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "last.ckpt"
    writer = AtomicCheckpointIO()
    writer.save_checkpoint({"state_dict": {"w": torch.zeros(2)}, "global_step": 1, "loops": {}}, target)

    def disk_full(obj, f):
        f.write(b"PK\x03\x04 some bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        writer.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 2, "loops": {}}, target)
    monkeypatch.undo()
    assert _ckpt(target)["global_step"] == 1 and list(tmp_path.iterdir()) == [target]
    with pytest.raises(FloatingPointError, match="non-finite weights in \\['w'\\]"):
        writer.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("nan")])}, "global_step": 3,
                                "loops": {}}, target)
    assert _ckpt(target)["global_step"] == 1 and list(tmp_path.iterdir()) == [target]


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "bit_flips":  # same size, valid zip directory: only the CRCs can tell
        mid = bytearray(data)
        for i in range(len(mid) // 2, len(mid) // 2 + 64):
            mid[i] ^= 0xFF
        path.write_bytes(bytes(mid))
    elif how == "garbage":
        path.write_bytes(b"this is not a checkpoint\n" * 100)
    else:
        raise AssertionError(how)


def test_disk_full_inside_training_stops_it_and_keeps_the_previous_checkpoint(reference: Path, tmp_path: Path,
                                                                           monkeypatch, caplog) -> None:
    """The disk fills up while step 4's checkpoint is written, inside a real training run: the write error stops
    training, the step-3 checkpoints stay as they were and the temporary file is removed. A partial file left by a
    run killed in the middle of a write is deleted, with a log line, when the next run starts; that run resumes
    exactly."""
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    real_save = torch.save

    def disk_full_at_step_4(obj, f, *args, **kwargs):
        if Path(str(getattr(f, "name", ""))).name.startswith(".step0000004.ckpt."):
            f.write(b"PK\x03\x04 the first bytes of a checkpoint")
            f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_step_4)
    with pytest.raises(OSError) as err:
        train(_cfg(run))
    monkeypatch.setattr(torch, "save", real_save)
    assert err.value.errno == errno.ENOSPC
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "last.ckpt", "step0000001.ckpt", "step0000002.ckpt", "step0000003.ckpt"]  # no step 4, no partial file
    assert all(checkpoint_problem(p) is None for p in ckpts.iterdir())
    assert _ckpt(ckpts / "last.ckpt")["global_step"] == 3 and not (run / ".dequant.lock").exists()
    assert_same_training_state(ckpts / "last.ckpt", ckpts / "step0000003.ckpt")

    leftover = ckpts / ".last.ckpt.k1ll3d.partial"  # what a write killed half-way leaves
    leftover.write_bytes(b"PK\x03\x04 half")
    with caplog.at_level(logging.WARNING, logger="dequant.callbacks"):
        result = train(_cfg(run, "ckpt_path=last"))
    assert f"removed {leftover}: an unfinished checkpoint write from an earlier, interrupted run" in caplog.text
    assert not leftover.exists() and result["global_step"] == MAX_STEPS
    _assert_same_data_order(reference, run)
    assert_same_training_state(reference / "checkpoints" / "last.ckpt", ckpts / "last.ckpt")


@pytest.mark.parametrize("how", ["truncated", "empty", "bit_flips", "garbage"])
def test_damaged_checkpoint_is_detected(how: str, stopped_at_6: Path, tmp_path: Path) -> None:
    bad = tmp_path / "last.ckpt"
    shutil.copy(stopped_at_6 / "checkpoints" / "last.ckpt", bad)
    assert checkpoint_problem(bad) is None
    _damage(bad, how)
    problem = checkpoint_problem(bad)
    assert problem is not None and {"truncated": "truncated", "empty": "empty", "bit_flips": "checksum",
                                    "garbage": "truncated or not a torch checkpoint"}[how] in problem
    with pytest.raises(ValueError, match="ckpt_path: .*cannot resume training"):
        train(_cfg(tmp_path / "x", f"ckpt_path={bad}"))


def test_corrupt_last_falls_back_to_the_newest_good_step_checkpoint(reference: Path, stopped_at_6: Path,
                                                                   tmp_path: Path, caplog) -> None:
    run = tmp_path / "run"
    shutil.copytree(stopped_at_6, run)
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == [
        "last.ckpt", "step0000004.ckpt", "step0000005.ckpt", "step0000006.ckpt"]
    _damage(ckpts / "last.ckpt", "truncated")
    _damage(ckpts / "step0000006.ckpt", "bit_flips")
    found, skipped = resumable_checkpoint(ckpts)
    assert found == ckpts / "step0000005.ckpt" and len(skipped) == 2
    with caplog.at_level("WARNING", logger="dequant.training"):
        result = train(_cfg(run, "ckpt_path=last"))
    assert result["resumed_from"] == str(ckpts / "step0000005.ckpt") and result["global_step"] == MAX_STEPS
    assert "last.ckpt: truncated" in caplog.text and "step0000006.ckpt: corrupt (checksum" in caplog.text
    assert "resuming from" in caplog.text
    # Steps 5..11 redone from the step-5 checkpoint: same batches, same final state as the uninterrupted run.
    _assert_same_data_order(reference, run)
    assert_same_training_state(reference / "checkpoints" / "last.ckpt", ckpts / "last.ckpt")


def test_every_checkpoint_damaged_is_an_error_not_a_silent_restart(stopped_at_6: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(stopped_at_6, run)
    for p in (run / "checkpoints").glob("*.ckpt"):
        _damage(p, "empty")
    with pytest.raises(ValueError, match="ckpt_path=last: no usable checkpoint .*empty file"):
        train(_cfg(run, "ckpt_path=last"))


def test_checkpoints_total_limit_keeps_the_folder_bounded(reference: Path) -> None:
    names = sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step0000010.ckpt", "step0000011.ckpt", "step0000012.ckpt"]
    assert [checkpoint_step(n) for n in names] == [None, 10, 11, 12]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="checkpoints_total_limit"):
            StepCheckpoint(checkpoints_total_limit=bad)
    with pytest.raises(ValueError, match="monitor"):
        StepCheckpoint(checkpoints_total_limit=2, monitor="val/loss")


# ----------------------------------------------------------------------------------------- sampler position


def test_sampler_position_belongs_to_its_epoch() -> None:
    s = EpochSampler(6, 6, seed=0)
    s.load_state_dict({"epoch": 3, "start": 4})
    s.set_epoch(3)  # Lightning re-sets the resumed epoch: the position stays
    assert len(list(s)) == 2
    s.load_state_dict({"epoch": 3, "start": 6})  # saved at the end of epoch 3
    s.set_epoch(4)  # the next epoch starts from its beginning
    assert len(list(s)) == 6


# ----------------------------------------------------------------------------------------- numerical faults


def _net_and_ema(path: Path) -> dict[str, torch.Tensor]:
    ckpt = _ckpt(path)
    state = dict(ckpt["state_dict"])
    for i, s in ckpt["optimizer_states"][0]["state"].items():
        state[f"adam.{i}.exp_avg"] = s["exp_avg"]
        state[f"adam.{i}.step"] = torch.as_tensor(s["step"])
    return state


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_nonfinite_loss_and_gradient_steps_are_skipped_and_counted(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = train(_cfg(run, "trainer.max_steps=8", "callbacks.model_checkpoint.checkpoints_total_limit=null",
                        "+callbacks.faults._target_=dequant.callbacks.InjectFaults",
                        "+callbacks.faults.nan_batch_steps=[3]", "+callbacks.faults.inf_grad_steps=[5]"))
    assert result["global_step"] == 8 and result["metrics"]["train/nonfinite_steps"] == 2.0
    state = {s: _net_and_ema(run / "checkpoints" / f"step{s:07d}.ckpt") for s in range(3, 9)}
    # Step index 3 (NaN batch) and 5 (inf gradient) changed nothing: weights, EMA, AdamW moments and step count.
    _assert_identical(state[4], state[3])
    _assert_identical(state[6], state[5])
    assert not torch.equal(state[5]["adam.0.exp_avg"], state[4]["adam.0.exp_avg"])  # normal steps do update
    assert all(bool(torch.isfinite(v).all()) for v in state[8].values() if v.is_floating_point())


def test_persistent_nonfinite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    faults = ("callbacks.model_checkpoint.checkpoints_total_limit=null",
              "+callbacks.faults._target_=dequant.callbacks.InjectFaults",
              "+callbacks.faults.nan_batch_steps=[3,4,5,6]")
    with pytest.raises(FloatingPointError, match="3 steps in a row had a non-finite loss or gradient"):
        train(_cfg(run, "++module.max_nonfinite_steps=3", "logger=csv", *faults))
    last = run / "checkpoints" / "last.ckpt"
    assert checkpoint_problem(last) is None
    # Stopped during step index 5 (the third bad one) before its checkpoint; last.ckpt is from after step index 4
    # and, both bad steps having been skipped, holds exactly the weights after the last good step.
    ckpt = _ckpt(last)
    assert ckpt["global_step"] == 5 and ckpt["nonfinite_steps"] == {"total": 2, "in_row": 2}
    _assert_identical(_net_and_ema(last), _net_and_ema(run / "checkpoints" / "step0000003.ckpt"))
    # The run resumes from it once the data is fixed (no more injected faults); the counter carries on.
    result = train(_cfg(run, "++module.max_nonfinite_steps=3", "logger=csv", "ckpt_path=last", "trainer.max_steps=7"))
    assert result["global_step"] == 7 and result["metrics"]["train/nonfinite_steps"] == 2.0
    # The count is logged every step; the CSV of the run before the resume is kept beside the new one.
    logged = [_logged(run / "csv" / name, "train/nonfinite_steps") for name in ("metrics_part1.csv", "metrics.csv")]
    assert logged == [[0.0, 0.0, 0.0, 1.0, 2.0], [2.0, 2.0]]


def _logged(path: Path, key: str) -> list[float]:
    with path.open(newline="") as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


def test_max_nonfinite_steps_0_never_stops(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # More bad steps in a row than the default limit (10) allows.
    result = train(_cfg(run, "++module.max_nonfinite_steps=0", "callbacks.model_checkpoint.every_n_train_steps=6",
                        "+callbacks.faults._target_=dequant.callbacks.InjectFaults",
                        f"+callbacks.faults.nan_batch_steps={list(range(MAX_STEPS))}"))
    # Every step non-finite, so every one skipped (no AdamW state at all), and training ran to its end.
    assert result["global_step"] == MAX_STEPS and result["metrics"]["train/nonfinite_steps"] == MAX_STEPS
    last = _ckpt(run / "checkpoints" / "last.ckpt")
    assert last["nonfinite_steps"] == {"total": MAX_STEPS, "in_row": MAX_STEPS}
    assert last["optimizer_states"][0]["state"] == {}


MIXED_16 = "+trainer.plugins=[{_target_: lightning.pytorch.plugins.precision.MixedPrecision, precision: 16-mixed, " \
           "device: cpu}]"


def test_under_16_mixed_the_grad_scaler_owns_overflows_and_a_nan_loss_still_counts(tmp_path: Path) -> None:
    """precision=16-mixed with its GradScaler. On a CPU Lightning turns `trainer.precision=16-mixed` into bf16 (no
    scaler), so the test configures the plugin that 16-mixed gives on a GPU: MixedPrecision('16-mixed'), with
    fp16 autocast and a GradScaler, which torch runs on the CPU too."""
    run = tmp_path / "run"
    result = train(_cfg(run, "trainer.max_steps=6", "callbacks.model_checkpoint.checkpoints_total_limit=null",
                        "~trainer.precision", MIXED_16, "+callbacks.faults._target_=dequant.callbacks.InjectFaults",
                        "+callbacks.faults.nan_batch_steps=[2]", "+callbacks.faults.inf_grad_steps=[4]"))
    # The NaN loss (step index 2) counts; the inf gradient (step index 4) is the scaler's: not counted.
    assert result["global_step"] == 6 and result["metrics"]["train/nonfinite_steps"] == 1.0
    ckpts = {s: _ckpt(run / "checkpoints" / f"step{s:07d}.ckpt") for s in range(2, 7)}
    assert [ckpts[s]["nonfinite_steps"]["total"] for s in range(2, 7)] == [0, 1, 1, 1, 1]
    scales = {s: ckpts[s]["MixedPrecision"]["scale"] for s in range(2, 7)}
    assert scales[5] == scales[4] / 2 and scales[6] == scales[5]  # the scaler skipped the overflow, lowered its scale
    # Both skipped steps changed nothing: weights, EMA, AdamW moments and step counts.
    state = {s: _net_and_ema(run / "checkpoints" / f"step{s:07d}.ckpt") for s in range(2, 7)}
    _assert_identical(state[3], state[2])
    _assert_identical(state[5], state[4])
    assert not torch.equal(state[6]["adam.0.exp_avg"], state[5]["adam.0.exp_avg"])  # a normal step does update


def test_max_nonfinite_steps_is_validated(tmp_path: Path) -> None:
    for bad in ("-1", "2.5", "true"):
        with pytest.raises(ValueError, match=re.escape(
                f"max_nonfinite_steps must be an int >= 0 (0 = never stop), got {bad.capitalize()}")):
            train(_cfg(tmp_path / "run", f"++module.max_nonfinite_steps={bad}"))
    assert not (tmp_path / "run" / "checkpoints").exists()
