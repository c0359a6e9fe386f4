"""One training example made on the fly from one image (SPEC 1.2-1.7): augment, quantize, mask, texture cue, hint.

Pipeline of `ExampleMaker.__call__`, every random choice drawn from the caller's numpy Generator, in this order:
1. cap the short side at `max_short_side` (optional; demo configs use it so that small crops show whole objects);
2. an image smaller than the crop on either side is upscaled so its short side equals the crop (`"upscale"`) or
   reflect-padded, centred, up to the crop (`"pad"`); otherwise the short side is rescaled to a size drawn uniformly
   from the integers [crop, short side];
   resizing is bicubic (OpenCV INTER_CUBIC, clipped to [0, 1]), except that shrinking by more than 2x uses area
   averaging, because bicubic without a prefilter aliases and aliasing shows up as false texture in the cue;
   a JPEG handed over undecoded (`dequant.data.io.EncodedJpeg`, a photo the data module does not keep) gives the
   same draws, and only its crop is resampled, with OpenCV's own taps: bicubic from the whole decode, or, when
   shrinking by more than 2x, area averaging from the smallest DCT scale (1/2, 1/4, 1/8) at least `dct_margin`
   times the drawn scale, a DCT-domain downscale standing in for the first part of the averaging
   (tests/data/test_jpeg.py bounds the difference; experiments/results/bench_data_unique.md times it);
3. random crop, horizontal flip p=0.5, gray with `p_gray` (OpenCV BT.601 gray, CIELab L/100, or channel mean, chosen
   uniformly; replicated to 3 channels), HSV saturation scaled by U[0, 2) with `p_saturation`; the result is the
   target;
4. palette size N from `palette_sizes` (drawn for every example, so both modes consume the same stream);
5. palette mode with probability 1 - `p_patch`: color = the target quantized to N colors; texture kept everywhere or
   dropped everywhere (`cue.p_drop`);
   patch mode with probability `p_patch`: a mask from `dequant.color.masks.patch_mask` (superpixels with
   `p_superpixel`, else components of the N-color index map), filled with the mask's per-channel mean (training) or
   a uniformly random color (`eval_mode=True`); texture always given outside the mask, dropped inside with
   `cue.p_drop`. Superpixels come from segmenting the crop (`segment_source="crop"`, optionally on a copy
   downscaled to `segment_max_side`) or from the whole source image (`"image"`): segmented at full resolution
   once per scale bucket (short sides crop * segment_scale_step^i, the one nearest the drawn short side in log
   scale), kept in the caller's `segment_cache` beside the decoded image, and the crop's labels cut out
   (nearest-neighbour, flipped with the crop). What differs from segmenting the crop: segments are cut by the crop
   border, come from the color source (not the gray/saturation-augmented target) and from a scale within
   segment_scale_step^(1/2) of the example's; SLIC and watershed segment counts are scaled to the image's area so a
   crop-sized region gets as many segments as the crop would (experiments/results/bench_masks.md measures it).
   The choice is made per photo: a photo without a `segment_cache` (one the data module does not keep) is
   segmented on its crop even with `"image"`, so a data set far larger than the cache costs what `"crop"` costs;
6. texture cue of the target, and the 7-channel hint from `dequant.color.hint.hint_array` (the values of `hint`).
Stages 5-6 run on numpy arrays the maker made (the numpy twins of quantize, patch_mask, fill_mask, texture_cue and
hint, which skip re-validating them); whole examples equal those of the validated torch functions bit for bit.
The per-pixel passes (range check, crop/flip/clip, 8-bit rounding, T and G cues, mask fill, hint channels) are
compiled with numba (`_example_jit.py`), equal to the numpy code they replace (tests/data/test_example_jit.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import MutableMapping, Sequence
from contextlib import contextmanager
from numbers import Integral, Real
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from dequant.color._checks import check_choice, check_image
from dequant.color.colorspace import rgb_to_lab
from dequant.color.cues import TextureCue
from dequant.color.hint import (COLOR, COLOR_IND, CUE, HINT_CHANNELS, MAX_COLORS_SCALE, TEX_IND, fill_mask_array,
                                hint_array)
from dequant.color.masks import SEGMENTERS, cut_labels, patch_mask_array, segment_array, segment_image
from dequant.color.quantize import Quantizer, to_u8_array
from dequant.data.palette_sizes import PaletteSizeDistribution, WeightedPowerOfTwo
from dequant.data.io import EncodedJpeg
from dequant.data.resize import AREA_BELOW, resize_array, short_side_size

SMALL_IMAGE_MODES = ("upscale", "pad")
SEGMENT_SOURCES = ("crop", "image")
GRAY_METHODS = ("opencv", "lab_l", "mean")
STAGES = ("augment", "quantize", "mask", "cue", "hint")
# The segment_cache key noting that the image's values were checked.
_CHECKED = "values_checked"
# BT.601 luma, the weights of OpenCV's RGB2GRAY.
_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


_JIT: list = []  # [the module `_example_jit`], filled on first use


def _kernels():
    """The compiled per-pixel passes (`_example_jit`), imported on first use: numba is slow to load."""
    if not _JIT:
        from dequant.data import _example_jit

        _JIT.append(_example_jit)
    return _JIT[0]


def _check_prob(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _to_gray(chw: np.ndarray, method: str) -> np.ndarray:
    """Gray by one of GRAY_METHODS, replicated to 3 channels."""
    if method == "opencv":
        gray = np.tensordot(_GRAY_WEIGHTS, chw, axes=1)
    elif method == "lab_l":
        gray = (rgb_to_lab(torch.from_numpy(chw))[0] / 100.0).numpy()
    else:
        gray = chw.mean(axis=0)
    gray = np.clip(gray, 0.0, 1.0).astype(np.float32)
    return np.repeat(gray[None], 3, axis=0)


def _scale_saturation(chw: np.ndarray, factor: float) -> np.ndarray:
    """Multiply HSV saturation by `factor` (clipped to [0, 1])."""
    hsv = cv2.cvtColor(np.ascontiguousarray(chw.transpose(1, 2, 0)), cv2.COLOR_RGB2HSV)
    hsv[..., 1] = np.clip(hsv[..., 1] * factor, 0.0, 1.0)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return np.clip(rgb, 0.0, 1.0).transpose(2, 0, 1)


def _image_array(image: Tensor, check_range: bool = True) -> np.ndarray:
    """Validate `image` (3, H, W) in [0, 1] and return it as a float32 numpy array (a view when possible);
    `check_range=False` skips the value check (for an image already checked)."""
    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
        # check_image words the error; it is only reached for bad input.
        check_image(image, "image", allow_batch=False)
        raise ValueError(f"image must be a float tensor of shape (3, H, W), got {getattr(image, 'shape', image)}")
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"image must have at least one pixel, got shape {tuple(image.shape)}")
    chw = image.detach().cpu().float().numpy()
    # This runs on every full-size source: one compiled pass instead of numpy's min and max (~20x cheaper than
    # torch's); the range is only computed to word the error.
    if check_range and not _kernels().in_unit_range(chw):
        lo, hi = float(chw.min()), float(chw.max())
        raise ValueError(f"image values must be finite and lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    return chw


def _masked_mean(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel mean `(3,)` float32 of the masked pixels, by `fill_mask`'s own torch reduction (so bit-equal)."""
    total = torch.from_numpy(_kernels().masked(rgb, mask)).sum(dim=(-2, -1))
    return (total / torch.tensor(max(int(np.count_nonzero(mask)), 1))).numpy()


