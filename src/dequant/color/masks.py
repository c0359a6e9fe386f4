"""Patch masks for patch-mode examples and click-to-select editing (SPEC 1.5, SPEC 4).

Segments are always 4-connected: Felzenszwalb links diagonal neighbours and quickshift does not promise connected
clusters, so each raw segment keeps its largest 4-connected piece and smaller pieces join a touching segment. A
region grown over 4-adjacent segments is therefore one 4-connected component.

The label-map loops (pieces, cutting, adjacency) run compiled with numba when it imports (`_masks_jit.py`), else
with numpy and scikit-image; both give the same arrays. So do three of the authors' four segmenters: quickshift,
Felzenszwalb and SLIC run as numba ports of scikit-image's (`_quickshift_jit.py`, `_felzenszwalb_jit.py`,
`_slic_jit.py`) that give its labels 2-6x faster; scikit-image's own is the fallback and the tests' reference.

`patch_mask` never returns an empty mask, and returns the whole image only when the image is a single segment (or
the index map a single component), since then no proper non-empty subset exists.
"""

from __future__ import annotations

import bisect
import numbers
from collections.abc import Callable, Sequence
from types import ModuleType

import cv2
import numpy as np
import torch
from skimage import color as skcolor
from skimage import filters, measure, segmentation
from torch import Tensor

from dequant.color._checks import check_choice, check_image, check_point
from dequant.color._kernels import optional_kernels

SEGMENTERS: tuple[str, ...] = ("felzenszwalb", "slic", "quickshift", "watershed")


# SLIC and watershed ask for a number of segments per image (250, the authors'). Segmenting a whole image for crops
# of a smaller area, that number is scaled by the area ratio so that a crop-sized region gets about 250 segments,
# as segmenting the crop alone does; Felzenszwalb and quickshift are local and need no scaling.
_PER_IMAGE_SEGMENTS = 250


def _watershed(image: np.ndarray, area_ratio: float = 1.0) -> np.ndarray:
    markers = max(1, round(_PER_IMAGE_SEGMENTS * area_ratio))
    return segmentation.watershed(filters.sobel(skcolor.rgb2gray(image)), markers=markers, compactness=0.001)


def _port(slot: list, module: str, image: np.ndarray) -> ModuleType | None:
    """The compiled port of a scikit-image segmenter for `image`, or None (numba does not import, or `image` is not
    the (H, W, 3) float64 array every caller here passes): then scikit-image's own runs."""
    if not (isinstance(image, np.ndarray) and image.dtype == np.float64 and image.ndim == 3 and image.shape[2] == 3):
        return None
    return optional_kernels(slot, module)


_SLIC = {"compactness": 10, "sigma": 1}  # the authors' SLIC settings, beside the segment count
_SLIC_JIT: list = []  # [the compiled SLIC `_slic_jit`, or None when numba does not import]


def _slic(image: np.ndarray, area_ratio: float = 1.0) -> np.ndarray:
    n_segments = max(1, round(_PER_IMAGE_SEGMENTS * area_ratio))
    # scikit-image's labels, about 2x faster at 128 px (its k-means loop does not vectorise)
    jit = _port(_SLIC_JIT, "dequant.color._slic_jit", image)
    if jit is None:
        return segmentation.slic(image, n_segments=n_segments, **_SLIC, start_label=0)
    return jit.slic(image, n_segments, **_SLIC)


# The authors' quickshift settings (scikit-image's defaults otherwise: Lab features, no smoothing, seed 42)
_QUICKSHIFT = {"kernel_size": 3, "max_dist": 6, "ratio": 0.5}
_QUICKSHIFT_SEED = 42  # scikit-image's default seed of its tie-breaking noise, which the fallback call keeps
_QS_JIT: list = []  # [the compiled quickshift `_quickshift_jit`, or None when numba does not import]


def _quickshift(image: np.ndarray, area_ratio: float = 1.0) -> np.ndarray:
    # scikit-image's labels, about 6x faster (it was three quarters of the per-crop mask cost)
    jit = _port(_QS_JIT, "dequant.color._quickshift_jit", image)
    if jit is None:
        return segmentation.quickshift(image, **_QUICKSHIFT)
    features = skcolor.rgb2lab(image) * _QUICKSHIFT["ratio"]
    return jit.quickshift(features, _QUICKSHIFT["kernel_size"], _QUICKSHIFT["max_dist"], _QUICKSHIFT_SEED)


