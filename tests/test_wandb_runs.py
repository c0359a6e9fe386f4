"""W&B runs read back from their offline record logs (tests/wandb_records.py): what the logged config holds, the
preemption mark, a requeued offline run resuming into the same run (and the one `wandb sync` that uploads it), the
offline fallback without network, `logger=csv_wandb`, and one-line errors for names W&B cannot take."""

from __future__ import annotations

import glob
import logging
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import wandb

from dequant import wandb_run
from wandb_records import segments

TINY = ["experiment=tiny", "sampler=ddim", "sampler.steps=2", "trainer.val_check_interval=2",
        "callbacks.model_checkpoint.every_n_train_steps=2", "data.val_fixed.images=1", "data.val_fixed.sizes=[4]",
        "data.val_fixed.patch=false", "~callbacks.progress_bar"]


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B as on a compute node without network: online by default, the server unreachable; nothing under ~."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for var, value in (("WANDB_SILENT", "true"), ("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config")),
                       ("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache")),
                       ("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))):
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(wandb_run, "reachable", lambda *args, **kwargs: False)
    monkeypatch.setattr(wandb_run, "_warned_offline", [])
    yield
    wandb.finish()


@pytest.mark.slow
def test_a_preempted_offline_run_is_marked_and_resumes_into_the_same_run(wandb_env, tmp_path: Path,
                                                                         run_script) -> None:
    run = tmp_path / "run"
    # SLURM's time-limit signal arrives after step 3 (wandb_records.SignalAtStep); CSV and W&B at once; the W&B server
    # cannot be reached, so the run goes offline by itself.
    # train.py itself (in this process, as `python train.py ...`), so that Hydra's group choices exist.
    overrides = [*TINY, "logger=csv_wandb", "trainer.max_steps=6", "run_tags=[mine]", f"hydra.run.dir={run}",
                 "+callbacks.zsignal._target_=wandb_records.SignalAtStep", "+callbacks.zsignal.step=3"]
    code, _, err = run_script("train.py", *overrides)
    assert code == 0, err[-2000:]
    step = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert step == 4  # stopped by the signal after the step that was running
    assert wandb.run is None  # finished by train(), with a preempted exit code
    code, _, err = run_script("train.py", *overrides, "ckpt_path=last")
    assert code == 0, err[-2000:]
    wandb.finish()
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 6
    # One warning (in the job's log: train.py's Hydra logging), and training went on offline.
    assert (run / "train.log").read_text().count("cannot be reached") == 1
    assert (run / "csv" / "metrics.csv").is_file()  # logger=csv_wandb: the CSV curves beside W&B

    before, after = segments(run)
    run_id = (run / "wandb_run_id.txt").read_text().strip()
    assert before.run.run_id == after.run.run_id == run_id
    # Marked preempting when the signal came, and finished with a non-zero exit code: W&B shows it as preempted.
    assert before.preempting and before.exit_code == 128 + signal.SIGUSR1
    assert not after.preempting and after.exit_code == 0
    # The resumed segment continues the x axis (trainer/global_step, every metric's step in Lightning's logger).
    steps = [[row["trainer/global_step"] for row in seg.history if "trainer/global_step" in row]
             for seg in (before, after)]
    assert max(steps[0]) <= min(steps[1]) and max(steps[1]) == 6  # the step of the resume point, then on
    assert {"val/r/N4/psnr", "val/r_tex/N4/psnr_best"} <= before.history_keys()
    # The logged config: group choices, parameter counts, git state and command line beside the resolved config;
    # command-line tags kept.
    config = before.config
    assert config["choices"]["palette"] == "authors" and config["choices"]["logger"] == "csv_wandb"
    assert config["choices"]["model"] == "tiny" and config["choices"]["formulation"] == "noise"
    assert config["params"]["total"] == config["params"]["trainable"] > 0
    assert "commit" in config["git"] and "dirty" in config["git"]
    assert "config" in config and "command" in config
    assert list(before.run.tags) == ["mine"]
    assert before.run.display_name.startswith("train_")
    # docs/sweeps.md: one `wandb sync` over every segment uploads them as one run, in order of start time.
    paths = sorted(glob.glob(str(run / "wandb" / "offline-run-*")))
    assert len(paths) == 2
    proc = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run", *paths], capture_output=True,
                          text=True, timeout=120)
    listed = [line.split()[-1] for line in (proc.stdout + proc.stderr).splitlines() if line.strip().endswith(".wandb")]
    assert [Path(p).parent.name for p in listed] == [Path(p).name for p in paths], proc.stdout + proc.stderr


