"""What the README promises on a cluster: one run per folder (a lock), checkpoints are data (weights_only loads,
code-carrying files refused unrun by every entry point), and preemption owned by the project's callback alone
(Lightning's SLURM auto-requeue off, atomic checkpoint writes whatever plugins are configured, no hpc_ckpt resume).

The signal tests on a real train.py with data workers under a faked SLURM environment are in test_faults.py.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dequant.callbacks import AtomicCheckpointIO, checkpoint_problem
from dequant.config import conf_dir
from dequant.runlock import LOCK_NAME, RunFolderBusy, RunLock
from dequant.training import refuse_hpc_checkpoints, resolve_checkpoint, train, trainer_plugins

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "src" / "dequant" / "assets" / "images" / "chelsea.jpg"


@pytest.fixture
def other_live_process():
    """A live process that is not this one (its pid holds locks in these tests)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def _write_lock(folder: Path, pid: int, host: str | None = None, **extra: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    path.write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid,
                                "start_time": "2026-01-01T00:00:00+00:00", "slurm_job_id": None, **extra}))
    return path


# ------------------------------------------------------------------------------------------------ run lock


def test_a_second_run_in_a_held_folder_refuses_naming_folder_and_holder(tmp_path: Path, other_live_process) -> None:
    _write_lock(tmp_path, other_live_process.pid)
    with pytest.raises(RunFolderBusy) as err:
        RunLock(tmp_path).acquire()
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message
    assert f"pid {other_live_process.pid}" in message and socket.gethostname() in message
    assert "2026-01-01T00:00:00+00:00" in message


def test_a_lock_of_a_dead_process_is_taken_over_with_a_log_line(tmp_path: Path, caplog) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path, dead.pid)
    with caplog.at_level(logging.WARNING, logger="dequant.runlock"):
        lock = RunLock(tmp_path).acquire()
    assert "taking over the lock" in caplog.text and "no longer running" in caplog.text
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_of_another_host_is_stale_only_when_its_heartbeat_stopped(tmp_path: Path) -> None:
    path = _write_lock(tmp_path, 1, host="node-that-is-gone")
    with pytest.raises(RunFolderBusy, match="node-that-is-gone"):
        RunLock(tmp_path).acquire()
    old = path.stat().st_mtime - 3600
    os.utime(path, (old, old))
    RunLock(tmp_path).acquire().release()


def test_the_requeued_rerun_of_the_same_slurm_job_takes_over(tmp_path: Path, monkeypatch, other_live_process,
                                                             caplog) -> None:
    _write_lock(tmp_path, other_live_process.pid, host="node-a", slurm_job_id="777")
    monkeypatch.setenv("SLURM_JOB_ID", "778")  # another job: the holder's fresh heartbeat keeps the folder
    with pytest.raises(RunFolderBusy, match="host node-a, .*SLURM job 777"):
        RunLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    with caplog.at_level(logging.WARNING, logger="dequant.runlock"):
        lock = RunLock(tmp_path).acquire()
    assert "taking over the lock of host node-a" in caplog.text
    assert "it is an earlier run of this SLURM job (777), which SLURM has ended" in caplog.text
    record = json.loads((tmp_path / LOCK_NAME).read_text())
    assert record["pid"] == os.getpid() and record["slurm_job_id"] == "777"
    lock.release()


def test_nested_locks_of_one_process_share_the_lock(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        inner = RunLock(tmp_path).acquire()  # a sweep job around train(): same process
        inner.release()
        assert (tmp_path / LOCK_NAME).exists()  # the inner one did not take it away
    assert not (tmp_path / LOCK_NAME).exists()


def test_train_refuses_a_held_folder_before_writing_anything(tmp_path: Path, other_live_process) -> None:
    run = tmp_path / "run"
    _write_lock(run, other_live_process.pid)
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=tiny", "logger=none", f"paths.run_dir={run}"])
    with pytest.raises(ValueError, match="in use by another run"):
        train(cfg)
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]


