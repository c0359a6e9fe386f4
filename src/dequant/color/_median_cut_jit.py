"""Pillow's median cut compiled with numba: the algorithm `median_cut.py` documents, box by box as Pillow runs it.

Only `median_cut.py` imports this module, and only when numba is installed; the numpy implementation there is
the fallback and gives the same palette and index map (tests/color/test_median_cut.py checks both against Pillow).
Where numpy has to cut many boxes at once and reconstruct Pillow's heap order afterwards, a compiled loop can
simply do what Pillow does: pop the largest box, cut it, push both halves.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_MAX_DISTINCT = 65536
_EMPTY = -1


@njit(cache=True, nogil=True)
def _distinct(keys, weights):  # pragma: no cover - compiled
    """Distinct values of `keys` (int64, < 2^24) in first-seen order, their summed weights, and each key's id."""
    n = keys.size
    size = 1
    while size < 2 * n:
        size <<= 1
    mask = size - 1
    slot_key = np.full(size, _EMPTY, dtype=np.int64)
    slot_id = np.empty(size, dtype=np.int32)
    ids = np.empty(n, dtype=np.int32)
    values = np.empty(n, dtype=np.int64)
    totals = np.zeros(n, dtype=np.int64)
    m = 0
    prev, j = _EMPTY, 0
    for i in range(n):
        k = keys[i]
        if k == prev:  # neighbouring pixels often share a color: no lookup
            ids[i] = j
            totals[j] += weights[i]
            continue
        prev = k
        h = ((k * 2654435761) >> 7) & mask  # Knuth's multiplicative hash; keys < 2^24 keep this in int64
        while slot_key[h] != _EMPTY and slot_key[h] != k:
            h = (h + 1) & mask
        if slot_key[h] == _EMPTY:
            slot_key[h] = k
            slot_id[h] = m
            values[m] = k
            m += 1
        j = slot_id[h]
        ids[i] = j
        totals[j] += weights[i]
    return values[:m], totals[:m], ids


@njit(cache=True, nogil=True)
def _heap_push(items, size, counts, node):  # pragma: no cover - compiled
    """Pillow's QuantHeap push (1-based, max on `counts`); returns the new size."""
    size += 1
    k = size
    while k != 1 and counts[node] > counts[items[k >> 1]]:
        items[k] = items[k >> 1]
        k >>= 1
    items[k] = node
    return size


@njit(cache=True, nogil=True)
def _heap_pop(items, size, counts):  # pragma: no cover - compiled
    """Pillow's QuantHeap pop: (top node or -1 when empty, new size)."""
    if size == 0:
        return -1, 0
    top = items[1]
    last = items[size]
    size -= 1
    k = 1
    while k * 2 <= size:
        child = k * 2
        if child < size and counts[items[child]] < counts[items[child + 1]]:
            child += 1
        if counts[last] > counts[items[child]]:
            break
        items[k] = items[child]
        k = child
    if size:
        items[k] = last
    return top, size


@njit(cache=True, nogil=True)
def _cut(node, cols, weights, ids, start, end, count, left, n_nodes):  # pragma: no cover - compiled
    """Cut box `node` (the rows start:end of `cols`, `weights`, `ids`) as Pillow does; returns the new node count.

    The rows are moved, not an index into them: every cut then reads its box as one contiguous run.
    """
    s, e = start[node], end[node]
    lo0 = lo1 = lo2 = 255
    hi0 = hi1 = hi2 = 0
    for i in range(s, e):
        v0, v1, v2 = cols[i, 0], cols[i, 1], cols[i, 2]
        lo0, hi0 = min(lo0, v0), max(hi0, v0)
        lo1, hi1 = min(lo1, v1), max(hi1, v1)
        lo2, hi2 = min(lo2, v2), max(hi2, v2)
    # The channel with the largest range weighted 77/150/29, the first one on a tie.
    axis, best, lo_axis = 0, (hi0 - lo0) * 77, lo0
    if (hi1 - lo1) * 150 > best:
        axis, best, lo_axis = 1, (hi1 - lo1) * 150, lo1
    if (hi2 - lo2) * 29 > best:
        axis, lo_axis = 2, lo2
    hist = np.zeros(256, dtype=np.int64)
    for i in range(s, e):
        hist[cols[i, axis]] += weights[i]
    # From the top, the first value at which the running count exceeds half of the box.
    above = 0
    split = 0
    for v in range(255, -1, -1):
        above += hist[v]
        if 2 * above > count[node]:
            split = v
            break
    threshold = split if split > lo_axis else lo_axis + 1
    high_count = 0
    for v in range(threshold, 256):
        high_count += hist[v]
    # Partition in place: the high part (values >= threshold) first, as the palette order wants.
    i, j = s, e - 1
    while i <= j:
        if cols[i, axis] >= threshold:
            i += 1
        else:
            for ch in range(3):
                cols[i, ch], cols[j, ch] = cols[j, ch], cols[i, ch]
            weights[i], weights[j] = weights[j], weights[i]
            ids[i], ids[j] = ids[j], ids[i]
            j -= 1
    high, low = n_nodes, n_nodes + 1
    start[high], end[high], count[high] = s, i, high_count
    start[low], end[low], count[low] = i, e, count[node] - high_count
    left[node] = high
    return n_nodes + 2