def test_the_preempting_mark_goes_out_at_the_first_batch_end_after_the_signal() -> None:
    """Before the preemption callback (after it in the list) writes its checkpoint; only on rank 0; only once."""
    class Run:
        def __init__(self) -> None:
            self.marks = 0

        def mark_preempting(self) -> None:
            self.marks += 1

    class WandbLogger:
        def __init__(self) -> None:
            self._experiment = self.experiment = Run()

    class Preemption:
        received = None

    class Trainer:
        is_global_zero = True

        def __init__(self) -> None:
            self.loggers = [WandbLogger()]

    preemption, trainer = Preemption(), Trainer()
    callback = wandb_run.WandbPreempting([preemption])
    callback.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.loggers[0].experiment.marks == 0
    preemption.received = "SIGTERM"
    other_rank = Trainer()
    other_rank.is_global_zero = False
    callback.on_train_batch_end(other_rank, None, None, None, 1)
    assert other_rank.loggers[0].experiment.marks == 0
    for batch in (1, 2):
        callback.on_train_batch_end(trainer, None, None, None, batch)
    assert trainer.loggers[0].experiment.marks == 1
    assert wandb_run.preempted_exit_code("SIGTERM") == 143 and wandb_run.preempted_exit_code("a signal") == 1


def test_offline_fallback_warns_once(wandb_env, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    node = {"_target_": "lightning.pytorch.loggers.WandbLogger", "project": "dequant", "save_dir": str(tmp_path),
            "offline": False}
    with caplog.at_level(logging.WARNING, logger="dequant.wandb_run"):
        loggers = [wandb_run.wandb_logger(node) for _ in range(2)]
    assert all(lg._offline for lg in loggers)
    assert sum("cannot be reached" in r.getMessage() for r in caplog.records) == 1
    # Asked for offline: no check, no warning.
    caplog.clear()
    assert wandb_run.wandb_logger({**node, "offline": True})._offline and not caplog.records


@pytest.mark.parametrize("key, value", [("project", "team/dequant"), ("entity", "a:b"), ("project", " ")])
def test_names_wandb_cannot_take_are_one_line_errors(key: str, value: str, tmp_path: Path) -> None:
    node = {"_target_": "lightning.pytorch.loggers.WandbLogger", "project": "dequant", "save_dir": str(tmp_path),
            "offline": True, key: value}
    with pytest.raises(ValueError, match=rf"^logger\.wandb\.{key}: .* cannot be a W&B name"):
        wandb_run.wandb_logger(node)


def test_wandb_refusing_the_run_names_the_keys_and_the_accounts_entities(monkeypatch: pytest.MonkeyPatch) -> None:
    class Refused:
        name = "dequant"
        _wandb_init = {"entity": "nobody"}

        @property
        def experiment(self):
            raise wandb.errors.CommError("permission denied: entity nobody not found")

    monkeypatch.setattr(wandb_run, "_entities", lambda: ["me", "my-team"])
    with pytest.raises(ValueError) as err:
        wandb_run.start_run(Refused())
    message = str(err.value)
    assert "\n" not in message and message.startswith("logger.wandb: W&B refused the run (entity 'nobody'")
    assert "entity nobody not found" in message and "this account's entities: me, my-team" in message


def test_train_py_answers_a_bad_project_name_with_one_line(run_script, tmp_path: Path) -> None:
    code, _, err = run_script("train.py", "experiment=tiny", "logger=wandb", "logger.wandb.project=a/b",
                              f"hydra.run.dir={tmp_path}")
    assert code == 2, err[-2000:]
    assert err.strip().splitlines()[-1] == ("train.py: error: logger.wandb.project: 'a/b' cannot be a W&B name "
                                            "(1 to 128 characters, none of / \\ # ? % :)")


def test_single_runs_get_distinct_names(run_script, tmp_path: Path) -> None:
    import yaml

    names = []
    for cond in ("T", "G"):
        code, out, err = run_script("train.py", "experiment=tiny", f"cond={cond}", "--cfg", "job", "--resolve")
        assert code == 0, err
        names.append(yaml.safe_load(out)["run_name"])
    assert names[0] != names[1] and names[1].startswith("train_") and names[1].endswith(":cond=G,experiment=tiny")
