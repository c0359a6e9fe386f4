"""Image listing, decoding of every common format, atomic writing and the reproducible split."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from dequant.data.io import (
    ImageLoadError,
    list_images,
    load_rgb,
    load_split,
    save_rgb,
    save_split,
    split_paths,
    split_sizes,
)

RNG = np.random.default_rng(0)
RGB8 = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)


def _png(tmp_path: Path, name: str, array: np.ndarray, mode: str | None = None) -> Path:
    path = tmp_path / name
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


# ---------------------------------------------------------------------------------------------- formats


def test_rgb_png_exact(tmp_path):
    x = load_rgb(_png(tmp_path, "a.png", RGB8))
    assert x.dtype == torch.float32 and x.shape == (3, 12, 16)
    assert torch.equal(x, torch.from_numpy(RGB8).permute(2, 0, 1).float() / 255)


def test_gray_l_replicated(tmp_path):
    gray = RGB8[..., 0]
    x = load_rgb(_png(tmp_path, "g.png", gray))
    assert x.shape == (3, 12, 16)
    assert torch.equal(x[0], torch.from_numpy(gray).float() / 255) and torch.equal(x[0], x[2])


def test_one_bit(tmp_path):
    path = tmp_path / "b.png"
    Image.fromarray(RGB8[..., 0] > 127).save(path)
    x = load_rgb(path)
    assert set(x.unique().tolist()) <= {0.0, 1.0} and torch.equal(x[0], x[1])


def test_rgba_and_la_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red-ish, bottom half fully transparent (black underneath)
    rgba[2:, :, 3] = 0
    x = load_rgb(_png(tmp_path, "a.png", rgba))
    assert torch.allclose(x[:, :2], torch.tensor([200 / 255, 0, 0]).view(3, 1, 1).expand(3, 2, 4))
    assert torch.allclose(x[:, 2:], torch.ones(3, 2, 4))
    la = np.stack([np.full((4, 4), 100, np.uint8), np.full((4, 4), 128, np.uint8)], axis=-1)
    y = load_rgb(_png(tmp_path, "la.png", la, "LA"))
    expected = 100 / 255 * (128 / 255) + (1 - 128 / 255)
    assert torch.allclose(y, torch.full((3, 4, 4), expected), atol=1e-6)


def test_palette_image_with_and_without_transparency(tmp_path):
    p = Image.fromarray(RGB8).quantize(colors=5)
    p.save(tmp_path / "p.png")
    x = load_rgb(tmp_path / "p.png")
    assert torch.equal(x, torch.from_numpy(np.array(p.convert("RGB"))).permute(2, 0, 1).float() / 255)
    p.info["transparency"] = 0
    p.save(tmp_path / "pt.png", transparency=0)
    y = load_rgb(tmp_path / "pt.png")
    assert torch.allclose(y[:, np.asarray(p) == 0], torch.tensor(1.0))


def test_16bit_gray_keeps_precision(tmp_path):
    g = (np.arange(12 * 16).reshape(12, 16) * 300 + 7).astype(np.uint16)
    path = tmp_path / "g16.png"
    cv2.imwrite(str(path), g)
    assert Image.open(path).mode.startswith("I;16")
    x = load_rgb(path)
    assert torch.allclose(x[1].double(), torch.from_numpy(g.astype(np.float64) / 65535), atol=1e-7)


def test_16bit_rgb_png_keeps_precision(tmp_path):
    rgb = RNG.integers(0, 65536, (6, 5, 3)).astype(np.uint16)
    path = tmp_path / "rgb16.png"
    cv2.imwrite(str(path), rgb[..., ::-1].copy())  # OpenCV writes BGR
    x = load_rgb(path)
    assert torch.allclose(x.permute(1, 2, 0).double(), torch.from_numpy(rgb / 65535.0), atol=1e-7)


def test_cmyk_jpeg(tmp_path):
    cmyk = np.zeros((8, 8, 4), dtype=np.uint8)
    cmyk[..., 1:3] = 255  # magenta + yellow = red
    path = tmp_path / "c.jpg"
    Image.fromarray(cmyk, mode="CMYK").save(path, quality=100)
    x = load_rgb(path)
    assert x.shape == (3, 8, 8)
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor([1.0, 0.0, 0.0]), atol=0.05)


def test_exif_orientation_applied(tmp_path):
    im = Image.fromarray(RGB8)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = tmp_path / "rot.png"
    im.save(path, exif=exif)
    x = load_rgb(path)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    assert x.shape == (3, 16, 12)
    assert torch.equal(x, torch.from_numpy(expected.copy()).permute(2, 0, 1).float() / 255)


# ---------------------------------------------------------------------------------------------- bad files


def _good_bytes(suffix: str) -> bytes:
    ok, buf = cv2.imencode(suffix, RGB8)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize(
    "name, content",
    [
        ("zero.png", b""),
        ("text.png", b"this is not an image\n" * 10),
        ("garbage.jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4),
        ("truncated.png", _good_bytes(".png")[:-40]),
        ("truncated.jpg", _good_bytes(".jpg")[: len(_good_bytes(".jpg")) // 2]),
    ],
)
def test_unreadable_files_raise_image_load_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageLoadError) as info:
        load_rgb(path)
    assert isinstance(info.value, ValueError)
    assert info.value.path == path and name in str(info.value) and info.value.reason


def test_missing_file_raises_image_load_error(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        load_rgb(tmp_path / "nope.png")


def test_image_load_error_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(ImageLoadError("/x/y.png", "broken")))
    assert err.path == Path("/x/y.png") and err.reason == "broken"


# ---------------------------------------------------------------------------------------------- listing


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "sub" / "deeper").mkdir(parents=True)
    for rel in ["b.png", "a.JPG", "sub/c.jpeg", "sub/deeper/d.webp", "sub/e.TIFF"]:
        (root / rel).write_bytes(b"x")
    (root / "notes.txt").write_text("no")
    (root / "._a.jpg").write_bytes(b"apple double")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "f.png").write_bytes(b"x")
    return root


def test_list_folder_recursive_sorted_filtered(tmp_path):
    root = _tree(tmp_path)
    found = list_images(root)
    rel = [p.relative_to(root.absolute()).as_posix() for p in found]
    assert rel == ["a.JPG", "b.png", "sub/c.jpeg", "sub/deeper/d.webp", "sub/e.TIFF"]


def test_list_glob_file_and_dedup(tmp_path):
    root = _tree(tmp_path)
    found = list_images([str(root / "*.png"), root / "b.png", str(root / "sub" / "**" / "*.webp"), root])
    assert found == sorted(found) and len(found) == len(set(found)) == 5
    assert list_images(str(root / "*.png")) == [(root / "b.png").absolute()]


def test_list_errors_name_the_entry(tmp_path):
    root = _tree(tmp_path)
    with pytest.raises(ValueError, match=r"\*\.gif.*matches no image"):
        list_images(str(root / "*.gif"))
    with pytest.raises(ValueError, match="missing_folder.*no such file or folder"):
        list_images(tmp_path / "missing_folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty.*holds no image"):
        list_images(tmp_path / "empty")
    with pytest.raises(ValueError, match="paths is empty"):
        list_images([])


# ---------------------------------------------------------------------------------------------- writing


def test_save_png_roundtrip_atomic(tmp_path):
    x = torch.from_numpy(RGB8).permute(2, 0, 1).float() / 255
    path = tmp_path / "new" / "dir" / "out.png"
    assert save_rgb(x, path) == path
    assert torch.equal(load_rgb(path), x)
    assert os.listdir(path.parent) == ["out.png"]  # no temporary file left behind
    smooth = torch.stack(torch.meshgrid(torch.linspace(0, 1, 16), torch.linspace(1, 0, 16), indexing="ij"))
    smooth = torch.cat([smooth, smooth[:1] * 0.5])
    save_rgb(smooth, tmp_path / "out.jpg")
    assert (load_rgb(tmp_path / "out.jpg") - smooth).abs().max() < 0.05


def test_save_errors(tmp_path):
    x = torch.rand(3, 4, 4)
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(OSError, match="cannot write"):
        save_rgb(x, tmp_path / "file" / "out.png")
    with pytest.raises(ValueError, match="path must end in"):
        save_rgb(x, tmp_path / "out.gif")
    with pytest.raises(ValueError, match="image"):
        save_rgb(torch.rand(4, 4, 4), tmp_path / "out.png")


# ---------------------------------------------------------------------------------------------- split


def _paths(n: int) -> list[Path]:
    return [Path(f"/d/img_{i:03d}.png") for i in range(n)]


def test_split_follows_authors_procedure():
    paths = _paths(50)
    split = split_paths(list(reversed(paths)), seed=42, n_val=5, n_test=10)
    perm = np.random.default_rng(42).permutation(50)
    assert split["val"] == [paths[i] for i in perm[:5]]
    assert split["test"] == [paths[i] for i in perm[5:15]]
    assert split["train"] == [paths[i] for i in perm[15:]]


def test_split_deterministic_disjoint_complete():
    paths = _paths(40)
    a, b = split_paths(paths, seed=1, n_val=4, n_test=6), split_paths(paths, seed=1, n_val=4, n_test=6)
    assert a == b
    assert a != split_paths(paths, seed=2, n_val=4, n_test=6)
    sets = [set(a[k]) for k in ("train", "val", "test")]
    assert sum(map(len, sets)) == 40 and set().union(*sets) == set(paths)


def test_split_small_sets_keep_one_training_image():
    split = split_paths(_paths(8), n_val=1, n_test=1)
    assert [len(split[k]) for k in ("train", "val", "test")] == [6, 1, 1]
    with pytest.warns(UserWarning, match="only 8 images"):
        split = split_paths(_paths(8))
    assert [len(split[k]) for k in ("train", "val", "test")] == [1, 7, 0]
    assert split_sizes(1, 100, 1000) == (1, 0, 0)
    assert split_sizes(5, 2, 10) == (1, 2, 2)
    with pytest.raises(ValueError, match="paths is empty"):
        split_paths([])
    with pytest.raises(ValueError, match="n_val"):
        split_paths(_paths(3), n_val=-1)


def test_save_and_load_split(tmp_path):
    split = split_paths(_paths(10), n_val=2, n_test=3)
    path = save_split(split, tmp_path / "run" / "split.json")
    data = json.loads(path.read_text())
    assert set(data) == {"train", "val", "test"} and all(isinstance(p, str) for p in data["train"])
    assert load_split(path) == split


def test_relative_split_entries_are_relative_to_the_split_file(tmp_path):
    # The shipped model's split names the package's photos from its own folder (../images/coffee.jpg).
    folder = tmp_path / "assets" / "pretrained"
    folder.mkdir(parents=True)
    (folder / "split.json").write_text(json.dumps({"train": ["../images/a.jpg"], "val": [],
                                                   "test": ["../heldout/b.jpg", str(tmp_path / "c.jpg")]}))
    split = load_split(folder / "split.json")
    assert split["train"] == [folder / "../images/a.jpg"] and split["val"] == []
    assert split["test"] == [folder / "../heldout/b.jpg", tmp_path / "c.jpg"]
