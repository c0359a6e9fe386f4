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


@njit(cache=True, nogil=True)
def _cubic_taps(dst0, count, scale, size, index, weight):  # pragma: no cover - compiled
    """OpenCV's bicubic taps (A = -0.75) of `count` output positions from `dst0` on, for a resize whose source /
    destination ratio is `scale` along an axis of `size` source pixels: source indices (clamped to the image, as
    cv2.resize replicates the border) and float32 weights, as cv2.resize computes them."""
    a = np.float32(-0.75)
    one = np.float32(1.0)
    for i in range(count):
        fx = np.float32((dst0 + i + 0.5) * scale - 0.5)
        sx = np.int64(np.floor(fx))
        f = fx - np.float32(sx)
        x1 = f + one
        g = one - f
        w0 = ((a * x1 - np.float32(5.0) * a) * x1 + np.float32(8.0) * a) * x1 - np.float32(4.0) * a
        w1 = ((a + np.float32(2.0)) * f - (a + np.float32(3.0))) * f * f + one
        w2 = ((a + np.float32(2.0)) * g - (a + np.float32(3.0))) * g * g + one
        weight[i, 0] = w0
        weight[i, 1] = w1
        weight[i, 2] = w2
        weight[i, 3] = one - w0 - w1 - w2
        for k in range(4):
            j = sx - 1 + k
            index[i, k] = 0 if j < 0 else (size - 1 if j >= size else j)


@njit(cache=True, nogil=True)
def scaled_crop(src, scale_y, scale_x, top, left, size, flip):  # pragma: no cover - compiled
    """The `size` x `size` crop at (`top`, `left`) of an `(H, W, 3)` uint8 image (values / 255) resized bicubically
    by source/destination ratios `scale_y`, `scale_x`, as `(3, size, size)` float32 clipped to [0, 1], columns
    reversed if `flip`: what cv2.resize (INTER_CUBIC) of the whole image followed by `crop_clip` gives, computed for
    the crop's pixels only."""
    h, w = src.shape[0], src.shape[1]
    ys = np.empty((size, 4), dtype=np.int64)
    wy = np.empty((size, 4), dtype=np.float32)
    xs = np.empty((size, 4), dtype=np.int64)
    wx = np.empty((size, 4), dtype=np.float32)
    _cubic_taps(top, size, scale_y, h, ys, wy)
    _cubic_taps(left, size, scale_x, w, xs, wx)
    r0 = ys[0, 0]
    r1 = ys[size - 1, 3] + 1
    # v / 255 in float32 for every 8-bit value: the values load_rgb gives.
    lut = np.empty(256, dtype=np.float32)
    for v in range(256):
        lut[v] = np.float32(v) / np.float32(255.0)
    # Horizontal pass over the source rows the crop reads (OpenCV's order: rows first, then columns).
    rows = np.empty((3, r1 - r0, size), dtype=np.float32)
    for r in range(r0, r1):
        line = src[r]
        for i in range(size):
            i0, i1, i2, i3 = xs[i, 0], xs[i, 1], xs[i, 2], xs[i, 3]
            c0, c1, c2, c3 = wx[i, 0], wx[i, 1], wx[i, 2], wx[i, 3]
            for c in range(3):
                acc = lut[line[i0, c]] * c0
                acc = acc + lut[line[i1, c]] * c1
                acc = acc + lut[line[i2, c]] * c2
                acc = acc + lut[line[i3, c]] * c3
                rows[c, r - r0, i] = acc
    out = np.empty((3, size, size), dtype=np.float32)
    zero, one = np.float32(0.0), np.float32(1.0)
    for c in range(3):
        for y in range(size):
            a0, a1, a2, a3 = ys[y, 0] - r0, ys[y, 1] - r0, ys[y, 2] - r0, ys[y, 3] - r0
            b0, b1, b2, b3 = wy[y, 0], wy[y, 1], wy[y, 2], wy[y, 3]
            for x in range(size):
                v = b0 * rows[c, a0, x] + b1 * rows[c, a1, x] + b2 * rows[c, a2, x] + b3 * rows[c, a3, x]
                v = zero if v < zero else v
                v = one if v > one else v
                out[c, y, size - 1 - x if flip else x] = v
    return out


