"""Shards from dequant-prepare (issue 26): the format, training from them, exact-once sampling, resume, bad input."""

from __future__ import annotations

import json
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch

from dequant.data import shards as fmt
from dequant.data.datamodule import DequantDataModule
from dequant.data.examples import ExampleMaker
from dequant.data.palette_sizes import FixedPaletteSize
from dequant.prepare import main as prepare_main

from tests.data.test_datamodule import _write_images

CROP = 16
# The prepare command's view of the training config: these make the same ExampleMaker as _maker() below.
SETTINGS = ["--set", f"data.example.crop_size={CROP}", "--set", "data.example.segment_source=image",
            "--set", "data.example.segmenters=[slic,felzenszwalb]", "--set", "data.example.segment_max_side=null"]


def _maker(**kwargs) -> ExampleMaker:
    return ExampleMaker(**{"crop_size": CROP, "palette_sizes": FixedPaletteSize(4), "p_patch": 1.0,
                           "p_superpixel": 1.0, "segmenters": ("slic", "felzenszwalb"), "segment_source": "image",
                           "segment_max_side": None, "segment_scale_step": 1.189207, **kwargs})


def _photos(folder: Path, n: int, size=(30, 40)) -> list[Path]:
    """n small JPEGs in two subfolders (relative paths with a folder part)."""
    return _write_images(folder, n, size, name="sub{half}/photo_{i:02d}.jpg", seed=4)


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> tuple[Path, Path]:
    """12 photos in 3 shards, with their segmentations; (photo folder, shard folder)."""
    root = tmp_path_factory.mktemp("shards")
    _photos(root / "photos", 12)
    prepare_main([str(root / "photos"), "--out", str(root / "set"), "--shard-photos", "5", "--workers", "2",
                  *SETTINGS])
    return root / "photos", root / "set"


def _dm(url: Path, **kwargs) -> DequantDataModule:
    kwargs = {"batch_size": 2, "num_workers": 0, "n_val": 2, "n_test": 2, "cache_images": False, **kwargs}
    return DequantDataModule(None, kwargs.pop("example", _maker()), url=str(url), **kwargs)


def test_the_shard_set_on_disk(shard_set):
    _, out = shard_set
    manifest = json.loads((out / fmt.MANIFEST).read_text())
    assert manifest["format"] == fmt.FORMAT and manifest["version"] == fmt.VERSION and manifest["photos"] == 12
    assert [s["photos"] for s in manifest["shards"]] == [5, 5, 2] and manifest["skipped"] == 0
    assert manifest["segmentations"]["crop_size"] == CROP
    with tarfile.open(out / "shard-000000.tar") as tar:
        names = tar.getnames()
    assert names[:3] == ["000000000.jpg", "000000000.json", "000000000.seg.npz"]
    # Plain WebDataset shards: the library streams them as samples.
    import webdataset as wds

    samples = list(wds.WebDataset(str(out / "shard-000001.tar"), shardshuffle=False))
    assert len(samples) == 5 and {"jpg", "json", "seg.npz"} <= samples[0].keys()
    assert json.loads(samples[0]["json"])["relpath"].startswith("sub")


def test_photos_within_the_cap_keep_their_bytes_and_larger_ones_are_capped(tmp_path):
    photos = _photos(tmp_path / "p", 2, size=(30, 40)) + _photos(tmp_path / "q", 1, size=(60, 90))
    prepare_main([str(tmp_path / "p"), str(tmp_path / "q"), "--out", str(tmp_path / "s"), "--max-short-side",
                  "40", "--workers", "1"])
    catalog = fmt.ShardCatalog(tmp_path / "s")
    sizes = sorted((int(catalog.index["height"][i]), int(catalog.index["width"][i])) for i in range(3))
    assert sizes == [(30, 40), (30, 40), (40, 60)]
    small = next(i for i in range(3) if catalog.index["height"][i] == 30)
    image, stored = catalog.open(small)
    assert image.data in {p.read_bytes() for p in photos[:2]} and len(stored) == 0  # no segmentations asked for


def test_examples_from_shards_match_the_same_photos_as_files(shard_set):
    # Stored segmentations = what the image cache computes: the same masks; the photos decode the same.
    photos, out = shard_set
    shards = _dm(out)
    files = DequantDataModule(str(photos), _maker(), batch_size=2, num_workers=0, n_val=2, n_test=2)
    for dm in (shards, files):
        dm.setup()
    assert [str(p).split(":", 1)[1] for p in shards.split["val"]] == [
        str(p.relative_to(photos)) for p in files.split["val"]]  # the hash split follows the relative paths
    cached = _dm(out, cache_images=True)  # photos kept decoded: their segmentations still come from the shards
    cached.setup()
    for k in range(6):
        a = shards._train[(k, 0, k)]
        b = files._train[(k, 0, k)]
        assert torch.equal(a["mask"], b["mask"]) and a["mask"].any()
        assert float((a["target"] - b["target"]).abs().max()) < 1e-4
        for _ in range(2):  # decoded and cached, then restored from the cache
            assert torch.equal(cached._train[(k, 0, k)]["mask"], a["mask"])
    assert cached._train.source._cached and not cached._train.source._segments


