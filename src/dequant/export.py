"""`dequant-export CKPT DIR`: a trained model as diffusers folders (EMA weights) plus its run config.

Layout of DIR:
- `unet/`: `net.unet` (concat: the UNet2DModel with 3 + 7 input channels; controlnet: the frozen pretrained
  UNet2DConditionModel, or the fine-tuned one when it was trained), diffusers `save_pretrained` format;
- `controlnet/` (controlnet models only): the ControlNetModel. Its `controlnet_cond_embedding` is dequant's
  full-resolution hint stack (`dequant.models.nets.HintEmbedding`: the same weight names and shapes as diffusers'
  embedding, but stride 1 everywhere), so plain diffusers loads the weights but would downsample the hint 8x:
  load it with `load_exported` (or `dequant.models.load_model`);
- `null_embedding.pt` (controlnet models only): the fixed empty-prompt embedding;
- `dequant_config.json`: the whole resolved training config (what `checkpoint["dequant_config"]` holds);
- `split.json`: the run's data split, when it sits next to the checkpoint's run folder (evaluate.py reads it).

The weights written are the EMA weights when the module keeps an EMA (the default), else the training weights, so
the module `load_exported` rebuilds has no separate EMA (`use_ema=False`): sampling uses exactly what was exported.
The folder is written under a temporary name and renamed when complete: an interrupted export leaves no DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
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


def _net_parts(net: torch.nn.Module) -> list[str]:
    """Sub-models to export; every weight of the net must live in one of them (or be the null embedding)."""
    parts = [name for name in PARTS if isinstance(getattr(net, name, None), torch.nn.Module)]
    if not parts:
        raise ValueError(f"the checkpoint's net {type(net).__name__} has neither a unet nor a controlnet to export")
    stray = [k for k in net.state_dict() if k.split(".", 1)[0] not in parts and k != "null_embedding"]
    if stray:
        raise ValueError(f"the checkpoint's net {type(net).__name__} has weights outside {parts}: {stray[:5]}")
    return parts


def export(ckpt: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the EMA weights of a Lightning checkpoint to `out_dir` in diffusers format (see the module docstring)."""
    from dequant.models.module import load_model

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"out_dir {str(out)!r} is not empty (pass --overwrite to replace it)")
    src = Path(ckpt)
    if src.is_dir():
        raise ValueError(f"ckpt {str(src)!r} is a folder; dequant-export reads a Lightning .ckpt file")
    module = load_model(src)
    net = module.net
    parts = _net_parts(net)
    cfg = module.dequant_config()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with module.ema_weights():
            for name in parts:
                getattr(net, name).save_pretrained(tmp / name)
        if hasattr(net, "null_embedding"):
            torch.save(net.null_embedding.detach().cpu().clone(), tmp / NULL_EMBEDDING_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=1, sort_keys=False) + "\n")
        split = run_folder(src) / SPLIT_FILE
        if split.is_file():
            shutil.copyfile(split, tmp / SPLIT_FILE)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_exported(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Rebuild a DequantModule (without EMA, see the module docstring) from a folder written by `export`."""
    from dequant.models.module import build_module

    p = Path(path)
    cfg = read_dequant_config(p)
    if not p.is_dir():
        raise ValueError(f"path {str(p)!r} is not an exported folder")
    node = {k: v for k, v in cfg["module"].items() if k != "config"}
    node["use_ema"] = False
    net = dict(node.get("net") or {})
    if net.get("_target_") == _CONTROLNET_TARGET:
        # The frozen UNet and the null embedding travel in the export; the training paths need not exist here.
        net["pretrained_path"] = str(p / "unet")
        if (p / NULL_EMBEDDING_FILE).is_file():
            net["null_embedding_path"] = str(p / NULL_EMBEDDING_FILE)
    node["net"] = net
    module = build_module(cfg, f"path {str(p)!r}", node)
    for name in _net_parts(module.net):
        folder = p / name
        if not folder.is_dir():
            raise ValueError(f"path {str(p)!r} lacks the {name}/ folder its config needs")
        target = getattr(module.net, name)
        try:
            saved = type(target).from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
            target.load_state_dict(saved.state_dict(), strict=True)
        except Exception as err:  # noqa: BLE001 - diffusers and torch raise many types for a foreign folder
            raise ValueError(f"path {str(folder)!r} does not fit the model in {CONFIG_FILE}: {err}") from err
    module.to(map_location)
    module.eval()
    return module


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `dequant-export CKPT DIR`."""
    parser = argparse.ArgumentParser(
        prog="dequant-export",
        description="Write a checkpoint's EMA weights as diffusers folders (unet/, controlnet/) plus "
                    f"{CONFIG_FILE}; dequant-edit and evaluate.py accept the folder like a checkpoint.")
    parser.add_argument("ckpt", help="Lightning checkpoint (.ckpt) written by train.py")
    parser.add_argument("out_dir", metavar="DIR", help="output folder (must not exist or be empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty DIR")
    args = parser.parse_args(argv)
    try:
        out = export(args.ckpt, args.out_dir, overwrite=args.overwrite)
    except (ValueError, OSError) as err:
        print(f"dequant-export: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"exported {args.ckpt} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
