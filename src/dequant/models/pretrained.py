"""The model shipped in the package (`dequant/assets/pretrained`): where it is, whether it is intact, and the one
place that turns a `--ckpt` / `ckpt_path` value (a path, `pretrained`, or nothing) into a path to load.

The folder is a `dequant-export` folder (`unet/`, `dequant_config.json`, `split.json`) plus `MODEL_CARD.md` and
`SHA256SUMS` (`sha256sum` format: `<sha256>  <path relative to the folder>`, one line per file, every file but
itself). `experiments/release_model.py` writes it with `write_sha256sums`; every use checks it with
`verify_pretrained`, so a wheel built without the weights, or a truncated download, is one line naming the file.

Imports nothing but the standard library (no torch, Lightning or Hydra): the CLIs check their arguments with it
before anything heavy is loaded.
"""

from __future__ import annotations

import hashlib
import os
import re
from importlib import resources
from pathlib import Path

from dequant.atomic import write_text

PRETRAINED = "pretrained"
SUMS_FILE = "SHA256SUMS"
MODEL_CARD = "MODEL_CARD.md"
# The files a dequant-export folder cannot load without: SHA256SUMS must list them, so a sums file that forgot
# the weights does not pass as intact.
REQUIRED_FILES = ("dequant_config.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors")
# Hashing reads the weights in pieces of this size: a model of several hundred MB never sits in memory twice.
_CHUNK = 1 << 20
# `sha256sum` writes `<hex>  <path>` (text mode) or `<hex> *<path>` (binary mode); both are read.
_SUMS_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")


def pretrained_dir() -> Path:
    """The shipped model's folder, `dequant/assets/pretrained` inside the installed package (it may be absent)."""
    # importlib.resources finds it in an editable install (src/dequant) and in a wheel's site-packages alike.
    return Path(str(resources.files("dequant") / "assets" / PRETRAINED))


def _advice(what: str) -> str:
    """How to get a working model, for the error messages: reinstall, or name a checkpoint instead."""
    # A CLI option takes its value after a space (`--ckpt X`), a Hydra key after `=` (`ckpt_path=X`); Python
    # callers (`load_model`, what="path") just pass another path.
    option = f"{what} " if what.startswith("-") else "" if what == "path" else f"{what}="
    return f"reinstall dequant from a checkout with 'make install', or pass {option}<a checkpoint from train.py>"


def _missing(path: Path, kind: str, what: str) -> ValueError:
    return ValueError(f"the shipped model {kind} {path} is missing (a dequant wheel built without "
                      f"src/dequant/assets/pretrained): {_advice(what)}")


def _damaged(path: Path, problem: str, what: str) -> ValueError:
    return ValueError(f"the shipped model file {path} is damaged ({problem}): {_advice(what)}")


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_sha256sums(folder: Path, what: str = "--ckpt") -> dict[str, str]:
    """`{relative path: sha256}` from `folder/SHA256SUMS`; ValueError (one line) when it is absent or malformed."""
    sums = folder / SUMS_FILE
    if not sums.is_file():
        raise _missing(sums, "file", what)
    listed: dict[str, str] = {}
    for number, line in enumerate(sums.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        match = _SUMS_LINE.fullmatch(line.rstrip("\r"))
        rel = match.group(2) if match else ""
        # A listed path must stay inside the folder: the sums file names the files to trust, nothing else.
        if not match or Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise _damaged(sums, f"line {number} is not '<sha256>  <relative path>': {line[:80]!r}", what)
        listed[Path(rel).as_posix()] = match.group(1).lower()
    unlisted = [name for name in REQUIRED_FILES if name not in listed]
    if unlisted:
        raise _damaged(sums, f"it does not list {', '.join(unlisted)}", what)
    return listed


def verify_pretrained(folder: Path | None = None, what: str = "--ckpt") -> Path:
    """The shipped model's folder, after checking that every file SHA256SUMS lists is there with its sha256;
    else ValueError, one line naming the file, what is wrong and how to get a working model (`what`: the option
    that names a model, for that advice)."""
    folder = pretrained_dir() if folder is None else Path(folder)
    if not folder.is_dir():
        raise _missing(folder, "folder", what)
    listed = read_sha256sums(folder, what)
    # Every file is looked for before any is hashed: a missing file is reported without reading the weights.
    for rel in listed:
        if not (folder / rel).is_file():
            raise _missing(folder / rel, "file", what)
    for rel, expected in listed.items():
        actual = sha256_file(folder / rel)
        if actual != expected:
            # 16 hex digits tell the two apart and keep the message within the CLIs' one-line limit.
            raise _damaged(folder / rel, f"sha256 {actual[:16]}…, expected {expected[:16]}…", what)
    return folder


def write_sha256sums(folder: str | os.PathLike) -> Path:
    """Write `folder/SHA256SUMS` for every file under `folder` but itself (sorted, `sha256sum -c` reads it)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SUMS_FILE
                   and "__pycache__" not in p.relative_to(folder).parts)
    lines = [f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}\n" for p in files]
    return write_text(folder / SUMS_FILE, "".join(lines))


def resolve_model(value: str | os.PathLike | None, what: str = "--ckpt") -> str:
    """The path a `--ckpt` / `ckpt_path` value names: None or `pretrained` is the shipped model (checked by
    `verify_pretrained`), anything else must exist (a checkpoint or a dequant-export folder; a file named
    `pretrained` is passed as `./pretrained`)."""
    if value is None or str(value) == PRETRAINED:
        return str(verify_pretrained(what=what))
    if not Path(value).exists():
        # A CLI option can be left out (then the shipped model runs); evaluate.py's ckpt_path cannot.
        ways = ("a checkpoint from train.py, a dequant-export folder, or leave it out" if what.startswith("-")
                else "a checkpoint from train.py or a dequant-export folder")
        raise ValueError(f"{what} {str(value)!r} names no file or folder and is not 'pretrained' (the shipped "
                         f"model): pass {ways}")
    return str(value)
