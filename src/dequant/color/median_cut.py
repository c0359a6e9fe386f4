"""Pillow's median cut, reimplemented: the same palette and index map, compiled with numba when it is installed
(`_median_cut_jit.py`, about 0.05-0.1x Pillow's time at 256x256), else with numpy (0.1-0.35x).

`Image.quantize(colors=n, method=Image.Quantize.MEDIANCUT)` (libImaging/Quant.c, method 0, no k-means) does:

1. Count the distinct colors. Above 65536 of them it drops the low bit of every channel (repeatedly) until at most
   65536 remain; the boxes are cut on those coarser colors, averages and distances use the exact ones.
2. Median cut: a max-heap of boxes keyed by pixel count; pop the box with the most pixels (a box of one color is
   dropped) and cut it across the channel with the largest range weighted 77/150/29 (R/G/B, first one on a tie) at
   the pixel-weighted median, walking values from high to low: the high part takes every value down to and
   including the one where the running count first exceeds half the box; when that leaves nothing, the high part
   gives up its lowest value instead. Stop after n-1 cuts or when nothing is left to cut.
3. The palette lists the boxes left to right through the tree (high part first); each entry is its box's mean,
   each channel rounded half up.
4. Each distinct color keeps its own box's entry unless another entry is strictly nearer (squared RGB distance);
   then it takes the nearest, ties going to the entry nearest its box's entry, then to the lowest index.

Which box the heap pops among equal pixel counts depends on the heap's layout, so the heap is simulated exactly
(`_Heap`); everything else is order-free and runs vectorised. The compiled version simply runs Pillow's loop.

`backend`: "auto" (numba when it imports, else numpy), "numba" or "numpy"; all give the same result.
"""

from __future__ import annotations

import threading
from numbers import Integral

import numpy as np

from dequant.color._kernels import optional_kernels

MAX_DISTINCT = 65536
# Channel weights of the cut-axis choice (the luma weights Pillow uses, in 1/256).
_AXIS_WEIGHTS = (77, 150, 29)


class _Heap:
    """Max-heap of node ids on their pixel counts with the exact sift rules of Pillow's QuantHeap (1-based)."""

    def __init__(self, counts: list[int]) -> None:
        self.counts = counts
        self.items: list[int] = [-1]

    def push(self, node: int) -> None:
        items, counts = self.items, self.counts
        items.append(node)
        k = len(items) - 1
        while k != 1 and counts[node] > counts[items[k >> 1]]:
            items[k] = items[k >> 1]
            k >>= 1
        items[k] = node

    def pop(self) -> int | None:
        items, counts = self.items, self.counts
        if len(items) == 1:
            return None
        top = items[1]
        last = items.pop()
        n = len(items) - 1
        k = 1
        while k * 2 <= n:
            child = k * 2
            if child < n and counts[items[child]] < counts[items[child + 1]]:
                child += 1
            if counts[last] > counts[items[child]]:
                break
            items[k] = items[child]
            k = child
        if n:
            items[k] = last
        return top


