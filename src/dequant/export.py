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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dequant.atomic import atomic_folder
from dequant.models.exported import (CONFIG_FILE, NULL_EMBEDDING_FILE, SPLIT_FILE, is_exported, net_parts,
                                      read_dequant_config, run_folder)

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
    parts = net_parts(net)
    cfg = module.dequant_config()
    with atomic_folder(out) as tmp:
        with module.ema_weights():
            for name in parts:
                getattr(net, name).save_pretrained(tmp / name)
        if hasattr(net, "null_embedding"):
            torch.save(net.null_embedding.detach().cpu().clone(), tmp / NULL_EMBEDDING_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=1, sort_keys=False) + "\n")
        split = run_folder(src) / SPLIT_FILE
        if split.is_file():
            shutil.copyfile(split, tmp / SPLIT_FILE)
    return out


def load_exported(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Rebuild a DequantModule (without EMA, see the module docstring) from a folder written by `export`, or from
    `"pretrained"`: the model shipped in the package."""
    from dequant.models.module import load_model
    from dequant.models.pretrained import PRETRAINED, resolve_model

    if str(path) == PRETRAINED:
        path = resolve_model(path, what="path")
    if not is_exported(path):
        read_dequant_config(path)  # the precise error: missing, not a folder, no config
        raise ValueError(f"path {str(path)!r} is not an exported folder")
    return load_model(path, map_location)


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
