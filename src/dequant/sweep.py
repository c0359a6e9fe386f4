"""Sweep jobs: `python -m dequant.sweep -m --config-dir sweeps --config-name <sweep> [overrides]` (see sweeps/).

Each job of a Hydra multirun, in its own folder (`multirun/<date>/<sweep>_<time>/<job number>`):
1. trains (training configs, `conf/train.yaml`), then, with `sweep.evaluate=true`, evaluates its own last
   checkpoint with `conf/evaluate.yaml` plus `sweep.evaluate_overrides` into `<job>/eval/` (into the same W&B run);
   evaluation configs (`defaults: [evaluate, ...]`, e.g. sweeps/matching_cost.yaml) only evaluate;
2. writes `sweep_job.json`: status (running, completed, failed, preempted, interrupted), the swept overrides,
   training metrics, where the evaluation table is, the W&B run id, the error and traceback of a failure;
3. with `sweep.continue_on_error=true` (the default) a failure is recorded and the multirun goes on with the next job;
   `SweepReportCallback` (hydra.callbacks in sweeps/_common.yaml) then writes `sweep_report.md/.csv` into the sweep
   folder, prints it and, with `sweep.fail_at_end=true`, ends the multirun with an error naming the failed jobs.
A W&B run left open by a job (failed or not) is always finished before the next job starts.

`SlurmLauncher` is hydra-submitit's SLURM launcher, plus resuming: training jobs run with `ckpt_path=last` in their
own folder, so a job that SLURM requeues (preemption, or submitit's requeue after the time-limit signal, see
`requeue_after_signal`) continues from its last checkpoint into the same W&B run (the id file in the run folder).
It and `LocalLauncher` (hydra/launcher=local) also survive jobs that end without a result (killed by SLURM, out of
memory, node lost, SIGKILL): the job is recorded as `killed` in its sweep_job.json with submitit's message and the
last lines of its log, the multirun goes on, and the report is written (then the multirun exits 1 naming it).

`optuna_sweep` (behind `hydra_plugins.dequant_sweep.OptunaSweeper`) is hydra-optuna-sweeper's sweep, plus a study that
survives the launching process: its storage defaults to
an SQLite file in the sweep folder (`optuna.db`, sweeps/optuna_lr_ema.yaml), and relaunching the sweep into the same
folder (`hydra.sweep.dir=...`) continues the study: trials already finished count toward `n_trials`, trials the dead
launcher left running are marked failed and asked again with the same parameters, and new trials take new job
folders (job number = trial number).

The report (`SweepReportCallback`, `dequant.sweep_report`) is rewritten after every job ends and at the end of the
multirun, so it exists however the multirun ends.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback as HydraCallback
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher as _SubmititLocalLauncher
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurmLauncher
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from dequant.config import conf_dir, sweeps_dir
from dequant.runlock import RunLock

log = logging.getLogger(__name__)

RECORD_FILE = "sweep_job.json"
EVAL_DIR = "eval"
# sweep_job.json statuses: running (or killed outright), completed, failed, preempted (stopped on a signal, to be
# resumed), interrupted (KeyboardInterrupt / SystemExit).
# The signal SLURM sends before the time limit (conf/hydra/launcher/slurm.yaml: --signal=USR1@signal_delay_s); the
# preemption callback (conf/callbacks/default.yaml) saves last.ckpt and stops training on it.
REQUEUE_SIGNAL = "SIGUSR1"
# Statuses the end-of-sweep check accepts ("unrecorded": a job run without dequant.sweep, e.g. by train.py -m).
OK_STATUSES = ("completed", "unrecorded")
# W&B rejects tags longer than 64 characters.
_TAG_MAX = 64
_PLAIN_VALUE = re.compile(r"[\w.\-+/:@%]*")


@dataclass(frozen=True)
class SweepOptions:
    """The `sweep` node of a job's config (all keys optional)."""

    name: str
    evaluate: bool = False
    evaluate_overrides: tuple[str, ...] = ()
    continue_on_error: bool = True
    fail_at_end: bool = True
    report_metrics: tuple[str, ...] = ()
    repeat_keys: tuple[str, ...] | None = None


def is_training_config(cfg: DictConfig) -> bool:
    """True for a `conf/train.yaml` composition (it has a trainer), False for `conf/evaluate.yaml`."""
    return "trainer" in cfg and "module" in cfg


