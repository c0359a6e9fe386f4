"""Felzenszwalb & Huttenlocher's graph segmentation as scikit-image computes it, with its loops compiled by numba.

scikit-image builds the 8-connected grid graph with numpy, sorts the edges by color distance and merges along them
with a union-find whose `find` never shortens a path: on photos its trees grow long, and the two passes over the
edges take most of its time. Here the edge weights are the same doubles (same operations, same order; checked
against scikit-image's numpy expression in tests/color/test_compiled_segmenters.py), they are sorted by the same
`np.argsort`, and the merges are the same: a set's root is its smallest pixel index in both, so halving paths
(`_masks_jit._find`) changes no decision, and segments are numbered by their roots as `np.unique` numbers them.
Only `masks.py` imports this module, and only when numba is installed; there scikit-image's `felzenszwalb` is the
fallback and the reference.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from dequant.color._masks_jit import _find, _number_sets

# The edge directions, in the order of scikit-image's edge list: right, down, down-right, up-right
_RIGHT, _DOWN, _DOWN_RIGHT, _UP_RIGHT = 0, 1, 2, 3


@njit(cache=True, nogil=True)
def edge_costs(image):  # pragma: no cover - compiled
    """Color distance of every 8-neighbour edge of a (H, W, C) float64 image, right, down, down-right and
    up-right edges one after the other, each block in row-major order of its edges (scikit-image's layout)."""
    h, w, ch = image.shape
    n_right, n_down, n_diag = h * (w - 1), (h - 1) * w, (h - 1) * (w - 1)
    costs = np.empty(n_right + n_down + 2 * n_diag)
    k = 0
    for direction in range(4):
        rows = h if direction == _RIGHT else h - 1
        cols = w if direction == _DOWN else w - 1
        for r in range(rows):
            for c in range(cols):
                if direction == _RIGHT:
                    a0, a1, b0, b1 = r, c + 1, r, c
                elif direction == _DOWN:
                    a0, a1, b0, b1 = r + 1, c, r, c
                elif direction == _DOWN_RIGHT:
                    a0, a1, b0, b1 = r + 1, c + 1, r, c
                else:
                    a0, a1, b0, b1 = r + 1, c, r, c + 1
                s = 0.0
                for z in range(ch):
                    t = image[a0, a1, z] - image[b0, b1, z]
                    s += t * t  # numpy sums a 3-vector left to right, starting from zero: the same double
                costs[k] = np.sqrt(s)
                k += 1
    return costs


@njit(cache=True, nogil=True, inline="always")
def _edge_ends(e, h, w):  # pragma: no cover - compiled
    """The two pixel indices of edge `e` in scikit-image's order of its edge list."""
    n_right, n_down, n_diag = h * (w - 1), (h - 1) * w, (h - 1) * (w - 1)
    if e < n_right:
        r, c = divmod(e, w - 1)
        return r * w + c + 1, r * w + c
    e -= n_right
    if e < n_down:
        return e + w, e
    e -= n_down
    if e < n_diag:
        r, c = divmod(e, w - 1)
        return (r + 1) * w + c + 1, r * w + c
    r, c = divmod(e - n_diag, w - 1)
    return r * w + c + 1, (r + 1) * w + c


@njit(cache=True, nogil=True)
def _merge(order, costs, h, w, scale, min_size):  # pragma: no cover - compiled
    """Labels (H*W,) int64 from merging along the edges in `order` (ascending cost), then joining segments smaller
    than `min_size` to a neighbour, segments numbered in the order of their smallest pixel index."""
    n = h * w
    forest = np.arange(n)
    size = np.ones(n, dtype=np.int64)
    inner = np.zeros(n)
    for k in range(order.size):
        e = order[k]
        p, q = _edge_ends(e, h, w)
        a, b = _find(forest, p), _find(forest, q)
        if a == b:
            continue
        # scikit-image keeps these two thresholds in float32
        inner_a = np.float32(inner[a] + scale / size[a])
        inner_b = np.float32(inner[b] + scale / size[b])
        if costs[e] < np.float64(min(inner_a, inner_b)):
            root, child = min(a, b), max(a, b)
            forest[child] = root
            size[root] = size[a] + size[b]
            inner[root] = costs[e]
    for k in range(order.size):
        p, q = _edge_ends(order[k], h, w)
        a, b = _find(forest, p), _find(forest, q)
        if a != b and (size[a] < min_size or size[b] < min_size):
            root, child = min(a, b), max(a, b)
            forest[child] = root
            size[root] = size[a] + size[b]
    return _number_sets(forest, n)[0]  # a root is its set's smallest index: met before the rest of its set


def felzenszwalb(smoothed: np.ndarray, scale: float, min_size: int) -> np.ndarray:
    """Labels `(H, W)` int64 of an `(H, W, C)` float64 image already smoothed as scikit-image smooths it, equal to
    `skimage.segmentation.felzenszwalb` with this scale and min_size."""
    h, w = smoothed.shape[:2]
    costs = edge_costs(np.ascontiguousarray(smoothed, dtype=np.float64))
    order = np.argsort(costs)  # numpy's sort, as scikit-image's: equal costs keep its order
    return _merge(order, costs, h, w, float(scale) / 255.0, int(min_size)).reshape(h, w)
