"""Quickshift (Vedaldi & Soatto 2008) as scikit-image computes it, compiled with numba and vectorised over image rows.

scikit-image's quickshift visits, for every pixel, each pixel of the window around it, twice: for a Parzen density
(one `exp` per pair) and for the nearest denser neighbour. Here both passes run one window offset at a time over
whole rows, so the compiler vectorises them, and each visits every unordered pair once (the distance is symmetric),
the density with a vectorisable `exp`. Only `masks.py` imports this module, and only when numba is installed; there
scikit-image's `quickshift` is the fallback, and the reference tests/color/test_compiled_segmenters.py compares with.

What stays bit-identical to scikit-image, so the labels are the same: the tie-breaking noise (same generator, same
seed), every distance used to choose a parent (same operations in the same order), the choice among equal
distances (the first in the window's row-major order), the `max_dist` cut and the numbering of the segments. What
does not: each density differs from scikit-image's by a few units in the last place (another summation order, and
an `exp` within 1 ulp of libm's). Densities are only compared with each other, and the tie-breaking noise (1e-5) is
nine orders of magnitude larger, so a comparison could flip only between two densities within ~1e-14 of each other:
it happens in none of the tests' photos and synthetic images.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

_LOG2E = 1.4426950408889634
# ln 2 split so that k * _LN2_HI is exact for |k| < 2^20 (Cody & Waite), as in fdlibm's exp
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_ROUND = 6755399441055744.0  # 1.5 * 2^52: (x + _ROUND) - _ROUND rounds x to the nearest integer


@intrinsic
def _as_float(typingctx, bits):  # pragma: no cover - compiled
    """The float64 whose IEEE-754 bits are the int64 `bits` (a register move, which vectorises)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return types.float64(types.int64), codegen


@njit(cache=True, nogil=True, inline="always")
def _exp_neg(x):  # pragma: no cover - compiled
    """exp(x) for x <= 0 within 1 ulp, in operations a compiler vectorises (no libm call, no table lookup).

    Below -700 it returns exp(-700) ~ 1e-304, which leaves a sum of ones unchanged as the true value would."""
    x = max(x, -700.0)
    k = (x * _LOG2E + _ROUND) - _ROUND
    r = (x - k * _LN2_HI) - k * _LN2_LO  # |r| <= ln(2) / 2: the degree-13 Taylor polynomial is exact to ~1e-17
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    return p * _as_float((np.int64(k) + 1023) << 52)  # times 2^k, k >= -1010: a normal double


@njit(cache=True, nogil=True)
def exp_neg(x):  # pragma: no cover - compiled
    """`_exp_neg` of each element of a 1-D float64 array (for the tests)."""
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = _exp_neg(x[i])
    return out


@njit(cache=True, nogil=True, fastmath={"contract"})
def _densities(planes, kernel_width, neg_inv_two_sigma_sq, density):  # pragma: no cover - compiled
    """Add to `density` (H, W) the Parzen sum over each pixel's window, self excluded, of a (3, H, W) feature image.

    Each unordered pair is visited once (offsets in the forward half of the window) and added to both pixels."""
    c0, c1, c2 = planes[0], planes[1], planes[2]
    h, w = c0.shape
    partner = np.zeros((h, w))  # a second sum, so that the two adds of one pair never alias in the vector loop
    for dr in range(0, kernel_width + 1):
        for dc in range(-kernel_width, kernel_width + 1):
            if dr == 0 and dc <= 0:
                continue
            s = float(dr * dr + dc * dc)
            lo, hi = max(0, -dc), min(w, w - dc)
            for r in range(0, h - dr):
                # row slices starting at 0: the compiler then sees non-negative indices and vectorises
                p0, p1, p2 = c0[r, lo:hi], c1[r, lo:hi], c2[r, lo:hi]
                q0, q1, q2 = c0[r + dr, lo + dc:hi + dc], c1[r + dr, lo + dc:hi + dc], c2[r + dr, lo + dc:hi + dc]
                a, b = density[r, lo:hi], partner[r + dr, lo + dc:hi + dc]
                for i in range(hi - lo):
                    t0 = p0[i] - q0[i]
                    t1 = p1[i] - q1[i]
                    t2 = p2[i] - q2[i]
                    e = _exp_neg((t0 * t0 + t1 * t1 + t2 * t2 + s) * neg_inv_two_sigma_sq)
                    a[i] += e
                    b[i] += e
    density += partner


