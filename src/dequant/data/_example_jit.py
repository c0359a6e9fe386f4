"""Per-pixel passes of `ExampleMaker` compiled with numba: each does in one pass over the pixels what numpy does in
several (a range check, a crop with flip and clip, 8-bit rounding, the T/G texture cue, the mask fill and the
hint's channels).

Each kernel equals the numpy code it replaces bit for bit (tests/data/test_example_jit.py): the same float32
operations in the same order. `examples.py` imports this module on first use (numba is slow to load).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# `_image_array` allows [-1e-4, 1 + 1e-4] (float64 bounds). For a float32 value v, v >= -1e-4 exactly when v >= LOW
# and v <= 1 + 1e-4 exactly when v <= HIGH, LOW and HIGH being the float32 values nearest the bounds inside them:
# float32 compares vectorize, float64 ones need a conversion per value.


def _inner_float32(bound: float, toward: float) -> np.float32:
    """The float32 nearest to `bound` on the side of `toward` (or `bound` itself when float32 holds it exactly)."""
    v = np.float32(bound)
    # Compared as Python floats: numpy compares a float32 with a Python float in float32.
    if (float(v) < bound) if toward > bound else (float(v) > bound):
        v = np.nextafter(v, np.float32(toward))
    return v


_LOW, _HIGH = _inner_float32(-1e-4, 1.0), _inner_float32(1 + 1e-4, 0.0)


@njit(cache=True, nogil=True)
def in_unit_range(chw):  # pragma: no cover - compiled
    """Whether every value of a float32 array `(3, H, W)` lies in [-1e-4, 1 + 1e-4] (so none is NaN or infinite)."""
    low, high = _LOW, _HIGH
    bad = 0
    for c in range(chw.shape[0]):
        for y in range(chw.shape[1]):
            row = chw[c, y]
            for x in range(row.size):
                v = row[x]
                # A count, not an early exit: the loop stays branch-free and vectorizes; NaN fails both compares.
                bad += not (v >= low and v <= high)
    return bad == 0


@njit(cache=True, nogil=True)
def crop_clip(chw, top, left, size, flip):  # pragma: no cover - compiled
    """`np.clip(chw[:, top:top+size, left:left+size] (columns reversed if flip), 0, 1)` of a float32 array as a new
    float32 array: values below 0 become 0, above 1 become 1, NaN and -0.0 stay (as numpy's clip keeps them)."""
    out = np.empty((chw.shape[0], size, size), dtype=np.float32)
    zero, one = np.float32(0.0), np.float32(1.0)
    for c in range(chw.shape[0]):
        for y in range(size):
            row = top + y
            if flip:
                for x in range(size):
                    v = chw[c, row, left + size - 1 - x]
                    v = zero if v < zero else v  # selects, not branches: the loop vectorizes
                    out[c, y, x] = one if v > one else v
            else:
                for x in range(size):
                    v = chw[c, row, left + x]
                    v = zero if v < zero else v
                    out[c, y, x] = one if v > one else v
    return out


@njit(cache=True, nogil=True)
def _u8(v):  # pragma: no cover - compiled
    """`to_u8_array` of one float32 value: rint(v * 255) in float32 (half to even), clipped to [0, 255]."""
    r = np.rint(v * np.float32(255.0))
    if r < 0:
        r = np.float32(0.0)
    elif r > 255:
        r = np.float32(255.0)
    return np.uint8(r)


@njit(cache=True, nogil=True)
def u8_planes(rgb):  # pragma: no cover - compiled
    """`dequant.color.quantize.to_u8_array` of a float32 `(3, H, W)` array in [0, 1]: uint8 planes."""
    c, h, w = rgb.shape
    out = np.empty((c, h, w), dtype=np.uint8)
    for k in range(c):
        for y in range(h):
            for x in range(w):
                out[k, y, x] = _u8(rgb[k, y, x])
    return out


@njit(cache=True, nogil=True)
def _gray(u8, out):  # pragma: no cover - compiled
    """`dequant.color.cues.gray255_array` into `out` `(H, W)` float32."""
    h, w = out.shape
    for y in range(h):
        for x in range(w):
            r, g, b = np.int32(u8[0, y, x]), np.int32(u8[1, y, x]), np.int32(u8[2, y, x])
            out[y, x] = np.float32((r * 9798 + g * 19235 + b * 3735 + 16384) >> 15)


@njit(cache=True, nogil=True)
def _cue_value(d, g_mode, threshold):  # pragma: no cover - compiled
    """The cue of one gradient `d` (float32): T `|d| > threshold`, G `clip((d + 255) / 510, 0, 1)`."""
    if g_mode:
        v = (d + np.float32(255.0)) / np.float32(510.0)
        if v < 0:
            v = np.float32(0.0)
        elif v > 1:
            v = np.float32(1.0)
        return v
    return np.float32(1.0) if abs(d) > threshold else np.float32(0.0)


@njit(cache=True, nogil=True)
def cue_into(u8, out, g_mode, threshold):  # pragma: no cover - compiled
    """`texture_cue_array(u8, "G" if g_mode else "T", threshold)` written into `out` `(2, H, W)` float32.

    The gradients are `numpy.gradient`'s in float32 (central differences halved inside, one-sided at the borders,
    0 along an axis of one pixel); gray values are integers, so every difference is exact, as in numpy."""
    h, w = out.shape[1:]
    gray = np.empty((h, w), dtype=np.float32)
    _gray(u8, gray)
    half = np.float32(2.0)
    for y in range(h):
        for x in range(w):
            if h < 2:
                dy = np.float32(0.0)
            elif y == 0:
                dy = gray[1, x] - gray[0, x]
            elif y == h - 1:
                dy = gray[h - 1, x] - gray[h - 2, x]
            else:
                dy = (gray[y + 1, x] - gray[y - 1, x]) / half
            if w < 2:
                dx = np.float32(0.0)
            elif x == 0:
                dx = gray[y, 1] - gray[y, 0]
            elif x == w - 1:
                dx = gray[y, w - 1] - gray[y, w - 2]
            else:
                dx = (gray[y, x + 1] - gray[y, x - 1]) / half
            out[0, y, x] = _cue_value(dy, g_mode, threshold)
            out[1, y, x] = _cue_value(dx, g_mode, threshold)


@njit(cache=True, nogil=True)
def masked(rgb, mask):  # pragma: no cover - compiled
    """`rgb * mask` (float32 `(3, H, W)` times bool `(H, W)`): each value, or 0 times it outside the mask."""
    c, h, w = rgb.shape
    out = np.empty((c, h, w), dtype=np.float32)
    zero = np.float32(0.0)
    for k in range(c):
        for y in range(h):
            for x in range(w):
                v = rgb[k, y, x]
                out[k, y, x] = v if mask[y, x] else v * zero  # v * 0, not 0: keeps the sign numpy's product has
    return out


@njit(cache=True, nogil=True)
def patch_hint(rgb, mask, fill, keep, neutral, out):  # pragma: no cover - compiled
    """The patch-mode hint in `out` `(7, H, W)`, whose cue channels (3, 4) already hold the clipped cue: color =
    `rgb` with the masked pixels set to `fill`; cue set to `neutral` where texture is not given (inside the mask
    unless `keep`); color indicator 1/256 inside the mask, 1 outside; texture indicator where given (`hint_array`
    in patch mode, for cue modes other than "none")."""
    h, w = mask.shape
    one = np.float32(1.0)
    inside_ind = one / np.float32(256.0)
    inside_tex = one if keep else np.float32(0.0)
    # Plane by plane, with selects: each loop vectorizes.
    for k in range(3):
        f = fill[k]
        for y in range(h):
            for x in range(w):
                out[k, y, x] = f if mask[y, x] else rgb[k, y, x]
    if not keep:
        for k in range(3, 5):
            for y in range(h):
                for x in range(w):
                    if mask[y, x]:
                        out[k, y, x] = neutral
    for y in range(h):
        for x in range(w):
            m = mask[y, x]
            out[5, y, x] = inside_ind if m else one
            out[6, y, x] = inside_tex if m else one
