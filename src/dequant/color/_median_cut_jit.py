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
    """Distinct values of `keys` (< 2^24) in first-seen order, their summed `weights` (each 1 when `weights` is
    empty), and each key's id."""
    n = keys.size
    size = 1
    while size < 2 * n:
        size <<= 1
    mask = size - 1
    # One slot holds (key + 1) << 32 | id, so a probe is one load; 0 is an empty slot.
    slots = np.zeros(size, dtype=np.int64)
    ids = np.empty(n, dtype=np.int32)
    values = np.empty(n, dtype=np.int64)
    totals = np.zeros(n, dtype=np.int64)
    unweighted = weights.size == 0
    m = 0
    prev, j = -1, 0
    for i in range(n):
        k = np.int64(keys[i])
        w = 1 if unweighted else weights[i]
        if k != prev:  # neighbouring pixels often share a color: no lookup
            prev = k
            tag = (k + 1) << 32
            h = ((k * 2654435761) >> 7) & mask  # Knuth's multiplicative hash; keys < 2^24 keep this in int64
            while slots[h] != 0 and (slots[h] >> 32) << 32 != tag:
                h = (h + 1) & mask
            if slots[h] == 0:
                slots[h] = tag | m
                values[m] = k
                m += 1
            j = slots[h] & 0xFFFFFFFF
        ids[i] = j
        totals[j] += w
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
def _settle(packed, weights, scratch, scratch_w, s, e, lo, hi, node):  # pragma: no cover - compiled
    """Copy rows s:e back from the scratch run, finding box `node`'s channel ranges on the way."""
    r0, g0, b0, r1, g1, b1 = 255, 255, 255, 0, 0, 0
    for i in range(s, e):
        x = scratch[i]
        packed[i], weights[i] = x, scratch_w[i]
        r, g, b = x & 255, (x >> 8) & 255, (x >> 16) & 255
        r0, g0, b0 = min(r0, r), min(g0, g), min(b0, b)
        r1, g1, b1 = max(r1, r), max(g1, g), max(b1, b)
    lo[node, 0], lo[node, 1], lo[node, 2] = r0, g0, b0
    hi[node, 0], hi[node, 1], hi[node, 2] = r1, g1, b1


@njit(cache=True, nogil=True)
def _cut(node, packed, weights, scratch, scratch_w, start, end, count, lo, hi, left,
         n_nodes):  # pragma: no cover - compiled
    """Cut box `node` (rows start:end of `packed`, `weights`) as Pillow does; returns the new node count.

    A row is one int64, color r | g << 8 | b << 16 and the color's id above bit 24, so a cut moves rows, not an
    index into them, and reads every box as one contiguous run. Nothing depends on the order of a box's rows.
    """
    s, e = start[node], end[node]
    # The channel with the largest range weighted 77/150/29, the first one on a tie.
    axis, best = 0, (hi[node, 0] - lo[node, 0]) * 77
    if (hi[node, 1] - lo[node, 1]) * 150 > best:
        axis, best = 1, (hi[node, 1] - lo[node, 1]) * 150
    if (hi[node, 2] - lo[node, 2]) * 29 > best:
        axis = 2
    lo_axis = lo[node, axis]
    shift = 8 * axis
    hist = np.zeros(256, dtype=np.int64)
    for i in range(s, e):
        hist[(packed[i] >> shift) & 255] += weights[i]
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
    # Partition without branches (which side a row goes is a coin toss to the branch predictor): every row is
    # written at both fronts of the scratch run and one front advances; the high part (values >= threshold)
    # first, as the palette order wants.
    front, back = s, e - 1
    for i in range(s, e):
        x, w = packed[i], weights[i]
        scratch[front], scratch_w[front] = x, w
        scratch[back], scratch_w[back] = x, w
        high = np.int64(((x >> shift) & 255) >= threshold)
        front += high
        back -= 1 - high
    high, low = n_nodes, n_nodes + 1
    start[high], end[high], count[high] = s, front, high_count
    start[low], end[low], count[low] = front, e, count[node] - high_count
    _settle(packed, weights, scratch, scratch_w, s, front, lo, hi, high)
    _settle(packed, weights, scratch, scratch_w, front, e, lo, hi, low)
    left[node] = high
    return n_nodes + 2


@njit(cache=True, nogil=True)
def _boxes(values, counts, n_pixels, n_colors):  # pragma: no cover - compiled
    """Median cut of distinct colors `values` (r | g << 8 | b << 16) with pixel `counts`: (palette entry of each
    color (M,), K)."""
    m = values.size
    packed = np.empty(m, dtype=np.int64)
    max_nodes = 2 * n_colors + 1
    lo = np.empty((max_nodes, 3), dtype=np.int64)
    hi = np.empty((max_nodes, 3), dtype=np.int64)
    for c in range(3):
        lo[0, c], hi[0, c] = 255, 0
    for i in range(m):
        x = values[i]
        packed[i] = x | (np.int64(i) << 24)
        for c in range(3):
            v = (x >> (8 * c)) & 255
            lo[0, c], hi[0, c] = min(lo[0, c], v), max(hi[0, c], v)
    weights = counts.copy()
    scratch = np.empty(m, dtype=np.int64)
    scratch_w = np.empty(m, dtype=np.int64)
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
        # A one-color box (all channel ranges zero; rows may be pixels of one color) is dropped, not cut.
        while node >= 0 and lo[node, 0] == hi[node, 0] and lo[node, 1] == hi[node, 1] and lo[node, 2] == hi[node, 2]:
            node, size = _heap_pop(items, size, count)
        if node < 0:
            break
        n_nodes = _cut(node, packed, weights, scratch, scratch_w, start, end, count, lo, hi, left, n_nodes)
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
                own[packed[i] >> 24] = k
            k += 1
    return own, k