# The authors' Felzenszwalb settings
_FELZENSZWALB = {"scale": 100, "sigma": 0.5, "min_size": 50}
_FELZ_JIT: list = []  # [the compiled Felzenszwalb `_felzenszwalb_jit`, or None when numba does not import]


def _felzenszwalb(image: np.ndarray, area_ratio: float = 1.0) -> np.ndarray:
    # scikit-image's labels, about 3x faster: its union-find never shortens a path, and the two passes over the
    # edges take most of its time.
    jit = _port(_FELZ_JIT, "dequant.color._felzenszwalb_jit", image)
    if jit is None:
        return segmentation.felzenszwalb(image, **_FELZENSZWALB)
    sigma = _FELZENSZWALB["sigma"]
    smoothed = filters.gaussian(image, sigma=[sigma, sigma, 0], mode="reflect", channel_axis=-1)
    return jit.felzenszwalb(smoothed, _FELZENSZWALB["scale"], _FELZENSZWALB["min_size"])


_SEGMENT_FNS: dict[str, Callable[..., np.ndarray]] = {
    "felzenszwalb": _felzenszwalb,
    "slic": _slic,
    "quickshift": _quickshift,
    "watershed": _watershed,
}


_JIT: list = []  # [the compiled kernels module `_masks_jit`, or None when numba does not import], filled on first use


def _compiled():
    """The numba kernels module, or None when numba is not installed (imported once, on first use)."""
    return optional_kernels(_JIT, "dequant.color._masks_jit")


def _int_map(labels: object) -> bool:
    """Whether the kernels take `labels`: a 2-D integer numpy array."""
    return isinstance(labels, np.ndarray) and labels.ndim == 2 and labels.dtype.kind in "iu"


def _int_vector(index: object) -> bool:
    """Whether the kernels take `index`: a 1-D integer numpy array."""
    return isinstance(index, np.ndarray) and index.ndim == 1 and index.dtype.kind in "iu"


def _to_hwc(image: Tensor) -> np.ndarray:
    """A single RGB image tensor `(3, H, W)` in [0, 1] as a float64 `(H, W, 3)` array."""
    x, _ = check_image(image, "image", allow_batch=False)
    return x[0].detach().cpu().double().permute(1, 2, 0).numpy()


def _pieces(labels: np.ndarray) -> np.ndarray:
    """Split labels into 4-connected regions numbered 0..P-1 (equal neighbouring values join one region)."""
    jit = _compiled()
    if jit is not None and _int_map(labels) and labels.size > 0:
        return jit.pieces(labels)
    # background=-1 never occurs in labels >= 0, so every pixel is labelled.
    return measure.label(labels, background=-1, connectivity=1).astype(np.int64) - 1


def _boundary_pairs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label pairs across every 4-neighbour edge whose two pixels differ, both directions (horizontal edges first,
    each kind in raster order)."""
    w = labels.shape[1]
    flat = np.ascontiguousarray(labels).ravel()
    # Differing neighbours found on the flat map (contiguous compares), then only those few edges are gathered.
    across = np.flatnonzero(flat[:-1] != flat[1:])
    across = across[across % w != w - 1]  # a row's last pixel and the next row's first are no edge
    along = np.flatnonzero(flat[:-w] != flat[w:])
    a = np.concatenate([flat[across], flat[along]])
    b = np.concatenate([flat[across + 1], flat[along + w]])
    return np.concatenate([a, b]), np.concatenate([b, a])


def _largest_pieces(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """4-connected pieces of a label map, their sizes, the raw label owning each, and which is its label's largest."""
    pieces = _pieces(raw)
    n = int(pieces.max()) + 1
    sizes = np.bincount(pieces.ravel(), minlength=n)
    owner = np.empty(n, dtype=np.int64)
    owner[pieces.ravel()] = raw.ravel()
    order = np.lexsort((-sizes, owner))
    largest = np.ones(n, dtype=bool)
    largest[1:] = owner[order[1:]] != owner[order[:-1]]
    is_main = np.zeros(n, dtype=bool)
    is_main[order[largest]] = True
    return pieces, sizes, owner, is_main


def _connected_segments(raw: np.ndarray) -> np.ndarray:
    """Relabel a segmentation into 4-connected segments numbered 0..K-1.

    Each raw segment keeps its largest 4-connected piece; every smaller piece (a diagonal-only appendix of a
    Felzenszwalb segment, a split quickshift cluster) joins the neighbouring piece it shares the longest border
    with. Splitting them off instead would more than double the segment count with one-pixel segments.
    """
    jit = _compiled()
    if jit is not None and _int_map(raw):
        h, w = raw.shape
        out, ok = jit.cut_labels(raw, np.arange(h), np.arange(w), np.zeros(0), False)
        if ok:
            return out
    pieces, _, _, is_main = _largest_pieces(raw)
    return _merge_into_neighbours(pieces, is_main)


