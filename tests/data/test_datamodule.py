"""DequantDataModule: split, batches, the seeded example stream, sharding, fixed validation, bad files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch

from dequant.data.catalog import PathList
from dequant.data.datamodule import DequantDataModule, EpochSampler, FolderCatalog, _ImageSource
from dequant.data.examples import ExampleMaker
from dequant.data.io import load_rgb
from dequant.data.palette_sizes import FixedPaletteSize

CROP = 16


def _write_images(folder: Path, n: int, size=(24, 30), name: str = "img_{i:02d}.png", seed: int = 123) -> list[Path]:
    """n small smooth color images (a few blobs each), named by `name` (its suffix picks the format; it may hold a
    subfolder)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size[0], : size[1]]
    paths = []
    for i in range(n):
        img = np.zeros((*size, 3))
        for _ in range(3):
            cy, cx, r = rng.uniform(0, size[0]), rng.uniform(0, size[1]), rng.uniform(4, 10)
            img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)[..., None] * rng.uniform(0, 1, 3)
        path = folder / name.format(i=i, half=i % 2)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path, quality=95)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    _write_images(root, 8)
    return root


def _dm(paths, **kwargs) -> DequantDataModule:
    example = ExampleMaker(crop_size=CROP, palette_sizes=FixedPaletteSize(4), p_superpixel=0.5,
                           segmenters=("slic", "felzenszwalb"))
    kwargs = {"batch_size": 4, "num_workers": 0, "n_val": 2, "n_test": 1, **kwargs}
    return DequantDataModule(paths, example, **kwargs)


def _epoch(dm: DequantDataModule, epoch: int, loader=None) -> list[dict[str, torch.Tensor]]:
    loader = loader or dm.train_dataloader()
    _set_sampler_epoch(loader, epoch)  # what Lightning's fit loop does before every epoch
    return list(loader)


def _cat(batches, key):
    return torch.cat([b[key] for b in batches])


def test_setup_split_and_batch_shapes(folder, tmp_path):
    dm = _dm(str(folder))
    dm.setup("fit")
    assert [len(dm.split[k]) for k in ("train", "val", "test")] == [5, 2, 1]
    assert dm.test_paths == dm.split["test"]
    batches = _epoch(dm, 0)
    assert len(batches) == 2  # 5 samples per epoch by default, batch 4
    b = batches[0]
    assert b["hint"].shape == (4, 7, CROP, CROP) and b["hint"].dtype == torch.float32
    assert b["target"].shape == (4, 3, CROP, CROP)
    assert b["image_id"].dtype == torch.int64 and b["n_colors"].dtype == torch.int64
    assert b["patch"].dtype == torch.bool and b["mask"].shape == (4, CROP, CROP)
    train_ids = {dm.all_paths.index(p) for p in dm.split["train"]}
    assert set(_cat(batches, "image_id").tolist()) == train_ids  # every training image once per epoch
    path = dm.save_split(tmp_path / "run")
    assert path.name == "split.json" and set(json.loads(path.read_text())) == {"train", "val", "test"}


def test_stream_independent_of_workers_and_new_each_epoch(folder):
    """Two workers (persistent) give exactly the single-process stream, epoch after epoch."""
    ref = _dm(str(folder), samples_per_epoch=8, num_workers=0)
    ref.setup()
    par = _dm(str(folder), samples_per_epoch=8, num_workers=2, persistent_workers=True)
    par.setup()
    loader = par.train_dataloader()
    for epoch in (0, 1):
        a, b = _epoch(ref, epoch), _epoch(par, epoch, loader)
        for key in ("hint", "target", "image_id", "n_colors", "patch"):
            assert torch.equal(_cat(a, key), _cat(b, key)), (epoch, key)
        targets = _cat(b, "target")
        # Examples made by different workers (alternating batches) and within one batch all differ.
        assert len({t.numpy().tobytes() for t in targets}) == len(targets)
        if epoch == 0:
            first = targets
    assert not torch.equal(first, targets)


