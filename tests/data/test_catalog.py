"""The photo catalog (issue 26): paths in two numpy arrays, listed once per run, split by relative-path hashes."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

from dequant.data.catalog import (PathList, hash_split, list_photos, load_listing, relative_hash, save_listing,
                                  spec_text, split_positions)
from dequant.data.io import list_images


def _files(root: Path, names: list[str]) -> list[Path]:
    out = []
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\xff\xd8\xff")  # listing looks at names only
        out.append(path)
    return out


def test_pathlist_holds_strings_in_two_arrays():
    names = ["/a/b/c.jpg", "/a/é/ü.png", "/x.jpg"]
    paths = PathList.from_strings(names, [3, 3, 1])
    assert list(paths) == names and len(paths) == 3 and paths[-1] == "/x.jpg"
    assert [paths.relpath(i) for i in range(3)] == ["b/c.jpg", "é/ü.png", "x.jpg"]
    assert {type(v) for v in vars(paths).values()} == {np.ndarray}  # no per-path Python objects to copy-on-read
    assert pickle.loads(pickle.dumps(paths)) == paths
    both = paths + PathList.from_strings(["/y.jpg"])
    assert list(both) == names + ["/y.jpg"] and both.relpath(3) == "/y.jpg"
    with pytest.raises(IndexError):
        paths[3]


def test_listing_matches_list_images_with_relative_parts(tmp_path):
    _files(tmp_path / "data", ["b.jpg", "a/x.png", "a/y.webp", ".hidden/z.jpg", "c.txt"])
    (tmp_path / "other").mkdir()
    extra = _files(tmp_path / "other", ["solo.jpg"])[0]
    spec = [str(tmp_path / "data"), str(tmp_path / "data" / "a" / "*.png"), str(extra)]
    listing = list_photos(spec)
    assert [Path(p) for p in listing] == list_images(spec)
    assert [listing.relpath(i) for i in range(len(listing))] == ["a/x.png", "a/y.webp", "b.jpg", "solo.jpg"]
    glob_only = list_photos(str(tmp_path / "data" / "**" / "*.jpg"))
    assert [glob_only.relpath(i) for i in range(len(glob_only))] == ["b.jpg"]


def test_listing_saved_and_read_back_only_for_the_same_paths(tmp_path):
    _files(tmp_path / "d", ["1.jpg", "2.jpg"])
    listing = list_photos(str(tmp_path / "d"))
    file = save_listing(listing, spec_text(str(tmp_path / "d")), tmp_path / "run" / "listing.npz")
    assert load_listing(file, spec_text(str(tmp_path / "d"))) == listing
    assert load_listing(file, spec_text([str(tmp_path / "d")])) == listing  # the same paths, written as a list
    assert load_listing(file, spec_text([str(tmp_path / "d"), str(tmp_path / "e")])) is None  # other `paths`
    assert load_listing(tmp_path / "missing.npz", "[]") is None
    file.write_bytes(file.read_bytes()[:40])
    with pytest.warns(UserWarning, match="listing the photos again"):
        assert load_listing(file, spec_text(str(tmp_path / "d"))) is None


def test_hash_depends_on_the_relative_path_alone():
    assert relative_hash("a/b.jpg") == relative_hash("a/b.jpg") != relative_hash("a/c.jpg")
    values = np.array([relative_hash(f"img_{i}.jpg") for i in range(5000)])
    assert 0 <= values.min() and values.max() < 1 and abs(values.mean() - 0.5) < 0.02  # uniform enough


def _relpaths(n: int, start: int = 0) -> list[str]:
    return [f"folder_{i % 7}/photo_{i:06d}.jpg" for i in range(start, start + n)]


def test_hash_split_never_moves_a_held_out_photo_into_training():
    # 20,000 photos, then 5,000 more: every validation and test photo stays out of training, and keeps its split.
    first = _relpaths(20_000)
    grown = first + _relpaths(5_000, start=20_000)
    a = hash_split(first, 10, 100, val_fraction=1e-3, test_fraction=1e-2)
    b = hash_split(grown, 10, 100, val_fraction=1e-3, test_fraction=1e-2)
    name = lambda paths, split, key: {paths[i] for i in split[key]}  # noqa: E731
    held_a = name(first, a, "val") | name(first, a, "test") | name(first, a, "unused")
    assert not held_a & name(grown, b, "train")
    assert name(first, a, "val") <= name(grown, b, "val") | name(grown, b, "unused")
    assert len(b["val"]) == 10 and len(b["test"]) == 100
    assert sorted(np.concatenate(list(b.values())).tolist()) == list(range(len(grown)))  # a partition


def test_shuffle_split_moves_held_out_photos_when_photos_are_added():
    # The comparison the hash split exists for: the authors' shuffle reshuffles everything.
    first, grown = _relpaths(2000), _relpaths(2100)
    a = split_positions(PathList.from_strings(first), "shuffle", n_val=50, n_test=100)
    b = split_positions(PathList.from_strings(grown), "shuffle", n_val=50, n_test=100)
    assert {first[i] for i in a["test"]} & {grown[i] for i in b["train"]}


def test_small_data_sets_are_topped_up_with_a_warning():
    paths = _relpaths(30)
    with pytest.warns(UserWarning, match="can move into training"):
        split = hash_split(paths, 3, 5, val_fraction=1e-3, test_fraction=1e-2)
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (22, 3, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        big = hash_split(paths, 3, 5, val_fraction=0.5, test_fraction=0.4)  # ranges wide enough: no top-up
    assert len(big["unused"]) > 0 and len(big["val"]) == 3


def test_split_errors_name_the_key():
    with pytest.raises(ValueError, match="val_fraction"):
        hash_split(_relpaths(5), 1, 1, val_fraction=1.5, test_fraction=0.1)
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction"):
        hash_split(_relpaths(5), 1, 1, val_fraction=0.6, test_fraction=0.6)
    with pytest.raises(ValueError, match="n_val"):
        hash_split(_relpaths(5), -1, 1, val_fraction=0.1, test_fraction=0.1)
    with pytest.raises(ValueError, match="split"):
        split_positions(PathList.from_strings(_relpaths(5)), "random")


def test_datamodule_saves_the_listing_and_reuses_it_on_resume(tmp_path, monkeypatch):
    from dequant.data import datamodule as dm_module
    from dequant.data.datamodule import DequantDataModule
    from dequant.data.examples import ExampleMaker

    from tests.data.test_datamodule import _write_images

    _write_images(tmp_path / "photos", 6)
    run = tmp_path / "run"
    make = lambda: DequantDataModule(str(tmp_path / "photos"), ExampleMaker(crop_size=16), n_val=1, n_test=1,  # noqa: E731
                                     num_workers=0, listing_file=run / "listing.npz")
    first = make()
    first.setup()
    first.save_split(run)
    assert (run / "listing.npz").is_file() and set(json.loads((run / "split.json").read_text())) >= {"train"}
    calls = []
    monkeypatch.setattr(dm_module, "list_photos", lambda paths: calls.append(paths))
    again = make()
    again.setup()  # the resume: the saved listing, no walk of the folder
    assert not calls and again.split == first.split
    assert np.array_equal(again.positions["train"], first.positions["train"])


def test_other_ranks_take_rank_zeros_listing_or_its_error(tmp_path, monkeypatch):
    # Rank 1 neither lists nor waits when an entry names nothing or when rank 0's listing failed: one line, at once.
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from dequant.data.datamodule import DequantDataModule
    from dequant.data.examples import ExampleMaker

    from tests.data.test_datamodule import _write_images

    _write_images(tmp_path / "photos", 4)
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    make = lambda paths: DequantDataModule(paths, ExampleMaker(crop_size=16), n_val=1, n_test=1,  # noqa: E731
                                           listing_file=run / "listing.npz", listing_wait_s=600)
    with pytest.raises(ValueError, match="matches no image files"):
        make(str(tmp_path / "nothing" / "*.png")).setup()
    (run / "listing.npz.error").write_text("paths entry 'x': the folder holds no image files\n")
    with pytest.raises(ValueError, match="the folder holds no image files"):
        make(str(tmp_path / "photos")).setup()