def override_value(value: Any) -> str:
    """A config value written as a Hydra override value (quoted when the grammar needs it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple, ListConfig)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, (dict, DictConfig)):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _PLAIN_VALUE.fullmatch(text) and text not in ("null", "true", "false"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"data": {"max_images": 2}}` -> `{"data.max_images": 2}` (what `+sweep.evaluate_overrides.data.x=..` makes)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def as_overrides(node: Any, name: str = "sweep.evaluate_overrides") -> tuple[str, ...]:
    """Override strings from a mapping `{key: value}` or a list of `key=value` strings."""
    if node is None:
        return ()
    if isinstance(node, (Mapping, DictConfig)):
        items = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
        return tuple(f"{k}={override_value(v)}" for k, v in _flatten(items).items())
    if isinstance(node, (list, tuple, ListConfig)):
        out = tuple(str(v) for v in node)
        bad = [o for o in out if "=" not in o]
        if bad:
            raise ValueError(f"{name}: every override must read key=value, got {bad}")
        return out
    raise ValueError(f"{name} must be a mapping or a list of key=value strings, got {type(node).__name__}")


def sweep_options(cfg: DictConfig) -> SweepOptions:
    """Read and check the job's `sweep` node; a config without one gets the defaults."""
    node = cfg.get("sweep") or {}
    unknown = sorted(set(node) - {f for f in SweepOptions.__dataclass_fields__})
    if unknown:
        raise ValueError(f"sweep: unknown keys {unknown} (known: {list(SweepOptions.__dataclass_fields__)})")
    for key in ("evaluate", "continue_on_error", "fail_at_end"):
        if not isinstance(node.get(key, False), bool):
            raise ValueError(f"sweep.{key} must be true or false, got {node.get(key)!r}")
    name = node.get("name") or (HydraConfig.get().job.config_name if HydraConfig.initialized() else "sweep")
    evaluate = bool(node.get("evaluate", False))
    if evaluate and not is_training_config(cfg):
        raise ValueError("sweep.evaluate: only a training sweep can evaluate after training; an evaluation "
                         "config (defaults: [evaluate, ...]) evaluates anyway")
    metrics = node.get("report_metrics") or ()
    from dequant.sweep_report import check_metric_names

    check_metric_names([str(m) for m in metrics], "sweep.report_metrics")
    repeats = node.get("repeat_keys")
    return SweepOptions(name=str(name), evaluate=evaluate,
                        evaluate_overrides=as_overrides(node.get("evaluate_overrides")),
                        continue_on_error=bool(node.get("continue_on_error", True)),
                        fail_at_end=bool(node.get("fail_at_end", True)),
                        report_metrics=tuple(str(m) for m in metrics),
                        repeat_keys=None if repeats is None else tuple(str(k) for k in repeats))


def swept_overrides(hydra_cfg: Any) -> dict[str, str]:
    """`{key: value}` of this job's overrides whose key the sweep varies (see `sweep_report.swept_keys`)."""
    from dequant.sweep_report import parse_overrides, swept_keys

    multirun = Path(str(hydra_cfg.sweep.dir)) / "multirun.yaml"
    loaded = OmegaConf.to_container(OmegaConf.load(multirun)) if multirun.is_file() else None
    keys = swept_keys(OmegaConf.to_container(hydra_cfg.sweeper), loaded)
    overrides = parse_overrides(hydra_cfg.overrides.task)
    return {k: overrides[k] for k in keys if k in overrides}


def _tags(options: SweepOptions, swept: Mapping[str, str], given: Sequence[str] = ()) -> list[str]:
    """The tags given on the command line (or by the sweep file), then the sweep's name and swept values, each once."""
    ours = (options.name, *(f"{k}={v}" for k, v in swept.items()))
    return list(dict.fromkeys(str(t)[:_TAG_MAX] for t in (*given, *ours)))


def finish_wandb(exit_code: int) -> bool:
    """Finish the W&B run this process has open (if wandb was ever imported); True if one was finished."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is None:
        return False
    wandb.finish(exit_code=exit_code)
    return True


def wandb_details(run_dir: Path) -> dict[str, Any] | None:
    """The job's W&B run: id, project, entity, link (None offline until synced), mode; None without W&B."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    run_id = remember_wandb_run(run_dir)
    if run_id is None:
        return None
    if run is None:
        return {"id": run_id}
    offline = bool(getattr(run.settings, "_offline", False)) or getattr(run.settings, "mode", "") == "offline"
    try:
        url = None if offline else run.url
    except Exception:  # noqa: BLE001 - the link is a convenience
        url = None
    return {"id": run_id, "project": getattr(run, "project", None), "entity": getattr(run, "entity", None),
            "url": url, "offline": offline}


