"""The training run behind `train.py`: build everything from the Hydra config, resume safely, fit."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.fabric.plugins import CheckpointIO, ClusterEnvironment
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.loggers import CSVLogger
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dequant.callbacks import (
    LAST_NAME,
    AtomicCheckpointIO,
    PreemptionCheckpoint,
    checkpoint_problem,
    load_checkpoint_data,
    one_line_error,
    remove_partial_checkpoints,
    resumable_checkpoint,
)
from dequant.config import to_container
from dequant.data.datamodule import DequantDataModule
from dequant.data.io import writable_folder
from dequant.runlock import RunLock

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_run_id.txt"


def resolve_checkpoint(ckpt_path: str | None, run_dir: Path, checkpoint_dir: Path | None = None) -> str | None:
    """Turn `ckpt_path` (None, "last" or a path) into a checked file path.

    "last" is the newest checkpoint of the run's checkpoint folder that can resume training: `last.ckpt`, or when
    that one is truncated or corrupt the newest good `step*.ckpt` (each skipped file is logged with its problem);
    no checkpoint at all means a fresh start, only bad ones is a ValueError. An explicit path must be usable.
    """
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        folder = checkpoint_dir if checkpoint_dir is not None else run_dir / "checkpoints"
        found, skipped = resumable_checkpoint(folder)
        for line in skipped:
            log.warning("ckpt_path=last: skipping unusable checkpoint %s", line)
        if found is None and skipped:
            raise ValueError(f"ckpt_path=last: no usable checkpoint in {folder}; every candidate is damaged ("
                             + "; ".join(skipped) + "). Pass ckpt_path=null to start over in another folder.")
        if found is None:
            log.info("ckpt_path=last but %s holds no checkpoint yet: starting from scratch", folder)
            return None
        if skipped:
            log.warning("ckpt_path=last: resuming from %s, the newest checkpoint that is intact", found)
        return str(found)
    path = Path(ckpt_path)
    if not path.is_file():
        raise ValueError(f"ckpt_path: no checkpoint file at {path}")
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(f"ckpt_path: {path} cannot resume training: {problem}")
    return str(path)


def _checkpoint_dir(cfg: DictConfig, run_dir: Path) -> Path:
    """The folder the periodic checkpoints go to (the model_checkpoint callback's dirpath, else run_dir/checkpoints)."""
    node = (cfg.get("callbacks") or {}).get("model_checkpoint") or {}
    dirpath = node.get("dirpath") if hasattr(node, "get") else None
    return Path(dirpath) if dirpath else run_dir / "checkpoints"


def check_checkpoint_matches(ckpt: str, cfg: dict[str, Any]) -> None:
    """Fail clearly when a checkpoint was trained with another architecture than the one configured now."""
    try:
        state = load_checkpoint_data(ckpt)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise ValueError(f"ckpt_path: {ckpt} is not a readable checkpoint ({one_line_error(err)})") from err
    saved = (state.get("dequant_config") or {}).get("module", {}).get("net")
    if saved is None:
        raise ValueError(f"ckpt_path: {ckpt} carries no dequant config: was it written by dequant?")
    from dequant.models.module import config_differences

    diffs = config_differences(saved, cfg["module"]["net"])
    if diffs:
        raise ValueError(f"ckpt_path: {ckpt} was trained with another model config; differing keys: "
                         + "; ".join(diffs))


def trainer_plugins(plugins: list[Any]) -> list[Any]:
    """The configured trainer plugins plus the two every run needs, unless the config brings its own of that kind.

    `AtomicCheckpointIO` writes every checkpoint atomically. On SLURM, `SLURMEnvironment(auto_requeue=False)`: the
    project's preemption callback is the only owner of SIGUSR1/SIGTERM (Lightning's auto-requeue would save an
    `hpc_ckpt` inside the signal handler, mid-step, and call `scontrol requeue` itself, racing with the callback and
    with submitit's requeue).
    """
    # `trainer.plugins` from the config arrives as a ListConfig of instances: a sequence like a list.
    plugins = list(plugins) if isinstance(plugins, Sequence) and not isinstance(plugins, str) else [plugins]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    if SLURMEnvironment.detect() and not any(isinstance(p, ClusterEnvironment) for p in plugins):
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


def check_strategy(cfg: DictConfig) -> None:
    """Refuse combinations that would fail only hours into a cluster job: FSDP with the EMA (the EMA keeps each
    weight whole, by name; FSDP flattens and shards them, so the first EMA update would fail)."""
    strategy = cfg.trainer.get("strategy")
    target = strategy.get("_target_", "") if hasattr(strategy, "get") else strategy
    if "fsdp" in str(target).lower() and (cfg.get("module") or {}).get("use_ema", False):
        raise ValueError("trainer.strategy is FSDP and module.use_ema=true: the EMA keeps whole weights by name, "
                         "FSDP shards them; set module.use_ema=false (as experiment=paper_256 does) or use "
                         "trainer=ddp")


def refuse_hpc_checkpoints(root_dir: Path) -> None:
    """Fail when the run's root folder holds Lightning `hpc_ckpt_*.ckpt` files: on SLURM Lightning would resume from
    them unasked when `ckpt_path` is null; in this project `ckpt_path=last` is the only way a run resumes."""
    found = sorted(root_dir.glob("hpc_ckpt_*.ckpt")) if root_dir.is_dir() else []
    if found:
        raise ValueError(f"paths.run_dir: {root_dir} holds Lightning auto-requeue checkpoints ({found[0].name}, ...) "
                         "that Lightning would resume from unasked; resume with ckpt_path=last, or move them away")


def _is_wandb_node(node: Any) -> bool:
    return str(node.get("_target_", "")).endswith("WandbLogger") if hasattr(node, "get") else False


def _loggers(cfg: DictConfig, run_dir: Path) -> list[Any]:
    from dequant.wandb_run import wandb_logger

    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if not _is_wandb_node(node):
            loggers.append(instantiate(node))
            continue
        if node.get("id") is None and (run_dir / WANDB_ID_FILE).exists():
            # Resuming into the same folder continues the same W&B run.
            node = OmegaConf.merge(node, {"id": (run_dir / WANDB_ID_FILE).read_text().strip()})
        loggers.append(wandb_logger(node, key=f"logger.{name}"))
    return loggers


@rank_zero_only
def _keep_earlier_csv_metrics(loggers: list[Any]) -> None:
    """On resume, move an existing metrics.csv aside (metrics_partN.csv): CSVLogger deletes it when it starts."""
    for lg in loggers:
        if isinstance(lg, CSVLogger):
            metrics = Path(lg.log_dir) / "metrics.csv"
            if metrics.is_file():
                n = 1 + len(list(metrics.parent.glob("metrics_part*.csv")))
                kept = metrics.rename(metrics.with_name(f"metrics_part{n}.csv"))
                log.info("resuming: the metrics logged so far are kept in %s", kept)


def _remember_wandb_id(loggers: list[Any], run_dir: Path) -> None:
    from dequant.wandb_run import is_wandb_logger, start_run

    for lg in loggers:
        if is_wandb_logger(lg):
            # Starting the run gives the id; W&B refusing it (names, login) is a one-line error.
            (run_dir / WANDB_ID_FILE).write_text(start_run(lg))


def _finish_wandb(loggers: list[Any], exit_code: int) -> None:
    """Close any W&B run this job opened, so that the next job of a multirun does not log into it."""
    from dequant.wandb_run import finish

    finish(loggers, exit_code)


def _choices() -> dict[str, Any]:
    """Hydra's group choices of this job (`palette: fixed_4`, ...), or {} outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return dict(OmegaConf.to_container(HydraConfig.get().runtime.choices, resolve=True) or {})


def _task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _callbacks(cfg: DictConfig, has_logger: bool) -> list[Any]:
    """The configured callbacks, minus those that cannot work in this run (so logger=none and no progress bar work)."""
    out = []
    for name, node in (cfg.get("callbacks") or {}).items():
        callback = instantiate(node)
        if isinstance(callback, LearningRateMonitor) and not has_logger:
            log.info("callbacks.%s skipped: it logs learning rates and this run has no logger", name)
            continue
        if isinstance(callback, ProgressBar) and cfg.trainer.get("enable_progress_bar") is False:
            continue
        out.append(callback)
    return out


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job from a composed config; returns the paths and final metrics of the run.

    Rank 0 holds the run folder's lock (`dequant.runlock`) from before anything is written until the end: a second
    run in the same folder refuses at startup."""
    check_strategy(cfg)
    run_dir = writable_folder(str(cfg.paths.run_dir), "paths.run_dir")
    # Other ranks (DDP children, SLURM tasks > 0) work in the folder that rank 0 holds.
    lock = RunLock(run_dir).acquire() if rank_zero_only.rank == 0 else None
    try:
        return _train(cfg, run_dir)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    resolved = to_container(cfg)
    L.seed_everything(cfg.seed, workers=True)
    OmegaConf.save(OmegaConf.create(resolved), run_dir / "config.yaml")

    datamodule = instantiate(cfg.data)
    # Paths are listed and split now so that an empty glob fails before any model is built.
    datamodule.setup("fit")
    datamodule.save_split(run_dir)

    ckpt_dir = _checkpoint_dir(cfg, run_dir)
    remove_partial_checkpoints(ckpt_dir)
    ckpt = resolve_checkpoint(cfg.get("ckpt_path"), run_dir, ckpt_dir)
    if ckpt is not None:
        check_checkpoint_matches(ckpt, resolved)
    else:
        refuse_hpc_checkpoints(Path(str(cfg.trainer.get("default_root_dir") or run_dir)))

    # `config` is also instantiate()'s own first parameter, hence the partial.
    module = instantiate(cfg.module, _partial_=True)(config=resolved)
    loggers = _loggers(cfg, run_dir)
    if ckpt is not None:
        _keep_earlier_csv_metrics(loggers)
    callbacks = _callbacks(cfg, has_logger=bool(loggers))
    if any(_is_wandb_node(node) for node in (cfg.get("logger") or {}).values()):
        from dequant.wandb_run import WandbPreempting

        # First in the list: the mark goes out before the preemption callback writes its checkpoint.
        callbacks.insert(0, WandbPreempting([c for c in callbacks if isinstance(c, PreemptionCheckpoint)]))
    plugins = trainer_plugins(instantiate(cfg.trainer.get("plugins")) or [])
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, plugins=plugins)
    if trainer.is_global_zero and str(cfg.trainer.get("accelerator")) == "cpu":
        from dequant.hardware import describe_cpu_precision

        # The trainer's own precision: a plugin (MixedPrecision) may have set it instead of trainer.precision.
        log.info(describe_cpu_precision(str(trainer.precision)))
    if trainer.is_global_zero:
        from dequant.wandb_run import log_run_info, run_info

        _remember_wandb_id(loggers, run_dir)
        # The group choices, parameter counts, git state and command line beside the resolved config.
        log_run_info(loggers, run_info(_choices(), module, overrides=_task_overrides()))
    with warnings.catch_warnings():
        if isinstance(datamodule, DequantDataModule):
            # Lightning cannot tell that the data module restores the sampler position itself (state_dict).
            warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
        # The fixed validation set's val/ metrics are synced by torchmetrics before they are logged (models/module.py).
        warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('val/.*sync_dist=True")
        if ckpt is not None:  # resuming into a non-empty run folder is the point (earlier CSV metrics are kept)
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        except BaseException:
            _finish_wandb(loggers, exit_code=1)
            raise

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    last = ckpt_dir / LAST_NAME
    stopped_by = next((c.received or "a signal on another rank" for c in callbacks
                       if isinstance(c, PreemptionCheckpoint) and c.saved_path), None)
    result = {"run_dir": str(run_dir), "last_checkpoint": str(last) if last.exists() else None,
              "global_step": trainer.global_step, "metrics": metrics, "resumed_from": ckpt,
              "stopped_by_signal": stopped_by}
    if stopped_by:
        log.info("stopped by %s at step %d; resume with ckpt_path=last", stopped_by, trainer.global_step)
        if trainer.is_global_zero:
            from dequant.wandb_run import mark_preempting, preempted_exit_code

            # Marked again in case the signal reached another rank only; a non-zero exit reads as preempted.
            mark_preempting(loggers)
            _finish_wandb(loggers, exit_code=preempted_exit_code(stopped_by))
    else:
        log.info("training finished at step %d: %s", trainer.global_step, metrics)
    return result