def _distinct(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values of a 1-d int array and their counts."""
    ordered = np.sort(key)
    first = np.empty(ordered.size, dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    return ordered[starts], np.diff(np.append(starts, ordered.size))


class _Tree:
    """Boxes of distinct colors, cut many at a time; node 0 is the root, children come after their parent."""

    def __init__(self, channels: np.ndarray, counts: np.ndarray, n_pixels: int) -> None:
        self.channels = channels  # (3, M) int64
        self.weights = counts.astype(np.float64)
        self.box = np.zeros(channels.shape[1], dtype=np.int64)  # deepest node of each color
        self.count = np.array([n_pixels], dtype=np.int64)
        self.n_members = np.array([channels.shape[1]], dtype=np.int64)
        self.left = np.array([-1], dtype=np.int64)
        self.parent = np.array([-1], dtype=np.int64)

    def cut(self, nodes: np.ndarray) -> None:
        """Cut every node in `nodes` (none cut before) as Pillow cuts one box (module docstring, step 2)."""
        s, n_nodes = nodes.size, self.count.size
        slot = np.full(n_nodes, -1, dtype=np.int64)
        slot[nodes] = np.arange(s)
        if int(self.n_members[nodes].sum()) == self.box.size:  # every color is cut (the early rounds)
            sel: slice | np.ndarray = slice(None)
            vals = self.channels
            local = slot[self.box]
        else:
            local = slot[self.box]
            sel = np.flatnonzero(local >= 0)
            local = local[sel]
            vals = self.channels[:, sel]
        weights = self.weights[sel]
        base = local * 256
        # Pixel-weighted histograms of every channel per box: their support gives the box's extent, and the cut
        # channel's gives the median.
        hists = np.stack([np.bincount(base + vals[c], weights=weights, minlength=s * 256) for c in range(3)])
        hists = hists.reshape(3, s, 256)
        present = hists > 0
        lo = present.argmax(axis=2).T  # (s, 3)
        hi = 255 - present[:, :, ::-1].argmax(axis=2).T
        axis = ((hi - lo) * np.array(_AXIS_WEIGHTS)).argmax(axis=1)  # first channel on a tie, as Pillow
        rows = np.arange(s)
        hist = hists[axis, rows]
        above = np.cumsum(hist[:, ::-1], axis=1)  # above[:, j]: pixels with value >= 255 - j
        # The first value from the top at which the running count exceeds half of the box.
        split = 255 - (2 * above > self.count[nodes, None]).argmax(axis=1)
        lo_axis = lo[rows, axis]
        threshold = np.where(split > lo_axis, split, lo_axis + 1)
        left_count = np.rint(above[rows, 255 - threshold]).astype(np.int64)
        m = vals.shape[1]
        x = np.ascontiguousarray(vals).ravel()[axis[local] * m + np.arange(m)]  # each color's cut channel
        low = x < threshold[local]
        left_members = self.n_members[nodes] - np.bincount(local[low], minlength=s)
        children = n_nodes + 2 * rows
        self.box[sel] = n_nodes + 2 * local + low  # high part first, as the palette order wants
        self.left[nodes] = children
        self.count = np.concatenate([self.count, np.stack([left_count, self.count[nodes] - left_count], 1).ravel()])
        self.n_members = np.concatenate(
            [self.n_members, np.stack([left_members, self.n_members[nodes] - left_members], 1).ravel()])
        self.left = np.concatenate([self.left, np.full(2 * s, -1, dtype=np.int64)])
        self.parent = np.concatenate([self.parent, np.repeat(nodes, 2)])


def _pillow_cuts(tree: _Tree, n_cuts: int) -> np.ndarray:
    """Bool per node: does Pillow's heap cut it (given every node it could cut is cut in `tree`)."""
    cuttable = np.flatnonzero(tree.n_members > 1)
    chosen = np.zeros(tree.count.size, dtype=bool)
    if cuttable.size <= n_cuts:
        chosen[cuttable] = True
        return chosen
    # Pillow pops counts in non-increasing order (a child has fewer pixels than its parent), so it cuts the
    # n_cuts largest boxes; only a tie at the boundary needs the heap's own order.
    counts = np.sort(tree.count[cuttable])[::-1]
    if counts[n_cuts - 1] > counts[n_cuts]:
        chosen[cuttable[tree.count[cuttable] >= counts[n_cuts - 1]]] = True
        return chosen
    count_list = tree.count.tolist()
    members = tree.n_members.tolist()
    left = tree.left.tolist()
    heap = _Heap(count_list)
    heap.push(0)
    for _ in range(n_cuts):
        node = heap.pop()
        while node is not None and members[node] == 1:  # a one-color box cannot be cut
            node = heap.pop()
        if node is None:
            break
        chosen[node] = True
        heap.push(left[node])
        heap.push(left[node] + 1)
    return chosen


def _boxes(channels: np.ndarray, counts: np.ndarray, n_pixels: int, n_colors: int) -> np.ndarray:
    """Median cut of distinct colors `channels` (3, M) with pixel `counts`: palette entry of each color (M,)."""
    tree = _Tree(channels, counts, n_pixels)
    n_cuts = n_colors - 1
    # Cut in rounds, every uncut box at once that Pillow might still cut: a box smaller than the n_cuts-th
    # largest cuttable box found so far never is (step 2 pops counts in non-increasing order).
    while n_cuts > 0:
        cuttable = tree.n_members > 1
        sizes = np.sort(tree.count[cuttable])
        floor = sizes[-n_cuts] if sizes.size >= n_cuts else 0
        nodes = np.flatnonzero(cuttable & (tree.left < 0) & (tree.count >= floor))
        if nodes.size == 0:
            break
        tree.cut(nodes)
    chosen = _pillow_cuts(tree, n_cuts) if n_cuts > 0 else np.zeros(1, dtype=bool)
    # Palette order: Pillow's leaves depth first, high part first; `entry` maps every node to its leaf's entry.
    entry = np.full(tree.count.size, -1, dtype=np.int64)
    stack, k = [0], 0
    left = tree.left.tolist()
    while stack:
        node = stack.pop()
        if chosen[node]:
            stack.append(left[node] + 1)
            stack.append(left[node])
        else:
            entry[node] = k
            k += 1
    parent = tree.parent.tolist()
    entry_list = entry.tolist()
    for node in range(1, len(entry_list)):  # parents come before children
        if entry_list[node] < 0:
            entry_list[node] = entry_list[parent[node]]
    return np.asarray(entry_list, dtype=np.int64)[tree.box]


def _nearest(channels: np.ndarray, own: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Palette entry of each color (module docstring, step 4): `channels` (3, M) int32, `own` (M,) its box's entry."""
    k = palette.shape[0]
    result = own.copy()
    if k == 1:
        return result
    pal = palette.T.astype(np.int32)  # (3, K)
    between = sum((pal[c][:, None] - pal[c][None, :]) ** 2 for c in range(3))  # (K, K) squared distances
    # Row b lists the entries by (distance to entry b, index): Pillow's search order, so the first nearest entry
    # in it wins a tie. A nearer entry than b lies within twice b's distance (triangle inequality), so a color
    # at squared distance d from b needs only the prefix of entries within 4 d of b.
    order = np.argsort(between * k + np.arange(k, dtype=np.int32), axis=1)
    ranked = np.take_along_axis(between, order, axis=1).astype(np.int64)
    d_own = sum((channels[c] - pal[c][own]) ** 2 for c in range(3))
    span = 4 * 3 * 255**2 + 1
    ranked += span * np.arange(k)[:, None]
    needed = np.searchsorted(ranked.ravel(), d_own * 4 + own * span, side="right") - own * k
    unsure = np.flatnonzero(needed > 1)
    if unsure.size == 0:
        return result
    # Prefix lengths grow in powers of two so that each group is one padded array operation.
    bucket = np.ceil(np.log2(needed[unsure])).astype(np.int64)
    for b in range(1, int(bucket.max()) + 1):
        rows = unsure[bucket == b]
        if rows.size == 0:
            continue
        cand = order[own[rows], : min(1 << b, k)]  # (R, L)
        d = sum((pal[c][cand] - channels[c][rows, None]) ** 2 for c in range(3))
        first = d.argmin(axis=1)
        moved = d[np.arange(rows.size), first] < d_own[rows]  # ties keep the own entry
        result[rows[moved]] = cand[moved, first[moved]]
    return result


_LOOKUP = threading.local()


def _lookup_table() -> np.ndarray:
    """A per-thread uint8 table over all 2^24 colors (16 MiB, allocated on first use, never cleared)."""
    table = getattr(_LOOKUP, "table", None)
    if table is None:
        table = _LOOKUP.table = np.empty(1 << 24, dtype=np.uint8)
    return table


BACKENDS = ("auto", "numba", "numpy")
_JIT: list = []  # [the kernels module `_median_cut_jit`, or None when numba does not import], filled on first use


def _compiled():
    """The numba kernels module, or None when numba is not installed (imported once, on first use)."""
    return optional_kernels(_JIT, "dequant.color._median_cut_jit")


def _kernel(backend: str):
    """The function (keys int32, n_colors) -> (palette, index) that `backend` names."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "numpy":
        return _median_cut_keys
    jit = _compiled()
    if jit is None:
        if backend == "numba":
            raise ValueError("backend='numba' needs the numba package (pip install numba), which does not import")
        return _median_cut_keys
    return jit.median_cut_keys


def _check_n_colors(n_colors: object) -> None:
    if isinstance(n_colors, bool) or not isinstance(n_colors, Integral) or not 1 <= n_colors <= 256:
        raise ValueError(f"n_colors must be an int in [1, 256], got {n_colors!r}")


def _keys(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One int32 per pixel, r + 256 g + 65536 b, flat (any injective key would do: nothing depends on the order)."""
    key = b.astype(np.int32)
    key <<= 8
    key |= g
    key <<= 8
    key |= r
    return key.ravel()


def median_cut(u8: np.ndarray, n_colors: int, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Pillow's median cut of an `(H, W, 3)` uint8 image: (palette `(K, 3)` uint8 in Pillow's order, index `(H, W)`).

    Identical to `Image.fromarray(u8).quantize(n_colors, method=Image.Quantize.MEDIANCUT)` (its K palette
    entries and its index map); `n_colors` in [1, 256]; `backend` one of BACKENDS (module docstring).
    """
    if not isinstance(u8, np.ndarray) or u8.dtype != np.uint8 or u8.ndim != 3 or u8.shape[2] != 3 or u8.size == 0:
        raise ValueError(f"image must be a non-empty (H, W, 3) uint8 array, got {getattr(u8, 'shape', u8)!r}")
    _check_n_colors(n_colors)
    kernel = _kernel(backend)
    h, w, _ = u8.shape
    key = _keys(u8[..., 0], u8[..., 1], u8[..., 2])
    palette, index = kernel(key, int(n_colors))
    return palette, index.astype(np.int64).reshape(h, w)


def median_cut_planes(u8: np.ndarray, n_colors: int, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """`median_cut` of a `(3, H, W)` uint8 image (channel planes): (palette `(K, 3)` uint8, index `(H, W)` uint8).

    The same palette and index map as `median_cut` of the `(H, W, 3)` image, with a uint8 index (K <= 256).
    """
    if not isinstance(u8, np.ndarray) or u8.dtype != np.uint8 or u8.ndim != 3 or u8.shape[0] != 3 or u8.size == 0:
        raise ValueError(f"image must be a non-empty (3, H, W) uint8 array, got {getattr(u8, 'shape', u8)!r}")
    _check_n_colors(n_colors)
    kernel = _kernel(backend)
    key = _keys(u8[0], u8[1], u8[2])
    palette, index = kernel(key, int(n_colors))
    return palette, index.reshape(u8.shape[1:])


def palette_colors(palette: np.ndarray, index: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The image of a uint8 palette `(K, 3)` and index map `(H, W)`: float32 `(3, H, W)` in [0, 1], written into
    `out` when given (one compiled pass when numba imports, else three numpy lookups; the same values)."""
    if out is None:
        out = np.empty((3, *index.shape), dtype=np.float32)
    jit = _compiled()
    if jit is not None:
        jit.palette_fill(palette, index, out)
        return out
    lut = palette.T.astype(np.float32) / np.float32(255.0)
    for c in range(3):
        np.take(lut[c], index, out=out[c])
    return out


def _median_cut_keys(key: np.ndarray, n_colors: int) -> tuple[np.ndarray, np.ndarray]:
    """Median cut of pixels given as keys r + 256 g + 65536 b (int32): (palette `(K, 3)` uint8, index uint8)."""
    n_pixels = key.size
    exact, exact_counts = _distinct(key)
    exact_rgb = np.stack([exact & 255, (exact >> 8) & 255, exact >> 16]).astype(np.int64)  # (3, M)

    # Coarser colors while there are too many distinct ones (step 1); the boxes live on the coarse colors.
    shift, coarse, coarse_counts, coarse_of_exact = 0, exact_rgb, exact_counts, None
    while coarse.shape[1] > MAX_DISTINCT:
        shift += 1
        shifted = exact_rgb >> shift
        values, coarse_of_exact = np.unique(shifted[0] | (shifted[1] << 8) | (shifted[2] << 16),
                                            return_inverse=True)
        coarse = np.stack([values & 255, (values >> 8) & 255, values >> 16])
        coarse_counts = np.bincount(coarse_of_exact, weights=exact_counts).astype(np.int64)
    leaf = _boxes(coarse, coarse_counts, n_pixels, n_colors)
    own = leaf if coarse_of_exact is None else leaf[coarse_of_exact]

    k = int(leaf.max()) + 1
    mass = np.bincount(own, weights=exact_counts, minlength=k)
    sums = np.stack([np.bincount(own, weights=exact_counts * exact_rgb[c], minlength=k) for c in range(3)], 1)
    palette = np.floor(0.5 + sums / mass[:, None]).astype(np.int64)  # C's (int)(.5 + mean), means are >= 0
    entry = _nearest(exact_rgb.astype(np.int32), own, palette)
    table = _lookup_table()
    table[exact] = entry
    return palette.astype(np.uint8), table[key]
