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

Bad files. `load_rgb` failures are warned about once per file and process (the message names the file) and the
next image of the same split is used instead; a split whose every image fails is a ValueError. Setup loads
training images until one succeeds, so an all-bad training set fails before training starts.

Batches are dicts of tensors: hint (B,7,S,S), target (B,3,S,S), mask (B,S,S) bool, image_id (B,) int64 (index of
the file in the sorted list of all images), n_colors (B,) int64, patch (B,) bool, keep_texture (B,) bool.
"""

from __future__ import annotations

import math
import os
import signal
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from dequant.data.examples import ExampleMaker
from dequant.data.io import ImageLoadError, list_images, load_rgb, save_split, split_paths
from dequant.data.validation import FixedValidation

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


class _ImageSource:
    """Loads the images of one split by position, with an optional per-process cache and bad-file substitution."""

    def __init__(self, paths: Sequence[Path], cache: bool, cache_max_gb: float, split: str) -> None:
        self.paths = list(paths)
        self.cache = cache
        self.cache_max_bytes = int(cache_max_gb * 2**30)
        self.split = split
        self._cached: dict[int, np.ndarray | Tensor] = {}  # position -> the image as `_compact` keeps it
        self._cached_bytes = 0
        # What the example maker keeps with each cached image (its segment_cache), beside the decoded image.
        self._segments: dict[int, _SegmentCache] = {}
        self._bad: dict[int, str] = {}  # position -> why it cannot be loaded
        self._full_noted = False

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

    def _load(self, i: int) -> Tensor:
        if i in self._cached:
            return _restore(self._cached[i])
        image = load_rgb(self.paths[i])
        if self.cache:
            stored = _compact(image)
            if self._cached_bytes + stored.nbytes <= self.cache_max_bytes:
                self._cached[i] = stored
                self._cached_bytes += stored.nbytes
            else:
                self.note_full()
        return image

    def get(self, i: int) -> tuple[int, Tensor]:
        """(position actually used, image): position i, or the next loadable one after it (wrapping around)."""
        n = len(self.paths)
        for step in range(n):
            j = (i + step) % n
            if j in self._bad:
                continue
            try:
                return j, self._load(j)
            except ImageLoadError as err:
                self._bad[j] = err.reason
                warnings.warn(f"skipping unreadable {self.split} image {err.path} ({err.reason}); "
                              "another image of the split is used instead", stacklevel=2)
        first = min(self._bad)
        raise ValueError(f"none of the {n} {self.split} images can be loaded (first: {self.paths[first]}: "
                         f"{self._bad[first]}); check the `paths` of the data config")


class TrainDataset(Dataset):
    """Map-style training set: `dataset[(k, epoch, image_index)]` is sample k of that epoch (module docstring)."""

    def __init__(self, source: _ImageSource, image_ids: Sequence[int], example: ExampleMaker, seed: int) -> None:
        self.source = source
        self.image_ids = list(image_ids)
        self.example = example
        self.seed = seed

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, key: tuple[int, int, int] | int) -> dict[str, Tensor]:
        k, epoch, i = (key, 0, key % len(self)) if isinstance(key, (int, np.integer)) else key
        used, image = self.source.get(int(i))
        rng = np.random.default_rng([self.seed, int(epoch), int(k)])
        return _as_batch_item(self.example(image, rng, segment_cache=self.source.segments(used)),
                              self.image_ids[used])


class FixedExamples(Dataset):
    """`per_image` deterministic examples of each image of a split; example j of image i uses
    `default_rng([split_seed, tag, i, j])` and the mask-mean fill."""

    def __init__(self, source: _ImageSource, image_ids: Sequence[int], example: ExampleMaker, split_seed: int,
                 tag: int, per_image: int) -> None:
        self.source = source
        self.image_ids = list(image_ids)
        self.example = example
        self.split_seed = split_seed
        self.tag = tag
        self.per_image = per_image

    def __len__(self) -> int:
        return len(self.image_ids) * self.per_image

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        i, j = divmod(int(index), self.per_image)
        used, image = self.source.get(i)
        rng = np.random.default_rng([self.split_seed, self.tag, i, j])
        return _as_batch_item(self.example(image, rng, eval_mode=False, segment_cache=self.source.segments(used)),
                              self.image_ids[used])


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

    def keys(self) -> list[tuple[int, int, int]]:
        """This rank's keys for the current epoch, in order."""
        total = len(self) * self.world_size
        cycles = math.ceil(total / self.n_images)
        images = np.concatenate([np.random.default_rng([self.seed, self.epoch, 0, c]).permutation(self.n_images)
                                 for c in range(cycles)])[:total]
        mine = np.arange(self.rank, total, self.world_size)
        # Shuffle this rank's samples (not just its images) so that batches mix images across cycles.
        mine = mine[np.random.default_rng([self.seed, self.epoch, 1, self.rank]).permutation(mine.size)]
        return [(int(k), self.epoch, int(images[k])) for k in mine]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        start, self.start = self.start, 0
        yield from self.keys()[start:]

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
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        example: ExampleMaker,
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
        val_fixed: FixedValidation | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(example, ExampleMaker):
            raise ValueError(f"example must be a dequant.data.examples.ExampleMaker, got {type(example).__name__}")
        self.paths = paths
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
        self.split: dict[str, list[Path]] | None = None
        self.all_paths: list[Path] = []
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
        assert self.split is not None
        return _ImageSource(self.split[name], self.cache_images, self.cache_max_gb, name)

    def _ids(self, name: str) -> list[int]:
        assert self.split is not None
        index = {p: i for i, p in enumerate(self.all_paths)}
        return [index[p] for p in self.split[name]]

    def setup(self, stage: str | None = None) -> None:
        """List and split the images, check that training images load, make the fixed validation examples."""
        if self.split is not None:
            return
        self.all_paths = list_images(self.paths)
        self.split = split_paths(self.all_paths, seed=self.split_seed, n_val=self.n_val, n_test=self.n_test)
        if self.train_only_paths:
            # A photo listed in both stays where the split put it, so a held-out photo never trains.
            known = set(self.all_paths)
            extra = [q for q in list_images(self.train_only_paths) if q not in known]
            self.all_paths = self.all_paths + extra
            self.split["train"] = list(self.split["train"]) + extra
        train_source = self._source("train")
        train_source.get(0)  # fails now, with a clear message, when no training image can be loaded
        self._train = TrainDataset(train_source, self._ids("train"), self.example, self.seed)
        val = FixedExamples(self._source("val"), self._ids("val"), self.example, self.split_seed, VAL_TAG,
                            self.val_examples_per_image)
        self.val_examples = [val[i] for i in range(len(val))]
        if self.val_fixed is not None:  # issue 27: the fixed validation set
            source, val_ids = self._source("val"), self._ids("val")

            def photo(i: int) -> tuple[int, Tensor]:
                used, image = source.get(i)  # an unreadable photo is replaced by the next one, as above
                return val_ids[used], image

            self.val_fixed_settings = self.val_fixed.settings(self.example.cue.mode)
            self.val_fixed_examples = self.val_fixed.build(photo, len(val_ids), self.example.crop_size,
                                                           self.example.cue)
        self._test = FixedExamples(self._source("test"), self._ids("test"), self.example, self.split_seed,
                                   TEST_TAG, 1)

    @property
    def test_paths(self) -> list[Path]:
        """Files of the test split (after `setup`)."""
        return list(self._require_setup()["test"])

    def _require_setup(self) -> dict[str, list[Path]]:
        if self.split is None:
            raise RuntimeError("call setup() first")
        return self.split

    def save_split(self, run_dir: str | os.PathLike) -> Path:
        """Write the split to `run_dir/split.json` so that it can be audited."""
        return save_split(self._require_setup(), Path(run_dir) / "split.json")

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
