"""Sweeps (sweeps/*.yaml), the sweep job entry point (dequant.sweep), the SLURM launcher and the sweep report.

The multiruns run in this process (Hydra's app through `dequant.sweep.main` with a patched argv) on the tiny model;
the submitit_local one starts one process per job, as on a cluster.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from dequant import sweep, sweep_report

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "sweeps"
CONF = ROOT / "conf"
SWEEP_FILES = sorted(p for p in SWEEPS.glob("*.yaml") if not p.name.startswith("_"))
# Cheapest real jobs: 2 optimizer steps of the tiny UNet, DDIM with 2 steps, no validation pass (it comes at step 4).
TINY = ["experiment=tiny", "trainer.max_steps=2", "sampler=ddim", "sampler.steps=2"]
# Values a sweep needs from the command line (documented at the top of its file).
REQUIRED = {"architecture": ["pretrained_path=/models/unet"], "matching_cost": ["ckpt_path=/runs/x/last.ckpt"]}


def _jobs(path: Path) -> list[list[str]]:
    """The overrides of every job the file's `hydra.sweeper.params` describes (interval sweeps: both ends)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    per_key = []
    for key, value in yaml.safe_load(path.read_text())["hydra"]["sweeper"]["params"].items():
        override = parser.parse_override(f"{key}={value}")
        if override.is_discrete_sweep():
            values = list(override.sweep_string_iterator())
        else:
            interval = override.value()
            values = [repr(interval.start), repr(interval.end)]
        per_key.append([f"{key}={v}" for v in values])
    return [list(job) for job in itertools.product(*per_key)]