def _merge_into_neighbours(pieces: np.ndarray, is_main: np.ndarray) -> np.ndarray:
    """Renumber 4-connected `pieces` into segments 0..K-1: every piece that is not main joins the neighbouring
    piece it shares the longest border with (chains of such pieces end up in one segment)."""
    n = is_main.size
    if is_main.all():
        return pieces
    a, b = _boundary_pairs(pieces)
    frag = ~is_main[a]  # only the borders of pieces that merge matter
    keys, border = _distinct_pairs(a[frag] * n + b[frag], n * n)
    src, dst = keys // n, keys % n
    best = np.lexsort((-border, src))
    first = np.ones(best.size, dtype=bool)
    first[1:] = src[best[1:]] != src[best[:-1]]
    src, dst = src[best[first]], dst[best[first]]
    return _components(n, src, dst)[pieces]


def _distinct_pairs(keys: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """`np.unique(keys, return_counts=True)` of int keys in [0, n_keys): one bincount when the range is small."""
    if n_keys > max(1 << 16, 4 * keys.size):  # a count array much longer than the keys: sorting them is cheaper
        return np.unique(keys, return_counts=True)
    counts = np.bincount(keys, minlength=n_keys)
    distinct = np.flatnonzero(counts)
    return distinct, counts[distinct]


def _components(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Connected components (int64, numbered in the order of their smallest node, as scipy's
    `csgraph.connected_components`) of the undirected graph on nodes 0..n-1 with edges `src`-`dst`."""
    label = np.arange(n)
    # Min-label propagation: every label is a node of the same component, never above the node itself, so
    # label[label] may jump ahead; at the fixed point each component carries its smallest node.
    while True:
        new = label.copy()
        np.minimum.at(new, src, label[dst])
        np.minimum.at(new, dst, label[src])
        new = new[new]
        if np.array_equal(new, label):
            break
        label = new
    return np.unique(label, return_inverse=True)[1].reshape(-1)


def _check_max_side(max_side: int | None) -> None:
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 8):
        raise ValueError(f"max_side must be None or an int >= 8, got {max_side!r}")


def _segment_np(rgb: np.ndarray, method: str, max_side: int | None = None) -> np.ndarray:
    h, w = rgb.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return _connected_segments(_SEGMENT_FNS[method](rgb))
    # Segmenting a downscaled copy is what makes on-the-fly masks affordable at 256x256 (quickshift costs ~17x
    # less at 64x64); nearest upsampling of 4-connected segments keeps them 4-connected.
    scale = max_side / max(h, w)
    small = cv2.resize(rgb.astype(np.float32), (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA).astype(np.float64)
    labels = _connected_segments(_SEGMENT_FNS[method](np.clip(small, 0, 1)))
    return cv2.resize(labels.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST).astype(np.int64)


def segment(image: Tensor, method: str, max_side: int | None = None) -> Tensor:
    """Superpixel labels `(H, W)` int64, 4-connected segments numbered 0..K-1, of `image` (3, H, W) (SPEC 1.5).

    `max_side` segments a copy downscaled to that longest side and upsamples the labels (None: full resolution,
    the authors' setting).
    """
    check_choice(method, SEGMENTERS, "method")
    _check_max_side(max_side)
    return torch.from_numpy(_segment_np(_to_hwc(image), method, max_side))


def segment_array(chw: np.ndarray, method: str, max_side: int | None = None) -> np.ndarray:
    """`segment` of a `(3, H, W)` float array in [0, 1] that the caller made (not validated): int64 labels."""
    # The (H, W, 3) float64 view that _to_hwc gives, so the segmenters see the same array.
    return _segment_np(np.asarray(chw, dtype=np.float64).transpose(1, 2, 0), method, max_side)


def segment_image(rgb: np.ndarray, method: str, region_area: int) -> np.ndarray:
    """4-connected segment labels `(H, W)` int32 of a whole `(H, W, 3)` float image in [0, 1], at the density that
    segmenting one region of `region_area` pixels would have (SLIC and watershed counts scaled by the area ratio)."""
    check_choice(method, SEGMENTERS, "method")
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"rgb must be an (H, W, 3) array, got {getattr(rgb, 'shape', rgb)!r}")
    if isinstance(region_area, bool) or not isinstance(region_area, numbers.Integral) or region_area < 1:
        raise ValueError(f"region_area must be a positive int, got {region_area!r}")
    ratio = rgb.shape[0] * rgb.shape[1] / int(region_area)
    return _connected_segments(_SEGMENT_FNS[method](rgb.astype(np.float64, copy=False), ratio)).astype(np.int32)


def cut_labels(labels: np.ndarray, rows: np.ndarray, cols: np.ndarray, areas: np.ndarray | None = None) -> np.ndarray:
    """The labels at `rows` x `cols` of a label map, renumbered into 4-connected segments 0..K-1.

    A segment cut by the region's border keeps its part only when at least half of the segment (`areas`: each
    label's area in region pixels; None: every part is kept) lies inside, so a region counts about as many segments
    as segmenting it alone gives; smaller parts, and pieces split off by the cut or by resampling, join the
    neighbour they share the longest border with.
    """
    jit = _compiled()
    if (jit is not None and _int_map(labels) and _int_vector(rows) and _int_vector(cols)
            and (areas is None or isinstance(areas, np.ndarray) and areas.ndim == 1 and areas.dtype.kind in "iuf")):
        out, ok = jit.cut_labels(labels, rows.astype(np.int64, copy=False), cols.astype(np.int64, copy=False),
                                 np.zeros(0) if areas is None else areas.astype(np.float64, copy=False),
                                 areas is not None)
        if ok:
            return out
    raw = labels[np.ix_(rows, cols)]
    pieces, sizes, owner, is_main = _largest_pieces(raw)
    if areas is not None:
        is_main &= sizes >= 0.5 * areas[owner]
        if not is_main.any():  # the region lies inside one segment (or a few big ones): keep the largest part
            is_main[np.argmax(sizes)] = True
    return _merge_into_neighbours(pieces, is_main)


def adjacency(labels: np.ndarray, n_labels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CSR neighbour lists `(indptr, indices)` of labels that touch along a 4-neighbour edge."""
    n = int(labels.max()) + 1 if n_labels is None else n_labels
    jit = _compiled()
    if jit is not None and _int_map(labels) and isinstance(n, numbers.Integral):
        indptr, indices, ok = jit.adjacency(labels, int(n))
        if ok:
            return indptr, indices
    a, b = _boundary_pairs(labels)
    keys, _ = _distinct_pairs(a.astype(np.int64) * n + b, n * n)
    src, dst = keys // n, keys % n
    indptr = np.searchsorted(src, np.arange(n + 1))
    return indptr, dst


def _grow_region(labels: np.ndarray, rng: np.random.Generator, frac_range: tuple[float, float]) -> np.ndarray:
    """Bool mask of a random connected union of segments holding a fraction in `frac_range` of them."""
    n = int(labels.max()) + 1
    target = max(1, int(round(rng.uniform(*frac_range) * n)))
    if n > 1:
        target = min(target, n - 1)
    indptr, neighbours = adjacency(labels, n)
    # Python lists and a sorted candidate list: a region grows by a few dozen segments, one random draw each, and
    # per-step numpy calls (mask, flatnonzero, scatter) cost more than the bookkeeping of the few new neighbours.
    ptr, nbrs = indptr.tolist(), neighbours.tolist()
    inside, frontier = bytearray(n), bytearray(n)
    candidates: list[int] = []  # frontier & ~inside, ascending: what flatnonzero of the bool arrays would give

    def add(segment: int) -> None:
        inside[segment] = 1
        for nb in nbrs[ptr[segment] : ptr[segment + 1]]:
            if not frontier[nb]:
                frontier[nb] = 1
                if not inside[nb]:
                    bisect.insort(candidates, nb)

    add(int(rng.integers(n)))
    for _ in range(target - 1):
        if not candidates:
            break
        add(candidates.pop(int(rng.integers(len(candidates)))))
    return np.frombuffer(inside, dtype=bool)[labels]


def _component_mask(index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bool mask of a random non-empty proper subset of the 4-connected components of each palette color."""
    # Equal neighbouring indices join: the same components as scipy.ndimage.label run per palette color.
    components = _pieces(index)
    n = int(components.max()) + 1
    if n == 1:
        return np.ones(index.shape, dtype=bool)
    count = int(rng.integers(1, n))
    chosen = np.zeros(n, dtype=bool)
    chosen[rng.choice(n, size=count, replace=False)] = True
    return chosen[components]


def _check_index(index: Tensor | np.ndarray, height: int, width: int) -> np.ndarray:
    """An integer index map `(H, W)` matching the image, as a numpy array."""
    arr = index.detach().cpu().numpy() if isinstance(index, Tensor) else index
    if not isinstance(arr, np.ndarray) or arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"index must be an integer (H, W) tensor or array, got {getattr(arr, 'dtype', type(arr))}")
    if arr.shape != (height, width):
        raise ValueError(f"index has shape {arr.shape}, the image has size {(height, width)}")
    if arr.min() < 0:
        raise ValueError(f"index values must be >= 0, got minimum {arr.min()}")
    return arr.astype(np.int64, copy=False)


def _check_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ValueError(f"rng must be a numpy.random.Generator or an int seed, got {type(rng).__name__}")


def patch_mask(
    image: Tensor,
    index: Tensor | np.ndarray | None = None,
    rng: np.random.Generator | int | None = None,
    p_superpixel: float = 0.9,
    segmenters: Sequence[str] = SEGMENTERS,
    frac_range: tuple[float, float] = (0.01, 0.15),
    segment_max_side: int | None = None,
    labels: Callable[[str], np.ndarray] | None = None,
) -> Tensor:
    """A random non-empty patch mask `(H, W)` bool: grown superpixels, or palette-index components (SPEC 1.5).

    `segment_max_side` runs the segmenter on a copy downscaled to that longest side (see `segment`). `labels`, if
    given, returns the `(H, W)` 4-connected segments for a segmenter name instead of segmenting `image` (e.g. cut
    out of a segmentation of the whole source image, `cut_labels`); the random draws are the same either way.
    """
    x, _ = check_image(image, "image", allow_batch=False)
    chw = x[0].detach().cpu().double().numpy()
    return torch.from_numpy(patch_mask_array(chw, index, rng, p_superpixel, segmenters, frac_range, segment_max_side,
                                             labels))


def patch_mask_array(
    chw: np.ndarray,
    index: Tensor | np.ndarray | None = None,
    rng: np.random.Generator | int | None = None,
    p_superpixel: float = 0.9,
    segmenters: Sequence[str] = SEGMENTERS,
    frac_range: tuple[float, float] = (0.01, 0.15),
    segment_max_side: int | None = None,
    labels: Callable[[str], np.ndarray] | None = None,
) -> np.ndarray:
    """`patch_mask` of a `(3, H, W)` float image array in [0, 1] that the caller made (the image is not validated,
    the other arguments are): the same draws, the same `(H, W)` bool mask. The image is read only to segment it."""
    h, w = chw.shape[1:]
    idx = None if index is None else _check_index(index, h, w)
    rng = _check_rng(rng)
    if isinstance(p_superpixel, bool) or not isinstance(p_superpixel, numbers.Real) or not 0 <= p_superpixel <= 1:
        raise ValueError(f"p_superpixel must be a number in [0, 1], got {p_superpixel!r}")
    if isinstance(segmenters, str) or len(segmenters) == 0:
        raise ValueError(f"segmenters must be a non-empty sequence of names from {list(SEGMENTERS)}, "
                         f"got {segmenters!r}")
    for name in segmenters:
        check_choice(name, SEGMENTERS, "segmenters")
    if len(frac_range) != 2 or not 0 < frac_range[0] <= frac_range[1] <= 1:
        raise ValueError(f"frac_range must be (low, high) with 0 < low <= high <= 1, got {frac_range!r}")
    _check_max_side(segment_max_side)

    if idx is None or rng.random() < p_superpixel:
        method = segmenters[int(rng.integers(len(segmenters)))]
        if labels is None:
            segments = segment_array(chw, method, segment_max_side)
        else:
            segments = np.asarray(labels(method))
            if segments.shape != (h, w):
                raise ValueError(f"labels({method!r}) has shape {segments.shape}, the image has size {(h, w)}")
        return _grow_region(segments, rng, (float(frac_range[0]), float(frac_range[1])))
    return _component_mask(idx, rng)


def mask_from_point(image: Tensor, x: int, y: int, segmenter: str = "slic") -> Tensor:
    """The segment `(H, W)` bool under pixel (x = column, y = row), e.g. for a click in an editor."""
    rgb = _to_hwc(image)
    check_choice(segmenter, SEGMENTERS, "segmenter")
    h, w = rgb.shape[:2]
    col, row = check_point(x, y, w, h)
    labels = _segment_np(rgb, segmenter)
    return torch.from_numpy(labels == labels[row, col])