@njit(cache=True, nogil=True)
def _means(values, weights, own, k):  # pragma: no cover - compiled
    """Each entry's weighted mean of its colors `values` (r | g << 8 | b << 16), each channel rounded half up."""
    mass = np.zeros(k, dtype=np.int64)
    sums = np.zeros((k, 3), dtype=np.int64)
    for i in range(values.size):
        o, w, x = own[i], weights[i], values[i]
        mass[o] += w
        for ch in range(3):
            sums[o, ch] += w * ((x >> (8 * ch)) & 255)
    palette = np.empty((k, 3), dtype=np.int64)
    for o in range(k):
        for ch in range(3):
            palette[o, ch] = np.int64(np.floor(0.5 + np.float64(sums[o, ch]) / np.float64(mass[o])))
    return palette


@njit(cache=True, nogil=True)
def _nearest(values, own, palette):  # pragma: no cover - compiled
    """The entry of each color: its box's unless another is strictly nearer; ties go to the entry nearest its
    box's entry, then to the lowest index (Pillow's search order ranks the entries by distance to the box's)."""
    k = palette.shape[0]
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
    entry = np.empty(values.size, dtype=np.uint8)
    for i in range(values.size):
        o, x = own[i], values[i]
        r, g, b = x & 255, (x >> 8) & 255, x >> 16
        d_own = (r - palette[o, 0]) ** 2 + (g - palette[o, 1]) ** 2 + (b - palette[o, 2]) ** 2
        if reach[o] > 4 * d_own:
            entry[i] = o
            continue
        best, chosen = d_own, o
        # A strictly nearer entry lies within twice the box's entry's distance (triangle inequality).
        for t in range(k):
            j = order[o, t]
            if between[o, j] > 4 * d_own:
                break
            d = (r - palette[j, 0]) ** 2 + (g - palette[j, 1]) ** 2 + (b - palette[j, 2]) ** 2
            if d < best:
                best, chosen = d, j
        entry[i] = chosen
    return entry


@njit(cache=True, nogil=True)
def median_cut_keys(key, n_colors):  # pragma: no cover - compiled
    """Median cut of pixels given as keys r + 256 g + 65536 b: (palette (K, 3) uint8, index (P,) uint8)."""
    n_pixels = key.size
    if n_colors == 1:
        # One box, never cut: its entry is the mean of all pixels, and every pixel takes it (no distinct colors
        # needed; the drawn palette sizes are 1 in about a fifth of training examples).
        sums = np.zeros(3, dtype=np.int64)
        for p in range(n_pixels):
            x = np.int64(key[p])
            sums[0] += x & 255
            sums[1] += (x >> 8) & 255
            sums[2] += x >> 16
        palette = np.empty((1, 3), dtype=np.uint8)
        for ch in range(3):  # rounded as `_means` rounds
            palette[0, ch] = np.uint8(np.floor(0.5 + np.float64(sums[ch]) / np.float64(n_pixels)))
        return palette, np.zeros(n_pixels, dtype=np.uint8)

    exact, exact_counts, exact_of_pixel = _distinct(key, np.empty(0, dtype=np.int64))
    # Coarser colors while there are too many distinct ones; the boxes live on the coarse colors.
    coarse, coarse_counts = exact, exact_counts
    coarse_of_exact = np.arange(exact.size).astype(np.int32)
    shift = 0
    while coarse.size > _MAX_DISTINCT:
        shift += 1
        shifted = (((exact & 255) >> shift) | ((((exact >> 8) & 255) >> shift) << 8)
                   | (((exact >> 16) >> shift) << 16))
        coarse, coarse_counts, coarse_of_exact = _distinct(shifted, exact_counts)
    own_coarse, k = _boxes(coarse, coarse_counts, n_pixels, n_colors)
    own = np.empty(exact.size, dtype=np.int64)
    for i in range(exact.size):
        own[i] = own_coarse[coarse_of_exact[i]]
    palette = _means(exact, exact_counts, own, k)
    entry = _nearest(exact, own, palette)
    index = np.empty(n_pixels, dtype=np.uint8)
    for p in range(n_pixels):
        index[p] = entry[exact_of_pixel[p]]
    return palette.astype(np.uint8), index


@njit(cache=True, nogil=True)
def palette_fill(palette, index, out):  # pragma: no cover - compiled
    """out[c] = palette[index, c] / 255 in float32, for a uint8 palette `(K, 3)`, index `(H, W)`, out `(3, H, W)`."""
    k = palette.shape[0]
    lut = np.empty((3, k), dtype=np.float32)
    for c in range(3):
        for j in range(k):
            lut[c, j] = np.float32(palette[j, c]) / np.float32(255.0)
    for c in range(3):
        table = lut[c]
        for y in range(index.shape[0]):
            row, dst = index[y], out[c, y]
            for x in range(index.shape[1]):
                dst[x] = table[row[x]]