def _compose(name: str, overrides: list[str], job_num: int = 0) -> Any:
    """The job config exactly as `python -m dequant.sweep -m --config-dir sweeps --config-name <name>` builds it,
    fully resolved (hydra node included)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=str(SWEEPS), version_base="1.3"):
        cfg = compose(name, overrides=[f"hydra.searchpath=[file://{CONF}]", f"hydra.job.num={job_num}",
                                       "hydra.runtime.output_dir=/runs/job", *overrides], return_hydra_config=True)
    # The multirun process resolves these before any job config exists (no HydraConfig yet).
    for key in ("sweep", "sweeper", "launcher", "callbacks"):
        OmegaConf.to_container(cfg.hydra[key], resolve=True)
    HydraConfig.instance().set_config(cfg)
    try:
        job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        OmegaConf.to_container(job, resolve=True, throw_on_missing=True)  # what training.py stores must resolve
        return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # Hydra's help texts stay missing
    finally:
        HydraConfig.instance().cfg = None


def test_sweep_files_exist() -> None:
    names = {p.stem for p in SWEEP_FILES}
    assert {"cue_modes", "palette_sizes", "matching_cost", "quantizer", "architecture", "optuna_lr_ema"} <= names


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_every_job_of_every_sweep_composes(path: Path) -> None:
    text = path.read_text()
    assert f"--config-name {path.stem}" in text.split("defaults:")[0], "the command must head the file"
    jobs = _jobs(path)
    assert len(jobs) >= 2
    training = "- train" in text
    extra = (["experiment=tiny"] if training else []) + REQUIRED.get(path.stem, []) + ["logger=wandb"]
    for num, job in enumerate(jobs):
        cfg = _compose(path.stem, [*extra, *job], job_num=num)
        for override in job:
            key, _, value = override.partition("=")
            key = key.lstrip("+")
            choice = cfg.hydra.runtime.choices.get(key)
            if choice is not None:
                assert choice == value
            else:
                assert float(OmegaConf.select(cfg, key)) == pytest.approx(float(value))
        assert cfg.sweep.name == path.stem
        assert Path(cfg.hydra.sweep.dir).parts[0] == "multirun"
        assert Path(cfg.hydra.sweep.dir).name.startswith(f"{path.stem}_")
        wandb = cfg.logger.wandb
        assert wandb.group == cfg.run_group and wandb.tags == [path.stem] and wandb.name == cfg.run_name
        assert wandb.name.startswith(f"{path.stem}/{num}:")
        # The group is the sweep folder (its date and name), so a relaunch into the same folder keeps it.
        sweep_dir = Path(cfg.hydra.sweep.dir)
        assert wandb.group == f"{sweep_dir.parent.name}/{sweep_dir.name}"
        if training:
            assert cfg.ckpt_path == "last"  # a requeued job resumes; a fresh job folder starts from scratch


def test_architecture_jobs_build_the_two_models() -> None:
    concat = _compose("architecture", ["experiment=tiny", "pretrained_path=/m", "+arch=concat"])
    control = _compose("architecture", ["experiment=tiny", "pretrained_path=/m", "+arch=controlnet"])
    assert concat.model._target_.endswith("ConcatUNet") and "pretrained_path" not in concat.model
    assert control.model._target_.endswith("ControlNetUNet") and control.model.pretrained_path == "/m"


def test_slurm_launcher_ties_resources_to_the_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra.utils import instantiate
    from submitit.slurm.slurm import SlurmExecutor

    cfg = _compose("cue_modes", ["experiment=scratch_256", "hydra/launcher=slurm_ddp", "trainer.devices=4",
                                 "trainer.num_nodes=2", "data.num_workers=6", "hydra.launcher.partition=gpu",
                                 f"hydra.sweep.dir={tmp_path}"])
    node = cfg.hydra.launcher
    assert (node.nodes, node.tasks_per_node, node.gpus_per_node, node.cpus_per_task) == (2, 4, 4, 7)
    # Each of the 4 tasks: the training process and 6 workers, each with scratch_256's image cache, plus 16 GB.
    assert node.mem_gb == 4 * (7 * cfg.data.cache_max_gb + 16)
    launcher = instantiate(node)
    assert isinstance(launcher, sweep.SlurmLauncher)
    # What a multirun does with the node: Hydra builds plugins only from classes registered under hydra_plugins.
    from hydra.core.plugins import Plugins
    from hydra_plugins.dequant_sweep import register

    register()
    assert isinstance(Plugins.instance()._instantiate(node), sweep.SlurmLauncher)
    # No SLURM here: pretend srun exists so that submitit builds the real sbatch file.
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    text = launcher.make_executor()._executor._make_submission_file_text("python -m x", "0")
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--cpus-per-task=7", "--time=2880",
                 f"--mem={node.mem_gb}GB",
                 "--partition=gpu", "--signal=USR1@120", "--requeue", "--job-name=cue_modes"):
        assert f"#SBATCH {line}\n" in text, line
    assert f"{tmp_path}/.submitit/%j" in text


def test_slurm_training_jobs_resume_from_last() -> None:
    train_cfg = OmegaConf.create({"trainer": {}, "module": {}, "ckpt_path": None})
    assert sweep.resume_overrides(["cond=T"], train_cfg) == ["cond=T", "ckpt_path=last"]
    assert sweep.resume_overrides(["cond=T", "ckpt_path=/a.ckpt"], train_cfg) == ["cond=T", "ckpt_path=/a.ckpt"]
    assert sweep.resume_overrides(["x=1"], OmegaConf.create({"trainer": {}, "module": {}, "ckpt_path": "last"})) \
        == ["x=1"]
    assert sweep.resume_overrides(["matching=neg"], OmegaConf.create({"fabric": {}, "ckpt_path": "/c"})) \
        == ["matching=neg"]


def test_requeue_only_through_submitits_handler_and_only_on_the_time_limit_signal() -> None:
    from submitit.core.job_environment import JobEnvironment

    calls = []

    def checkpoint_and_try_requeue(signum: int, frame: Any) -> None:
        calls.append(signum)

    usr = JobEnvironment._usr_sig()
    previous = signal.signal(usr, checkpoint_and_try_requeue)
    try:
        assert not sweep.requeue_after_signal("SIGTERM")
        assert sweep.requeue_after_signal("SIGUSR1") and calls == [usr]
        signal.signal(usr, signal.SIG_DFL)
        assert not sweep.requeue_after_signal("SIGUSR1")
    finally:
        signal.signal(usr, previous)


def test_override_values_and_sweep_options() -> None:
    assert sweep.override_value("r") == "r" and sweep.override_value(None) == "null"
    assert sweep.override_value("/a b/c,d") == "'/a b/c,d'" and sweep.override_value(True) == "true"
    assert sweep.override_value([1, "x"]) == "[1,x]" and sweep.override_value("null") == "'null'"
    assert sweep.as_overrides({"tests": "rh", "data": {"max_images": 2}}) == ("tests=rh", "data.max_images=2")
    assert sweep.as_overrides(["tests=r"]) == ("tests=r",)
    with pytest.raises(ValueError, match="sweep.evaluate_overrides"):
        sweep.as_overrides(["tests"])
    train_cfg = OmegaConf.create({"trainer": {}, "module": {}, "sweep": {"name": "s", "evaluate": True}})
    assert sweep.sweep_options(train_cfg).evaluate
    with pytest.raises(ValueError, match="sweep: unknown keys"):
        sweep.sweep_options(OmegaConf.create({"sweep": {"name": "s", "evaluat": True}}))
    with pytest.raises(ValueError, match="sweep.evaluate"):
        sweep.sweep_options(OmegaConf.create({"fabric": {}, "sweep": {"name": "s", "evaluate": True}}))
    with pytest.raises(ValueError, match="sweep.continue_on_error"):
        sweep.sweep_options(OmegaConf.create({"sweep": {"name": "s", "continue_on_error": "yes"}}))


# ------------------------------------------------------------------------------------------------- the report


def _fake_job(folder: Path, overrides: list[str], record: dict[str, Any] | None, eval_rows: list[dict] | None,
              params: dict[str, str] | None = None) -> Path:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": {"params": params}}}))
    if record is not None:
        (folder / sweep.RECORD_FILE).write_text(json.dumps(record))
    if eval_rows:
        (folder / "eval").mkdir()
        with open(folder / "eval" / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(eval_rows[0]))
            writer.writeheader()
            writer.writerows(eval_rows)
    return folder


def test_report_one_row_per_job_with_swept_columns_metrics_and_errors(tmp_path: Path) -> None:
    rows = [{"test": "r", "setting": "N=64", "method": "model", "psnr_mean": 20.0, "psnr_sem": 1.0},
            {"test": "r", "setting": "N=4", "method": "model", "psnr_mean": 10.0, "psnr_sem": 1.0},
            {"test": "r", "setting": "N=4", "method": "bilateral", "psnr_mean": 99.0, "psnr_sem": 1.0}]
    params = {"cond": "T,G"}
    done = {"status": "completed", "train": {"metrics": {"val/loss": 0.5}}, "seconds": 3.0}
    for num in (10, 2):
        _fake_job(tmp_path / str(num), ["cond=T" if num == 2 else "cond=G", "seed=1"], done, rows, params)
    _fake_job(tmp_path / "3", ["cond=L", "seed=1"], {"status": "failed", "error": "ValueError: boom | x"}, None,
              params)
    table = sweep_report.build_table([tmp_path])
    assert [r["job"] for r in table.rows] == ["2", "3", "10"]
    assert table.columns[:3] == ["job", "status", "cond"] and "seed" not in table.columns  # seed never varies
    assert table.rows[0]["r/psnr"] == pytest.approx(15.0)  # the model's mean over the test's settings
    assert table.rows[0]["val/loss"] == 0.5 and "r/psnr" not in table.rows[1]
    assert table.rows[1]["status"] == "failed" and "error" in table.columns
    text = sweep_report.to_markdown(table)
    assert "ValueError: boom \\| x" in text and text.count("\n") == 2 + 3
    table = sweep_report.build_table([tmp_path], metrics=["r/psnr"], method="bilateral")
    assert table.rows[0]["r/psnr"] == 99.0 and "val/loss" not in table.columns
    assert sweep_report.main([str(tmp_path), "--metrics", "all"]) == 0
    with open(tmp_path / "sweep_report.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 3
    assert sweep_report.main([str(tmp_path / "nothing")]) == 2


def test_report_shows_every_setting_beside_the_input(tmp_path: Path) -> None:
    def rows(gain: float) -> list[dict[str, Any]]:
        out = []
        for test in ("r", "r_tex"):
            for n, base in ((64, 32.0), (16, 26.5), (4, 21.0)):
                for method, psnr in (("model", base + gain), ("input", base), ("bilateral", base - 1)):
                    out.append({"test": test, "setting": f"N={n}", "method": method, "psnr_mean": psnr,
                                "psnr_sem": 0.1, "speckle_mean": 1.0 + gain, "speckle_sem": 0.0})
        return out

    done = {"status": "completed", "train": {"metrics": {"val/loss": 0.5}}}
    for num, (cue, gain) in enumerate((("T", 1.0), ("G", -2.0))):
        _fake_job(tmp_path / str(num), [f"cond={cue}"], done, rows(gain), {"cond": "T,G"})
    _fake_job(tmp_path / "2", ["cond=L"], {"status": "failed", "error": "boom"}, None, {"cond": "T,G,L"})
    table = sweep_report.build_table([tmp_path])
    settings = table.settings
    assert settings.columns == ["test", "setting", "job", "cond", "psnr", "psnr sem", "psnr (input)", "speckle",
                                "speckle sem", "speckle (input)"]
    # Per setting, the jobs sit in adjacent rows (the failed job has none), each beside the input's value.
    assert [(r["test"], r["setting"], r["job"]) for r in settings.rows[:4]] == [
        ("r", "N=64", "0"), ("r", "N=64", "1"), ("r", "N=16", "0"), ("r", "N=16", "1")]
    assert len(settings.rows) == 2 * 3 * 2
    n4 = [r for r in settings.rows if r["test"] == "r_tex" and r["setting"] == "N=4"]
    assert [(r["cond"], r["psnr"], r["psnr (input)"]) for r in n4] == [("T", 22.0, 21.0), ("G", 19.0, 21.0)]
    text = sweep_report.report_markdown(table)
    assert text.startswith(sweep_report.to_markdown(table)) and "## Per setting" in text
    # The standard error over images stays beside the mean (the evaluation's sem column).
    assert "| r_tex | N=4 | 0 | T | 22 ± 0.1 | 21 | 2 ± 0 | 2 |" in text
    assert sweep_report.main([str(tmp_path)]) == 0
    with open(tmp_path / "sweep_report_settings.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 12
    assert "| r | N=16 | 1 | G | 24.5 ± 0.1 | 26.5 |" in (tmp_path / "sweep_report.md").read_text()
    # Naming metrics picks the tests and metrics of the per-setting table too.
    narrow = sweep_report.build_table([tmp_path], metrics=["r/psnr"]).settings
    assert narrow.columns[-3:] == ["psnr", "psnr sem", "psnr (input)"] and {r["test"] for r in narrow.rows} == {"r"}
    assert sweep_report.build_table([tmp_path], metrics=["val/loss"]).settings.rows == []


def test_report_reads_jobs_run_without_the_sweep_entry_point(tmp_path: Path) -> None:
    job = _fake_job(tmp_path / "0", ["lr=1"], None, None)
    (job / "csv").mkdir()
    (job / "csv" / "metrics.csv").write_text("epoch,step,val/loss,train/loss\n0,1,,2.0\n0,2,0.7,1.5\n")
    _fake_job(tmp_path / "1", ["lr=2"], None, None)
    table = sweep_report.build_table([tmp_path])
    assert table.rows[0]["status"] == "unrecorded" and table.rows[0]["val/loss"] == 0.7
    assert table.columns[2] == "lr"


def _seed_rows(gain: float, noise: float) -> list[dict[str, Any]]:
    """An evaluation table: r and r_tex at N=4, model and input, with standard errors."""
    return [{"test": test, "setting": "N=4", "method": method, "psnr_mean": value, "psnr_sem": 0.2}
            for test in ("r", "r_tex") for method, value in (("model", 21.0 + gain + noise), ("input", 21.0))]


def test_report_folds_repeats_into_mean_and_spread(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A 3-seed sweep over two cues: one row per cue with mean ± sd over the seeds, n, the standard error of the
    mean and the jobs' per-image standard error carried through; per setting too."""
    params = {"cond": "T,G", "seed": "0,1,2"}
    losses = {}
    for num, (cue, seed) in enumerate(itertools.product(("T", "G"), (0, 1, 2))):
        losses[(cue, seed)] = 0.5 + 0.1 * seed + (0.0 if cue == "T" else 1.0)
        record = {"status": "completed", "train": {"metrics": {"val/loss": losses[(cue, seed)]}},
                  "wandb": {"id": f"run{num}", "url": f"https://wandb.ai/me/dequant/runs/run{num}"},
                  "job_id": f"77_{num}"}
        _fake_job(tmp_path / str(num), [f"cond={cue}", f"seed={seed}"], record,
                  _seed_rows(1.0 if cue == "T" else -1.0, 0.3 * seed), params)
    table = sweep_report.build_table([tmp_path])
    assert table.repeat_keys == ["seed"] and len(table.rows) == 6
    assert table.rows[0]["wandb"] == "https://wandb.ai/me/dequant/runs/run0" and table.rows[0]["job_id"] == "77_0"
    folded = {r["cond"]: r for r in table.folded.rows}
    assert set(folded) == {"T", "G"} and folded["T"]["n"] == 3 and folded["T"]["seed"] == "0,1,2"
    values = [losses[("T", s)] for s in (0, 1, 2)]
    mean = sum(values) / 3
    sd = (sum((v - mean) ** 2 for v in values) / 2) ** 0.5
    assert folded["T"]["val/loss"] == pytest.approx(mean) and folded["T"]["val/loss sd"] == pytest.approx(sd)
    assert folded["T"]["val/loss sem"] == pytest.approx(sd / 3 ** 0.5) and folded["T"]["val/loss n"] == 3
    assert folded["T"]["r_tex/psnr"] == pytest.approx(22.3) and folded["G"]["r_tex/psnr"] == pytest.approx(20.3)
    settings = {(r["test"], r["cond"]): r for r in table.folded_settings.rows}
    row = settings[("r_tex", "T")]
    assert row["psnr"] == pytest.approx(22.3) and row["psnr sd"] == pytest.approx(0.3)
    assert row["psnr image sem"] == pytest.approx(0.2) and row["psnr (input)"] == pytest.approx(21.0)
    text = sweep_report.report_markdown(table)
    assert "## Repeats folded (seed)" in text and "## Per setting, repeats folded (seed)" in text
    assert f"| T | 3 | 3 completed | 0,1,2 | {mean:.4g} ± {sd:.2g} |" in text
    assert sweep_report.main([str(tmp_path)]) == 0
    assert (tmp_path / "sweep_report_folded.csv").is_file() and (tmp_path / "sweep_report_settings_folded.csv").is_file()
    with open(tmp_path / "sweep_report_folded.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["cond"] for r in rows] == ["T", "G"] and float(rows[1]["val/loss sd"]) == pytest.approx(sd)
    # Any key can be the repeat; none at all with an empty --repeat.
    assert sweep_report.build_table([tmp_path], repeat_keys=["cond"]).folded.rows[0]["n"] == 2
    assert sweep_report.build_table([tmp_path], repeat_keys=[]).folded is None
    capsys.readouterr()
    assert sweep_report.main([str(tmp_path), "--repeat"]) == 0 and "Repeats folded" not in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--repeat", "data.split_seed"], "repeat key 'data.split_seed' is set by no job; keys the jobs set: cond, seed"),
    (["--metrics", "r/psnrr"], "metrics: 'r/psnrr' names no evaluation metric ('psnrr'); metrics: l1, smape, psnr,"),
    (["--metrics", "val/los"], "metrics: no job has the metric 'val/los'; available: r/psnr, r_tex/psnr, val/loss"),
])
def test_report_options_naming_nothing_are_one_line_errors(args: list[str], message: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    done = {"status": "completed", "train": {"metrics": {"val/loss": 0.5}}}
    for num, seed in enumerate((0, 1)):
        _fake_job(tmp_path / str(num), ["cond=T", f"seed={seed}"], done, _seed_rows(0.0, 0.0),
                  {"seed": "0,1"})
    capsys.readouterr()
    assert sweep_report.main([str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"dequant-sweep-report: error: {message}")


def test_report_shows_a_job_whose_process_died_as_killed_with_its_last_log_lines(tmp_path: Path) -> None:
    from dequant.runlock import LOCK_NAME

    log = tmp_path / "submitit" / "9_0_log.err"
    log.parent.mkdir()
    log.write_text("step 100\n\nslurmstepd: error: Detected 1 oom-kill event(s)\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        for num, status in enumerate(("running", "running", "completed")):
            job = _fake_job(tmp_path / str(num), [f"cond={'TGL'[num]}"], {"status": status, "log_files": [str(log)]},
                            None, {"cond": "T,G,L"})
            pid = dead.pid if num == 0 else alive.pid  # job 1 is still held by a live process: still running
            (job / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": pid}))
        table = sweep_report.build_table([tmp_path])
    finally:
        alive.kill()
        alive.wait()
    assert [r["status"] for r in table.rows] == ["killed", "running", "completed"]
    assert table.rows[0]["log_tail"] == "step 100\nslurmstepd: error: Detected 1 oom-kill event(s)"
    assert "killed" in table.rows[0]["error"]
    text = sweep_report.report_markdown(table)
    assert "### job 0\n\n```\nstep 100\nslurmstepd: error: Detected 1 oom-kill event(s)\n```" in text


def test_sweep_tags_keep_the_command_lines_and_add_the_sweeps() -> None:
    options = sweep.SweepOptions(name="cue_modes")
    assert sweep._tags(options, {"cond": "T"}, ["mine", "cue_modes"]) == ["mine", "cue_modes", "cond=T"]
    assert sweep._tags(options, {"x": "y" * 80}) == ["cue_modes", "x=" + "y" * 62]


def test_continuing_an_optuna_study_reruns_what_a_dead_launcher_left_running() -> None:
    import optuna

    study = optuna.create_study(direction="minimize")
    for value in (0.3, 0.1):
        trial = study.ask()
        trial.suggest_float("lr", 1e-5, 1e-3, log=True)
        study.tell(trial, value)
    cut_off = study.ask()
    lr = cut_off.suggest_float("lr", 1e-5, 1e-3, log=True)
    to_run, next_job = sweep.continue_study(study, n_trials=5)
    assert (to_run, next_job) == (3, 3)  # 2 finished of 5; trial numbers 0-2 are taken, so jobs go on at 3
    states = [t.state for t in study.trials]
    assert states[2] == optuna.trial.TrialState.FAIL and states[3] == optuna.trial.TrialState.WAITING
    assert study.trials[3].params == {} and study.trials[3].system_attrs["fixed_params"] == {"lr": lr}
    assert sweep.optuna_storage("multirun/d/s", None) == "sqlite:///multirun/d/s/optuna.db"
    assert sweep.optuna_storage("multirun/d/s", "postgresql://db/x") == "postgresql://db/x"


# ----------------------------------------------------------------------------------------- real multiruns


def _multirun(name: str, args: list[str]) -> int:
    """`python -m dequant.sweep -m --config-dir sweeps --config-name <name> <args>` in this process; exit status."""
    from hydra.core.global_hydra import GlobalHydra

    argv = sys.argv
    sys.argv = ["dequant.sweep", "-m", "--config-dir", str(SWEEPS), "--config-name", name, *args]
    try:
        sweep.main()
        return 0
    except SystemExit as err:
        return int(err.code or 0)
    finally:
        from hydra.core.hydra_config import HydraConfig

        sys.argv = argv
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None  # the last job's; later tests compose their own


def _record(job: Path) -> dict[str, Any]:
    return json.loads((job / sweep.RECORD_FILE).read_text())


def _kill_when_running(job: Path, timeout_s: float = 240.0) -> threading.Thread:
    """A thread that SIGKILLs the process running `job` as soon as it holds the job folder (its run lock), as SLURM
    does to a job over its memory limit: no handler runs, nothing is recorded by the job itself."""
    from dequant.runlock import LOCK_NAME

    def kill() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                pid = json.loads((job / LOCK_NAME).read_text())["pid"]
                if (job / sweep.RECORD_FILE).is_file():
                    os.kill(pid, signal.SIGKILL)
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def test_a_report_metric_naming_nothing_stops_the_sweep_before_any_job(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    code = _multirun("cue_modes", [*TINY, "cond=T,G", "sweep.report_metrics=[r_tex/psnrr]",
                                   f"hydra.sweep.dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("dequant.sweep: error: sweep.report_metrics: 'r_tex/psnrr' names no evaluation metric")
    assert not list(tmp_path.glob("*/sweep_job.json"))  # no job ran


@pytest.mark.slow
def test_submitit_local_multirun_trains_evaluates_reports_and_survives_a_killed_job(tmp_path: Path) -> None:
    killer = _kill_when_running(tmp_path / "2")
    code = _multirun("cue_modes", [*TINY, "hydra/launcher=local", "cond=T,none,G", f"hydra.sweep.dir={tmp_path}",
                                   "+sweep.evaluate_overrides.data.max_images=1",
                                   "+sweep.evaluate_overrides.baselines=none"])
    killer.join(timeout=5)
    assert code == 1  # the killed job is not hidden: fail_at_end, after the report
    assert list((tmp_path / ".submitit").glob("*/*_result.pkl"))  # ran through submitit
    groups = set()
    for num, mode in enumerate(("T", "none")):
        job = tmp_path / str(num)
        record = _record(job)
        assert record["status"] == "completed" and record["swept"] == {"cond": mode}
        assert record["job_id"] and record["log_files"]  # submitit's job id and log files
        resolved = OmegaConf.load(job / "config.yaml")  # the resolved config of the job
        assert resolved.cond.mode == mode and resolved.run_tags == ["cue_modes", f"cond={mode}"]
        groups.add(resolved.run_group)
        assert (job / "eval" / "metrics.csv").is_file()
    assert len(groups) == 1  # one sweep = one W&B group
    # Job 2 died by SIGKILL mid-run: recorded as killed (by the launcher, from submitit's own files) with the last
    # lines of its log, and the report was written all the same.
    killed = _record(tmp_path / "2")
    assert killed["status"] == "killed" and "UncompletedJobError" in killed["error"] and killed["log_tail"]
    with open(tmp_path / "sweep_report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["cond"], r["status"]) for r in rows] == [("T", "completed"), ("none", "completed"), ("G", "killed")]
    assert float(rows[0]["r_tex/psnr"]) > 0 and rows[1]["r_tex/psnr"] == ""  # cue "none": no texture variant
    assert rows[0]["job_id"] and rows[2]["log_tail"]
    report = (tmp_path / "sweep_report.md").read_text()
    assert "| 2 | killed | G |" in report and "## Killed jobs" in report and "### job 2" in report
    # Rebuilt later without the launcher's word (its record still says running): the dead lock holder tells.
    (tmp_path / "2" / sweep.RECORD_FILE).write_text(json.dumps({**killed, "status": "running", "log_tail": None}))
    table = sweep_report.build_table([tmp_path])
    assert [r["status"] for r in table.rows] == ["completed", "completed", "killed"]
    assert table.rows[2]["log_tail"]  # read from submitit's log files named in the record


@pytest.mark.slow
def test_a_wandb_training_sweep_is_one_group_of_comparable_runs(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Two jobs of the palette_sizes sweep, logger=wandb offline, each trained (one validation) and evaluated (r on
    one photo, with the input baseline), read back from their W&B record logs."""
    from wandb_records import segments

    for var, value in (("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"),
                       ("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config")),
                       ("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))):
        monkeypatch.setenv(var, value)
    sweep_dir = tmp_path / "multirun" / "2026-01-02" / "palette_sizes_10-11-12"
    code = _multirun("palette_sizes", [
        *TINY, "palette=fixed_4,fixed_16", "logger=wandb", "trainer.val_check_interval=2", "run_tags=[mine]",
        "data.val_fixed.images=1", "sweep.evaluate_overrides.tests=r", "+sweep.evaluate_overrides.data.max_images=1",
        "+sweep.evaluate_overrides.baselines=restoration", "+sweep.evaluate_overrides.post_L=false",
        "sweep.report_metrics=[val/r_tex/N4/psnr,eval/r_tex/N4/psnr,eval/r_tex/N4/psnr_gain]",
        f"hydra.sweep.dir={sweep_dir}"])
    assert code == 0
    import wandb

    assert wandb.run is None
    groups, names = set(), set()
    for num, palette in enumerate(("fixed_4", "fixed_16")):
        job = sweep_dir / str(num)
        record = _record(job)
        # Training, then the evaluation in the same W&B run (still open in the job's process).
        (train_run,) = segments(job)
        assert train_run.run.run_id == record["wandb"]["id"] == record["wandb_id"]
        assert train_run.exit_code == 0 and record["wandb"]["offline"] and record["wandb"]["url"] is None
        groups.add(train_run.run.run_group)
        names.add(train_run.run.display_name)
        assert list(train_run.run.tags) == ["mine", "palette_sizes", f"palette={palette}"]
        # The group choices in the logged config (W&B groups and filters runs by them).
        assert train_run.config["choices"]["palette"] == palette and train_run.config["choices"]["cond"] == "T"
        # Per-N validation keys in the history, best-so-far values in the summary.
        history = train_run.history_keys()
        assert {f"val/{t}/N{n}/psnr" for t in ("r", "r_tex") for n in (4, 16, 64)} <= history
        assert {"val/p/mean/palette_de2000", "val/r_tex/N4/psnr_gain", "val/r/N4/psnr_input"} <= history
        assert train_run.summary["val/r_tex/N4/psnr_best"] == train_run.summary["val/r_tex/N4/psnr"]
        # Per-setting evaluation numbers in the summary: the same as sweep_job.json and metrics.csv.
        summary = record["evaluate"]["summary"]
        for key in ("eval/r_tex/N4/psnr", "eval/r_tex/N4/psnr_input", "eval/r_tex/N4/psnr_gain", "eval/r/N64/ssim",
                    "eval/r/N16/palette_de2000_gain", "eval/r/N4/bilateral/psnr", "eval/r_tex/psnr"):
            assert train_run.summary[key] == pytest.approx(summary[key], rel=1e-12), key
        rows = {(r["test"], r["setting"], r["method"]): r for r in sweep_report.read_metrics_csv(
            job / "eval" / "metrics.csv")}
        assert summary["eval/r_tex/N4/psnr"] == pytest.approx(rows[("r_tex", "N=4", "model")]["psnr_mean"])
        assert summary["eval/r_tex/N4/psnr_input"] == pytest.approx(rows[("r_tex", "N=4", "input")]["psnr_mean"])
    assert groups == {"2026-01-02/palette_sizes_10-11-12"} and len(names) == 2
    with open(sweep_dir / "sweep_report.csv", newline="") as f:
        report = list(csv.DictReader(f))
    assert [r["palette"] for r in report] == ["fixed_4", "fixed_16"] and all(r["wandb"] for r in report)
    for row, num in zip(report, (0, 1)):
        summary = _record(sweep_dir / str(num))["evaluate"]["summary"]
        assert float(row["eval/r_tex/N4/psnr_gain"]) == pytest.approx(summary["eval/r_tex/N4/psnr_gain"])
        assert float(row["val/r_tex/N4/psnr"]) > 0
    wandb.teardown()


@pytest.mark.slow
def test_optuna_sweep_runs_two_trials_and_a_relaunch_continues_the_study(tmp_path: Path) -> None:
    code = _multirun("optuna_lr_ema", [*TINY, "hydra.sweeper.n_trials=2", "optimized_metric=train/loss",
                                       f"hydra.sweep.dir={tmp_path}"])
    assert code == 0
    assert (tmp_path / "optuna.db").is_file()  # the study lives in the sweep folder, not only in the launcher
    values = [_record(tmp_path / str(n))["value"] for n in range(2)]
    assert all(isinstance(v, float) for v in values)
    lrs = [float(_record(tmp_path / str(n))["swept"]["module.lr"]) for n in range(2)]
    assert all(1e-5 <= lr <= 1e-3 for lr in lrs) and lrs[0] != lrs[1]
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(values))
    table = sweep_report.build_table([tmp_path])
    assert len(table.rows) == 2 and {"module.lr", "module.ema_decay", "train/loss"} <= set(table.columns)
    # Relaunched into the same folder with a larger budget: the study goes on with one new trial in a new folder.
    mtimes = [(tmp_path / str(n) / sweep.RECORD_FILE).stat().st_mtime_ns for n in range(2)]
    code = _multirun("optuna_lr_ema", [*TINY, "hydra.sweeper.n_trials=3", "optimized_metric=train/loss",
                                       f"hydra.sweep.dir={tmp_path}"])
    assert code == 0
    assert [(tmp_path / str(n) / sweep.RECORD_FILE).stat().st_mtime_ns for n in range(2)] == mtimes
    assert _record(tmp_path / "2")["status"] == "completed" and not (tmp_path / "3").exists()
    import optuna

    study = optuna.load_study(study_name="optuna_lr_ema", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert study.trials[2].value == pytest.approx(_record(tmp_path / "2")["value"])


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_next_and_leaves_no_wandb_run(tmp_path: Path, wandb_offline) -> None:
    # Job 0 fails inside fit, after its W&B run started (a 33 px crop does not fit the UNet's skips); job 1 works.
    code = _multirun("cue_modes", [*TINY, "cond=T", "data.example.crop_size=33,32", "sweep.evaluate=false",
                                   "logger=wandb", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert code == 1  # sweep.fail_at_end: the failure is not hidden
    failed, done = _record(tmp_path / "sweep" / "0"), _record(tmp_path / "sweep" / "1")
    assert failed["status"] == "failed" and failed["stage"] == "train" and "RuntimeError" in failed["error"]
    assert "Traceback" in failed["traceback"]
    assert done["status"] == "completed" and (tmp_path / "sweep" / "1" / "checkpoints" / "last.ckpt").is_file()
    assert failed["wandb_id"] and done["wandb_id"] and failed["wandb_id"] != done["wandb_id"]
    assert (tmp_path / "sweep" / "1" / "wandb_run_id.txt").read_text() == done["wandb_id"]
    assert wandb_offline.run is None  # the failed job's run was finished, not inherited by the next job
    report = (tmp_path / "sweep" / "sweep_report.md").read_text()
    assert "| 0 | failed | T | 33 |" in report and "| 1 | completed | T | 32 |" in report
