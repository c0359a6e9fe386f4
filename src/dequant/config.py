"""Hydra/OmegaConf glue: the resolvers the config tree uses and helpers to read configs back from runs."""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

T = TypeVar("T")


def assets_path(name: str = "images") -> str:
    """Absolute path of a folder shipped inside the package (`dequant/assets/<name>`)."""
    path = Path(str(resources.files("dequant") / "assets" / name))
    if not path.exists():
        raise ValueError(f"no shipped asset folder {name!r} (looked in {path})")
    return str(path)


def slurm_mem_gb(tasks_per_node: int, workers: int, cache_gb: float, per_task_gb: float) -> int:
    """Memory (GB) a SLURM node's job asks for: each task's training process and each of its DataLoader workers
    may fill its own image cache (`data.cache_max_gb`), plus `per_task_gb` for the model, batches and libraries."""
    return int(math.ceil(int(tasks_per_node) * ((int(workers) + 1) * float(cache_gb) + float(per_task_gb))))


def override_suffix() -> str:
    """`:<override_dirname>` of the running Hydra job (its command-line overrides, `hydra.job.config.override_dirname`
    filtering them), or "" without overrides or outside Hydra: what makes single runs' names distinct."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    dirname = str(HydraConfig.get().job.get("override_dirname") or "")
    return f":{dirname}" if dirname else ""


def sweep_group(sweep_dir: str) -> str:
    """A sweep's W&B group from its folder (its parent's name / its own name, e.g. `2026-01-02/cue_modes_10-11-12`):
    relaunching the sweep into the same folder to resume it keeps the group."""
    path = Path(str(sweep_dir))
    parts = [p for p in (path.parent.name, path.name) if p and p not in (".", "..")]
    return "/".join(parts) or str(sweep_dir)


def register_resolvers() -> None:
    """Register `${dq.assets:images}`, `${dq.sum:a,b,...}`, `${dq.slurm_mem_gb:...}`, `${dq.override_suffix:}`,
    `${dq.sweep_group:<dir>}` and `${dq.cpu_precision:}`; safe to call more than once."""
    from dequant.hardware import cpu_precision

    for name, fn in (("dq.assets", assets_path), ("dq.sum", lambda *values: sum(values)),
                     ("dq.slurm_mem_gb", slurm_mem_gb), ("dq.override_suffix", override_suffix),
                     ("dq.sweep_group", sweep_group), ("dq.cpu_precision", cpu_precision)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The fully resolved config as plain Python containers (what checkpoints and run folders store)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]


def _shipped_folder(name: str, marker: str, what: str) -> str:
    """`dequant/<name>` inside an installed wheel, else `<name>/` at the top of the checkout (editable or source)."""
    package = Path(__file__).resolve().parent
    # A wheel carries the folder inside the package (pyproject.toml maps it); a source checkout or editable install
    # has it at the top of the checkout.
    for candidate in (package / name, package.parents[1] / name):
        if (candidate / marker).is_file():
            return str(candidate)
    raise FileNotFoundError(f"no {what} folder: neither {package / name} nor {package.parents[1] / name} "
                            f"holds {marker} (reinstall dequant)")


def conf_dir() -> str:
    """The config folder the installed commands compose from: the wheel's `dequant/conf`, else the checkout's `conf/`."""
    return _shipped_folder("conf", "train.yaml", "config")


def sweeps_dir() -> str:
    """The sweep files' folder: the wheel's `dequant/sweeps`, else the checkout's `sweeps/`."""
    return _shipped_folder("sweeps", "_common.yaml", "sweep")


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def bad_input_message(err: BaseException) -> str | None:
    """One line for a bad-input error (a `ValueError`, bare or raised by a config's `_target_`), else None."""
    if isinstance(err, InstantiationException) and isinstance(err.__cause__, ValueError):
        # Hydra's text is "Error in call to target ...: ValueError(...) full_key: <key>"; the key is what the
        # user typed, so it leads.
        key = re.search(r"full_key: (\S+)", str(err))
        return f"{key.group(1) + ': ' if key else ''}{' '.join(str(err.__cause__).split())}"
    if isinstance(err, ValueError):
        return " ".join(str(err).split())
    return None


def run_cli(prog: str, run: Callable[[], T]) -> T:
    """`run()`, but in a single run bad input ends the program with `<prog>: error: <one line>` and exit code 2
    (as argparse). In a multirun the error propagates, so Hydra records the failed job and sweepers go on."""
    try:
        return run()
    except Exception as err:
        message = bad_input_message(err)
        if message is None or _multirun():
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def unknown_choice_message(config_dir: str | Path, argv: list[str]) -> str | None:
    """One line naming the first override of `argv` that picks an option its config group lacks, else None.

    Hydra reports such an override as a multi-line composition error with exit code 1; a one-line error with exit
    code 2 is what every other bad input of the scripts gets. Hydra's own groups (`hydra/...`, whose options also
    come from installed plugins) are left to Hydra.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    overrides = [arg for arg in argv if "=" in arg and not arg.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return None  # Hydra's own message for a malformed override says it better.
    for override in parsed:
        group = Path(config_dir) / override.key_or_group
        if override.is_delete() or override.key_or_group.startswith("hydra") or not group.is_dir():
            continue
        choices = sorted(p.stem for p in group.glob("*.yaml") if not p.name.startswith("_"))
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        for value in values:
            if value is not None and str(value) not in choices:
                return f"{override.key_or_group}: {str(value)!r} is not an option; choices: {', '.join(choices)}"
    return None


def exit_on_unknown_choice(prog: str, config_dir: str | Path, argv: list[str]) -> None:
    """Exit with code 2 and `<prog>: error: <one line>` when an override picks an option that does not exist."""
    message = unknown_choice_message(config_dir, argv)
    if message is not None:
        print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


register_resolvers()