@njit(cache=True, nogil=True)
def _boxes(rgb, counts, n_pixels, n_colors):  # pragma: no cover - compiled
    """Median cut of distinct colors `rgb` (3, M) with pixel `counts`: (palette entry of each color (M,), K)."""
    m = rgb.shape[1]
    cols = np.empty((m, 3), dtype=np.int32)
    for i in range(m):
        for ch in range(3):
            cols[i, ch] = rgb[ch, i]
    weights = counts.copy()
    ids = np.arange(m)
    max_nodes = 2 * n_colors + 1
    start = np.zeros(max_nodes, dtype=np.int64)
    end = np.zeros(max_nodes, dtype=np.int64)
    count = np.zeros(max_nodes, dtype=np.int64)
    left = np.full(max_nodes, -1, dtype=np.int64)
    end[0], count[0] = m, n_pixels
    n_nodes = 1
    items = np.zeros(max_nodes + 1, dtype=np.int64)
    size = _heap_push(items, 0, count, 0)
    for _ in range(n_colors - 1):
        node, size = _heap_pop(items, size, count)
        while node >= 0 and end[node] - start[node] == 1:  # a one-color box is dropped, not cut
            node, size = _heap_pop(items, size, count)
        if node < 0:
            break
        n_nodes = _cut(node, cols, weights, ids, start, end, count, left, n_nodes)
        size = _heap_push(items, size, count, left[node])
        size = _heap_push(items, size, count, left[node] + 1)
    # Palette order: the leaves depth first, high part first.
    own = np.empty(m, dtype=np.int64)
    stack = np.empty(max_nodes, dtype=np.int64)
    stack[0] = 0
    top, k = 1, 0
    while top:
        top -= 1
        node = stack[top]
        if left[node] >= 0:
            stack[top] = left[node] + 1
            stack[top + 1] = left[node]
            top += 2
        else:
            for i in range(start[node], end[node]):
                own[ids[i]] = k
            k += 1
    return own, k


@njit(cache=True, nogil=True)
def median_cut_keys(key, n_colors):  # pragma: no cover - compiled
    """Median cut of pixels given as keys r + 256 g + 65536 b: (palette (K, 3) uint8, index (P,) uint8)."""
    n_pixels = key.size
    keys = key.astype(np.int64)
    exact, exact_counts, exact_of_pixel = _distinct(keys, np.ones(n_pixels, dtype=np.int64))
    m = exact.size
    exact_rgb = np.empty((3, m), dtype=np.int64)
    for i in range(m):
        exact_rgb[0, i] = exact[i] & 255
        exact_rgb[1, i] = (exact[i] >> 8) & 255
        exact_rgb[2, i] = exact[i] >> 16

    # Coarser colors while there are too many distinct ones; the boxes live on the coarse colors.
    coarse_rgb, coarse_counts = exact_rgb, exact_counts
    coarse_of_exact = np.arange(m).astype(np.int32)
    shift = 0
    while coarse_rgb.shape[1] > _MAX_DISTINCT:
        shift += 1
        shifted = ((exact_rgb[0] >> shift) | ((exact_rgb[1] >> shift) << 8) | ((exact_rgb[2] >> shift) << 16))
        values, coarse_counts, coarse_of_exact = _distinct(shifted, exact_counts)
        coarse_rgb = np.empty((3, values.size), dtype=np.int64)
        for i in range(values.size):
            coarse_rgb[0, i] = values[i] & 255
            coarse_rgb[1, i] = (values[i] >> 8) & 255
            coarse_rgb[2, i] = values[i] >> 16
    own_coarse, k = _boxes(coarse_rgb, coarse_counts, n_pixels, n_colors)

    # Each entry is its box's mean over the exact colors, each channel rounded half up.
    own = np.empty(m, dtype=np.int64)
    mass = np.zeros(k, dtype=np.int64)
    sums = np.zeros((k, 3), dtype=np.int64)
    for i in range(m):
        o = own_coarse[coarse_of_exact[i]]
        own[i] = o
        mass[o] += exact_counts[i]
        for ch in range(3):
            sums[o, ch] += exact_counts[i] * exact_rgb[ch, i]
    palette = np.empty((k, 3), dtype=np.int64)
    for o in range(k):
        for ch in range(3):
            palette[o, ch] = np.int64(np.floor(0.5 + np.float64(sums[o, ch]) / np.float64(mass[o])))

    # A color keeps its box's entry unless another is strictly nearer; ties go to the entry nearest its box's
    # entry, then to the lowest index: Pillow's search order, which ranks the entries by distance to the box's.
    between = np.zeros((k, k), dtype=np.int64)
    for a in range(k):
        for b in range(k):
            d = 0
            for ch in range(3):
                diff = palette[a, ch] - palette[b, ch]
                d += diff * diff
            between[a, b] = d
    order = np.empty((k, k), dtype=np.int64)
    for a in range(k):
        order[a] = np.argsort(between[a] * k + np.arange(k))
    # reach[o]: the distance from entry o to its nearest other entry; a color within a quarter of it stays.
    reach = np.full(k, np.iinfo(np.int64).max, dtype=np.int64)
    for a in range(k):
        for b in range(k):
            if b != a and between[a, b] < reach[a]:
                reach[a] = between[a, b]
    entry = np.empty(m, dtype=np.uint8)
    for i in range(m):
        o = own[i]
        d_own = 0
        for ch in range(3):
            diff = exact_rgb[ch, i] - palette[o, ch]
            d_own += diff * diff
        best, chosen = d_own, o
        if reach[o] > 4 * d_own:
            entry[i] = o
            continue
        # A strictly nearer entry lies within twice the box's entry's distance (triangle inequality).
        for t in range(k):
            j = order[o, t]
            if between[o, j] > 4 * d_own:
                break
            d = 0
            for ch in range(3):
                diff = exact_rgb[ch, i] - palette[j, ch]
                d += diff * diff
            if d < best:
                best, chosen = d, j
        entry[i] = chosen
    index = np.empty(n_pixels, dtype=np.uint8)
    for p in range(n_pixels):
        index[p] = entry[exact_of_pixel[p]]
    return palette.astype(np.uint8), index
