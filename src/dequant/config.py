"""Hydra/OmegaConf glue: the resolvers the config tree uses and helpers to read configs back from runs."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


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


register_resolvers()
