"""dequant's Hydra plugins: Hydra builds launchers and sweepers only from classes defined under `hydra_plugins` and
known to its plugin registry, so the launchers and the Optuna sweeper of `dequant.sweep` are named here
(`_target_: hydra_plugins.dequant_sweep.SlurmLauncher`). An installed wheel puts this package beside the other
plugins, where Hydra's scan finds it; an editable install's namespace path cannot be scanned, so the entry points
(`dequant.cli.hydra_app`, `dequant.sweep.main`) call `register()` first. The Optuna sweeper exists only where the
`optuna` extra (hydra-optuna-sweeper) is installed."""

from __future__ import annotations

from typing import Any

from dequant import sweep

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _HydraOptunaSweeper
except ImportError:  # the optuna extra is not installed
    _HydraOptunaSweeper = None


class LocalLauncher(sweep.LocalLauncher):
    """`dequant.sweep.LocalLauncher` as a Hydra plugin (hydra/launcher=local)."""


class SlurmLauncher(sweep.SlurmLauncher):
    """`dequant.sweep.SlurmLauncher` as a Hydra plugin (hydra/launcher=slurm, slurm_ddp)."""


PLUGINS: list[type] = [LocalLauncher, SlurmLauncher]

if _HydraOptunaSweeper is not None:

    class OptunaSweeper(_HydraOptunaSweeper):
        """hydra-optuna-sweeper's sweeper whose study lives in the sweep folder (`dequant.sweep.optuna_sweep`)."""

        def sweep(self, arguments: list[str]) -> Any:
            """Run, or continue, the study."""
            return sweep.optuna_sweep(self.sweeper, arguments)

    PLUGINS.append(OptunaSweeper)


def register() -> None:
    """Add these plugins to Hydra's registry (a no-op when its scan found them)."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()
    for cls in PLUGINS:
        if f"{cls.__module__}.{cls.__name__}" not in plugins.class_name_to_class:
            plugins.register(cls)
