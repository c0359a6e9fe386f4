"""SLIC superpixels (Achanta et al. 2012) as scikit-image computes them for a 2-D color image, compiled with numba.

scikit-image's k-means visits, for each center, every pixel of the window around it; here the innermost loop runs
along a row of that window, which the compiler vectorises. Everything else is scikit-image's computation in its
order: the same preprocessing (rescale to [0, 1], Lab, its Gaussian on the 4-D volume), the same grid of seeds
(colors starting at zero), the same distances (same operations, no FMAs), a later center winning a pixel only when
strictly nearer, centers averaged in scan order, and the same breadth-first pass that gives small disconnected
pieces to a neighbour. tests/color/test_compiled_segmenters.py checks the labels against scikit-image's `slic`,
which `masks.py` falls back on where numba does not import.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from skimage import color as skcolor
from skimage import filters
from skimage.util import regular_grid


@njit(cache=True, nogil=True)
def _kmeans(planes, centers, steps_yx, spatial_weight, max_num_iter):  # pragma: no cover - compiled
    """Labels (H, W) int64 of the (3, H, W) feature planes after at most `max_num_iter` assignment/update rounds
    from `centers` (K, 6: z, y, x, three features), updated in place."""
    _, h, w = planes.shape
    f0, f1, f2 = planes[0], planes[1], planes[2]
    k_count = centers.shape[0]
    step_y, step_x = steps_yx
    nearest = np.full((h, w), -1, dtype=np.int64)
    distance = np.empty((h, w))
    counts = np.empty(k_count, dtype=np.int64)
    for _ in range(max_num_iter):
        changed = 0
        distance[:] = np.finfo(np.float64).max
        for k in range(k_count):
            cz, cy, cx = centers[k, 0], centers[k, 1], centers[k, 2]
            if cy != cy or cx != cx:  # a center that lost every pixel is NaN (0 / 0) and never wins one again
                continue
            g0, g1, g2 = centers[k, 3], centers[k, 4], centers[k, 5]
            # the depth-1 volume's only plane, as scikit-image's z loop sees it
            dz = 1.0 * (cz - 0)
            dz *= dz
            y_min = int(max(cy - 2 * step_y, 0.0))
            y_max = int(min(cy + 2 * step_y + 1, float(h)))
            x_min = int(max(cx - 2 * step_x, 0.0))
            x_max = int(min(cx + 2 * step_x + 1, float(w)))
            for y in range(y_min, y_max):
                dy = 1.0 * (cy - y)
                dy *= dy
                # row slices starting at 0: the compiler then sees non-negative indices and vectorises
                p0, p1, p2 = f0[y, x_min:x_max], f1[y, x_min:x_max], f2[y, x_min:x_max]
                near, dist = nearest[y, x_min:x_max], distance[y, x_min:x_max]
                for i in range(x_max - x_min):
                    dx = 1.0 * (cx - (x_min + i))
                    dx *= dx
                    d = (dz + dy + dx) * spatial_weight
                    t0 = p0[i] - g0
                    t1 = p1[i] - g1
                    t2 = p2[i] - g2
                    color = t0 * t0
                    color = color + t1 * t1
                    color = color + t2 * t2
                    d = d + color
                    better = dist[i] > d
                    near[i] = k if better else near[i]
                    dist[i] = d if better else dist[i]
                    changed |= better
        if not changed:
            break
        counts[:] = 0
        centers[:, :] = 0.0
        for y in range(h):
            for x in range(w):
                k = nearest[y, x]
                counts[k] += 1
                centers[k, 1] += y
                centers[k, 2] += x
                centers[k, 3] += f0[y, x]
                centers[k, 4] += f1[y, x]
                centers[k, 5] += f2[y, x]
        for k in range(k_count):
            for c in range(6):
                centers[k, c] /= counts[k] if counts[k] else np.nan
    return nearest


@njit(cache=True, nogil=True)
def _enforce_connectivity(labels, min_size, max_size):  # pragma: no cover - compiled
    """Relabel 4-connected pieces in scan order, giving pieces under `min_size` pixels to the last differently
    labelled neighbour their breadth-first search met (scikit-image's pass, with its `max_size` cut-off)."""
    h, w = labels.shape
    out = np.full((h, w), -1, dtype=np.int64)
    queue = np.empty((max(max_size, 1), 2), dtype=np.int64)
    new_label = 0
    for y0 in range(h):
        for x0 in range(w):
            if out[y0, x0] > -1:
                continue
            adjacent = new_label
            label = labels[y0, x0]
            out[y0, x0] = new_label
            size = 1
            visited = 0
            queue[0, 0], queue[0, 1] = y0, x0
            while visited < size < max_size:
                for i in range(4):  # x+1, x-1, y+1, y-1: scikit-image's neighbour order
                    yy = queue[visited, 0] + (0, 0, 1, -1)[i]
                    xx = queue[visited, 1] + (1, -1, 0, 0)[i]
                    if 0 <= xx < w and 0 <= yy < h:
                        if labels[yy, xx] == label and out[yy, xx] == -1:
                            out[yy, xx] = new_label
                            queue[size, 0], queue[size, 1] = yy, xx
                            size += 1
                            if size >= max_size:
                                break
                        elif out[yy, xx] > -1 and out[yy, xx] != new_label:
                            adjacent = out[yy, xx]
                visited += 1
            if size < min_size:
                for i in range(size):
                    out[queue[i, 0], queue[i, 1]] = adjacent
            else:
                new_label += 1
    return out


def slic(image: np.ndarray, n_segments: int, compactness: float, sigma: float, max_num_iter: int = 10,
         min_size_factor: float = 0.5, max_size_factor: float = 3.0) -> np.ndarray:
    """Labels `(H, W)` int64 of an `(H, W, 3)` float64 RGB image, equal to `skimage.segmentation.slic` with these
    arguments and start_label=0 (Lab features, no mask, connectivity enforced)."""
    image = image.astype(np.float64, copy=True)
    low, high = image.min(), image.max()
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError("SLIC needs finite pixel values")
    image -= low
    if high != low:
        image /= high - low
    volume = skcolor.rgb2lab(image[np.newaxis])
    slices = regular_grid(volume.shape[:3], n_segments)
    grid = np.mgrid[: volume.shape[0], : volume.shape[1], : volume.shape[2]]
    seeds = np.stack([g[slices].ravel() for g in grid], axis=-1)
    steps = [float(s.step) if s.step is not None else 1.0 for s in slices]
    if sigma > 0:
        volume = filters.gaussian(volume, sigma=[sigma, sigma, sigma, 0], mode="reflect")
    centers = np.concatenate([seeds, np.zeros((len(seeds), volume.shape[3]))], axis=-1)
    step = np.float32(max(steps))
    # scikit-image takes the step as float32 and squares it in float32
    spatial_weight = 1.0 / float(np.float32(step * step))
    features = volume[0] * (1.0 / compactness)
    planes = np.ascontiguousarray(np.moveaxis(features, -1, 0))
    # the k-means windows use the integer steps of the grid for the number of seeds the grid gave
    seed_grid = regular_grid(volume.shape[:3], len(seeds))
    grid_steps = np.array([int(s.step if s.step is not None else 1) for s in seed_grid[1:]], dtype=np.float64)
    labels = _kmeans(planes, centers, grid_steps, spatial_weight, int(max_num_iter))
    segment_size = features.shape[0] * features.shape[1] / len(seeds)
    return _enforce_connectivity(labels, int(min_size_factor * segment_size), int(max_size_factor * segment_size))
