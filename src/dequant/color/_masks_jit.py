"""The label-map loops of `masks.py` compiled with numba: 4-connected pieces, cutting/relabelling segments, adjacency.

Only `masks.py` imports this module, and only when numba is installed; the numpy/scikit-image code there is the
fallback and gives the same arrays (tests/color/test_masks.py compares both).

Everything works on runs (maximal stretches of one value along a row): a label map has a few runs per row where it
has hundreds of pixels, so connecting pieces, measuring them and finding their borders touch each pixel only to
find the runs and to paint the result. Two runs in neighbouring rows touch along their column overlap, so the
number of 4-neighbour edges between two regions is a sum of overlaps plus one per horizontal run change.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, inline="always")
def _find(parent, i):  # pragma: no cover - compiled
    """Root of `i`, halving the path on the way."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit(cache=True, nogil=True, inline="always")
def _union(parent, i, j):  # pragma: no cover - compiled
    """Join the sets of `i` and `j`; the smaller root becomes the root of both."""
    i, j = _find(parent, i), _find(parent, j)
    if i < j:
        parent[j] = i
    elif j < i:
        parent[i] = j


@njit(cache=True, nogil=True)
def _number_sets(parent, n):  # pragma: no cover - compiled
    """Number the sets of elements 0..n-1 in the order of their roots, each root met before its set's other
    elements: (set id of each element, number of sets)."""
    ids = np.empty(n, dtype=np.int64)
    m = 0
    for k in range(n):
        root = _find(parent, k)
        if root == k:
            ids[k] = m
            m += 1
        else:
            ids[k] = ids[root]
    return ids, m


@njit(cache=True, nogil=True)
def _runs(raw):  # pragma: no cover - compiled
    """Runs of `raw` (H, W): value, first column, end column (exclusive) of each, in raster order, and the first run
    of each row (H + 1 entries)."""
    h, w = raw.shape
    values = np.empty(h * w, dtype=np.int64)
    starts = np.empty(h * w, dtype=np.int64)
    ends = np.empty(h * w, dtype=np.int64)
    row_first = np.empty(h + 1, dtype=np.int64)
    r = 0
    for y in range(h):
        row_first[y] = r
        for x in range(w):
            v = raw[y, x]
            if x == 0 or v != raw[y, x - 1]:
                if x > 0:
                    ends[r - 1] = x
                values[r], starts[r] = v, x
                r += 1
        ends[r - 1] = w
    row_first[h] = r
    return values[:r], starts[:r], ends[:r], row_first


@njit(cache=True, nogil=True)
def _touching(values, starts, ends, row_first):  # pragma: no cover - compiled
    """Pairs of runs `(i, j, shared edges)` that touch and differ in value: each run and the next in its row (one
    edge), and runs of neighbouring rows whose columns overlap (one edge per shared column), i in the upper row."""
    n_rows = row_first.size - 1
    count = 0
    # At most one pair per run within rows, and fewer than runs(y - 1) + runs(y) pairs between rows y - 1 and y.
    pairs = np.empty((3 * values.size, 3), dtype=np.int64)
    for y in range(n_rows):
        for k in range(row_first[y] + 1, row_first[y + 1]):
            pairs[count, 0], pairs[count, 1], pairs[count, 2] = k - 1, k, 1
            count += 1
        if y == 0:
            continue
        a, a_end, b, b_end = row_first[y - 1], row_first[y], row_first[y], row_first[y + 1]
        while a < a_end and b < b_end:  # a and b always overlap: each step drops the one that ends first
            if values[a] != values[b]:
                shared = min(ends[a], ends[b]) - max(starts[a], starts[b])
                pairs[count, 0], pairs[count, 1], pairs[count, 2] = a, b, shared
                count += 1
            end_a, end_b = ends[a], ends[b]
            if end_a <= end_b:
                a += 1
            if end_b <= end_a:
                b += 1
    return pairs[:count]


