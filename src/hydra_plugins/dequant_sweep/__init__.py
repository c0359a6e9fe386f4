"""dequant's Hydra plugins: Hydra builds launchers and sweepers only from classes defined under `hydra_plugins` and
known to its plugin registry, so the launchers and sweeper of `dequant.sweep` are named here
(`_target_: hydra_plugins.dequant_sweep.SlurmLauncher`). An installed wheel puts this package beside the other
plugins, where Hydra's scan finds it; an editable install's namespace path cannot be scanned, so the entry points
(`dequant.cli.hydra_app`, `dequant.sweep.main`) call `register()` first."""

from __future__ import annotations

from dequant import sweep


class LocalLauncher(sweep.LocalLauncher):
    """`dequant.sweep.LocalLauncher` as a Hydra plugin (hydra/launcher=local)."""


class SlurmLauncher(sweep.SlurmLauncher):
    """`dequant.sweep.SlurmLauncher` as a Hydra plugin (hydra/launcher=slurm, slurm_ddp)."""


class OptunaSweeper(sweep.OptunaSweeper):
    """`dequant.sweep.OptunaSweeper` as a Hydra plugin (sweeps/optuna_lr_ema.yaml)."""


def register() -> None:
    """Add these plugins to Hydra's registry (a no-op when its scan found them)."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()
    for cls in (LocalLauncher, SlurmLauncher, OptunaSweeper):
        if f"{cls.__module__}.{cls.__name__}" not in plugins.class_name_to_class:
            plugins.register(cls)
