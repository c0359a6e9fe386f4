"""Shards of a photo data set for training at scale: WebDataset tar files with an index for random access.

What `dequant-prepare` writes into its output folder (the "shard set"):
- `shard-000000.tar`, ...: WebDataset shards (plain tar; `webdataset.WebDataset` streams them too). Sample `KEY`
  (the photo's position, 9 digits) holds `KEY.jpg` (or `KEY.png` for 16-bit photos: the photo, short side capped
  at `max_short_side`; a JPEG within the cap keeps its original bytes), `KEY.json` (its relative path and sizes) and
  `KEY.seg.npz` (its segmentations, when prepared for `segment_source: image`: one uint16 label map per segmenter
  and scale bucket, from `ExampleMaker.segmentation`, so training cuts the authors' full-resolution masks at the
  cost of a read).
- `shard-000000.idx.npz`, ...: where each member starts and ends in its shard (written with the shard).
- `index.npz`: all the shards' indexes in one, and `photos.npz`: the photos' relative paths (a `PathList`).
- `dataset.json`, written last: the format version, the shards with their sizes, and the settings the photos and
  segmentations were prepared with. A folder without it is not finished (`dequant-prepare` resumes it).

Training reads a photo with one ranged read of its shard (`ShardCatalog`), so the data module's exact-once, seeded,
resumable sampler works on shards as on files. `url` is a local folder or any fsspec URL (`s3://`, `gs://`, ... with
the matching fsspec package installed; `simplecache::s3://...` keeps whole shards on the local disk).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from dequant.data.catalog import PathList
from dequant.data.io import EncodedJpeg, ImageLoadError, load_rgb_bytes

FORMAT = "dequant-shards"
VERSION = 1
MANIFEST = "dataset.json"
INDEX = "index.npz"
PHOTOS = "photos.npz"
# The index arrays, one entry per photo.
INDEX_KEYS = ("shard", "image_offset", "image_size", "seg_offset", "seg_size", "height", "width", "png")
# The ExampleMaker settings that decide which segmentations an example asks for (ExampleMaker.segment_keys).
SEGMENT_SETTINGS = ("crop_size", "segmenters", "segment_scale_step", "max_short_side", "small_image")


class ShardError(ValueError):
    """A shard set that cannot be used as it is; the message names the file or key and the way out."""


def shard_name(i: int) -> str:
    """File name of shard i."""
    return f"shard-{i:06d}.tar"


def segment_settings(maker: Any) -> dict[str, Any]:
    """The settings of an ExampleMaker that its stored segmentations must match."""
    return {"crop_size": maker.crop_size, "segmenters": list(maker.segmenters),
            "segment_scale_step": maker.segment_scale_step, "max_short_side": maker.max_short_side,
            "small_image": maker.small_image}


def _fs(url: str):
    """(fsspec file system, path) of a local folder or URL."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs, path.rstrip("/")


class StoredSegments(MutableMapping):
    """The segmentations a shard holds for one photo, read lazily from its `.seg.npz` (label maps as uint16,
    segment areas counted on read), in the shape of an ExampleMaker `segment_cache`."""

    def __init__(self, data: bytes | Callable[[], bytes | None] | None) -> None:
        self._data = data
        self._parsed = None
        self._extra: dict[Any, Any] = {}

    @property
    def _npz(self) -> Any:
        # Read and parsed on first use: a palette-mode example never reads its photo's segmentations.
        if callable(self._data):
            self._data = self._data()
        if self._parsed is None and self._data is not None:
            self._parsed = np.load(io.BytesIO(self._data), allow_pickle=False)
        return self._parsed

    @staticmethod
    def member(key: tuple[str, Any]) -> str:
        """The npz member name of a (segmenter, bucket) key."""
        return f"{key[0]}_{key[1]}"

    def __getitem__(self, key: Any) -> Any:
        if key in self._extra:
            return self._extra[key]
        if self._npz is None or not isinstance(key, tuple) or self.member(key) not in self._npz.files:
            raise KeyError(key)
        labels = self._npz[self.member(key)]
        return labels, np.bincount(labels.ravel())

    def __setitem__(self, key: Any, value: Any) -> None:
        self._extra[key] = value

    def __delitem__(self, key: Any) -> None:
        del self._extra[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._extra)

    def __len__(self) -> int:
        return len(self._extra) + (0 if self._npz is None else len(self._npz.files))


