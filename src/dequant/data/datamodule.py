"""The LightningDataModule: image files -> split -> on-the-fly training examples, fixed validation/test examples.

Randomness. Training example k of epoch e is made with `np.random.default_rng([seed, e, k])`, whatever process
makes it: the stream depends on the seed only, never on the number of workers, and every epoch differs. The
`EpochSampler` (main process) yields keys `(k, e, image_index)`, so persistent workers see the new epoch through
the keys. It shards by rank itself (sample k goes to rank k % world_size), so trainers must run with
`use_distributed_sampler=False`. Which image sample k uses: the epoch's samples walk through successive seeded
permutations of the training images, so every image is used equally often.

Validation example j of validation image i uses `default_rng([split_seed, 1, i, j])` (test: tag 2), fill = mask
mean: the same crops, palettes and masks every time. Validation examples are made once, at setup, and kept in
memory; test examples are made on demand (also deterministic).

Photos. A catalog (`FolderCatalog`: files listed once into a `PathList`, saved in the run folder as
`listing_file` and read back on resume; `dequant.data.shards.ShardCatalog`: shards from `dequant-prepare`) names
every photo and opens photo p. The split (`split`: `hash` by default, `shuffle` the authors') is a set of position
arrays into the catalog (dequant.data.catalog). Every per-photo table a worker holds is a numpy array, so forked
workers share them instead of copying them page by page.

Decoding. A photo in the image cache is decoded once; any other JPEG reaches the example maker undecoded
(`EncodedJpeg`) and is decoded there only as far as its crop needs (a DCT-scaled decode); other formats are decoded
whole. So a data set far larger than `cache_max_gb` costs the decode of each crop, not of each whole photo.

Bad files. Unreadable files are warned about once per file and process (the message names the file) and the next
image of the same split is used instead, also when the damage only shows while decoding a crop; a split whose
every image fails is a ValueError. Setup loads training images until one succeeds, so an all-bad training set
fails before training starts.

Batches are dicts of tensors: hint (B,7,S,S), target (B,3,S,S), mask (B,S,S) bool, image_id (B,) int64 (the
photo's position in the catalog: the sorted list of all images), n_colors (B,) int64, patch (B,) bool,
keep_texture (B,) bool.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
import warnings
from collections.abc import Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from dequant.color._checks import check_choice
from dequant.data.catalog import SPLIT_METHODS, PathList, list_photos, load_listing, save_listing, spec_text, \
    split_positions
from dequant.data.examples import ExampleMaker
from dequant.atomic import write_text
from dequant.data.io import EncodedJpeg, ImageLoadError, check_paths, load_rgb, save_split
from dequant.data.shards import ShardCatalog
from dequant.data.validation import FixedValidation

log = logging.getLogger(__name__)

VAL_TAG, TEST_TAG = 1, 2
BATCH_KEYS = ("hint", "target", "mask", "image_id", "n_colors", "patch", "keep_texture")


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


# SLURM signals every process of a job step; the main process owns preemption (callbacks.PreemptionCheckpoint) and
# shuts its workers down itself, so a worker must neither die of these signals nor act on them.
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def _worker_init(_worker_id: int) -> None:
    # DataLoader already limits torch to one thread per worker; OpenCV would otherwise start one per core each.
    cv2.setNumThreads(1)
    for sig in PREEMPTION_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


# Integer types a decoded image may be cached as, with the scale load_rgb divided by: an 8-bit photo takes a quarter
# of its float32 size (a 16-bit one half), so four times as many fit `cache_max_gb`, and restoring one costs
# 0.1-0.2 ms where decoding it again costs 2-6 ms.
_COMPACT_TYPES = ((np.uint8, np.float32(255.0)), (np.uint16, np.float32(65535.0)))


def _compact(image: Tensor) -> np.ndarray | Tensor:
    """`image` as the smallest integer array that `_restore` turns back into it bit for bit, else `image` itself."""
    values = image.numpy()
    for dtype, scale in _COMPACT_TYPES:
        stored = np.rint(values * scale).astype(dtype)
        if np.array_equal(stored.astype(np.float32) / scale, values):
            return stored
    return image


def _restore(stored: np.ndarray | Tensor) -> Tensor:
    """The float32 image that `_compact` kept."""
    if isinstance(stored, Tensor):
        return stored
    scale = next(s for dtype, s in _COMPACT_TYPES if stored.dtype == dtype)
    return torch.from_numpy(stored.astype(np.float32) / scale)


class _SegmentCache(dict):
    """What ExampleMaker keeps with one cached image (its segment_cache: the image's segmentations, and a note that
    its values were checked); entries count against the source's cache budget and one that does not fit is not
    kept (the maker then segments again: same example, more time)."""

    def __init__(self, source: _ImageSource) -> None:
        super().__init__()
        self.source = source

    def __setitem__(self, key: Any, value: Any) -> None:
        nbytes = sum(getattr(v, "nbytes", 0) for v in (value if isinstance(value, tuple) else (value,)))
        if self.source._cached_bytes + nbytes > self.source.cache_max_bytes:
            self.source.note_full()
            return
        self.source._cached_bytes += nbytes
        super().__setitem__(key, value)


class FolderCatalog:
    """Photos that are files (a `PathList` of absolute paths): opened undecoded when a JPEG, else decoded."""

    def __init__(self, paths: PathList) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, position: int) -> str:
        """What messages call photo `position`: its path."""
        return self.paths[position]

    def segments(self, position: int) -> None:
        """Stored segmentations: files have none."""
        return None

    def open(self, position: int) -> tuple[Tensor | EncodedJpeg, MutableMapping | None]:
        """Photo `position`, undecoded when a JPEG (else decoded), and its stored segmentations (files have none);
        ImageLoadError if it cannot be read."""
        path = Path(self.paths[position])
        try:
            jpeg = EncodedJpeg.read(path)
        except OSError as err:
            raise ImageLoadError(path, f"{type(err).__name__}: {err}") from err
        return (load_rgb(path) if jpeg is None else jpeg), None


def _nbytes(image: Tensor | EncodedJpeg) -> int:
    """Bytes `_compact` would keep of this photo if it is 8-bit (what deciding to cache it needs to know)."""
    return 3 * image.height * image.width if isinstance(image, EncodedJpeg) else image.numel()


class _ImageSource:
    """Loads the photos of one split by position, with an optional per-process cache and bad-file substitution."""

    def __init__(self, catalog: Any, positions: np.ndarray, cache: bool, cache_max_gb: float, split: str) -> None:
        self.catalog = catalog
        self.positions = np.asarray(positions, dtype=np.int64)
        self.cache = cache
        self.cache_max_bytes = int(cache_max_gb * 2**30)
        self.split = split
        self._cached: dict[int, np.ndarray | Tensor] = {}  # position -> the image as `_compact` keeps it
        self._cached_bytes = 0
        # What the example maker keeps with each cached image (its segment_cache), beside the decoded image.
        self._segments: dict[int, _SegmentCache] = {}
        self._bad: dict[int, str] = {}  # position -> why it cannot be loaded
        self._full_noted = False

    def __len__(self) -> int:
        return int(self.positions.size)

    def __getstate__(self) -> dict[str, Any]:
        # Workers start with their own (empty) cache rather than a pickled copy of the main process's one.
        state = self.__dict__.copy()
        state["_cached"], state["_cached_bytes"], state["_segments"], state["_full_noted"] = {}, 0, {}, False
        return state

    def note_full(self) -> None:
        """Warn, once per process, that the cache refused something: it will be decoded or segmented again."""
        if self._full_noted:
            return
        self._full_noted = True
        warnings.warn(f"the {self.split} image cache is full ({self.cache_max_bytes / 2**30:.3g} GB, "
                      f"{len(self._cached)} images kept): what does not fit is decoded, and with segment_source: "
                      "image segmented, again for every example; data.cache_max_gb sets the budget of each "
                      "worker process (docs/configuration.md)", stacklevel=2)

    def segments(self, i: int) -> _SegmentCache | None:
        """The segmentation cache of cached image i (None when the image is not cached: nothing is kept)."""
        if i not in self._cached:
            return None
        if i not in self._segments:
            self._segments[i] = _SegmentCache(self)
        return self._segments[i]

    def _load(self, i: int) -> tuple[Tensor | EncodedJpeg, MutableMapping | None]:
        if i in self._cached:
            return _restore(self._cached[i]), self.catalog.segments(int(self.positions[i]))
        image, stored = self.catalog.open(int(self.positions[i]))
        if not self.cache:
            return image, stored
        if self._cached_bytes + _nbytes(image) > self.cache_max_bytes:
            self.note_full()
            return image, stored
        if isinstance(image, EncodedJpeg):
            image = image.tensor()
        compact = _compact(image)
        if self._cached_bytes + compact.nbytes <= self.cache_max_bytes:
            self._cached[i] = compact
            self._cached_bytes += compact.nbytes
        else:
            self.note_full()
        return image, stored

    def get(self, i: int) -> tuple[int, Tensor | EncodedJpeg, MutableMapping | None]:
        """(index actually used, photo, its segment cache): index i, or the next loadable one after it (wrapping
        around). The photo is a decoded tensor, or a JPEG still encoded (`EncodedJpeg`) when it is not cached; the
        segment cache is the photo's stored segmentations (shards), its cache entry (a cached photo), or None."""
        n = len(self)
        for step in range(n):
            j = (i + step) % n
            if j in self._bad:
                continue
            try:
                image, stored = self._load(j)
            except ImageLoadError as err:
                self.mark_bad(j, err)
                continue
            return j, image, (stored if stored is not None else self.segments(j))
        first = min(self._bad)
        raise ValueError(f"none of the {n} {self.split} images can be loaded (first: "
                         f"{self.catalog.name(int(self.positions[first]))}: {self._bad[first]}); check the `paths` "
                         "of the data config")

    def mark_bad(self, i: int, err: ImageLoadError) -> None:
        """Remember that image i cannot be loaded and say so once (its examples use the next image instead)."""
        self._bad[i] = err.reason
        self._cached.pop(i, None)
        warnings.warn(f"skipping unreadable {self.split} image {err.path} ({err.reason}); "
                      "another image of the split is used instead", stacklevel=3)

    def example(self, i: int, make: Any) -> tuple[int, dict[str, Any]]:
        """(index used, `make(photo, segment_cache)`) for image i or, when it cannot be read (also when the damage
        only shows while `make` decodes the crop), the next loadable image."""
        n = len(self)
        for _ in range(n):
            used, image, segments = self.get(i)
            try:
                return used, make(image, segments)
            except ImageLoadError as err:
                self.mark_bad(used, err)
                i = used + 1
        return self.get(i)[0], make(*self.get(i)[1:])  # raises the "none can be loaded" error