def remember_wandb_run(run_dir: Path) -> str | None:
    """The job's W&B run id, kept in `<run_dir>/wandb_run_id.txt` (what a resumed run reuses); None without W&B.

    training.py writes the file when it starts the run, and finishes the run itself when training fails: then the
    file is the only record left.
    """
    from dequant.training import WANDB_ID_FILE

    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    path = run_dir / WANDB_ID_FILE
    if run is None:
        return path.read_text().strip() or None if path.is_file() else None
    if not path.is_file() or path.read_text().strip() != run.id:
        path.write_text(run.id)
    return str(run.id)


def compose_evaluate(overrides: Sequence[str]) -> DictConfig:
    """`conf/evaluate.yaml` composed with `overrides`, inside a running Hydra job or outside one."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        # Inside the multirun (basic launcher, or a submitit worker that restored Hydra's state): conf/ is on
        # the search path already.
        return compose("evaluate", overrides=list(overrides))
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return compose("evaluate", overrides=list(overrides))


def _wandb_node(train_cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """The training job's W&B logger node, pinned to its run id, so that evaluation logs into the same run."""
    from dequant.training import WANDB_ID_FILE

    node = (train_cfg.get("logger") or {}).get("wandb")
    id_file = run_dir / WANDB_ID_FILE
    if node is None or not id_file.is_file():
        return None
    plain = OmegaConf.to_container(node, resolve=True)
    plain["id"] = id_file.read_text().strip()
    return plain


def evaluate_checkpoint(train_cfg: DictConfig, options: SweepOptions, ckpt: str, run_dir: Path) -> dict[str, Any]:
    """Evaluate a training job's checkpoint into `<run_dir>/eval` (conf/evaluate.yaml + the sweep's overrides)."""
    from dequant.evaluation.runner import evaluate

    out_dir = run_dir / EVAL_DIR
    eval_cfg = compose_evaluate([f"ckpt_path={override_value(ckpt)}", f"paths.run_dir={override_value(str(out_dir))}",
                                 *options.evaluate_overrides])
    wandb_node = _wandb_node(train_cfg, run_dir)
    if wandb_node is not None:
        with open_dict(eval_cfg):
            eval_cfg.logger = {"wandb": wandb_node}
    out_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(eval_cfg, out_dir / "config.yaml", resolve=True)
    result = evaluate(eval_cfg)
    return {"run_dir": str(out_dir), "metrics_csv": result.get("metrics_csv"), "summary": result.get("summary"),
            "stopped_by_signal": result.get("stopped_by_signal")}


