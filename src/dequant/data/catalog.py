"""The photos of a data set: listed once, held as two numpy arrays, split by a hash of each photo's relative path.

A Python list of a million `Path` objects costs a few hundred MB in every DataLoader worker: each worker touches the
objects' reference counts, so the pages the fork shared are copied, worker by worker (PyTorch's "copy-on-read"
growth). A `PathList` holds the same names in one uint8 buffer and an int64 offset array that no worker writes to, so
forked workers keep sharing them.

Listing a million files takes minutes on a network file system; `DequantDataModule` saves the listing in the run
folder (`listing.npz`, with the `paths` it was made from) and reads it back on resume.

Splits (`split_positions`):
- `hash` (the default): a photo's split is decided by its relative path alone (`relative_hash`, a uniform number in
  [0, 1)): validation when it is below `val_fraction`, test when below `val_fraction + test_fraction`. The n_val and
  n_test held-out photos with the lowest hashes are used; the other held-out photos are not used at all, never
  trained on. Adding photos to a data set therefore never moves a validation or test photo into training. A data
  set whose held-out ranges hold fewer than n_val / n_test photos has them topped up with the next photos in hash
  order (with a warning): those can move back into training when photos are added.
- `shuffle`: the authors' procedure (sort, seeded permutation, first n_val validation, next n_test test); adding a
  photo reshuffles everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dequant.atomic import atomic_path
from dequant.color._checks import check_choice
from dequant.data.io import _check_count, list_image_files, split_paths, split_sizes

SPLIT_METHODS = ("hash", "shuffle")
LISTING_FORMAT = 1


class PathList(Sequence):
    """Strings (file paths) in one uint8 buffer with int64 offsets, each with the start of its relative part."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray, rel_start: np.ndarray) -> None:
        if offsets.ndim != 1 or offsets.size < 1 or rel_start.shape != (offsets.size - 1,):
            raise ValueError("offsets must have one entry more than rel_start")
        self.blob = np.ascontiguousarray(blob, dtype=np.uint8)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self.rel_start = np.ascontiguousarray(rel_start, dtype=np.int32)

    @classmethod
    def from_strings(cls, paths: Sequence[str], rel_start: Sequence[int] | None = None) -> PathList:
        """The strings `paths`; `rel_start[i]`: where the relative part of path i starts (default 0: all of it)."""
        encoded = [p.encode("utf-8", "surrogateescape") for p in paths]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        starts = np.zeros(len(encoded), np.int32) if rel_start is None else np.asarray(rel_start, np.int32)
        return cls(blob, offsets, starts)

    def __len__(self) -> int:
        return self.offsets.size - 1

    def _bytes(self, i: int, start: int = 0) -> bytes:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} paths")
        i %= n
        return self.blob[self.offsets[i] + start:self.offsets[i + 1]].tobytes()

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        return self._bytes(int(i)).decode("utf-8", "surrogateescape")

    def relpath(self, i: int) -> str:
        """The part of path i below the folder (or glob prefix) it was listed from: what the hash split reads."""
        return self._bytes(int(i), int(self.rel_start[int(i)])).decode("utf-8", "surrogateescape")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    def relpaths(self) -> Iterator[str]:
        """Every relative path, in order."""
        return (self.relpath(i) for i in range(len(self)))

    @property
    def nbytes(self) -> int:
        """Memory the list takes."""
        return self.blob.nbytes + self.offsets.nbytes + self.rel_start.nbytes

    def __add__(self, other: PathList) -> PathList:
        blob = np.concatenate([self.blob, other.blob])
        offsets = np.concatenate([self.offsets, other.offsets[1:] + self.offsets[-1]])
        return PathList(blob, offsets, np.concatenate([self.rel_start, other.rel_start]))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, PathList) and np.array_equal(self.offsets, other.offsets)
                and np.array_equal(self.blob, other.blob) and np.array_equal(self.rel_start, other.rel_start))

    __hash__ = None  # type: ignore[assignment]


def spec_text(paths: Any) -> str:
    """The `paths` a listing was made from, as canonical text (a saved listing is reused only for the same one)."""
    entries = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    return json.dumps([os.fspath(e) for e in entries])


def save_listing(listing: PathList, spec: str, path: str | os.PathLike) -> Path:
    """Write `listing` (made from the `paths` whose `spec_text` is `spec`) to `path` (.npz), atomically."""
    p = Path(path)
    with atomic_path(p) as tmp, open(tmp, "wb") as f:
        np.savez(f, blob=listing.blob, offsets=listing.offsets, rel_start=listing.rel_start,
                 spec=np.array(spec), format=np.array(LISTING_FORMAT))
    return p