def test_stream_deterministic_for_a_seed(folder):
    runs = []
    for seed in (0, 0, 1):
        dm = _dm(str(folder), seed=seed)
        dm.setup()
        runs.append(_cat(_epoch(dm, 3), "hint"))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_sharding_disjoint_and_complete():
    parts = [EpochSampler(10, 25, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for s in parts:
        s.set_epoch(2)
    k0, k1 = ({k for k, _, _ in s} for s in parts)
    assert len(parts[0]) == len(parts[1]) == 13 == len(k0) == len(k1)
    assert not k0 & k1 and k0 | k1 == set(range(26))
    images = [i for s in parts for _, _, i in s]
    assert np.bincount(images, minlength=10).min() >= 2  # successive permutations use images evenly
    assert all(e == 2 for s in parts for _, e, _ in s)


def test_datamodule_sharding_by_rank(folder):
    dm = _dm(str(folder), samples_per_epoch=10)
    dm.setup()
    ids = [_cat(_epoch(dm, 0, dm.train_dataloader(rank=r, world_size=2)), "target") for r in (0, 1)]
    assert len(ids[0]) == len(ids[1]) == 5
    assert not any(torch.equal(a, b) for a in ids[0] for b in ids[1])


def test_sampler_resume_state():
    s = EpochSampler(6, 6, seed=0)
    s.set_epoch(4)
    keys = list(s)
    t = EpochSampler(6, 6, seed=0)
    t.load_state_dict({"epoch": 4, "start": 2})
    assert list(t) == keys[2:] and list(t) == keys  # `start` applies to one iteration only


def test_datamodule_state_dict_restores_epoch(folder):
    dm = _dm(str(folder))
    dm.setup()
    loader = dm.train_dataloader()
    _set_sampler_epoch(loader, 5)
    state = dm.state_dict()
    dm2 = _dm(str(folder))
    dm2.setup()
    dm2.load_state_dict(state)
    assert torch.equal(_cat(list(dm2.train_dataloader()), "target"), _cat(list(loader), "target"))


def test_validation_examples_fixed(folder):
    a, b = _dm(str(folder), val_examples_per_image=2), _dm(str(folder), val_examples_per_image=2, seed=9)
    a.setup()
    b.setup()
    first, second = list(a.val_dataloader()), list(a.val_dataloader())
    other = list(b.val_dataloader())
    assert len(_cat(first, "hint")) == 4
    for key in ("hint", "target", "mask", "image_id", "patch"):
        assert torch.equal(_cat(first, key), _cat(second, key))
        assert torch.equal(_cat(first, key), _cat(other, key))  # the training seed does not change them
    t1, t2 = list(a.test_dataloader()), list(a.test_dataloader())
    assert torch.equal(_cat(t1, "hint"), _cat(t2, "hint")) and len(_cat(t1, "hint")) == 1


def test_corrupt_file_warns_once_and_training_continues(tmp_path):
    paths = _write_images(tmp_path / "data", 6)
    bad = tmp_path / "data" / "img_99_broken.png"
    bad.write_bytes(paths[0].read_bytes()[:60])  # a truncated PNG
    dm = _dm(str(tmp_path / "data"), n_val=0, n_test=0, samples_per_epoch=14)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup()
        batches = _epoch(dm, 0) + _epoch(dm, 1)
    about_bad = [w for w in caught if "img_99_broken.png" in str(w.message)]
    assert len(about_bad) == 1
    assert len(_cat(batches, "target")) == 28
    bad_id = dm.all_paths.index(bad)
    assert bad_id not in _cat(batches, "image_id").tolist()


def test_all_bad_files_error_clearly(tmp_path):
    (tmp_path / "bad").mkdir()
    for i in range(3):
        (tmp_path / "bad" / f"{i}.jpg").write_bytes(b"not a jpeg")
    dm = _dm(str(tmp_path / "bad"), n_val=0, n_test=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="none of the 3 train images can be loaded"):
            dm.setup()


def test_empty_glob_and_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="matches no image"):
        _dm(str(tmp_path / "*.png")).setup()
    with pytest.raises(ValueError, match="nowhere"):
        _dm(tmp_path / "nowhere").setup()


def test_constructor_validation():
    example = ExampleMaker(crop_size=CROP)
    with pytest.raises(ValueError, match="batch_size"):
        DequantDataModule("x", example, batch_size=0)
    with pytest.raises(ValueError, match="samples_per_epoch"):
        DequantDataModule("x", example, samples_per_epoch=0)
    with pytest.raises(ValueError, match="example"):
        DequantDataModule("x", object())
    with pytest.raises(RuntimeError, match="setup"):
        DequantDataModule("x", example).val_dataloader()


def test_lightning_trainer_sets_the_epoch(folder):
    """A real fit: Lightning calls the sampler's set_epoch, so the two epochs see different examples."""
    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen: list[tuple[int, torch.Tensor]] = []

        def training_step(self, batch, _):
            self.seen.append((self.current_epoch, batch["target"].clone()))
            return (self.w * batch["hint"].mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = _dm(str(folder))
    model = Recorder()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        use_distributed_sampler=False)
    trainer.fit(model, datamodule=dm)
    epochs = [torch.cat([t for e, t in model.seen if e == k]) for k in (0, 1)]
    assert len(epochs[0]) == len(epochs[1]) == 5
    assert not torch.equal(epochs[0], epochs[1])
    dm_ref = _dm(str(folder))
    dm_ref.setup()
    assert torch.equal(epochs[1], _cat(_epoch(dm_ref, 1), "target"))


def _cached_dm(paths, segment_source="image", **kwargs) -> DequantDataModule:
    """Patch-mode examples whose superpixels come from the cached segmentation of the whole source image."""
    example = ExampleMaker(crop_size=CROP, palette_sizes=FixedPaletteSize(4), p_patch=1.0, p_superpixel=1.0,
                           segmenters=("slic", "felzenszwalb"), segment_source=segment_source,
                           segment_max_side=None)
    kwargs = {"batch_size": 4, "num_workers": 0, "n_val": 2, "n_test": 1, **kwargs}
    return DequantDataModule(paths, example, **kwargs)


def test_segment_cache_resume_gives_the_same_batches(folder):
    # A run that resumes mid-epoch with cold caches gets the batches the uninterrupted run (warm caches) got.
    dm = _cached_dm(str(folder))
    dm.setup()
    _epoch(dm, 0)  # warms the caches
    whole = _epoch(dm, 1)
    assert any(len(c) for c in dm._train.source._segments.values()), "the cache must be used"
    loader = dm.train_dataloader()
    _set_sampler_epoch(loader, 1)
    state = dm.state_dict()
    state["sampler"]["start"] = 4  # one batch consumed
    resumed = _cached_dm(str(folder))
    resumed.setup()
    resumed.load_state_dict(state)
    rest = _epoch(resumed, 1)
    for key in ("hint", "target", "mask"):
        assert torch.equal(_cat(rest, key), _cat(whole[1:], key))


def test_segment_cache_warm_or_cold_same_examples(folder):
    warm = _cached_dm(str(folder))
    warm.setup()
    _epoch(warm, 0)
    cold = _cached_dm(str(folder))  # its segmentations are made during the epoch compared
    cold.setup()
    assert not any(len(c) for c in cold._train.source._segments.values())
    for key in ("hint", "target", "mask"):
        assert torch.equal(_cat(_epoch(warm, 2), key), _cat(_epoch(cold, 2), key))
    assert any(len(c) for c in cold._train.source._segments.values())


def test_segment_source_image_segments_the_crop_of_photos_not_kept(folder):
    # A photo nothing keeps (here: no image cache) is segmented on its crop, as segment_source=crop does (issue 26:
    # segmenting the whole photo for one example costs several crops' worth).
    uncached = _cached_dm(str(folder), cache_images=False)
    crop = _cached_dm(str(folder), segment_source="crop", cache_images=False)
    cached = _cached_dm(str(folder))
    for dm in (uncached, crop, cached):
        dm.setup()
    batches = _epoch(uncached, 1)
    assert not uncached._train.source._segments
    for key in ("hint", "target"):
        assert torch.equal(_cat(batches, key), _cat(_epoch(crop, 1), key))
    assert torch.equal(_cat(batches, "mask"), _cat(_epoch(crop, 1), "mask"))
    assert not torch.equal(_cat(batches, "mask"), _cat(_epoch(cached, 1), "mask"))


def test_segment_cache_stays_within_the_cache_budget(folder):
    # Room for the decoded training images (8-bit: kept as uint8) and a few segmentations: the rest is not kept,
    # the examples are the same.
    small = _cached_dm(str(folder), cache_max_gb=(5 * 24 * 30 * 3 + 24 * 30 * 4 + 1000) / 2**30)
    big = _cached_dm(str(folder))
    big.setup()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small.setup()
        small_batches = _epoch(small, 0)
    # Said once per split and process, naming the knob.
    full = [str(w.message) for w in caught if "train image cache is full" in str(w.message)]
    assert len(full) == 1 and "data.cache_max_gb" in full[0]
    for key in ("hint", "target", "mask"):
        assert torch.equal(_cat(small_batches, key), _cat(_epoch(big, 0), key))
    source = small._train.source
    assert source._cached_bytes <= source.cache_max_bytes
    kept = sum(len(c) for c in source._segments.values())
    assert kept < sum(len(c) for c in big._train.source._segments.values())


@pytest.mark.parametrize(("kind", "kept_as"), [("rgb8", np.uint8), ("gray8", np.uint8), ("rgb16", np.uint16),
                                               ("rgba", torch.float32)])
def test_image_cache_keeps_photos_compact_and_restores_them_bit_for_bit(tmp_path, kind, kept_as):
    import cv2
    from PIL import Image

    rng = np.random.default_rng(7)
    path = tmp_path / f"{kind}.png"
    if kind == "rgb16":  # OpenCV writes 16-bit PNGs (BGR order: irrelevant for random values)
        cv2.imwrite(str(path), rng.integers(0, 65536, (20, 26, 3), dtype=np.uint16))
    else:
        mode, channels = {"rgb8": ("RGB", 3), "gray8": ("L", 1), "rgba": ("RGBA", 4)}[kind]
        pixels = rng.integers(0, 256, (20, 26, channels), dtype=np.uint8)
        Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode).save(path)
    source = _ImageSource(FolderCatalog(PathList.from_strings([str(path)])), np.zeros(1, np.int64), cache=True,
                          cache_max_gb=1.0, split="train")
    decoded = load_rgb(path)
    first, again = source.get(0)[1], source.get(0)[1]  # decoded, then restored from the cache
    assert torch.equal(first, decoded) and torch.equal(again, decoded) and again.dtype == torch.float32
    kept = source._cached[0]
    assert kept.dtype == kept_as  # an alpha-composited photo has no exact integer form: it stays float32
    assert source._cached_bytes == kept.nbytes == decoded.nbytes * kept.itemsize // 4