def _rank() -> int:
    """Global rank of this process (Lightning's, else SLURM's / torchrun's), 0 when alone."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    rank = getattr(rank_zero_only, "rank", None)
    if rank is not None:
        return int(rank)
    return int(os.environ.get("SLURM_PROCID", os.environ.get("RANK", 0)))


def _lookup(metric: str, record: Mapping[str, Any]) -> float:
    """A metric value by name: a training metric (`val/loss`) or an evaluation summary (`r_tex/psnr`)."""
    from dequant.sweep_report import eval_summary, read_metrics_csv

    found = dict((record.get("train") or {}).get("metrics") or {})
    csv_path = (record.get("evaluate") or {}).get("metrics_csv")
    if csv_path and Path(csv_path).is_file():
        found.update(eval_summary(read_metrics_csv(Path(csv_path))))
    if metric not in found:
        raise ValueError(f"optimized_metric: {metric!r} is not among this job's metrics {sorted(found)}")
    return float(found[metric])


def _write_record(record: Mapping[str, Any], run_dir: Path) -> Path:
    from dequant.atomic import write_text

    return write_text(run_dir / RECORD_FILE, json.dumps(record, indent=2, default=str) + "\n")


def _run_stages(cfg: DictConfig, options: SweepOptions, record: dict[str, Any], run_dir: Path) -> None:
    """Train (and maybe evaluate), or evaluate; fills `record` in place (status completed or preempted)."""
    from dequant.evaluation.runner import evaluate
    from dequant.training import train

    if not is_training_config(cfg):
        record["stage"] = "evaluate"
        result = evaluate(cfg)
        record["evaluate"] = {"run_dir": str(run_dir), "metrics_csv": result.get("metrics_csv"),
                              "summary": result.get("summary")}
        if _preempted(record, result.get("stopped_by_signal"), "evaluation"):
            return
    else:
        record["stage"] = "train"
        try:
            result = train(cfg)
        finally:
            if _rank() == 0:
                record["wandb"] = wandb_details(run_dir)
                record["wandb_id"] = (record["wandb"] or {}).get("id")
        record["train"] = {k: result.get(k) for k in ("run_dir", "last_checkpoint", "global_step", "metrics",
                                                      "resumed_from")}
        # The preemption callback saved last.ckpt and stopped cleanly: the rerun resumes, then evaluates.
        if _preempted(record, result.get("stopped_by_signal"), f"training at step {result.get('global_step')}"):
            return
        if options.evaluate and _rank() == 0:
            if not result.get("last_checkpoint"):
                raise ValueError("sweep.evaluate: training wrote no checkpoints/last.ckpt to evaluate "
                                 "(callbacks.model_checkpoint.save_last must be true)")
            record["stage"] = "evaluate"
            record["evaluate"] = evaluate_checkpoint(cfg, options, result["last_checkpoint"], run_dir)
            if _preempted(record, record["evaluate"].pop("stopped_by_signal", None), "evaluation"):
                return
    metric = cfg.get("optimized_metric")
    if metric and _rank() == 0:
        record["value"] = _lookup(str(metric), record)
    record["status"] = "completed"


def _preempted(record: dict[str, Any], signal_name: str | None, what: str) -> bool:
    """Mark the record preempted (not failed) when a stage stopped on a signal; the requeued rerun redoes it."""
    if not signal_name:
        return False
    record.update(status="preempted", stopped_by=str(signal_name), error=f"{what} stopped by {signal_name}")
    return True


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Run one sweep job (train, then maybe evaluate; or evaluate) and return its record (also in sweep_job.json).

    A failure is recorded; it is re-raised unless `sweep.continue_on_error` is true. Whatever happens, a W&B run the
    job opened is finished (exit code 1 for a failure) before this returns or raises.
    """
    options = sweep_options(cfg)
    run_dir = Path(str(cfg.paths.run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    # One run per folder: a job whose folder a live run holds refuses before it writes its record.
    lock = RunLock(run_dir).acquire() if _rank() == 0 else None
    try:
        return _run_job(cfg, options, run_dir)
    finally:
        if lock is not None:
            lock.release()


def launcher_details() -> dict[str, Any]:
    """Where the job runs: the launcher's job id (submitit: the SLURM job id, `<array>_<task>` for arrays), SLURM's
    own id and restart count, and submitit's log files (what the report shows of a job that was killed)."""
    details: dict[str, Any] = {
        "job_id": None,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_restarts": int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0),
        "log_files": [],
    }
    try:
        from submitit import JobEnvironment

        env = JobEnvironment()
        paths = env.paths
        details["job_id"] = str(env.job_id)
        details["log_files"] = [str(paths.stderr), str(paths.stdout)]
    except Exception:  # noqa: BLE001 - not a submitit job (Hydra's basic launcher: no job id worth showing)
        pass
    return details


def _run_job(cfg: DictConfig, options: SweepOptions, run_dir: Path) -> dict[str, Any]:
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    swept = swept_overrides(hydra_cfg) if hydra_cfg is not None else {}
    record: dict[str, Any] = {
        "sweep": options.name, "job": run_dir.name, "status": "running", "swept": swept,
        "overrides": list(hydra_cfg.overrides.task) if hydra_cfg is not None else [],
        "stage": None, "train": None, "evaluate": None, "value": None, "error": None, "traceback": None,
        **launcher_details(),
    }
    if "run_tags" in cfg:
        with open_dict(cfg):
            cfg.run_tags = _tags(options, swept, [str(t) for t in (cfg.run_tags or [])])
    rank0 = _rank() == 0
    if rank0:
        # A job killed outright (OOM, SIGKILL) keeps this "running" record: the report shows it.
        _write_record(record, run_dir)
    start = time.monotonic()
    try:
        _run_stages(cfg, options, record, run_dir)
    except Exception as err:
        record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        log.error("sweep job %s failed in stage %s: %s", run_dir, record["stage"], record["error"])
        if not options.continue_on_error:
            raise
    except BaseException as err:  # KeyboardInterrupt, SystemExit: record, clean up, and let it stop the sweep
        record.update(status="interrupted", error=f"{type(err).__name__}: {err}")
        raise
    finally:
        record["seconds"] = round(time.monotonic() - start, 1)
        from dequant.wandb_run import preempted_exit_code

        # W&B reads a non-zero exit after the preemption mark as preempted (zero would read as finished).
        exit_code = {"completed": 0, "preempted": preempted_exit_code(record.get("stopped_by"))}.get(
            record["status"], 1)
        if finish_wandb(exit_code):
            log.info("finished the W&B run of %s (exit code %d)", run_dir, exit_code)
        if rank0:
            _write_record(record, run_dir)
    if record["status"] == "preempted":
        requeue_after_signal(record["stopped_by"])
    return record


def task(cfg: DictConfig) -> float | None:
    """The Hydra task function: run the job; return the optimized metric (NaN for a failed job) for sweepers."""
    record = run_job(cfg)
    if not cfg.get("optimized_metric"):
        return None
    # optuna marks a trial that returns NaN as failed and goes on with the study.
    return math.nan if record["value"] is None else float(record["value"])


def main() -> None:
    """Console entry point (`dequant-sweep`, `python -m dequant.sweep`): a Hydra app over conf/ plus the sweep files
    (the package's own unless `--config-dir` names another folder)."""
    import hydra

    from hydra_plugins.dequant_sweep import register

    register()  # the launchers and sweeper below, as Hydra plugins (see hydra_plugins/dequant_sweep)
    if not any(arg in ("--config-dir", "-cd") or arg.startswith("--config-dir=") for arg in sys.argv[1:]):
        sys.argv[1:1] = ["--config-dir", sweeps_dir()]
    hydra.main(version_base="1.3", config_path=conf_dir(), config_name="train")(task)()


class SweepReportCallback(HydraCallback):
    """Hydra callback: write the sweep report after every job and at the end of a multirun; then fail if a job
    failed or was killed (`fail_at_end`)."""

    def __init__(self, fail_at_end: bool = True, metrics: Sequence[str] | None = None,
                 repeat_keys: Sequence[str] | None = None) -> None:
        self.fail_at_end = bool(fail_at_end)
        self.metrics = [str(m) for m in metrics] if metrics else None
        self.repeat_keys = [str(k) for k in repeat_keys] if repeat_keys is not None else None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Refuse metric names that cannot name a result before any job runs (exit code 2, one line)."""
        from dequant.sweep_report import check_metric_names

        try:
            check_metric_names(self.metrics or (), "sweep.report_metrics")
        except ValueError as err:
            print(f"dequant.sweep: error: {err}", file=sys.stderr, flush=True)
            # Hydra turns a callback's exceptions into warnings; SystemExit stops the multirun.
            raise SystemExit(2) from err

    def _write(self, sweep_dir: Path, final: bool) -> Any:
        """Build and write the report; bad report options (a metric no job has, a repeat key no job sets) still
        write it, without them, before the error is raised."""
        from dequant.sweep_report import build_table, write_report

        try:
            table = build_table([sweep_dir], metrics=self.metrics, repeat_keys=self.repeat_keys, check_names=final)
        except ValueError:
            table = build_table([sweep_dir], repeat_keys=[])
            write_report(table, sweep_dir)
            raise
        return table, write_report(table, sweep_dir)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        """Rewrite the report with this job's result (rank 0 of the job), so a report exists however the multirun
        ends; a problem here never fails the job."""
        if _rank() != 0 or "sweep" not in config.hydra:
            return
        try:
            self._write(Path(str(config.hydra.sweep.dir)), final=False)
        except Exception as err:  # noqa: BLE001 - the job's own result is what counts here
            log.warning("could not update the sweep report after this job: %s", err)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Collect every job of the sweep folder into sweep_report.md / .csv."""
        from dequant.sweep_report import report_markdown

        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            table, (md_path, csv_path) = self._write(sweep_dir, final=True)
        except ValueError as err:
            # The report was written without what the error names (see _write).
            message = f"sweep report: {' '.join(str(err).split())}"
            log.error(message)
            print(f"dequant.sweep: error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(1) from err
        print(f"\nSweep report ({sweep_dir}):\n\n{report_markdown(table)}\nwritten to {md_path} and {csv_path}",
              flush=True)
        preempted = [row["job"] for row in table.rows if row.get("status") == "preempted"]
        if preempted:
            # Stopped cleanly on a signal with their checkpoint saved: not failures; the same command resumes them.
            log.warning("%d sweep jobs were preempted: %s; rerun the same command with hydra.sweep.dir=%s to "
                        "resume them", len(preempted), preempted, sweep_dir)
        failed = [row["job"] for row in table.rows if row.get("status") not in (*OK_STATUSES, "preempted")]
        if failed and self.fail_at_end:
            message = (f"{len(failed)} of {len(table.rows)} sweep jobs did not complete: {failed} (see {md_path}, "
                       f"each job's {RECORD_FILE} and log)")
            log.error(message)
            print(f"dequant.sweep: error: {message}", file=sys.stderr, flush=True)
            # Hydra turns a callback's exceptions into warnings; SystemExit is not one, so the multirun's exit status
            # says that something failed.
            raise SystemExit(1)


def requeue_after_signal(stopped_by: str) -> bool:
    """After training stopped cleanly on SLURM's time-limit signal, let submitit requeue the job (rank 0; it exits
    the process); False when not running under submitit or stopped by another signal (SIGTERM: SLURM preempts
    and requeues by itself)."""
    if stopped_by != REQUEUE_SIGNAL:
        return False
    try:
        from submitit.core.job_environment import JobEnvironment
    except ImportError:
        return False
    handler = signal.getsignal(JobEnvironment._usr_sig())
    if getattr(handler, "__name__", "") != "checkpoint_and_try_requeue":
        return False
    log.warning("training stopped on %s: asking submitit to requeue this job", stopped_by)
    handler(JobEnvironment._usr_sig(), None)
    return True


def resume_overrides(overrides: Sequence[str], config: DictConfig) -> list[str]:
    """A SLURM training job always runs with `ckpt_path=last` (unless a checkpoint is named): its folder is its own,
    so the first run starts fresh and a requeued rerun continues from its last checkpoint into the same W&B run."""
    out = list(overrides)
    if not is_training_config(config) or config.get("ckpt_path") is not None:
        return out
    if any(o.lstrip("+~").startswith("ckpt_path=") for o in out):
        return out
    return [*out, "ckpt_path=last"]


def record_killed(job_dir: Path, overrides: Sequence[str], error: str, logs: Sequence[str | Path]) -> dict[str, Any]:
    """Mark a job that ended without a result as `killed` in its sweep_job.json (made if the job never wrote one)."""
    from dequant.sweep_report import log_tail

    path = job_dir / RECORD_FILE
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        record = {}
    if record.get("status") in ("completed", "failed", "preempted", "interrupted"):
        return record  # the job recorded how it ended before its process was lost
    record.setdefault("job", job_dir.name)
    record.setdefault("overrides", list(overrides))
    record.setdefault("swept", {})
    record.update(status="killed", error=" ".join(error.split())[:2000],
                  log_files=list(record.get("log_files") or []) or [str(p) for p in logs],
                  log_tail=log_tail(logs))
    job_dir.mkdir(parents=True, exist_ok=True)
    _write_record(record, job_dir)
    return record


class _SurvivingLauncher:
    """Mixin for hydra-submitit launchers: a job that ends without a result (killed: SLURM's time or memory limit, a
    lost node, SIGKILL) is recorded as `killed` and the multirun goes on; a job that raised still raises."""

    _EXECUTOR: str
    config: Any
    params: dict[str, Any]
    hydra_context: Any

    def make_executor(self) -> Any:
        """The submitit executor with this launcher's parameters (what `launch` submits with)."""
        import submitit

        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        init_keys = {"submitit_folder", "max_num_timeout"}
        # The local launcher's parameters have no max_num_timeout (SLURM's requeue budget).
        timeouts = {f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k == "max_num_timeout"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=self.params["submitit_folder"], **timeouts)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v
                                      for k, v in self.params.items() if k not in init_keys})
        return executor

    def _job_dir(self, overrides: Sequence[str], idx: int) -> Path:
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        try:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg.hydra.job):
                cfg.hydra.job.num = idx
            return sweep_dir / str(cfg.hydra.sweep.subdir)
        except Exception:  # noqa: BLE001 - a subdir that only resolves inside the job
            return sweep_dir / str(idx)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
        """Submit every job as an array, wait for all, and return their results (killed jobs: NaN, recorded)."""
        from hydra.core.singleton import Singleton
        from hydra.core.utils import JobReturn, JobStatus, filter_overrides
        from submitit.core.utils import FailedJobError, UncompletedJobError

        assert self.config is not None and len(job_overrides) > 0
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("Submitit '%s' sweep output dir : %s", self._EXECUTOR, sweep_dir)
        params = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        jobs = self.make_executor().map_array(self, *zip(*params))
        returns = []
        for job, (overrides, _, idx, _, _) in zip(jobs, params):
            try:
                returns.append(job.results()[0])
                continue
            except FailedJobError:
                raise  # the task raised (sweep.continue_on_error=false): as hydra-submitit does
            except UncompletedJobError as err:
                job_dir = self._job_dir(overrides, idx)
                logs = [job.paths.stderr, job.paths.stdout]
                record_killed(job_dir, overrides, f"{type(err).__name__}: {err}", logs)
                log.error("sweep job %d (%s, submitit job %s) ended without a result: recorded as killed in %s",
                          idx, " ".join(overrides), job.job_id, job_dir / RECORD_FILE)
            # The sweepers read a finished job: optuna marks a NaN trial failed, the basic sweeper goes on.
            value = math.nan if self.config.get("optimized_metric") else None
            returns.append(JobReturn(overrides=list(overrides), working_dir=str(self._job_dir(overrides, idx)),
                                     status=JobStatus.COMPLETED, _return_value=value))
        return returns