def load_listing(path: str | os.PathLike, spec: str) -> PathList | None:
    """The listing saved at `path` if it was made from the same `paths` (`spec`), else None (also when the file is
    missing, cut short or of another format: the caller lists again)."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        with np.load(p, allow_pickle=False) as f:
            if int(f["format"]) != LISTING_FORMAT or str(f["spec"]) != spec:
                return None
            return PathList(f["blob"], f["offsets"], f["rel_start"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        warnings.warn(f"ignoring the saved listing {p} ({type(err).__name__}: {err}); listing the photos again",
                      stacklevel=2)
        return None


# ----------------------------------------------------------------------------------------------------- splits


def relative_hash(relpath: str) -> float:
    """A number in [0, 1) fixed by the relative path alone (BLAKE2b, so the same on every machine and Python)."""
    digest = hashlib.blake2b(relpath.replace(os.sep, "/").encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def list_photos(paths: Any) -> PathList:
    """`dequant.data.io.list_images` as a `PathList`, each path with its relative part (below its folder, glob
    prefix, or own folder for a file named alone)."""
    files = list_image_files(paths)
    return PathList.from_strings([f for f, _ in files], [start for _, start in files])


def _check_fraction(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def hash_split(relpaths: Sequence[str], n_val: int, n_test: int, val_fraction: float,
               test_fraction: float) -> dict[str, np.ndarray]:
    """Positions (int64, each split in hash order) of train / val / test / unused by the `hash` rule (module
    docstring). `unused`: held-out photos beyond n_val / n_test, never trained on."""
    val_fraction = _check_fraction(val_fraction, "val_fraction")
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    if val_fraction + test_fraction > 1.0:
        raise ValueError(f"val_fraction + test_fraction must be at most 1, got {val_fraction + test_fraction}")
    n = len(relpaths)
    if n == 0:
        raise ValueError("paths is empty: there is nothing to split")
    u = np.fromiter((relative_hash(r) for r in relpaths), dtype=np.float64, count=n)
    order = np.argsort(u, kind="stable")
    ranked = u[order]
    in_val = ranked < val_fraction
    in_test = ~in_val & (ranked < val_fraction + test_fraction)
    _, v, t = split_sizes(n, _check_count(n_val, "n_val"), _check_count(n_test, "n_test"))
    val, test = order[in_val][:v], order[in_test][:t]
    unused = np.concatenate([order[in_val][v:], order[in_test][t:]])
    rest = order[~in_val & ~in_test]
    short_v, short_t = v - val.size, t - test.size
    if short_v or short_t:
        # A data set too small for its held-out ranges: the next photos in hash order fill them.
        val = np.concatenate([val, rest[:short_v]])
        test = np.concatenate([test, rest[short_v:short_v + short_t]])
        rest = rest[short_v + short_t:]
        warnings.warn(
            f"{n} photos: the hash split's held-out ranges (val_fraction={val_fraction:g}, test_fraction="
            f"{test_fraction:g}) hold {v - short_v} validation and {t - short_t} test photos, so the next "
            f"{short_v + short_t} photos in hash order fill them up to {v} / {t}; those can move into training "
            "when photos are added (docs/configuration.md, 'Splits')", stacklevel=2)
    return {"train": np.sort(rest), "val": val, "test": test, "unused": np.sort(unused)}


def shuffle_split(paths: Sequence[str], seed: int, n_val: int, n_test: int) -> dict[str, np.ndarray]:
    """Positions of train / val / test by the authors' rule (`dequant.data.io.split_paths` on these paths: sorted as
    `Path`s, `default_rng(seed).permutation`), each split in shuffled order."""
    split = split_paths([Path(p) for p in paths], seed=seed, n_val=n_val, n_test=n_test)
    where = {os.fspath(Path(p)): i for i, p in enumerate(paths)}
    out = {k: np.array([where[os.fspath(p)] for p in split[k]], dtype=np.int64) for k in ("train", "val", "test")}
    out["unused"] = np.zeros(0, np.int64)
    return out


def split_positions(listing: PathList, method: str = "hash", *, n_val: int = 100, n_test: int = 1000,
                    seed: int = 42, val_fraction: float = 5e-4, test_fraction: float = 5e-3) -> dict[str, np.ndarray]:
    """Positions of train / val / test / unused in `listing` by `method` (`hash` or `shuffle`; module docstring)."""
    check_choice(method, SPLIT_METHODS, "split")
    if method == "shuffle":
        return shuffle_split(list(listing), seed, n_val, n_test)
    return hash_split(list(listing.relpaths()), n_val, n_test, val_fraction, test_fraction)