@njit(cache=True, nogil=True)
def _run_pieces(values, starts, ends, row_first):  # pragma: no cover - compiled
    """The 4-connected region of each run (equal values joined), numbered 0..P-1 in raster order of their first
    pixel (what skimage.measure.label numbers them), and P."""
    parent = np.arange(values.size)
    for y in range(1, row_first.size - 1):
        a, a_end, b, b_end = row_first[y - 1], row_first[y], row_first[y], row_first[y + 1]
        while a < a_end and b < b_end:
            if values[a] == values[b]:
                _union(parent, a, b)
            end_a, end_b = ends[a], ends[b]
            if end_a <= end_b:
                a += 1
            if end_b <= end_a:
                b += 1
    # Every root is its set's first run in raster order (the smaller root always wins), so numbering roots in run
    # order numbers the regions by their first pixel.
    return _number_sets(parent, values.size)


@njit(cache=True, nogil=True)
def _paint(ids, ends, row_first, width):  # pragma: no cover - compiled
    """The (H, W) int64 map holding `ids[k]` over run k."""
    h = row_first.size - 1
    out = np.empty((h, width), dtype=np.int64)
    for y in range(h):
        # One pass along the row switching runs at their ends: ~3x faster than a fill per (short) run.
        k = row_first[y]
        end, v = ends[k], ids[k]
        for x in range(width):
            if x == end:
                k += 1
                end, v = ends[k], ids[k]
            out[y, x] = v
    return out


@njit(cache=True, nogil=True)
def pieces(raw):  # pragma: no cover - compiled
    """`masks._pieces`: 4-connected regions of equal values numbered 0..P-1 in raster order (int64)."""
    values, starts, ends, row_first = _runs(raw)
    ids, _ = _run_pieces(values, starts, ends, row_first)
    return _paint(ids, ends, row_first, raw.shape[1])


@njit(cache=True, nogil=True)
def adjacency(labels, n):  # pragma: no cover - compiled
    """`masks.adjacency`: CSR `(indptr, indices)` of the distinct labels touching each label, ascending, and True;
    False when a label lies outside [0, n)."""
    if labels.size == 0 or labels.min() < 0 or labels.max() >= n:  # n does not cover the labels: numpy's code
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), False
    values, starts, ends, row_first = _runs(labels)
    pairs = _touching(values, starts, ends, row_first)
    indptr = np.zeros(n + 1, dtype=np.int64)
    for k in range(pairs.shape[0]):
        indptr[values[pairs[k, 0]] + 1] += 1
        indptr[values[pairs[k, 1]] + 1] += 1
    for a in range(n):
        indptr[a + 1] += indptr[a]
    items = np.empty(indptr[n], dtype=np.int64)
    fill = indptr[:n].copy()
    for k in range(pairs.shape[0]):
        a, b = values[pairs[k, 0]], values[pairs[k, 1]]
        items[fill[a]], items[fill[b]] = b, a
        fill[a] += 1
        fill[b] += 1
    # Each label's neighbours deduplicated (a stamp per neighbour) and kept sorted by insertion: the lists are short.
    out_ptr = np.zeros(n + 1, dtype=np.int64)
    out = np.empty(items.size, dtype=np.int64)
    seen = np.full(n, -1, dtype=np.int64)
    m = 0
    for a in range(n):
        first = m
        for k in range(indptr[a], indptr[a + 1]):
            b = items[k]
            if seen[b] != a:
                seen[b] = a
                j = m
                while j > first and out[j - 1] > b:
                    out[j] = out[j - 1]
                    j -= 1
                out[j] = b
                m += 1
        out_ptr[a + 1] = m
    return out_ptr, out[:m], True