class LocalLauncher(_SurvivingLauncher, _SubmititLocalLauncher):
    """hydra-submitit's local launcher (each job a local process, as on a cluster), surviving killed jobs."""


class SlurmLauncher(_SurvivingLauncher, _SubmititSlurmLauncher):
    """hydra-submitit's SLURM launcher; a requeued job resumes from its last checkpoint, a killed job is recorded
    (see the module docstring)."""

    def __call__(self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: dict[Any, Any]) -> Any:
        """Run one job on the node (submitit calls this again after a requeue)."""
        assert self.config is not None
        overrides = resume_overrides(sweep_overrides, self.config)
        return super().__call__(overrides, job_dir_key, job_num, job_id, singleton_state)


def optuna_storage(sweep_dir: str | Path, storage: str | None) -> str:
    """The study's storage: `storage` if given, else an SQLite file `optuna.db` in the sweep folder."""
    if storage:
        return str(storage)
    return f"sqlite:///{Path(str(sweep_dir)) / 'optuna.db'}"


def continue_study(study: Any, n_trials: int) -> tuple[int, int]:
    """Prepare a loaded study for a relaunch: trials a dead launcher left running are marked failed and asked again
    with the same parameters; returns (trials still to run, the next trial's number = its job number)."""
    import optuna

    states = optuna.trial.TrialState
    first_new = len(study.trials)
    stale = [t for t in study.trials if t.state == states.RUNNING]
    for trial in stale:
        study._storage.set_trial_state(trial._trial_id, states.FAIL)
        study.enqueue_trial(dict(trial.params))
    if stale:
        log.warning("optuna study %s: %d trials left running by an earlier launch were marked failed and will be "
                    "run again with the same parameters (new job folders)", study.study_name, len(stale))
    finished = sum(t.state in (states.COMPLETE, states.FAIL, states.PRUNED) for t in study.trials) - len(stale)
    return max(0, int(n_trials) - finished), first_new


def optuna_sweep(impl: Any, arguments: list[str]) -> None:
    """hydra-optuna-sweeper's sweep (`impl`: its OptunaSweeperImpl) with a study that survives the launching process
    (see the module docstring): run or continue it in the configured storage, the sweep folder's optuna.db by
    default. `hydra_plugins.dequant_sweep.OptunaSweeper` calls it (only where the optuna extra is installed)."""
    import optuna

    sweep_dir = Path(str(impl.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    impl.storage = optuna_storage(sweep_dir, impl.storage)
    try:
        study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
    except KeyError:
        study = None  # a new study: the sweeper creates it
    if study is not None:
        impl.n_trials, impl.job_idx = continue_study(study, impl.n_trials)
        log.info("optuna study %s continues from %s: %d trials to run, from job %d", impl.study_name,
                 impl.storage, impl.n_trials, impl.job_idx)
        if impl.n_trials == 0:
            return
    impl.sweep(arguments)


if __name__ == "__main__":
    # Through the imported module, so that submitit pickles the task function by reference.
    from dequant import sweep

    sweep.main()
