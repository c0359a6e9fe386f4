"""Installed Hydra commands: `dequant-train` and `dequant-evaluate`, the same apps as `train.py` and `evaluate.py`.

Each composes from the package's own configs (`dequant.config.conf_dir()`), so it takes the same overrides as the
scripts from any folder, also after a non-editable `pip install`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from dequant.config import conf_dir, exit_on_unknown_choice, run_cli


def _prog() -> str:
    # The name the user typed (train.py, dequant-train, ...) leads every one-line error.
    return Path(sys.argv[0]).name or "dequant"


def train_task(cfg: DictConfig) -> float | None:
    """Train from a composed config; returns the optimized metric (`optimized_metric`) for sweepers, else None.

    Bad input (a bad path, value or checkpoint) is a one-line error and exit code 2; other failures keep their
    traceback."""
    from dequant.training import train

    result = run_cli(_prog(), lambda: train(cfg))
    metric = cfg.get("optimized_metric")
    return result["metrics"].get(metric) if metric else None


def evaluate_task(cfg: DictConfig) -> None:
    """Evaluate a checkpoint from a composed config; a bad argument is a one-line error and exit code 2."""
    from dequant.evaluation.runner import evaluate

    run_cli(_prog(), lambda: evaluate(cfg))


def _exit_if_run_folder_busy(argv: list[str]) -> None:
    """Exit 2 before Hydra writes into an explicit `hydra.run.dir` that a live training run holds."""
    from dequant.runlock import busy_message

    if any(arg in ("-m", "--multirun") for arg in argv):
        return  # sweep jobs take their own folder's lock (dequant.sweep)
    folders = [arg.split("=", 1)[1] for arg in argv if arg.startswith("hydra.run.dir=")]
    message = busy_message(folders[-1]) if folders else None
    if message is not None:
        print(f"{_prog()}: error: {message}", file=sys.stderr)
        sys.exit(2)


def hydra_app(task: Callable[[DictConfig], Any], config_name: str, config_path: str | None = None) -> Callable[[], Any]:
    """`task` as a Hydra app over `config_path` (default: the package's configs); an override naming an option its
    group lacks is a one-line error and exit code 2 before Hydra starts."""
    config_dir = config_path or conf_dir()
    app = hydra.main(version_base="1.3", config_path=config_dir, config_name=config_name)(task)

    def main() -> Any:
        from hydra_plugins.dequant_sweep import register

        register()  # hydra/launcher=local, slurm: dequant's launchers (see hydra_plugins/dequant_sweep)
        exit_on_unknown_choice(_prog(), config_dir, sys.argv[1:])
        if config_name == "train":
            _exit_if_run_folder_busy(sys.argv[1:])
        return app()

    return main


def train_main() -> None:
    """Console script `dequant-train`: `dequant-train experiment=demo`, `dequant-train --cfg job`."""
    hydra_app(train_task, "train")()


def evaluate_main() -> None:
    """Console script `dequant-evaluate`: `dequant-evaluate ckpt_path=<ckpt, export or pretrained> [tests=rhtpm]`."""
    hydra_app(evaluate_task, "evaluate")()