@njit(cache=True, nogil=True)
def cut_labels(labels, rows, cols, areas, use_areas):  # pragma: no cover - compiled
    """`masks.cut_labels` (with `areas` when `use_areas`): the labels at rows x cols, their largest 4-connected
    pieces kept (only when at least half the label's area lies inside), every other piece joined to the neighbour
    it shares the longest border with; segments numbered by their smallest piece. Returns (labels, True), or
    (empty, False) for indices or labels out of range (numpy's code then does what it does with them)."""
    h, w = labels.shape
    empty = np.zeros((0, 0), dtype=np.int64)
    if rows.size == 0 or cols.size == 0:
        return empty, False
    for r in rows:
        if r < 0 or r >= h:  # indices numpy would wrap or refuse: its code handles them
            return empty, False
    for c in cols:
        if c < 0 or c >= w:
            return empty, False
    raw = np.empty((rows.size, cols.size), dtype=labels.dtype)
    for y in range(rows.size):
        for x in range(cols.size):
            raw[y, x] = labels[rows[y], cols[x]]
    values, starts, ends, row_first = _runs(raw)
    top = values.max()
    if values.min() < 0 or (use_areas and top >= areas.size):
        return empty, False
    ids, n = _run_pieces(values, starts, ends, row_first)
    sizes = np.zeros(n, dtype=np.int64)
    owner = np.empty(n, dtype=np.int64)
    for k in range(values.size):
        sizes[ids[k]] += ends[k] - starts[k]
        owner[ids[k]] = values[k]
    # Each label's largest piece, the first (lowest numbered) among equal sizes.
    best = np.full(top + 1, -1, dtype=np.int64)
    for p in range(n):
        o = owner[p]
        if best[o] < 0 or sizes[p] > sizes[best[o]]:
            best[o] = p
    is_main = np.zeros(n, dtype=np.bool_)
    for p in range(n):
        is_main[p] = best[owner[p]] == p and (not use_areas or sizes[p] >= 0.5 * areas[owner[p]])
    if not is_main.any():
        is_main[np.argmax(sizes)] = True
    if not is_main.all():
        group = _merge(ids, n, is_main, values, starts, ends, row_first)
        for k in range(values.size):
            ids[k] = group[ids[k]]
    return _paint(ids, ends, row_first, cols.size), True


@njit(cache=True, nogil=True)
def _merge(ids, n, is_main, values, starts, ends, row_first):  # pragma: no cover - compiled
    """`masks._merge_into_neighbours` on pieces given per run (`ids`): every piece that is not main joins the
    neighbour it shares the longest border with (the lowest numbered among equals); returns each piece's group,
    the groups numbered in order of their smallest piece."""
    pairs = _touching(ids, starts, ends, row_first)
    # Border lengths of the pieces that merge, as CSR lists (neighbour, edges) per piece.
    indptr = np.zeros(n + 1, dtype=np.int64)
    for k in range(pairs.shape[0]):
        a, b = ids[pairs[k, 0]], ids[pairs[k, 1]]
        if not is_main[a]:
            indptr[a + 1] += 1
        if not is_main[b]:
            indptr[b + 1] += 1
    for a in range(n):
        indptr[a + 1] += indptr[a]
    other = np.empty(indptr[n], dtype=np.int64)
    edges = np.empty(indptr[n], dtype=np.int64)
    fill = indptr[:n].copy()
    for k in range(pairs.shape[0]):
        a, b = ids[pairs[k, 0]], ids[pairs[k, 1]]
        for s, t in ((a, b), (b, a)):
            if not is_main[s]:
                other[fill[s]], edges[fill[s]] = t, pairs[k, 2]
                fill[s] += 1
    parent = np.arange(n)
    border = np.zeros(n, dtype=np.int64)
    for a in range(n):
        if is_main[a] or indptr[a] == indptr[a + 1]:
            continue
        for k in range(indptr[a], indptr[a + 1]):
            border[other[k]] += edges[k]
        dst, longest = -1, 0
        for k in range(indptr[a], indptr[a + 1]):
            b = other[k]
            if border[b] > longest or (border[b] == longest and b < dst):  # among equal borders the lowest piece
                dst, longest = b, border[b]
        for k in range(indptr[a], indptr[a + 1]):
            border[other[k]] = 0
        _union(parent, a, dst)
    # A group's root is its smallest piece, met before the group's other pieces.
    return _number_sets(parent, n)[0]
