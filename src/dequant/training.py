"""The training run behind `train.py`: build everything from the Hydra config, resume safely, fit."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dequant.config import to_container

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_run_id.txt"


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two nested configs differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff_keys(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]} ({a!r} in the checkpoint, {b!r} now)"]


def resolve_checkpoint(ckpt_path: str | None, run_dir: Path) -> str | None:
    """Turn `ckpt_path` (None, "last" or a path) into a file path; "last" with no checkpoint yet means a fresh start."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        if last.exists():
            return str(last)
        log.info("ckpt_path=last but %s holds no checkpoint yet: starting from scratch", last.parent)
        return None
    path = Path(ckpt_path)
    if not path.is_file():
        raise ValueError(f"ckpt_path: no checkpoint file at {path}")
    return str(path)


def check_checkpoint_matches(ckpt: str, cfg: dict[str, Any]) -> None:
    """Fail clearly when a checkpoint was trained with another architecture than the one configured now."""
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise ValueError(f"ckpt_path: {ckpt} is not a readable checkpoint ({type(err).__name__}: {err})") from err
    saved = (state.get("dequant_config") or {}).get("module", {}).get("net")
    if saved is None:
        raise ValueError(f"ckpt_path: {ckpt} carries no dequant config: was it written by dequant?")
    diffs = _diff_keys(saved, cfg["module"]["net"])
    if diffs:
        raise ValueError(f"ckpt_path: {ckpt} was trained with another model config; differing keys: "
                         + "; ".join(diffs))


def _loggers(cfg: DictConfig, run_dir: Path) -> list[Any]:
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if name == "wandb" and node.get("id") is None and (run_dir / WANDB_ID_FILE).exists():
            # Resuming into the same folder continues the same W&B run.
            node = OmegaConf.merge(node, {"id": (run_dir / WANDB_ID_FILE).read_text().strip()})
        loggers.append(instantiate(node))
    return loggers


def _remember_wandb_id(loggers: list[Any], run_dir: Path) -> None:
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            (run_dir / WANDB_ID_FILE).write_text(str(lg.version))


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job from a composed config; returns the paths and final metrics of the run."""
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = to_container(cfg)
    L.seed_everything(cfg.seed, workers=True)
    OmegaConf.save(OmegaConf.create(resolved), run_dir / "config.yaml")

    datamodule = instantiate(cfg.data)
    # Paths are listed and split now so that an empty glob fails before any model is built.
    datamodule.setup("fit")
    datamodule.save_split(run_dir)

    ckpt = resolve_checkpoint(cfg.get("ckpt_path"), run_dir)
    if ckpt is not None:
        check_checkpoint_matches(ckpt, resolved)

    # `config` is also instantiate()'s own first parameter, hence the partial.
    module = instantiate(cfg.module, _partial_=True)(config=resolved)
    loggers = _loggers(cfg, run_dir)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    if trainer.is_global_zero:
        _remember_wandb_id(loggers, run_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    last = run_dir / "checkpoints" / "last.ckpt"
    result = {"run_dir": str(run_dir), "last_checkpoint": str(last) if last.exists() else None,
              "global_step": trainer.global_step, "metrics": metrics}
    log.info("training finished at step %d: %s", trainer.global_step, metrics)
    return result