class TrainDataset(Dataset):
    """Map-style training set: `dataset[(k, epoch, image_index)]` is sample k of that epoch (module docstring)."""

    def __init__(self, source: _ImageSource, example: ExampleMaker, seed: int) -> None:
        self.source = source
        self.example = example
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int, int] | int) -> dict[str, Tensor]:
        k, epoch, i = (key, 0, key % len(self)) if isinstance(key, (int, np.integer)) else key

        def make(image, segments):
            rng = np.random.default_rng([self.seed, int(epoch), int(k)])
            return self.example(image, rng, segment_cache=segments)

        used, ex = self.source.example(int(i), make)
        return _as_batch_item(ex, int(self.source.positions[used]))


class FixedExamples(Dataset):
    """`per_image` deterministic examples of each image of a split; example j of image i uses
    `default_rng([split_seed, tag, i, j])` and the mask-mean fill."""

    def __init__(self, source: _ImageSource, example: ExampleMaker, split_seed: int, tag: int,
                 per_image: int) -> None:
        self.source = source
        self.example = example
        self.split_seed = split_seed
        self.tag = tag
        self.per_image = per_image

    def __len__(self) -> int:
        return len(self.source) * self.per_image

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        i, j = divmod(int(index), self.per_image)

        def make(image, segments):
            rng = np.random.default_rng([self.split_seed, self.tag, i, j])
            return self.example(image, rng, eval_mode=False, segment_cache=segments)

        used, ex = self.source.example(i, make)
        return _as_batch_item(ex, int(self.source.positions[used]))