def test_every_sample_exactly_once_across_2_ranks_and_2_workers(shard_set):
    _, out = shard_set
    seen = []
    for rank in range(2):
        dm = _dm(out, num_workers=2, example=_maker(p_patch=0.0))
        dm.setup()
        loader = dm.train_dataloader(rank=rank, world_size=2)
        _set_sampler_epoch(loader, 3)
        seen.append(torch.cat([b["image_id"] for b in loader]).tolist())
    train = sorted(dm.positions["train"].tolist())
    assert len(train) == 8 and sorted(seen[0] + seen[1]) == train and not set(seen[0]) & set(seen[1])
    # A fixed seed gives the same order.
    again = _dm(out, num_workers=2, example=_maker(p_patch=0.0))
    again.setup()
    loader = again.train_dataloader(rank=1, world_size=2)
    _set_sampler_epoch(loader, 3)
    assert torch.cat([b["image_id"] for b in loader]).tolist() == seen[1]


def test_resume_mid_epoch_continues_with_the_remaining_batches(shard_set):
    _, out = shard_set
    dm = _dm(out, example=_maker(p_patch=0.5))
    dm.setup()
    loader = dm.train_dataloader()
    _set_sampler_epoch(loader, 1)
    whole = list(loader)
    state = {"seed": dm.seed, "split_seed": dm.split_seed, "sampler": {"epoch": 1, "start": 4, "seed": dm.seed}}
    resumed = _dm(out, example=_maker(p_patch=0.5))
    resumed.setup()
    resumed.load_state_dict(state)
    rest = list(resumed.train_dataloader())
    assert len(rest) == len(whole) - 2
    for a, b in zip(rest, whole[2:]):
        assert all(torch.equal(a[k], b[k]) for k in ("hint", "target", "mask", "image_id"))


def test_bad_photo_inside_a_shard_is_skipped_with_a_warning(tmp_path, shard_set):
    import shutil

    _, out = shard_set
    copy = tmp_path / "set"
    shutil.copytree(out, copy)
    catalog = fmt.ShardCatalog(copy)
    victim = int(np.flatnonzero(catalog.index["shard"] == 0)[0])
    offset, size = int(catalog.index["image_offset"][victim]), int(catalog.index["image_size"][victim])
    with open(copy / "shard-000000.tar", "r+b") as f:  # same length, the JPEG's first bytes gone
        f.seek(offset)
        f.write(b"\x00" * 64)
    assert size > 64
    dm = _dm(copy, example=_maker(p_patch=0.0), n_val=0, n_test=0)
    with pytest.warns(UserWarning, match=r"skipping unreadable train image shard-000000.tar:sub.*its bytes"):
        dm.setup()  # loads the first training photo: the damaged one
        i = int(np.flatnonzero(dm.positions["train"] == victim)[0])
        item = dm._train[(0, 0, i)]
    assert int(item["image_id"]) != victim


@pytest.mark.parametrize("damage", ["missing", "cut", "version", "foreign", "unfinished", "index"])
def test_unusable_shard_sets_are_one_line_errors_naming_the_file(tmp_path, shard_set, damage):
    import shutil

    _, out = shard_set
    copy = tmp_path / "set"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / fmt.MANIFEST).read_text())
    expected = {"missing": "shard shard-000001.tar is missing", "cut": "shard shard-000001.tar has",
                "version": "format version 99", "foreign": "not a dequant shard set",
                "unfinished": "not finished: run the same dequant-prepare command again",
                "index": "its index"}[damage]
    if damage == "missing":
        (copy / "shard-000001.tar").unlink()
    elif damage == "cut":
        data = (copy / "shard-000001.tar").read_bytes()
        (copy / "shard-000001.tar").write_bytes(data[:-700])
    elif damage in ("version", "foreign"):
        manifest["version" if damage == "version" else "format"] = 99 if damage == "version" else "other"
        (copy / fmt.MANIFEST).write_text(json.dumps(manifest))
    elif damage == "unfinished":
        (copy / fmt.MANIFEST).unlink()
    else:
        (copy / fmt.INDEX).write_bytes(b"not an npz")
    with pytest.raises(ValueError, match=expected) as info:
        _dm(copy).setup()
    assert "\n" not in str(info.value) and "data.url" in str(info.value)