class ShardCatalog:
    """The photos of a shard set (`url`: its folder or fsspec URL), opened by position with one ranged read."""

    def __init__(self, url: str | os.PathLike) -> None:
        self.url = os.fspath(url)
        fs, root = _fs(self.url)
        manifest_path = f"{root}/{MANIFEST}"
        try:
            with fs.open(manifest_path, "rb") as f:
                manifest = json.loads(f.read())
        except FileNotFoundError as err:
            hint = ("it is not finished: run the same dequant-prepare command again to finish it"
                    if fs.exists(f"{root}/prepare.json") else "it holds no shard set: make one with dequant-prepare")
            raise ShardError(f"data.url {self.url!r}: no {MANIFEST}; {hint}") from err
        except (OSError, ValueError) as err:
            raise ShardError(f"data.url {self.url!r}: cannot read {MANIFEST} ({type(err).__name__}: {err}); check "
                             "the URL and your access to it") from err
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ShardError(f"data.url {self.url!r}: {MANIFEST} is not a dequant shard set (no format "
                             f"{FORMAT!r}); make one with dequant-prepare")
        if manifest.get("version") != VERSION:
            raise ShardError(f"data.url {self.url!r}: {MANIFEST} has format version {manifest.get('version')!r}, "
                             f"this dequant reads version {VERSION}: prepare the photos again with this "
                             "version's dequant-prepare (or use the dequant that made them)")
        self.manifest = manifest
        self.shards = [s["name"] for s in manifest["shards"]]
        try:
            with fs.open(f"{root}/{INDEX}", "rb") as f, np.load(io.BytesIO(f.read()), allow_pickle=False) as z:
                self.index = {k: np.asarray(z[k]) for k in INDEX_KEYS}
            with fs.open(f"{root}/{PHOTOS}", "rb") as f, np.load(io.BytesIO(f.read()), allow_pickle=False) as z:
                self.names = PathList(z["blob"], z["offsets"], z["rel_start"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise ShardError(f"data.url {self.url!r}: its index ({INDEX}, {PHOTOS}) cannot be read "
                             f"({type(err).__name__}: {err}); delete {MANIFEST} and run the same dequant-prepare "
                             "command again to rebuild it") from err
        if len(self.names) != int(manifest["photos"]) or any(v.size != len(self.names) for v in self.index.values()):
            raise ShardError(f"data.url {self.url!r}: {INDEX} does not match {MANIFEST} ({len(self.names)} photos "
                             f"listed, {manifest['photos']} expected); delete {MANIFEST} and run the same "
                             "dequant-prepare command again to rebuild it")
        self._root = root
        self._fs = None  # opened per process: file systems and handles do not survive a fork well
        self._handles: dict[int, Any] = {}

    def check_files(self) -> None:
        """Every shard exists with the size the manifest says (a cut-short copy or a missing file is named)."""
        fs, root = _fs(self.url)
        for entry in self.manifest["shards"]:
            path = f"{root}/{entry['name']}"
            try:
                size = fs.size(path)
            except (FileNotFoundError, OSError) as err:
                raise ShardError(f"data.url {self.url!r}: shard {entry['name']} is missing ({err}); copy it again, "
                                 "or run dequant-prepare again to remake it") from err
            if size != entry["bytes"]:
                raise ShardError(f"data.url {self.url!r}: shard {entry['name']} has {size} bytes, {entry['bytes']} "
                                 "expected (cut short or changed): copy it again, or delete it and run the same "
                                 "dequant-prepare command again to remake it")

    def check_segmentations(self, maker: Any) -> bool:
        """Whether the stored segmentations serve `maker` (False when none were prepared); a ShardError when they
        were prepared for other settings."""
        stored = self.manifest.get("segmentations")
        if not stored:
            return False
        mine = segment_settings(maker)
        differ = {k: (stored.get(k), mine[k]) for k in SEGMENT_SETTINGS if stored.get(k) != mine[k]}
        if differ:
            what = ", ".join(f"data.example.{k}: {a!r} in the shards, {b!r} here" for k, (a, b) in differ.items())
            raise ShardError(f"data.url {self.url!r}: its segmentations were prepared for other settings ({what}); "
                             "prepare the photos again with this run's settings (dequant-prepare --experiment ...), "
                             "or set data.example.segment_source=crop to segment each crop instead")
        return True

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fs"], state["_handles"] = None, {}
        return state

    def __len__(self) -> int:
        return len(self.names)

    def name(self, position: int) -> str:
        """What messages call photo `position`: its shard and relative path."""
        return f"{self.shards[int(self.index['shard'][position])]}:{self.names.relpath(position)}"

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        if self._fs is None:
            self._fs = _fs(self.url)[0]
        handle = self._handles.get(shard)
        if handle is None:
            if len(self._handles) >= 64:  # a bounded number of open shards per process
                self._handles.pop(next(iter(self._handles))).close()
            handle = self._handles[shard] = self._fs.open(f"{self._root}/{self.shards[shard]}", "rb")
        handle.seek(offset)
        data = handle.read(size)
        if len(data) != size:
            raise OSError(f"read {len(data)} of {size} bytes at {offset}")
        return data

    def segments(self, position: int) -> StoredSegments:
        """Photo `position`'s stored segmentations, read from its shard when an example first asks."""
        ix = self.index

        def read() -> bytes | None:
            if ix["seg_size"][position] == 0:
                return None
            try:
                return self._read(int(ix["shard"][position]), int(ix["seg_offset"][position]),
                                  int(ix["seg_size"][position]))
            except (OSError, ValueError) as err:
                raise ImageLoadError(self.name(position), f"{type(err).__name__}: {err}") from err

        return StoredSegments(read)

    def open(self, position: int) -> tuple[Tensor | EncodedJpeg, StoredSegments]:
        """Photo `position` (undecoded when a JPEG) and its stored segmentations; ImageLoadError when its bytes
        cannot be read or decoded (the data module then skips it with a warning, as it does a bad file)."""
        ix = self.index
        name = self.name(position)
        try:
            data = self._read(int(ix["shard"][position]), int(ix["image_offset"][position]),
                              int(ix["image_size"][position]))
        except (OSError, ValueError) as err:
            raise ImageLoadError(name, f"{type(err).__name__}: {err}") from err
        if not ix["png"][position]:
            jpeg = EncodedJpeg.read(name, data=data)
            if jpeg is not None and (jpeg.height, jpeg.width) == (int(ix["height"][position]),
                                                                  int(ix["width"][position])):
                return jpeg, self.segments(position)
        return load_rgb_bytes(data, name), self.segments(position)


def index_name(i: int) -> str:
    """File name of shard i's index (written after the shard: its presence says the shard is whole)."""
    return f"shard-{i:06d}.idx.npz"


def write_index(entries: Sequence[dict[str, int]], path: str | os.PathLike,
                keys: Sequence[str] = INDEX_KEYS) -> None:
    """Write the index arrays `keys` of `entries` (one dict per photo) to `path` (.npz), atomically."""
    from dequant.atomic import atomic_path

    arrays = {k: np.array([e[k] for e in entries], dtype=np.int64) for k in keys}
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
