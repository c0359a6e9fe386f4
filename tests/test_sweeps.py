"""Sweeps (sweeps/*.yaml), the sweep job entry point (dequant.sweep), the SLURM launcher and the sweep report.

The multiruns run in this process (Hydra's app through `dequant.sweep.main` with a patched argv) on the tiny model;
the submitit_local one starts one process per job, as on a cluster.
"""

from __future__ import annotations

import csv
import itertools
import json
import signal
import sys
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
    assert (node.nodes, node.tasks_per_node, node.gpus_per_node, node.cpus_per_task) == (2, 4, 4, 6)
    launcher = instantiate(node)
    assert isinstance(launcher, sweep.SlurmLauncher)
    # No SLURM here: pretend srun exists so that submitit builds the real sbatch file.
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    text = launcher.make_executor()._executor._make_submission_file_text("python -m x", "0")
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--cpus-per-task=6", "--time=2880",
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


@pytest.mark.slow
def test_submitit_local_multirun_trains_evaluates_and_reports(tmp_path: Path) -> None:
    code = _multirun("cue_modes", [*TINY, "hydra/launcher=local", "cond=T,none", f"hydra.sweep.dir={tmp_path}",
                                   "+sweep.evaluate_overrides.data.max_images=1",
                                   "+sweep.evaluate_overrides.baselines=none"])
    assert code == 0
    assert list((tmp_path / ".submitit").glob("*/*_result.pkl"))  # ran through submitit
    groups = set()
    for num, mode in enumerate(("T", "none")):
        job = tmp_path / str(num)
        assert _record(job)["status"] == "completed" and _record(job)["swept"] == {"cond": mode}
        resolved = OmegaConf.load(job / "config.yaml")  # the resolved config of the job
        assert resolved.cond.mode == mode and resolved.run_tags == ["cue_modes", f"cond={mode}"]
        groups.add(resolved.run_group)
        assert (job / "eval" / "metrics.csv").is_file()
    assert len(groups) == 1  # one sweep = one W&B group
    with open(tmp_path / "sweep_report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["cond"] for r in rows] == ["T", "none"] and all(r["status"] == "completed" for r in rows)
    assert float(rows[0]["r_tex/psnr"]) > 0 and rows[1]["r_tex/psnr"] == ""  # cue "none": no texture variant
    table = sweep_report.build_table([tmp_path])
    assert len(table.rows) == 2


@pytest.mark.slow
def test_optuna_sweep_runs_two_trials(tmp_path: Path) -> None:
    code = _multirun("optuna_lr_ema", [*TINY, "hydra.sweeper.n_trials=2", "optimized_metric=train/loss",
                                       f"hydra.sweep.dir={tmp_path}"])
    assert code == 0
    values = [_record(tmp_path / str(n))["value"] for n in range(2)]
    assert all(isinstance(v, float) for v in values)
    lrs = [float(_record(tmp_path / str(n))["swept"]["module.lr"]) for n in range(2)]
    assert all(1e-5 <= lr <= 1e-3 for lr in lrs) and lrs[0] != lrs[1]
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(values))
    table = sweep_report.build_table([tmp_path])
    assert len(table.rows) == 2 and {"module.lr", "module.ema_decay", "train/loss"} <= set(table.columns)


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_next_and_leaves_no_wandb_run(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in (("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"), ("WANDB_DIR", str(tmp_path)),
                       ("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config")),
                       ("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))):
        monkeypatch.setenv(var, value)
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
    import wandb

    assert wandb.run is None  # the failed job's run was finished, not inherited by the next job
    report = (tmp_path / "sweep" / "sweep_report.md").read_text()
    assert "| 0 | failed | T | 33 |" in report and "| 1 | completed | T | 32 |" in report
    wandb.teardown()