def _as_batch_item(ex: dict[str, Any], image_id: int) -> dict[str, Tensor]:
    """The tensor part of an example, plus its image id, ready for default_collate."""
    return {
        "hint": ex["hint"],
        "target": ex["target"],
        "mask": ex["mask"],
        "image_id": torch.tensor(image_id, dtype=torch.int64),
        "n_colors": torch.tensor(ex["n_colors"], dtype=torch.int64),
        "patch": torch.tensor(ex["patch"], dtype=torch.bool),
        "keep_texture": torch.tensor(ex["keep_texture"], dtype=torch.bool),
    }


class EpochSampler(Sampler):
    """Yields this rank's keys `(k, epoch, image_index)` for one epoch of `samples_per_epoch` samples.

    The epoch is padded up to a multiple of `world_size` with extra samples (their own k, so ranks never share an
    example); each rank yields ceil(samples_per_epoch / world_size) keys in a seeded shuffled order.
    """

    def __init__(self, n_images: int, samples_per_epoch: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.n_images = _check_int(n_images, "n_images", 1)
        self.samples_per_epoch = _check_int(samples_per_epoch, "samples_per_epoch", 1)
        self.seed = int(seed)
        self.world_size = _check_int(world_size, "world_size", 1)
        self.rank = _check_int(rank, "rank", 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be < world_size ({self.world_size}), got {rank}")
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose keys the next iteration yields (Lightning calls this before every epoch)."""
        epoch = _check_int(epoch, "epoch", 0)
        if epoch != self.epoch:
            self.start = 0  # a resume position belongs to the epoch it was saved in (fault tolerance)
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.samples_per_epoch / self.world_size)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """This rank's sample numbers k and their images for the current epoch, in order (numpy arrays: a million
        samples cost 16 MB, not a list of a million tuples)."""
        total = len(self) * self.world_size
        cycles = math.ceil(total / self.n_images)
        images = np.concatenate([np.random.default_rng([self.seed, self.epoch, 0, c]).permutation(self.n_images)
                                 for c in range(cycles)])[:total]
        mine = np.arange(self.rank, total, self.world_size)
        # Shuffle this rank's samples (not just its images) so that batches mix images across cycles.
        mine = mine[np.random.default_rng([self.seed, self.epoch, 1, self.rank]).permutation(mine.size)]
        return mine, images[mine]

    def keys(self) -> list[tuple[int, int, int]]:
        """This rank's keys for the current epoch, in order."""
        return list(self._iter_keys(0))

    def _iter_keys(self, start: int) -> Iterator[tuple[int, int, int]]:
        samples, images = self._arrays()
        epoch = self.epoch
        for k, i in zip(samples[start:].tolist(), images[start:].tolist()):
            yield k, epoch, i

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        start, self.start = self.start, 0
        yield from self._iter_keys(start)

    def state_dict(self) -> dict[str, int]:
        """Epoch and position to resume from (position 0 = the start of the epoch)."""
        return {"epoch": self.epoch, "start": self.start, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue the stream at `state["epoch"]`, skipping the first `state["start"]` keys of that epoch."""
        if state.get("seed", self.seed) != self.seed:
            warnings.warn(f"sampler state was saved with seed {state['seed']}, this run uses seed {self.seed}",
                          stacklevel=2)
        self.epoch = _check_int(state["epoch"], "epoch", 0)
        self.start = _check_int(state.get("start", 0), "start", 0)


class DequantDataModule(LightningDataModule):
    """Training examples made on the fly from a folder/glob/list of images (SPEC 1), fixed val/test examples."""

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike] | None,
        example: ExampleMaker,
        url: str | None = None,
        batch_size: int = 8,
        num_workers: int = 2,
        seed: int = 0,
        split_seed: int = 42,
        n_val: int = 100,
        n_test: int = 1000,
        val_examples_per_image: int = 1,
        samples_per_epoch: int | None = None,
        cache_images: bool = True,
        cache_max_gb: float = 4.0,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        train_only_paths: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        split: str = "hash",
        val_fraction: float = 5e-4,
        test_fraction: float = 5e-3,
        listing_file: str | os.PathLike | None = None,
        listing_wait_s: float = 600.0,
        val_fixed: FixedValidation | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(example, ExampleMaker):
            raise ValueError(f"example must be a dequant.data.examples.ExampleMaker, got {type(example).__name__}")
        if (paths is None) == (url is None):
            raise ValueError("give the photos as data.paths (files: a folder, glob or list) or as data.url (shards "
                             f"from dequant-prepare), exactly one of them; got paths={paths!r}, url={url!r}")
        self.paths = paths
        self.url = url
        self.example = example
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        self.num_workers = _check_int(num_workers, "num_workers", 0)
        if self.num_workers > 0:
            # An OpenCV thread pool started in this process before the workers fork can leave them hung
            # (seen with setup() building validation examples); one OpenCV thread here avoids that.
            cv2.setNumThreads(1)
        self.seed = _check_int(seed, "seed", 0)
        self.split_seed = _check_int(split_seed, "split_seed", 0)
        self.n_val = _check_int(n_val, "n_val", 0)
        self.n_test = _check_int(n_test, "n_test", 0)
        self.val_examples_per_image = _check_int(val_examples_per_image, "val_examples_per_image", 1)
        self.samples_per_epoch = None if samples_per_epoch is None else _check_int(
            samples_per_epoch, "samples_per_epoch", 1)
        self.cache_images = bool(cache_images)
        if isinstance(cache_max_gb, bool) or not isinstance(cache_max_gb, (int, float)) or cache_max_gb < 0:
            raise ValueError(f"cache_max_gb must be a number >= 0, got {cache_max_gb!r}")
        self.cache_max_gb = float(cache_max_gb)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        # Extra photos that only ever train: adding them leaves the val/test split of `paths` as it was.
        self.train_only_paths = train_only_paths
        self.split_method = check_choice(split, SPLIT_METHODS, "split")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.listing_file = None if listing_file is None else Path(listing_file)
        if isinstance(listing_wait_s, bool) or not isinstance(listing_wait_s, (int, float)) or listing_wait_s < 0:
            raise ValueError(f"listing_wait_s must be a number >= 0, got {listing_wait_s!r}")
        self.listing_wait_s = float(listing_wait_s)
        self.catalog: Any = None
        self.positions: dict[str, np.ndarray] | None = None
        self._listing_made = False  # this setup listed the photos (rather than reading the run's saved listing)
        self.val_examples: list[dict[str, Tensor]] = []
        self._train: TrainDataset | None = None
        self._test: FixedExamples | None = None
        self._sampler: EpochSampler | None = None
        self._sampler_state: dict[str, int] | None = None
        # issue 27: the fixed validation set (dequant.data.validation), the same problems for every job.
        self.val_fixed = val_fixed
        self.val_fixed_examples: list[dict[str, Tensor]] = []
        self.val_fixed_settings: list = []

    # ------------------------------------------------------------------------------------------------- setup

    def _source(self, name: str) -> _ImageSource:
        assert self.positions is not None
        return _ImageSource(self.catalog, self.positions[name], self.cache_images, self.cache_max_gb, name)

    def _listing(self) -> PathList:
        """Every photo `paths` names: the run's saved listing when it was made from the same `paths` (resume), else
        listed now (by rank 0, which saves it; the other ranks wait up to `listing_wait_s` for it, so that a
        many-node job lists a million files once, not once per rank)."""
        if self.paths is None:
            raise ValueError("data.paths is null: give a folder, a glob pattern or a list of image files")
        spec = spec_text(self.paths)
        if self.listing_file is None:
            self._listing_made = True
            return list_photos(self.paths)
        listing = load_listing(self.listing_file, spec)
        failed = self.listing_file.with_name(self.listing_file.name + ".error")
        if listing is None and rank_zero_only.rank != 0:
            check_paths(self.paths)  # a bad entry fails here too, without waiting for rank 0
            deadline = time.monotonic() + self.listing_wait_s
            while listing is None and time.monotonic() < deadline:
                if failed.is_file():
                    raise ValueError(failed.read_text().strip())
                time.sleep(1.0)
                listing = load_listing(self.listing_file, spec)
        if listing is not None:
            log.info("photos: %d, from the saved listing %s", len(listing), self.listing_file)
            return listing
        start = time.monotonic()
        if rank_zero_only.rank != 0:
            return list_photos(self.paths)
        failed.unlink(missing_ok=True)
        try:
            listing = list_photos(self.paths)
        except ValueError as err:
            write_text(failed, f"{err}\n")  # the other ranks stop with the same line instead of waiting
            raise
        self._listing_made = True
        save_listing(listing, spec, self.listing_file)
        log.info("photos: %d, listed in %.1f s (saved to %s)", len(listing), time.monotonic() - start,
                 self.listing_file)
        return listing

    def _split(self, listing: PathList) -> dict[str, np.ndarray]:
        return split_positions(listing, self.split_method, n_val=self.n_val, n_test=self.n_test,
                               seed=self.split_seed, val_fraction=self.val_fraction,
                               test_fraction=self.test_fraction)

    def _shard_catalog(self) -> tuple[Any, dict[str, np.ndarray]]:
        """The shards at `url` and the positions of each split (by the photos' relative paths, as for files)."""
        catalog = ShardCatalog(self.url)
        catalog.check_files()
        if self.example.segment_source == "image" and not catalog.check_segmentations(self.example):
            warnings.warn(f"data.url {self.url!r} holds no segmentations (prepared without them): with "
                          "segment_source: image every patch example segments its crop", stacklevel=2)
        if self.train_only_paths:
            raise ValueError("data.train_only_paths works with data.paths; for shards, prepare every photo into "
                             "one shard set")
        if len(catalog) < self.n_val + self.n_test + 1:
            raise ValueError(f"data.url {self.url!r} holds {len(catalog)} photos, too few for data.n_val="
                             f"{self.n_val} and data.n_test={self.n_test} and a training photo: set smaller "
                             "data.n_val / data.n_test (e.g. data.n_val=1 data.n_test=1)")
        return catalog, self._split(catalog.names)

    def _catalog(self) -> tuple[Any, dict[str, np.ndarray]]:
        """The catalog of every photo and the positions of each split in it."""
        if self.url is not None:
            return self._shard_catalog()
        listing = self._listing()
        positions = self._split(listing)
        if self.train_only_paths:
            # A photo listed in both stays where the split put it, so a held-out photo never trains.
            extra = list_photos(self.train_only_paths)
            known = set(listing)
            keep = [i for i, q in enumerate(extra) if q not in known]
            extra = PathList.from_strings([extra[i] for i in keep], [int(extra.rel_start[i]) for i in keep])
            positions["train"] = np.concatenate([positions["train"], len(listing) + np.arange(len(extra))])
            listing = listing + extra
        return FolderCatalog(listing), positions

    def setup(self, stage: str | None = None) -> None:
        """List and split the images, check that training images load, make the fixed validation examples."""
        if self.positions is not None:
            return
        self.catalog, self.positions = self._catalog()
        train_source = self._source("train")
        train_source.get(0)  # fails now, with a clear message, when no training image can be loaded
        self._train = TrainDataset(train_source, self.example, self.seed)
        val = FixedExamples(self._source("val"), self.example, self.split_seed, VAL_TAG,
                            self.val_examples_per_image)
        self.val_examples = [val[i] for i in range(len(val))]
        if self.val_fixed is not None:  # the fixed validation set, the same problem for every job
            source = self._source("val")

            def photo(i: int) -> tuple[int, Tensor]:
                used, image, _ = source.get(i)  # an unreadable photo is replaced by the next one, as above
                return int(source.positions[used]), image.tensor() if isinstance(image, EncodedJpeg) else image

            self.val_fixed_settings = self.val_fixed.settings(self.example.cue.mode)
            self.val_fixed_examples = self.val_fixed.build(photo, len(source), self.example.crop_size,
                                                           self.example.cue)
        self._test = FixedExamples(self._source("test"), self.example, self.split_seed, TEST_TAG, 1)

    def _names(self, name: str) -> list[Path]:
        return [Path(self.catalog.name(int(p))) for p in self._require_setup()[name]]

    @property
    def split(self) -> dict[str, list[Path]] | None:
        """The files of each split (None before `setup`); a list per split: for small data sets and tests (the
        module itself keeps position arrays)."""
        if self.positions is None:
            return None
        return {k: self._names(k) for k in ("train", "val", "test")}

    @property
    def all_paths(self) -> list[Path]:
        """Every file of the catalog, in position order (`image_id` indexes it)."""
        self._require_setup()
        return [Path(self.catalog.name(i)) for i in range(len(self.catalog))]

    @property
    def test_paths(self) -> list[Path]:
        """Files of the test split (after `setup`)."""
        return self._names("test")

    def _require_setup(self) -> dict[str, np.ndarray]:
        if self.positions is None:
            raise RuntimeError("call setup() first")
        return self.positions

    def save_split(self, run_dir: str | os.PathLike) -> Path:
        """Write the split to `run_dir/split.json` so that it can be audited (kept as it is on a resume that read
        the saved listing: the same listing gives the same split)."""
        path = Path(run_dir) / "split.json"
        if path.is_file() and not self._listing_made:
            return path
        split = {k: self._names(k) for k in ("train", "val", "test", "unused")}
        return save_split(split, path)

    # ------------------------------------------------------------------------------------------------- loaders

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        world = int(trainer.world_size)
        if world > 1 and getattr(trainer._accelerator_connector, "use_distributed_sampler", False):
            raise ValueError("DequantDataModule shards by rank itself: set the trainer's "
                             "use_distributed_sampler=False (otherwise every rank sees a fraction of its share)")
        return int(trainer.global_rank), world

    def train_sampler(self, rank: int | None = None, world_size: int | None = None) -> EpochSampler:
        """The training sampler for `rank` of `world_size` (default: from the trainer, else 0 of 1)."""
        assert self._train is not None, "call setup() first"
        if rank is None or world_size is None:
            rank, world_size = self._rank_world()
        n = len(self._train)
        sampler = EpochSampler(n, self.samples_per_epoch or n, self.seed, rank, world_size)
        if self._sampler_state is not None:
            sampler.load_state_dict(self._sampler_state)
            self._sampler_state = None
        return sampler

    def _loader(self, dataset: Dataset, **kwargs: Any) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            dataset, batch_size=self.batch_size, num_workers=workers, pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and workers > 0,
            worker_init_fn=_worker_init if workers > 0 else None, **kwargs)

    def train_dataloader(self, rank: int | None = None, world_size: int | None = None) -> DataLoader:
        """Endless-style on-the-fly examples; the sampler carries the epoch and shards by rank."""
        self._require_setup()
        self._sampler = self.train_sampler(rank, world_size)
        return self._loader(self._train, sampler=self._sampler, drop_last=False)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The fixed validation examples (made once at setup), in order; not sharded: every rank validates all of
        them (a few images), so ranks agree on every val/ metric and on checkpoint decisions without a sync.
        With `val_fixed`, a second loader over the fixed validation set (the module splits it over ranks)."""
        self._require_setup()
        own = DataLoader(self.val_examples, batch_size=self.batch_size, shuffle=False, num_workers=0)
        if not self.val_fixed_examples:
            return own
        return [own, DataLoader(self.val_fixed_examples, batch_size=self.batch_size, shuffle=False, num_workers=0)]

    def test_dataloader(self) -> DataLoader:
        """Fixed test examples (one per test image), made on demand, in order."""
        self._require_setup()
        return self._loader(self._test, shuffle=False)

    # ------------------------------------------------------------------------------------------------- resume

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints by Lightning: the seeds and the sampler's epoch (resume continues the stream)."""
        state: dict[str, Any] = {"seed": self.seed, "split_seed": self.split_seed}
        if self._sampler is not None:
            state["sampler"] = self._sampler.state_dict()
            consumed = self._consumed_in_epoch()
            if consumed is not None:
                # Fault tolerance: resume at the exact batch. The position comes from Lightning's batch progress,
                # not from the sampler, which runs ahead of training by the batches the loader has prefetched.
                state["sampler"]["start"] = min(consumed, len(self._sampler))
        return state

    def _consumed_in_epoch(self) -> int | None:
        """Training samples this rank has consumed in the current epoch while fitting (None outside fit)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.state.fn != "fit":
            return None
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed) * self.batch_size

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore from a checkpoint; the next training loader starts at the saved epoch and position."""
        if state_dict.get("split_seed", self.split_seed) != self.split_seed:
            warnings.warn(f"checkpoint used split_seed {state_dict['split_seed']}, this run uses "
                          f"{self.split_seed}: train/val/test differ from the checkpoint's", stacklevel=2)
        self._sampler_state = state_dict.get("sampler")