@njit(cache=True, nogil=True)
def _nearest_denser(planes, density, kernel_width, closest, offset):  # pragma: no cover - compiled
    """Each pixel's nearest denser pixel in its window: squared distance into `closest` (H, W), the window
    offset's row-major index into `offset` (H, W; -1 where none is denser).

    scikit-image scans each pixel's window in row-major order and keeps the first of equal distances, i.e. the
    least (distance, offset index); so does this, visiting each unordered pair once (offsets in the forward half of
    the window) for both of its pixels. The distance is summed in scikit-image's order (channels, then rows, then
    columns) and never fused into FMAs, so it is the same double, and it is symmetric."""
    c0, c1, c2 = planes[0], planes[1], planes[2]
    h, w = c0.shape
    side = 2 * kernel_width + 1
    # candidates from forward offsets land in `closest`/`offset`, from backward ones in these: the two adds of a
    # pair then never alias in the vector loop
    closest_b = np.full((h, w), np.finfo(np.float64).max)
    offset_b = np.full((h, w), -1, dtype=np.int64)
    for dr in range(0, kernel_width + 1):
        fr = float(dr * dr)
        for dc in range(-kernel_width, kernel_width + 1):
            if dr == 0 and dc <= 0:
                continue
            fc = float(dc * dc)
            forward = (dr + kernel_width) * side + dc + kernel_width
            backward = (kernel_width - dr) * side + kernel_width - dc
            lo, hi = max(0, -dc), min(w, w - dc)
            for r in range(0, h - dr):
                # row slices starting at 0: the compiler then sees non-negative indices and vectorises
                p0, p1, p2 = c0[r, lo:hi], c1[r, lo:hi], c2[r, lo:hi]
                q0, q1, q2 = c0[r + dr, lo + dc:hi + dc], c1[r + dr, lo + dc:hi + dc], c2[r + dr, lo + dc:hi + dc]
                dp, dq = density[r, lo:hi], density[r + dr, lo + dc:hi + dc]
                cp, op = closest[r, lo:hi], offset[r, lo:hi]
                cq, oq = closest_b[r + dr, lo + dc:hi + dc], offset_b[r + dr, lo + dc:hi + dc]
                for i in range(hi - lo):
                    t0 = p0[i] - q0[i]
                    t1 = p1[i] - q1[i]
                    t2 = p2[i] - q2[i]
                    d = t0 * t0 + t1 * t1
                    d = d + t2 * t2
                    d = d + fr
                    d = d + fc
                    for_p = (dq[i] > dp[i]) & ((d < cp[i]) | ((d == cp[i]) & (forward < op[i])))
                    cp[i] = d if for_p else cp[i]
                    op[i] = forward if for_p else op[i]
                    for_q = (dp[i] > dq[i]) & ((d < cq[i]) | ((d == cq[i]) & (backward < oq[i])))
                    cq[i] = d if for_q else cq[i]
                    oq[i] = backward if for_q else oq[i]
    for r in range(h):
        for c in range(w):
            b, f = offset_b[r, c], offset[r, c]
            if b >= 0 and (f < 0 or closest_b[r, c] < closest[r, c]
                           or (closest_b[r, c] == closest[r, c] and b < f)):
                closest[r, c], offset[r, c] = closest_b[r, c], b


@njit(cache=True, nogil=True)
def _label_trees(parent):  # pragma: no cover - compiled
    """Label each pixel by the root of its tree in the forest `parent` (flat), roots numbered in index order."""
    n = parent.size
    label = np.full(n, -1, dtype=np.int64)
    count = 0
    for i in range(n):
        if parent[i] == i:
            label[i] = count
            count += 1
    for i in range(n):
        root = i
        while parent[root] != root:
            root = parent[root]
        j = i
        while parent[j] != root and j != root:  # compress the path: trees can be long chains
            parent[j], j = root, parent[j]
        label[i] = label[root]
    return label


def quickshift(features: np.ndarray, kernel_size: float, max_dist: float, seed: int) -> np.ndarray:
    """Quickshift labels `(H, W)` int64 of an `(H, W, 3)` float64 feature image (Lab times ratio), numbered as
    `skimage.segmentation.quickshift` numbers them for the same features, kernel size, max_dist and seed."""
    h, w = features.shape[:2]
    planes = np.ascontiguousarray(np.moveaxis(features, -1, 0), dtype=np.float64)
    kernel_width = int(np.ceil(3 * kernel_size))
    density = np.random.default_rng(seed).normal(scale=0.00001, size=(h, w)) + 1.0  # + each pixel's own exp(0)
    _densities(planes, kernel_width, -0.5 / (kernel_size * kernel_size), density)
    closest = np.full((h, w), np.finfo(np.float64).max)
    offset = np.full((h, w), -1, dtype=np.int64)
    _nearest_denser(planes, density, kernel_width, closest, offset)
    side = 2 * kernel_width + 1
    rows, cols = np.divmod(np.arange(h * w), w)
    parent = (rows + offset.ravel() // side - kernel_width) * w + cols + offset.ravel() % side - kernel_width
    too_far = (offset.ravel() < 0) | (np.sqrt(closest.ravel()) > max_dist)
    parent[too_far] = np.flatnonzero(too_far)
    return _label_trees(parent).reshape(h, w)
