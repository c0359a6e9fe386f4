"""dequant.color.median_cut gives Pillow's median cut exactly: the same palette, in the same order, and index map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import dequant
from dequant.color.median_cut import MAX_DISTINCT, median_cut

ASSETS = Path(dequant.__file__).parent / "assets"
PHOTOS = sorted((ASSETS / "images").glob("*.jpg")) + sorted((ASSETS / "heldout_photos").glob("*.jpg"))


def pillow(u8: np.ndarray, n_colors: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: Pillow's palette (K, 3) and index map of the undithered median cut."""
    q = Image.fromarray(u8, mode="RGB").quantize(colors=n_colors, method=Image.Quantize.MEDIANCUT,
                                                 dither=Image.Dither.NONE)
    return np.asarray(q.getpalette("RGB"), dtype=np.uint8).reshape(-1, 3), np.asarray(q)


def assert_same_as_pillow(u8: np.ndarray, n_colors: int) -> None:
    ref_palette, ref_index = pillow(u8, n_colors)
    for backend in ("numba", "numpy"):
        palette, index = median_cut(u8, n_colors, backend=backend)
        assert palette.dtype == np.uint8 and index.shape == u8.shape[:2]
        np.testing.assert_array_equal(palette, ref_palette, err_msg=f"{backend}: palette differs at N={n_colors}")
        np.testing.assert_array_equal(index, ref_index, err_msg=f"{backend}: index map differs at N={n_colors}")


def crop(path: Path, size: int, seed: int) -> np.ndarray:
    """A random size x size crop of a shipped photo (the whole photo resized when it is smaller)."""
    im = np.asarray(Image.open(path).convert("RGB"))
    if min(im.shape[:2]) < size:
        return np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BICUBIC))
    rng = np.random.default_rng(seed)
    top, left = rng.integers(0, im.shape[0] - size + 1), rng.integers(0, im.shape[1] - size + 1)
    return np.ascontiguousarray(im[top:top + size, left:left + size])


@st.composite
def images(draw):
    """Small images whose colors are drawn from a few levels per channel or a few colors, so that pixel counts,
    channel ranges and distances tie often; sometimes uniform noise."""
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["levels", "colors", "noise"]))
    if kind == "levels":
        levels = rng.integers(0, 256, size=int(rng.integers(1, 5)))
        return levels[rng.integers(0, levels.size, size=(h, w, 3))].astype(np.uint8)
    if kind == "colors":
        colors = rng.integers(0, 256, size=(int(rng.integers(1, 12)), 3))
        return colors[rng.integers(0, len(colors), size=(h, w))].astype(np.uint8)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# Tiny images: many draws cost about a second; a profile that asks for more (explore: 1500) gets more.
@settings(max_examples=max(80, settings.default.max_examples))
@given(u8=images(), n_colors=st.integers(1, 256))
def test_random_images_match_pillow(u8, n_colors):
    assert_same_as_pillow(u8, n_colors)


@pytest.mark.parametrize("path", PHOTOS[::9], ids=lambda p: p.stem)
def test_photo_crops_match_pillow_for_every_n(path):
    u8 = crop(path, 20, seed=0)
    for n in range(1, 257):
        assert_same_as_pillow(u8, n)


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.stem)
def test_training_size_crops_match_pillow(path):
    # 256x256 (the training crop; up to 65536 distinct colors, Pillow's limit before it coarsens) and 64x64.
    for size, seed, sizes in ((256, 1, (2, 16, 256)), (64, 2, (1, 5, 32, 128))):
        u8 = crop(path, size, seed)
        for n in sizes:
            assert_same_as_pillow(u8, n)


def test_more_distinct_colors_than_pillow_keeps():
    # Above 65536 distinct colors Pillow cuts boxes on colors with dropped low bits (once, or twice for noise
    # with more than 65536 distinct 7-bit colors): the coarsening path.
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(260, 260, 3), dtype=np.uint8)
    smooth = crop(PHOTOS[0], 300, 3).copy()
    smooth[::2] = rng.integers(0, 256, size=smooth[::2].shape, dtype=np.uint8)
    for u8, sizes in ((noise, (7, 256)), (smooth, (64,))):
        assert np.unique(u8.reshape(-1, 3), axis=0).shape[0] > MAX_DISTINCT
        for n in sizes:
            assert_same_as_pillow(u8, n)


def test_bad_input():
    with pytest.raises(ValueError, match="image"):
        median_cut(np.zeros((4, 4), dtype=np.uint8), 4)
    with pytest.raises(ValueError, match="image"):
        median_cut(np.zeros((4, 4, 3), dtype=np.float32), 4)
    with pytest.raises(ValueError, match="n_colors"):
        median_cut(np.zeros((4, 4, 3), dtype=np.uint8), 0)
    with pytest.raises(ValueError, match="n_colors"):
        median_cut(np.zeros((4, 4, 3), dtype=np.uint8), 257)
    with pytest.raises(ValueError, match=r"backend must be one of \['auto', 'numba', 'numpy'\], got 'c'"):
        median_cut(np.zeros((4, 4, 3), dtype=np.uint8), 4, backend="c")


def test_without_numba_auto_falls_back_to_numpy_and_numba_is_a_clear_error(monkeypatch):
    from dequant.color import median_cut as module

    monkeypatch.setattr(module, "_JIT", [None])  # what _compiled() records when numba does not import
    u8 = crop(PHOTOS[0], 32, 0)
    palette, index = median_cut(u8, 8)  # auto
    ref_palette, ref_index = pillow(u8, 8)
    np.testing.assert_array_equal(palette, ref_palette)
    np.testing.assert_array_equal(index, ref_index)
    with pytest.raises(ValueError, match="backend='numba' needs the numba package"):
        median_cut(u8, 8, backend="numba")


@settings(max_examples=max(30, settings.default.max_examples))
@given(u8=images(), n_colors=st.integers(1, 256))
def test_planes_give_the_same_palette_and_index(u8, n_colors):
    from dequant.color.median_cut import median_cut_planes

    palette, index = median_cut(u8, n_colors, backend="numpy")
    for backend in ("numba", "numpy"):
        planes_palette, planes_index = median_cut_planes(np.ascontiguousarray(u8.transpose(2, 0, 1)), n_colors,
                                                         backend=backend)
        np.testing.assert_array_equal(planes_palette, palette)
        assert planes_index.dtype == np.uint8
        np.testing.assert_array_equal(planes_index, index)


def test_palette_colors_compiled_equals_numpy(monkeypatch):
    from dequant.color import median_cut as module

    rng = np.random.default_rng(0)
    for k in (1, 7, 256):
        palette = rng.integers(0, 256, (k, 3)).astype(np.uint8)
        index = rng.integers(0, k, (9, 13)).astype(np.uint8)
        compiled = module.palette_colors(palette, index)
        out = np.full((3, 9, 13), np.nan, dtype=np.float32)
        assert module.palette_colors(palette, index, out) is out
        monkeypatch.setattr(module, "_JIT", [None])
        numpy = module.palette_colors(palette, index)
        monkeypatch.undo()
        want = (palette.T.astype(np.float32) / np.float32(255.0))[:, index]
        for got in (compiled, out, numpy):
            assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32))
