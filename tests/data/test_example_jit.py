"""The compiled per-pixel passes of ExampleMaker equal the numpy code they replace, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dequant.color.cues import texture_cue_array
from dequant.color.hint import CUE, fill_mask, fill_mask_array, hint_array
from dequant.color.quantize import to_u8_array
from dequant.data import _example_jit as K
from dequant.data.examples import _masked_mean, _palette_hint


def same_bits(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


def images(n: int, low: float = 0.0, high: float = 1.0):
    rng = np.random.default_rng(0)
    for trial in range(n):
        h, w = (int(v) for v in rng.integers(1, 24, 2))
        x = rng.uniform(low, high, (3, h, w)).astype(np.float32)
        if trial % 3 == 0:  # exact 8-bit levels, halves between them (rounding ties) and the ends
            x = (rng.integers(0, 511, (3, h, w)) / np.float32(510.0)).astype(np.float32)
        yield rng, x


def test_in_unit_range_is_the_min_max_check():
    bounds = np.array([-1e-4, 1 + 1e-4])
    near = np.concatenate([np.nextafter(bounds.astype(np.float32), np.float32(v)) for v in (-2, 2)] +
                          [bounds.astype(np.float32), np.float32([0, 1, -0.0, np.nan, np.inf, -np.inf])])
    for v in near:
        x = np.full((3, 2, 5), 0.5, dtype=np.float32)
        x[1, 1, 3] = v
        lo, hi = float(x.min()), float(x.max())
        want = np.isfinite(lo) and np.isfinite(hi) and lo >= -1e-4 and hi <= 1 + 1e-4
        assert K.in_unit_range(x) == want, v
        assert K.in_unit_range(np.ascontiguousarray(x.transpose(0, 2, 1)).transpose(0, 2, 1)) == want


def test_crop_clip_equals_numpy_clip():
    for rng, x in images(60, -0.3, 1.3):
        x[0, 0, 0], x[1, -1, -1] = -0.0, np.nan
        size = int(rng.integers(1, min(x.shape[1:]) + 1))
        top, left = int(rng.integers(0, x.shape[1] - size + 1)), int(rng.integers(0, x.shape[2] - size + 1))
        for flip in (False, True):
            crop = x[:, top:top + size, left:left + size]
            want = np.clip(crop[:, :, ::-1] if flip else crop, 0.0, 1.0).astype(np.float32, copy=False)
            same_bits(K.crop_clip(x, top, left, size, flip), want)


def test_u8_planes_and_cue_equal_the_numpy_twins():
    for _, x in images(60):
        u8 = K.u8_planes(x)
        same_bits(u8, to_u8_array(x))
        for mode in ("T", "G"):
            for threshold in (0.0, 8.0, 2.5):
                out = np.full((2, *x.shape[1:]), 7.0, dtype=np.float32)
                K.cue_into(u8, out, mode == "G", np.float32(threshold))
                same_bits(out, texture_cue_array(u8, mode, threshold))


@pytest.mark.parametrize("keep", [False, True])
def test_patch_hint_and_mean_equal_hint_array(keep):
    for rng, x in images(40):
        mask = rng.random(x.shape[1:]) < rng.uniform(0.0, 1.0)
        mean = _masked_mean(x, mask)
        want_fill = fill_mask(torch.from_numpy(x), torch.from_numpy(mask))
        for fill in (mean, rng.random(3).astype(np.float32)):
            color = fill_mask_array(x, mask, fill)
            same_bits(color, fill_mask(torch.from_numpy(x), torch.from_numpy(mask), torch.from_numpy(fill)).numpy())
            for mode in ("T", "G"):
                neutral = np.float32(0.5 if mode == "G" else 0.0)
                cue = texture_cue_array(to_u8_array(x), mode)
                out = np.empty((7, *x.shape[1:]), dtype=np.float32)
                out[CUE] = cue
                K.patch_hint(x, mask, fill, keep, neutral, out)
                same_bits(out, hint_array(color, cue, mode="patch", mask=mask, keep_texture=keep, cue_mode=mode,
                                          g_neutral=0.5))
        same_bits(fill_mask_array(x, mask), want_fill.numpy())


def test_palette_hint_equals_hint_array():
    for rng, x in images(20):
        cue = texture_cue_array(to_u8_array(x), "G")
        for keep in (False, True):
            n = int(rng.integers(1, 257))
            out = np.empty((7, *x.shape[1:]), dtype=np.float32)
            out[CUE] = cue
            same_bits(_palette_hint(out, x, n, keep, 0.5),
                      hint_array(x, cue, mode="palette", n_colors=n, keep_texture=keep, cue_mode="G", g_neutral=0.5))