@pytest.mark.slow
def test_train_py_refuses_a_held_folder_before_hydra_writes_into_it(tmp_path: Path, other_live_process) -> None:
    run = tmp_path / "run"
    _write_lock(run, other_live_process.pid)
    proc = subprocess.run([sys.executable, "train.py", "experiment=tiny", f"hydra.run.dir={run}", "ckpt_path=last"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: run folder") and f"pid {other_live_process.pid}" \
        in lines[0]
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # no .hydra/, no log


def test_only_rank_zero_takes_the_lock(tmp_path: Path, monkeypatch, other_live_process) -> None:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    run = tmp_path / "run"
    _write_lock(run, other_live_process.pid)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=tiny", "logger=none", f"paths.run_dir={run}",
                                          "data.paths=/nonexistent/*.png"])
    # Rank 1 does not look at the lock: it gets as far as the (deliberately) missing data.
    with pytest.raises(ValueError, match="matches no image files"):
        train(cfg)


# ------------------------------------------------------------------------------------------------ plugins


def test_atomic_checkpoint_io_is_always_in_the_plugins(monkeypatch) -> None:
    for var in [v for v in os.environ if v.startswith("SLURM_")]:
        monkeypatch.delenv(var)
    assert [type(p) for p in trainer_plugins([])] == [AtomicCheckpointIO]
    precision = object()
    assert [type(p) for p in trainer_plugins([precision])] == [object, AtomicCheckpointIO]
    own = TorchCheckpointIO()
    assert trainer_plugins([own]) == [own]  # a configured CheckpointIO replaces it


def test_on_slurm_lightning_does_not_own_the_preemption_signals(monkeypatch) -> None:
    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "1"}.items():
        monkeypatch.setenv(key, value)
    plugins = trainer_plugins([])
    slurm = [p for p in plugins if isinstance(p, SLURMEnvironment)]
    assert len(slurm) == 1 and slurm[0].auto_requeue is False
    assert any(isinstance(p, AtomicCheckpointIO) for p in plugins)


def test_hpc_checkpoints_in_the_run_folder_are_refused(tmp_path: Path) -> None:
    refuse_hpc_checkpoints(tmp_path)
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"x")
    with pytest.raises(ValueError, match="ckpt_path=last"):
        refuse_hpc_checkpoints(tmp_path)


# ------------------------------------------------------------------------------------------------ checkpoints are data


class _RunsCode:
    """Unpickling this creates the marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def code_carrying_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint with every key a resumable one has, plus a pickle that runs a command when loaded."""
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "global_step": 1, "loops": {}, "dequant_config": {},
                "payload": _RunsCode(marker)}, path)
    return path, marker


def test_integrity_checks_refuse_code_without_running_it(code_carrying_checkpoint, tmp_path: Path) -> None:
    path, marker = code_carrying_checkpoint
    assert "refused unrun" in checkpoint_problem(path)
    with pytest.raises(ValueError, match="refused unrun"):
        resolve_checkpoint(str(path), tmp_path)
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match="no usable checkpoint"):
        resolve_checkpoint("last", tmp_path / "run")
    assert not marker.exists()


@pytest.mark.slow
def test_every_entry_point_refuses_a_code_carrying_checkpoint_unrun(code_carrying_checkpoint, tmp_path: Path,
                                                                    capsys) -> None:
    """train.py and evaluate.py as scripts (subprocesses, in parallel); the console scripts through their main()."""
    from dequant.app import main as app_main
    from dequant.edit import main as edit_main
    from dequant.export import main as export_main

    path, marker = code_carrying_checkpoint
    scripts = {
        "train.py": [sys.executable, "train.py", "experiment=tiny", "logger=none", f"ckpt_path={path}",
                     f"hydra.run.dir={tmp_path / 'train'}"],
        "evaluate.py": [sys.executable, "evaluate.py", f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'eval'}"],
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {name: subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, start_new_session=True) for name, cmd in scripts.items()}
    outputs = {}
    mains = {
        "dequant-edit": (edit_main, ["transfer", str(PHOTO), "--ckpt", str(path), "--palette", "#000000,#ffffff",
                                     "-o", str(tmp_path / "out.png")]),
        "dequant-export": (export_main, [str(path), str(tmp_path / "export")]),
        "dequant-app": (app_main, ["--ckpt", str(path), "--port", "7999"]),
    }
    for name, (main, argv) in mains.items():
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        captured = capsys.readouterr()
        outputs[name] = (captured.out + captured.err, code)
    for name, proc in procs.items():
        try:
            outputs[name] = (proc.communicate(timeout=240)[0], proc.returncode)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            outputs[name] = (proc.communicate()[0], None)
    assert not marker.exists(), "a checkpoint's pickled code ran"
    for name, (out, code) in outputs.items():
        # Exit 2 as for any bad input: for train.py and evaluate.py this is also the one test of a separate
        # process answering bad input with a one-line error and exit 2 (other bad-input cases run them in-process).
        assert code == 2, f"{name} exited with {code}:\n{out[-2000:]}"
        # A one-line error that says the file was refused for what its pickle holds, not a crash.
        assert "Traceback" not in out and "error" in out, f"{name}:\n{out[-2000:]}"
        assert any(word in out for word in ("UnpicklingError", "GLOBAL", "weights_only", "refused")), \
            f"{name}:\n{out[-2000:]}"