def _palette_hint(out: np.ndarray, color: np.ndarray, n_colors: int, keep: bool, neutral: float) -> np.ndarray:
    """`hint_array` in palette mode for a T or G cue already written (when kept) into `out`'s cue channels."""
    if not np.shares_memory(color, out):  # the quantizer may have written its colors into `out` already
        out[COLOR] = color
    if not keep:
        out[CUE] = np.float32(neutral)
    out[COLOR_IND] = np.float32(n_colors) / np.float32(MAX_COLORS_SCALE)
    out[TEX_IND] = np.float32(keep)
    return out


class ExampleMaker:
    """Makes one (hint, target) training example from one image (SPEC 1.2-1.7; see the module docstring)."""

    def __init__(
        self,
        crop_size: int = 64,
        palette_sizes: PaletteSizeDistribution | None = None,
        quantizer: Quantizer | None = None,
        cue: TextureCue | None = None,
        p_patch: float = 0.5,
        p_gray: float = 0.1,
        p_saturation: float = 0.1,
        p_superpixel: float = 0.9,
        segmenters: Sequence[str] = SEGMENTERS,
        mask_frac: Sequence[float] = (0.01, 0.15),
        segment_max_side: int | None = None,
        max_short_side: int | None = None,
        small_image: str = "upscale",
        segment_source: str = "crop",
        segment_scale_step: float = 2**0.25,
        dct_margin: float = 2.0,
        profile: bool = False,
    ) -> None:
        if isinstance(crop_size, bool) or not isinstance(crop_size, Integral) or crop_size < 1:
            raise ValueError(f"crop_size must be a positive int, got {crop_size!r}")
        self.crop_size = int(crop_size)
        self.palette_sizes = WeightedPowerOfTwo() if palette_sizes is None else palette_sizes
        if not callable(getattr(self.palette_sizes, "sample", None)):
            raise ValueError(f"palette_sizes must have a sample(rng) method, got {type(palette_sizes).__name__}")
        self.quantizer = Quantizer() if quantizer is None else quantizer
        if not callable(self.quantizer):
            raise ValueError(f"quantizer must be callable as quantizer(image, n_colors, seed), got {quantizer!r}")
        self.cue = TextureCue() if cue is None else cue
        if not all(hasattr(self.cue, a) for a in ("mode", "g_neutral", "keep_texture")) or not callable(self.cue):
            raise ValueError(f"cue must be a dequant.color.cues.TextureCue, got {type(cue).__name__}")
        self.p_patch = _check_prob(p_patch, "p_patch")
        self.p_gray = _check_prob(p_gray, "p_gray")
        self.p_saturation = _check_prob(p_saturation, "p_saturation")
        self.p_superpixel = _check_prob(p_superpixel, "p_superpixel")
        if isinstance(segmenters, str) or len(segmenters) == 0:
            raise ValueError(
                f"segmenters must be a non-empty list of names from {list(SEGMENTERS)}, got {segmenters!r}")
        for name in segmenters:
            check_choice(name, SEGMENTERS, "segmenters")
        self.segmenters = tuple(segmenters)
        if len(mask_frac) != 2 or not 0 < float(mask_frac[0]) <= float(mask_frac[1]) <= 1:
            raise ValueError(f"mask_frac must be (low, high) with 0 < low <= high <= 1, got {mask_frac!r}")
        self.mask_frac = (float(mask_frac[0]), float(mask_frac[1]))
        if segment_max_side is not None and (isinstance(segment_max_side, bool)
                                             or not isinstance(segment_max_side, Integral) or segment_max_side < 8):
            raise ValueError(f"segment_max_side must be None or an int >= 8, got {segment_max_side!r}")
        self.segment_max_side = None if segment_max_side is None else int(segment_max_side)
        if max_short_side is not None and (
            isinstance(max_short_side, bool) or not isinstance(max_short_side, Integral)
            or max_short_side < self.crop_size
        ):
            raise ValueError(f"max_short_side must be None or an int >= crop_size ({self.crop_size}), "
                             f"got {max_short_side!r}")
        self.max_short_side = None if max_short_side is None else int(max_short_side)
        self.small_image = check_choice(small_image, SMALL_IMAGE_MODES, "small_image")
        self.segment_source = check_choice(segment_source, SEGMENT_SOURCES, "segment_source")
        if (isinstance(segment_scale_step, bool) or not isinstance(segment_scale_step, Real)
                or not 1.0 < float(segment_scale_step) <= 4.0):
            raise ValueError(f"segment_scale_step must be a number in (1, 4], got {segment_scale_step!r}")
        self.segment_scale_step = float(segment_scale_step)
        if isinstance(dct_margin, bool) or not isinstance(dct_margin, Real) or not (dct_margin == 0 or dct_margin >= 1):
            raise ValueError(f"dct_margin must be 0 (always decode whole JPEGs at full resolution) or a number >= 1, "
                             f"got {dct_margin!r}")
        self.dct_margin = float(dct_margin)
        self.profile = bool(profile)
        self._times: dict[str, float] = {}
        self._count = 0

    # ------------------------------------------------------------------------------------------------- timing

    @contextmanager
    def _stage(self, name: str):
        if not self.profile:
            yield
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            self._times[name] = self._times.get(name, 0.0) + time.perf_counter() - start

    def timings(self) -> dict[str, float]:
        """Mean seconds per example of each stage since the last reset (needs `profile=True`); empty otherwise."""
        if self._count == 0:
            return {}
        return {s: self._times.get(s, 0.0) / self._count for s in STAGES}

    def reset_timings(self) -> None:
        """Forget the accumulated stage times."""
        self._times, self._count = {}, 0

    # ------------------------------------------------------------------------------------------------- stages

    def augment(self, image: Tensor | EncodedJpeg, rng: np.random.Generator) -> tuple[Tensor, dict[str, Any]]:
        """SPEC 1.2 on one image `(3, H, W)`: rescale, crop, flip, gray, saturation -> (target `(3, S, S)`, meta)."""
        target, meta, _ = self._augment(image, rng)
        return target, meta

    def _fit(self, chw: np.ndarray) -> np.ndarray:
        """The source with its short side capped at `max_short_side` (deterministic)."""
        h, w = chw.shape[1:]
        if self.max_short_side is not None and min(h, w) > self.max_short_side:
            return resize_array(chw, *short_side_size(h, w, self.max_short_side))
        return chw

    def _small(self, chw: np.ndarray) -> np.ndarray:
        """A source smaller than the crop, upscaled or padded to it (deterministic)."""
        s = self.crop_size
        h, w = chw.shape[1:]
        if self.small_image == "upscale":
            return resize_array(chw, *short_side_size(h, w, s))
        ph, pw = max(s - h, 0), max(s - w, 0)
        return np.pad(chw, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="reflect")

    def _capped_size(self, h: int, w: int) -> tuple[int, int]:
        """The source size after `_fit`."""
        if self.max_short_side is not None and min(h, w) > self.max_short_side:
            return short_side_size(h, w, self.max_short_side)
        return h, w

    def _augment_encoded(self, photo: EncodedJpeg, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        """The rescale, crop and flip of `_augment` for a JPEG not yet decoded: the same draws, and only the crop's
        pixels resampled, with the same filter as the full path (bicubic from the whole-resolution decode when
        shrinking by at most 2x, else area averaging from the smallest DCT scale at least `dct_margin` times the
        drawn scale)."""
        s = self.crop_size
        h0, w0 = photo.height, photo.width
        h, w = self._capped_size(h0, w0)
        short = int(rng.integers(s, min(h, w) + 1))
        hs, ws = short_side_size(h, w, short)
        meta: dict[str, Any] = {"source_size": (h0, w0), "short_side": short, "small": False,
                                "scaled_size": (hs, ws)}
        top, left = int(rng.integers(0, hs - s + 1)), int(rng.integers(0, ws - s + 1))
        meta["crop"] = (top, left)
        meta["flip"] = bool(rng.random() < 0.5)
        flip = meta["flip"]
        if min(hs / h0, ws / w0) >= AREA_BELOW:
            # Bicubic, as the full path resizes: from the whole-resolution decode.
            meta["dct_denom"] = 1
            decoded = photo.decode(1)
            return _kernels().scaled_crop(decoded, 1.0 / (hs / h0), 1.0 / (ws / w0), top, left, s, flip), meta
        # Area averaging, as the full path shrinks: from the smallest DCT scale at least dct_margin times the drawn
        # scale. A DCT-domain downscale is a little smoother than area averaging: with a margin of 1 the T cue of
        # such examples loses ~4% of its texture pixels, with 2 ~1-3% (experiments/results/bench_data_unique.md).
        denom = meta["dct_denom"] = photo.denom_for(hs, ws, self.dct_margin) if self.dct_margin else 1
        decoded = photo.decode(denom)
        hd, wd = decoded.shape[:2]
        return _kernels().area_crop(decoded, 1.0 / (hs / hd), 1.0 / (ws / wd), top, left, s, flip), meta

    def _augment(self, image: Tensor | EncodedJpeg, rng: np.random.Generator,
                 checked: bool = False) -> tuple[Tensor, dict[str, Any], np.ndarray | None]:
        """`augment`, plus the capped source it cropped from (for segmenting the whole image; None for a JPEG
        decoded only as far as its crop); `checked`: the image's values were checked before (its range is not
        checked again)."""
        if isinstance(image, EncodedJpeg):
            if min(self._capped_size(image.height, image.width)) >= self.crop_size:
                chw, meta = self._augment_encoded(image, rng)
                return self._color_augment(chw, rng, meta), meta, None
            image = image.tensor()  # smaller than the crop: upscaled or padded whole, as below
        chw = _image_array(image, check_range=not checked)
        s = self.crop_size
        h, w = chw.shape[1:]
        meta: dict[str, Any] = {"source_size": (h, w)}

        chw = source = self._fit(chw)
        h, w = chw.shape[1:]
        if min(h, w) < s:
            chw = self._small(chw)
            meta["short_side"] = s
            meta["small"] = True
        else:
            short = int(rng.integers(s, min(h, w) + 1))
            # Unclipped: only the crop is clipped below (clipping commutes with cropping).
            chw = resize_array(chw, *short_side_size(h, w, short), clip=False)
            meta["short_side"] = short
            meta["small"] = False
        h, w = chw.shape[1:]
        meta["scaled_size"] = (h, w)

        top, left = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        meta["crop"] = (top, left)
        meta["flip"] = bool(rng.random() < 0.5)
        # Crop, flip and clip in one pass into a fresh contiguous array: the input is never modified, and rounding
        # slack below 0 / above 1 goes.
        chw = _kernels().crop_clip(chw, top, left, s, meta["flip"])
        return self._color_augment(chw, rng, meta), meta, source

    def _color_augment(self, chw: np.ndarray, rng: np.random.Generator, meta: dict[str, Any]) -> Tensor:
        """The gray and saturation draws of `_augment` on the crop `chw`; the target."""
        meta["gray"] = None
        if rng.random() < self.p_gray:
            meta["gray"] = GRAY_METHODS[int(rng.integers(len(GRAY_METHODS)))]
            chw = _to_gray(chw, meta["gray"])
        meta["saturation"] = None
        if rng.random() < self.p_saturation:
            meta["saturation"] = float(rng.uniform(0.0, 2.0))
            chw = _scale_saturation(chw, meta["saturation"])
        return torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float32))

    # ------------------------------------------------------------------------------------------------- masks

    def bucket(self, short_side: int, source_short: int) -> int:
        """Short side of the scale bucket whose segmentation serves an example rescaled to `short_side`."""
        s = self.crop_size
        i = round(math.log(short_side / s) / math.log(self.segment_scale_step))
        return min(round(s * self.segment_scale_step**i), source_short)

    def segment_key(self, method: str, meta: dict[str, Any]) -> tuple[str, int | str]:
        """The (segmenter, scale bucket) whose whole-photo segmentation serves the example `meta` describes."""
        if meta["small"]:
            return method, "small"
        h, w = self._capped_size(*meta["source_size"])
        return method, self.bucket(meta["short_side"], min(h, w))

    def segment_keys(self, height: int, width: int) -> list[tuple[str, int | str]]:
        """Every (segmenter, bucket) key an example of a photo of this size (before the cap) may ask for."""
        h, w = self._capped_size(height, width)
        s = self.crop_size
        if min(h, w) < s:
            return [(m, "small") for m in self.segmenters]
        buckets = sorted({self.bucket(short, min(h, w)) for short in range(s, min(h, w) + 1)})
        return [(m, b) for b in buckets for m in self.segmenters]

    def segmentation(self, source: np.ndarray, key: tuple[str, int | str]) -> tuple[np.ndarray, np.ndarray]:
        """(labels, segment areas) of the capped source `(3, H, W)` scaled to the bucket of `key` and segmented
        whole at full resolution: what `segment_cache` keeps per key (labels as uint16 when they fit)."""
        method, bucket = key
        h, w = source.shape[1:]
        scaled = self._small(source) if bucket == "small" else resize_array(source, *short_side_size(h, w, bucket))
        labels = segment_image(np.ascontiguousarray(scaled.transpose(1, 2, 0)), method, self.crop_size**2)
        if labels.max() < 2**16:  # half the cache's memory; cut_labels gives the same segments for either type
            labels = labels.astype(np.uint16)
        return labels, np.bincount(labels.ravel())

    def _labels(self, method: str, meta: dict[str, Any], rgb: np.ndarray, source: np.ndarray | None,
                cache: MutableMapping[Any, Any]) -> np.ndarray:
        """The crop's 4-connected segments, cut out of the cached segmentation of the whole (bucket-scaled) source
        (segmented now when missing; a photo without its decoded source and without the key, e.g. a shard
        prepared for other settings, has its crop `rgb` segmented instead)."""
        s = self.crop_size
        key = self.segment_key(method, meta)
        entry = cache.get(key)
        if entry is None:
            if source is None:
                return segment_array(rgb, method, self.segment_max_side)
            entry = cache[key] = self.segmentation(source, key)
        labels, areas = entry
        hs, ws = meta["scaled_size"]
        hb, wb = labels.shape
        top, left = meta["crop"]
        cols = left + np.arange(s)
        if meta["flip"]:
            cols = cols[::-1]
        # Pixel centres of the example mapped into the bucket's label map (nearest neighbour).
        rows = np.minimum(((top + np.arange(s) + 0.5) * (hb / hs)).astype(np.int64), hb - 1)
        cols = np.minimum(((cols + 0.5) * (wb / ws)).astype(np.int64), wb - 1)
        # Segment areas in example pixels, for the half-inside rule of cut_labels.
        return cut_labels(labels, rows, cols, areas * (hs * ws / (hb * wb)))

    def __call__(self, image: Tensor | EncodedJpeg, rng: np.random.Generator, *, eval_mode: bool = False,
                 segment_cache: MutableMapping[Any, Any] | None = None) -> dict[str, Any]:
        """One example: `hint (7,S,S)`, `target (3,S,S)`, `mask (S,S)` bool (all False in palette mode),
        `n_colors` int (the drawn N; in patch mode it only matters for index-map masks), `patch` bool,
        `keep_texture` bool and `meta` (the augmentation's choices).

        `image`: a decoded `(3, H, W)` tensor, or an `EncodedJpeg` decoded here only as far as the example needs
        (the same draws; the crop comes from a DCT-scaled decode, experiments/results/bench_data_unique.md).
        `segment_cache`: a dict kept with this source image (the data module keeps one beside each cached image, a
        shard holds one per photo), where the image's segmentations (`segment_source="image"`) are stored and
        reused, and a note that its values were checked (so a cached image is range-checked once, not on every
        example); the example is the same with a warm or cold cache. Without one (a photo nothing keeps), or for an
        `EncodedJpeg`, `segment_source="image"` segments the crop instead, as `"crop"` does."""
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        with self._stage("augment"):
            checked = segment_cache is not None and bool(segment_cache.get(_CHECKED, False))
            target, meta, source = self._augment(image, rng, checked)
            if segment_cache is not None and not checked:
                segment_cache[_CHECKED] = True
        n_colors = int(self.palette_sizes.sample(rng))
        patch = bool(rng.random() < self.p_patch)
        # Seed for quantizers that use one (k-means); drawn always so both modes consume the same stream.
        q_seed = int(rng.integers(2**31))
        keep = bool(self.cue.keep_texture(rng))
        s = self.crop_size
        # Everything below works on numpy arrays this method made, so no stage re-validates them; the torch
        # functions they mirror (quantize, patch_mask, fill_mask, texture_cue, hint) give the same values
        # (tests/data/test_examples.py compares whole examples with them).
        rgb = target.numpy()
        u8 = None

        if patch:
            superpixel = bool(rng.random() < self.p_superpixel)
            index = None
            if not superpixel:
                # Only index-map masks need the quantization, so 90% of patch examples skip it.
                with self._stage("quantize"):
                    if type(self.quantizer) is Quantizer:
                        index = self.quantizer.index_array(rgb, n_colors, seed=q_seed)
                    else:
                        index = self.quantizer(target, n_colors, seed=q_seed).index
            with self._stage("mask"):
                labels = None
                if self.segment_source == "image" and segment_cache is not None:
                    # The photo is kept (the data module's cache, or a shard's stored segmentations): cut its
                    # segmentation. Any other photo is segmented on its crop: segmenting the whole photo for one
                    # example costs several crops' worth (experiments/results/bench_data.md).
                    labels = lambda method: self._labels(method, meta, rgb, source, segment_cache)  # noqa: E731
                mask = patch_mask_array(rgb, index, rng, p_superpixel=1.0 if superpixel else 0.0,
                                        segmenters=self.segmenters, frac_range=self.mask_frac,
                                        segment_max_side=self.segment_max_side, labels=labels)
                fill = rng.random(3).astype(np.float32) if eval_mode else _masked_mean(rgb, mask)
            meta["superpixel"] = superpixel

        # T and G cues (the configured ones) are computed straight into the hint's cue channels and the hint is
        # filled around them in one pass (in palette mode the quantizer writes its colors into it too); other cues
        # go through the numpy twins.
        fast = type(self.cue) is TextureCue and self.cue.mode in ("T", "G")
        h = np.empty((HINT_CHANNELS, s, s), dtype=np.float32) if fast else None
        if not patch:
            with self._stage("quantize"):
                if type(self.quantizer) is Quantizer:
                    u8 = _kernels().u8_planes(rgb) if self.quantizer.method == "median_cut" else None
                    color = self.quantizer.color_array(rgb, n_colors, seed=q_seed, u8=u8,
                                                       out=h[COLOR] if fast else None)
                else:  # any other callable (quantizer, n_colors, seed) -> Quantized
                    color = self.quantizer(target, n_colors, seed=q_seed).image.numpy()
            mask = None

        with self._stage("cue"):
            cue = None
            if keep or patch:  # a palette example whose texture is dropped never reads the cue
                if fast:
                    _kernels().cue_into(_kernels().u8_planes(rgb) if u8 is None else u8, h[CUE],
                                        self.cue.mode == "G", np.float32(self.cue.threshold))
                elif type(self.cue) is TextureCue:
                    cue = self.cue.array(rgb, to_u8_array(rgb) if u8 is None else u8)
                else:
                    cue = self.cue(target).numpy()
        with self._stage("hint"):
            if fast and patch:
                _kernels().patch_hint(rgb, mask, fill, keep, np.float32(self.cue.neutral), h)
            elif fast:
                _palette_hint(h, color, n_colors, keep, self.cue.neutral)
            else:
                if patch:
                    color = fill_mask_array(rgb, mask, fill)
                h = hint_array(color, cue, mode="patch" if patch else "palette",
                               n_colors=None if patch else n_colors, mask=mask, keep_texture=keep,
                               cue_mode=self.cue.mode, g_neutral=self.cue.g_neutral)
        self._count += 1
        return {
            "hint": torch.from_numpy(h),
            "target": target,
            "mask": torch.zeros((s, s), dtype=torch.bool) if mask is None else torch.from_numpy(mask),
            "n_colors": n_colors,
            "patch": patch,
            "keep_texture": keep,
            "meta": meta,
        }

    def __repr__(self) -> str:
        return (f"ExampleMaker(crop_size={self.crop_size}, palette_sizes={self.palette_sizes!r}, "
                f"quantizer={self.quantizer!r}, cue={self.cue!r}, p_patch={self.p_patch}, "
                f"segment_source={self.segment_source!r})")
