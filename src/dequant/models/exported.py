"""The format of a folder written by `dequant-export` and of the config a checkpoint carries: reading it.

Imports nothing of `dequant.models.module`: `load_model` builds the module and calls `load_exported_weights`, and
`dequant.export` (the writer) imports both, so no two modules import each other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

CONFIG_FILE = "dequant_config.json"
NULL_EMBEDDING_FILE = "null_embedding.pt"
SPLIT_FILE = "split.json"
PARTS = ("unet", "controlnet")
_CONTROLNET_TARGET = "dequant.models.nets.ControlNetUNet"


def is_exported(path: str | os.PathLike) -> bool:
    """True when `path` is a folder written by `export` (it holds dequant_config.json)."""
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def read_dequant_config(path: str | os.PathLike) -> dict[str, Any]:
    """The resolved training config stored with a Lightning checkpoint or an exported folder."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"path {str(p)!r} does not exist")
    if p.is_dir():
        if not is_exported(p):
            raise ValueError(f"path {str(p)!r} is a folder without {CONFIG_FILE}: not a dequant export")
        try:
            cfg = json.loads((p / CONFIG_FILE).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"path {str(p / CONFIG_FILE)!r} is not readable JSON: {err}") from err
    else:
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # noqa: BLE001 - truncated files and foreign pickles fail in many ways
            raise ValueError(f"path {str(p)!r} is not a readable checkpoint ({type(err).__name__})") from err
        cfg = ckpt.get("dequant_config") if isinstance(ckpt, dict) else None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("module"), dict):
        raise ValueError(f"path {str(p)!r} carries no dequant config: it was not written by dequant")
    return cfg


def run_folder(path: str | os.PathLike) -> Path:
    """The training run folder of a checkpoint (`<run>/checkpoints/x.ckpt` -> `<run>`) or an exported folder."""
    p = Path(path)
    if p.is_dir():
        return p
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent


def net_parts(net: torch.nn.Module) -> list[str]:
    """Sub-models to export; every weight of the net must live in one of them (or be the null embedding)."""
    parts = [name for name in PARTS if isinstance(getattr(net, name, None), torch.nn.Module)]
    if not parts:
        raise ValueError(f"the checkpoint's net {type(net).__name__} has neither a unet nor a controlnet to export")
    stray = [k for k in net.state_dict() if k.split(".", 1)[0] not in parts and k != "null_embedding"]
    if stray:
        raise ValueError(f"the checkpoint's net {type(net).__name__} has weights outside {parts}: {stray[:5]}")
    return parts


def exported_node(cfg: dict[str, Any], folder: str | os.PathLike) -> dict[str, Any]:
    """The module node that rebuilds an exported model: no EMA (the export holds the EMA weights), and for a
    ControlNet the frozen UNet and null embedding read from the export, not from the training paths."""
    p = Path(folder)
    node = {k: v for k, v in cfg["module"].items() if k != "config"}
    node["use_ema"] = False
    net = dict(node.get("net") or {})
    if net.get("_target_") == _CONTROLNET_TARGET:
        net["pretrained_path"] = str(p / "unet")
        if (p / NULL_EMBEDDING_FILE).is_file():
            net["null_embedding_path"] = str(p / NULL_EMBEDDING_FILE)
    node["net"] = net
    return node


def load_exported_weights(module: Any, folder: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load an export's diffusers weights into `module` (built from `exported_node`); returns it in eval mode."""
    p = Path(folder)
    for name in net_parts(module.net):
        part = p / name
        if not part.is_dir():
            raise ValueError(f"path {str(p)!r} lacks the {name}/ folder its config needs")
        target = getattr(module.net, name)
        try:
            saved = type(target).from_pretrained(part, local_files_only=True, low_cpu_mem_usage=False)
            target.load_state_dict(saved.state_dict(), strict=True)
        except Exception as err:  # noqa: BLE001 - diffusers and torch raise many types for a foreign folder
            raise ValueError(f"path {str(part)!r} does not fit the model in {CONFIG_FILE}: {err}") from err
    module.to(map_location)
    module.eval()
    return module