def test_url_that_cannot_be_read_and_too_few_photos(tmp_path, shard_set):
    with pytest.raises(ValueError, match="no dataset.json; it holds no shard set: make one with dequant-prepare"):
        _dm(tmp_path / "nowhere").setup()
    _, out = shard_set
    with pytest.raises(ValueError, match="holds 12 photos, too few for data.n_val=100 and data.n_test=1000"):
        _dm(out, n_val=100, n_test=1000).setup()
    with pytest.raises(ValueError, match="exactly one of them"):
        DequantDataModule(str(tmp_path), _maker(), url=str(out))


def test_segmentations_prepared_for_other_settings(shard_set):
    _, out = shard_set
    with pytest.raises(ValueError, match=r"data.example.crop_size: 16 in the shards, 24 here"):
        _dm(out, example=_maker(crop_size=24)).setup()
    # Segmenting each crop needs no stored segmentations: any settings work.
    dm = _dm(out, example=_maker(crop_size=24, segment_source="crop"))
    dm.setup()
    assert dm._train[(0, 0, 0)]["mask"].shape == (24, 24)


def test_prepare_resumes_where_it_stopped(tmp_path, capsys):
    _photos(tmp_path / "photos", 7)
    out = tmp_path / "set"
    args = [str(tmp_path / "photos"), "--out", str(out), "--shard-photos", "3", "--workers", "1"]
    prepare_main([*args, "--part", "0/3"])  # one of three parts: shard 0 only
    assert (out / "shard-000000.tar").is_file() and not (out / fmt.MANIFEST).exists()
    made = (out / "shard-000000.tar").stat().st_mtime_ns
    (out / ".shard-000001.tar.x.partial").write_bytes(b"a kill left this")  # a half-written shard
    prepare_main(args)
    assert (out / "shard-000000.tar").stat().st_mtime_ns == made  # not made again
    assert json.loads((out / fmt.MANIFEST).read_text())["photos"] == 7
    catalog = fmt.ShardCatalog(out)
    catalog.check_files()
    assert sorted(catalog.names.relpath(i) for i in range(7)) == sorted(
        str(p.relative_to(tmp_path / "photos")) for p in (tmp_path / "photos").rglob("*.jpg"))
    before = (out / fmt.MANIFEST).stat().st_mtime_ns
    prepare_main(args)  # complete: nothing to do
    assert (out / fmt.MANIFEST).stat().st_mtime_ns == before


def test_prepare_refuses_other_arguments_on_an_unfinished_folder(tmp_path, capsys):
    _photos(tmp_path / "photos", 4)
    out = tmp_path / "set"
    prepare_main([str(tmp_path / "photos"), "--out", str(out), "--shard-photos", "2", "--part", "0/2",
                  "--workers", "1"])
    with pytest.raises(SystemExit) as info:
        prepare_main([str(tmp_path / "photos"), "--out", str(out), "--shard-photos", "3", "--workers", "1"])
    assert info.value.code == 2
    assert "being prepared with other arguments (shard_photos differ)" in capsys.readouterr().err


def test_prepare_skips_unreadable_photos(tmp_path):
    _photos(tmp_path / "photos", 3)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)
    with pytest.warns(UserWarning, match="skipped unreadable photo .*broken.jpg"):
        prepare_main([str(tmp_path / "photos"), "--out", str(tmp_path / "set"), "--workers", "1"])
    manifest = json.loads((tmp_path / "set" / fmt.MANIFEST).read_text())
    assert manifest["photos"] == 3 and manifest["skipped"] == 1


def test_training_from_shards_end_to_end(tmp_path, shard_set):
    from hydra import compose, initialize_config_dir

    from dequant.config import conf_dir
    from dequant.training import train

    _, out = shard_set
    overrides = ["experiment=tiny", f"paths.run_dir={tmp_path}", "data=shards", f"data.url={out}",
                 "data.n_val=1", "data.n_test=1", f"data.example.crop_size={CROP}", "data.example.segment_source=image",
                 "data.example.segmenters=[slic,felzenszwalb]", "data.example.segment_max_side=null",
                 "data.example.max_short_side=null", "sampler=ddim", "sampler.steps=2", "trainer.max_steps=2", "trainer.val_check_interval=2"]
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(cfg)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and result["metrics"]
    split = json.loads((tmp_path / "split.json").read_text())
    assert len(split["val"]) == 1 and split["val"][0].startswith("shard-")