# ------------------------------------------------------------------------------------------------ FSDP


def test_fsdp_with_ema_is_refused_at_startup_naming_both_keys(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=tiny", "trainer=fsdp", "module.use_ema=true",
                                          f"paths.run_dir={run}"])
    with pytest.raises(ValueError) as err:
        train(cfg)
    message = str(err.value)
    assert "trainer.strategy" in message and "module.use_ema" in message and "module.use_ema=false" in message
    assert not run.exists()  # refused before anything was written


def test_fsdp_without_ema_passes_the_startup_check() -> None:
    from dequant.training import check_strategy

    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=tiny", "trainer=fsdp", "module.use_ema=false"])
    assert "fsdp" in cfg.trainer.strategy._target_.lower() and cfg.module.use_ema is False
    assert check_strategy(cfg) is None  # no error: the check tells the two apart
    cfg.module.use_ema = True
    with pytest.raises(ValueError, match="^trainer.strategy is FSDP and module.use_ema=true"):
        check_strategy(cfg)


# ------------------------------------------------------------------------------------------------ IF-II conditioning


def _if_like_unet(folder: Path) -> Path:
    """A tiny UNet with IF-II's interface: 6 input channels, learned variance (6 out), T5-width text projected to
    the cross-attention width, a timestep-style class embedding for the low-resolution noise level."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8, attention_head_dim=4, in_channels=6, out_channels=6, encoder_hid_dim=16,
        encoder_hid_dim_type="text_proj", addition_embed_type="text", addition_embed_type_num_heads=4,
        class_embed_type="timestep",
    ).save_pretrained(folder)
    return folder


def test_controlnet_refuses_a_cross_attention_unet_without_the_empty_prompt_embedding(tmp_path: Path) -> None:
    from dequant.models.nets import ControlNetUNet

    with pytest.raises(ValueError, match="null_embedding_path: .*cross-attention.*docs/cluster.md") as err:
        ControlNetUNet(_if_like_unet(tmp_path / "unet"), conditioning_channels=(8, 16))
    assert "\n" not in str(err.value)


def test_the_authors_npz_embedding_and_the_class_label_reach_the_unet(tmp_path: Path) -> None:
    import numpy as np

    from dequant.models.nets import ControlNetUNet

    emb = np.random.default_rng(0).standard_normal((1, 5, 16)).astype(np.float32)
    np.savez(tmp_path / "empty_prompt.npz", arr=emb)  # the authors' file layout: key "arr", (1, seq, 4096)
    unet = _if_like_unet(tmp_path / "unet")
    nets = {label: ControlNetUNet(unet, conditioning_channels=(8, 16), class_label=label,
                                  null_embedding_path=tmp_path / "empty_prompt.npz") for label in (0, 250)}
    assert torch.equal(nets[0].null_embedding, torch.from_numpy(emb))
    g = torch.Generator().manual_seed(0)
    x, hint = torch.randn(2, 3, 16, 16, generator=g), torch.rand(2, 7, 16, 16, generator=g) * 2 - 1
    t = torch.tensor([10, 500])
    seen = {}
    for label, net in nets.items():
        net.unet.register_forward_pre_hook(
            lambda _m, _a, kw, label=label: seen.__setitem__(label, kw["class_labels"].tolist()), with_kwargs=True)
        with torch.no_grad():
            net(x, t, hint)
    assert seen == {0: [0, 0], 250: [250, 250]}
    with pytest.raises(ValueError, match="class_label"):
        ControlNetUNet(unet, class_label=-1, null_embedding_path=tmp_path / "empty_prompt.npz")


def test_model_controlnet_exposes_the_if_ii_choices_as_config_keys() -> None:
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["model=controlnet", "model.pretrained_path=/m"])
    net = cfg.module.net
    assert {"null_embedding_path", "null_seq_len", "class_label", "low_res_input"} <= set(net)


# ------------------------------------------------------------------------------------------------ jobs under SIGTERM


def _wait_for_text(path: Path, text: str, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
            pytest.fail(f"{text!r} did not appear in {path.name}:\n" + (path.read_text()[-3000:] if path.exists()
                                                                         else "(no log)"))
        time.sleep(0.02)


def _wait_for_handler(proc: subprocess.Popen, sig: signal.Signals, log: Path, timeout: float = 120.0) -> None:
    """Poll until `proc` has a handler installed for `sig` (Linux: the SigCgt mask in /proc/<pid>/status)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:  # it has just ended
            status = ""
        caught = [int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:")]
        if caught and caught[0] >> (sig - 1) & 1:
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no {sig.name} handler appeared in {log.name}'s process:\n" + log.read_text()[-3000:])
        time.sleep(0.005)


@pytest.mark.slow
def test_a_sweep_job_under_sigterm_is_recorded_preempted(tmp_path: Path) -> None:
    """SIGTERM to the process group: the sweep job (training with 2 data workers) is recorded as preempted, not
    failed, exit 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    sweep_dir, sweep_log = tmp_path / "sweep", tmp_path / "sweep.log"
    cmd = [sys.executable, "-m", "dequant.sweep", "-m", "--config-dir", str(ROOT / "sweeps"), "--config-name",
           "cue_modes", "experiment=tiny", "cond=T", "trainer.max_steps=500", "sampler=ddim", "sampler.steps=2",
           "logger=none", "data.num_workers=2", "callbacks.model_checkpoint.every_n_train_steps=1",
           "~callbacks.progress_bar", "~callbacks.lr_monitor", "trainer.enable_progress_bar=false",
           f"hydra.sweep.dir={sweep_dir}"]
    with sweep_log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    job = sweep_dir / "0"
    deadline_ckpt = job / "checkpoints" / "step0000003.ckpt"
    _wait_for_text(sweep_log, "", proc)  # the log exists
    import time

    start = time.monotonic()
    while not deadline_ckpt.exists():
        assert proc.poll() is None and time.monotonic() - start < 240, sweep_log.read_text()[-3000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, sweep_log.read_text()[-3000:]
    record = json.loads((job / "sweep_job.json").read_text())
    assert record["status"] == "preempted" and record["stopped_by"] == "SIGTERM", record
    text = sweep_log.read_text()
    assert text.count("received SIGTERM: saved") == 1 and "killed by signal" not in text, text[-3000:]
    assert not (job / LOCK_NAME).exists() and not list(job.rglob("hpc_ckpt*"))


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1"])
def test_an_evaluation_stops_between_batches_on_a_preemption_signal(sig: str, tiny_ckpt: Path,
                                                                    tmp_path: Path) -> None:
    """evaluate.py under SIGTERM or SIGUSR1 to its process group (SLURM's preemption and time-limit warning): it
    stops between batches, says so once, exits 0 and writes no partial tables."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    eval_dir, eval_log = tmp_path / "eval", tmp_path / "eval.log"
    with eval_log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "evaluate.py", f"ckpt_path={tiny_ckpt}", "sampler=ddim",
                                 "sampler.steps=2", "progress=false", f"hydra.run.dir={eval_dir}"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    _wait_for_text(eval_log, "evaluating ", proc)
    # The evaluation installs its handler a moment after that line: a signal in between would kill it outright.
    signum = getattr(signal, sig)
    _wait_for_handler(proc, signum, eval_log)
    os.killpg(proc.pid, signum)
    assert proc.wait(timeout=120) == 0, eval_log.read_text()[-3000:]
    text = eval_log.read_text()
    assert text.count(f"evaluation stopped by {sig}") == 1, text[-3000:]
    assert not (eval_dir / "metrics.csv").exists() and not list(eval_dir.glob("*.csv"))
