"""Hydra/OmegaConf glue: the resolvers the config tree uses and helpers to read configs back from runs."""

from __future__ import annotations

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


def register_resolvers() -> None:
    """Register `${dq.assets:images}`; safe to call more than once."""
    if not OmegaConf.has_resolver("dq.assets"):
        OmegaConf.register_new_resolver("dq.assets", assets_path)


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The fully resolved config as plain Python containers (what checkpoints and run folders store)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]


def conf_dir() -> str:
    """The `conf/` folder of this checkout (the entry points compose from it)."""
    return str(Path(__file__).resolve().parents[2] / "conf")


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


register_resolvers()