@njit(cache=True, nogil=True)
def _area_taps(dst0, count, scale, size):  # pragma: no cover - compiled
    """OpenCV's INTER_AREA taps of `count` output positions from `dst0` on, for a shrink by `scale` (source /
    destination >= 1) along an axis of `size` source pixels: (first tap of each output, source index and float32
    weight of every tap), as cv2.resize's computeResizeAreaTab makes them."""
    starts = np.empty(count + 1, dtype=np.int64)
    index = np.empty(count * (int(np.ceil(scale)) + 2), dtype=np.int64)
    weight = np.empty(index.size, dtype=np.float32)
    k = 0
    for i in range(count):
        starts[i] = k
        fsx1 = (dst0 + i) * scale
        fsx2 = fsx1 + scale
        cell = min(scale, size - fsx1)
        sx1, sx2 = int(np.ceil(fsx1)), int(np.floor(fsx2))
        sx2 = min(sx2, size - 1)
        sx1 = min(sx1, sx2)
        if sx1 - fsx1 > 1e-3:
            index[k], weight[k] = sx1 - 1, np.float32((sx1 - fsx1) / cell)
            k += 1
        for sx in range(sx1, sx2):
            index[k], weight[k] = sx, np.float32(1.0 / cell)
            k += 1
        if fsx2 - sx2 > 1e-3:
            index[k], weight[k] = sx2, np.float32(min(min(fsx2 - sx2, 1.0), cell) / cell)
            k += 1
    starts[count] = k
    return starts, index, weight


@njit(cache=True, nogil=True)
def area_crop(src, scale_y, scale_x, top, left, size, flip):  # pragma: no cover - compiled
    """`scaled_crop` for a shrink (`scale_y`, `scale_x` >= 1): the crop of cv2.resize with INTER_AREA (each output
    pixel the area-weighted mean of the source pixels under it), computed for the crop's pixels only."""
    h, w = src.shape[0], src.shape[1]
    ys, yi, yw = _area_taps(top, size, scale_y, h)
    xs, xi, xw = _area_taps(left, size, scale_x, w)
    lut = np.empty(256, dtype=np.float32)
    for v in range(256):
        lut[v] = np.float32(v) / np.float32(255.0)
    # Horizontal pass over the source rows the crop reads, once each (neighbouring outputs share rows).
    r0, r1 = yi[0], yi[ys[size] - 1] + 1
    rows = np.empty((r1 - r0, 3, size), dtype=np.float32)
    zero, one = np.float32(0.0), np.float32(1.0)
    for r in range(r0, r1):
        line = src[r]
        for x in range(size):
            a0 = a1 = a2 = zero
            for u in range(xs[x], xs[x + 1]):
                wt = xw[u]
                px = line[xi[u]]
                a0 += lut[px[0]] * wt
                a1 += lut[px[1]] * wt
                a2 += lut[px[2]] * wt
            rows[r - r0, 0, x] = a0
            rows[r - r0, 1, x] = a1
            rows[r - r0, 2, x] = a2
    out = np.zeros((3, size, size), dtype=np.float32)
    for y in range(size):
        for t in range(ys[y], ys[y + 1]):
            beta = yw[t]
            hr = rows[yi[t] - r0]
            for c in range(3):
                for x in range(size):
                    out[c, y, x] += beta * hr[c, x]
    final = np.empty((3, size, size), dtype=np.float32)
    for c in range(3):
        for y in range(size):
            for x in range(size):
                v = out[c, y, x]
                v = zero if v < zero else v
                final[c, y, size - 1 - x if flip else x] = one if v > one else v
    return final
