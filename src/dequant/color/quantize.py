"""Color quantizers: one global palette per image, with its index map and the pixel fraction of each color.

Two methods (SPEC 1.4):
- ``median_cut``: the authors' quantizer, Pillow's median cut on the 8-bit RGB image, never dithered; computed by
  ``dequant.color.median_cut`` (numpy), which gives Pillow's palette and index map exactly, several times faster.
- ``kmeans``: weighted k-means (greedy k-means++ seeding, Lloyd iterations) on color histograms of the 8-bit
  image (5 then 6 bits per channel; each bin weighted by its pixel count, placed at its pixels' mean), in RGB or
  CIELab; then every pixel takes its exactly nearest center and the centers become their pixels' means.
  On one thread it is 6-15x faster than ``cv2.kmeans`` (k-means++, 20 iterations) at N=16..64 for about the same
  error (within 2%, see ``experiments/bench_color.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral

import numpy as np
import torch
from torch import Tensor

from dequant.color._checks import check_choice, check_image
from dequant.color.colorspace import lab_to_rgb, rgb_to_lab
from dequant.color.median_cut import median_cut, median_cut_planes, palette_colors

METHODS = ("median_cut", "kmeans")
SPACES = ("rgb", "lab")
MAX_COLORS = 256

# Histogram resolutions for k-means (bits per channel). Fine bins (4 levels wide) are far narrower than any
# cluster that matters and cut a photo's ~40k distinct colors to a few thousand points; coarse bins (8 levels)
# cut it to one or two thousand, where seeding and most Lloyd iterations happen.
_FINE_BITS = 6
_COARSE_BITS = 5
# Lloyd iterations on the coarse, then on the fine histogram. Each level stops once no center moves by more than
# sqrt(tol) (feature units: 0-255 RGB or Lab): one level on the coarse histogram, since the fine one polishes
# anyway, and a tenth of a level on the fine one.
_MAX_ITER = 30
_FINE_ITER = 10
_COARSE_TOL = 1.0
_TOL = 1e-2


@dataclass(eq=False)  # tensors have no single truth value, so compare fields explicitly
class Quantized:
    """A quantized image: `palette` (K,3) float32 in [0,1], `index` (H,W) int64 in [0,K), `fractions` (K,) float32.

    Colors are sorted by fraction, descending, and every color is used by at least one pixel.
    """

    palette: Tensor
    index: Tensor
    fractions: Tensor

    @property
    def image(self) -> Tensor:
        """The quantized image `(3, H, W)`: `palette[index]`."""
        return self.palette[self.index].permute(2, 0, 1)

    @property
    def n_colors(self) -> int:
        """Number of colors K actually used."""
        return int(self.palette.shape[0])

    @classmethod
    def from_assignment(cls, palette: Tensor | np.ndarray, index: Tensor | np.ndarray) -> Quantized:
        """Build a Quantized from any palette and index map: drop unused colors, merge equal ones, sort by fraction."""
        pal = torch.as_tensor(palette).detach().to("cpu", torch.float32).clamp(0.0, 1.0)
        idx = torch.as_tensor(index).detach().to("cpu", torch.int64)
        if pal.ndim != 2 or pal.shape[1] != 3 or pal.shape[0] < 1:
            raise ValueError(f"palette must have shape (K, 3), got {tuple(pal.shape)}")
        if idx.ndim != 2 or idx.numel() == 0:
            raise ValueError(f"index must have shape (H, W) with H, W >= 1, got {tuple(idx.shape)}")
        if int(idx.min()) < 0 or int(idx.max()) >= pal.shape[0]:
            raise ValueError(f"index values must lie in [0, {pal.shape[0]}), got [{int(idx.min())}, {int(idx.max())}]")
        # Equal colors (possible in Pillow palettes or degenerate k-means) become one entry, as do unused ones.
        colors, remap = torch.unique(pal, dim=0, return_inverse=True)
        counts = torch.bincount(remap[idx.reshape(-1)], minlength=colors.shape[0])
        # Stable sort with the color as tie-break so that the order is a pure function of the result.
        order = torch.as_tensor(np.argsort(-counts.numpy(), kind="stable"))
        order = order[counts[order] > 0]
        new_of_old = torch.full((colors.shape[0],), -1, dtype=torch.int64)
        new_of_old[order] = torch.arange(order.numel())
        fractions = counts[order].double() / idx.numel()
        return cls(
            palette=colors[order].contiguous(),
            index=new_of_old[remap[idx]].contiguous(),
            fractions=fractions.float(),
        )


def _check_n_colors(n_colors: object) -> int:
    """n_colors must be a plain integer in [1, MAX_COLORS]."""
    if isinstance(n_colors, bool) or not isinstance(n_colors, Integral):
        raise ValueError(f"n_colors must be an int in [1, {MAX_COLORS}], got {n_colors!r}")
    if not 1 <= int(n_colors) <= MAX_COLORS:
        raise ValueError(f"n_colors must be an int in [1, {MAX_COLORS}], got {n_colors!r}")
    return int(n_colors)


def _check_method_space(method: str, space: str) -> None:
    check_choice(method, METHODS, "method")
    check_choice(space, SPACES, "space")
    if method == "median_cut" and space != "rgb":
        raise ValueError("space must be 'rgb' for method='median_cut': Pillow's median cut works in RGB only")


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _to_hwc(image: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(3,H,W) float in [0,1] -> ((H,W,3) float32, (H,W,3) uint8 rounded to nearest as image writers do)."""
    rgb = image.detach().to("cpu", torch.float32).permute(1, 2, 0).contiguous()
    u8 = (rgb * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return rgb.numpy(), u8.numpy()


def to_u8_array(chw: np.ndarray) -> np.ndarray:
    """A `(3, H, W)` image in [0, 1] as uint8 planes, rounded as `_to_hwc` rounds (float32 product, half to even)."""
    u8 = np.rint(np.asarray(chw, dtype=np.float32) * np.float32(255.0))
    np.clip(u8, 0.0, 255.0, out=u8)
    return u8.astype(np.uint8)


def _median_cut(u8: np.ndarray, n_colors: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's undithered median cut: (palette uint8 (K,3), index (H,W)), identical to Pillow's (median_cut.py)."""
    return median_cut(u8, n_colors)


def _sq_dist_argmin(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest center of each row of x: (labels, squared distances); ||x||^2 is added back only for the minimum."""
    cc = np.einsum("kc,kc->k", centers, centers)
    d = x @ (-2.0 * centers.T)
    d += cc
    labels = d.argmin(axis=1)
    best = d[np.arange(x.shape[0]), labels] + np.einsum("nc,nc->n", x, x)
    return labels, np.maximum(best, 0.0)


def _kmeanspp(x: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy weighted k-means++ seeding (as in scikit-learn): best of 2 + log k candidates drawn by w * D^2."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    xx = np.einsum("nc,nc->n", x, x)
    centers = np.empty((k, x.shape[1]), dtype=x.dtype)
    first = rng.choice(n, p=w / w.sum())
    centers[0] = x[first]
    closest = np.maximum(xx - 2.0 * (x @ x[first]) + xx[first], 0.0)
    for j in range(1, k):
        pot = w * closest
        total = pot.sum()
        if total <= 0:
            # Every point coincides with a center (cannot happen with distinct points, guard against rounding).
            cand = rng.choice(n, size=1)
        else:
            cand = np.searchsorted(np.cumsum(pot), rng.random(trials) * total)
            cand = np.minimum(cand, n - 1)
        d = np.maximum(xx[cand, None] - 2.0 * (x[cand] @ x.T) + xx[None, :], 0.0)
        np.minimum(d, closest[None, :], out=d)
        best = int(np.argmin(d @ w))
        centers[j] = x[cand[best]]
        closest = d[best]
    return centers


def _weighted_means(
    labels: np.ndarray, w: np.ndarray, x: np.ndarray, k: int, wx: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster weighted means of x (rows) and cluster weights; `wx` = w[:, None] * x if precomputed."""
    if wx is None:
        wx = w[:, None] * x
    mass = np.bincount(labels, weights=w, minlength=k)
    sums = np.stack([np.bincount(labels, weights=wx[:, c], minlength=k) for c in range(x.shape[1])], axis=1)
    return sums / np.maximum(mass, 1e-12)[:, None], mass


def _lloyd(x: np.ndarray, w: np.ndarray, centers: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    """Weighted Lloyd iterations until no center moves by more than sqrt(tol); empty clusters are reseeded."""
    k = centers.shape[0]
    neg2x = -2.0 * x
    wx = np.ascontiguousarray((w[:, None] * x).T)
    for _ in range(max_iter):
        # ||x||^2 is constant per row, so the argmin needs only ||c||^2 - 2 x.c.
        d = neg2x @ centers.T
        d += np.einsum("kc,kc->k", centers, centers)
        labels = d.argmin(axis=1)
        means, mass = _weighted_means(labels, w, x, k, wx.T)
        used = mass > 0
        new = np.where(used[:, None], means, centers).astype(x.dtype)
        empty = np.flatnonzero(~used)
        if empty.size:
            # Reseed each empty cluster at the point contributing most error, like cv2.kmeans does.
            _, d2 = _sq_dist_argmin(x, centers)
            far = np.argsort(-(w * d2), kind="stable")[: empty.size]
            new[empty] = x[far]
        shift = float(((new - centers) ** 2).sum(axis=1).max())
        centers = new
        if shift <= tol:
            break
    return centers


def _nearest(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest center for each row of x (||x||^2 is constant per row, so it is left out)."""
    d = x @ (-2.0 * centers.T)
    d += np.einsum("kc,kc->k", centers, centers)
    return d.argmin(axis=1)


def _histogram(key: np.ndarray, n_bins: int, feats: np.ndarray, weights: np.ndarray | None = None):
    """Occupied bins of `key`: (bin ids, total weight, weighted mean feature) per occupied bin."""
    mass = np.bincount(key, weights=weights, minlength=n_bins)
    occupied = np.flatnonzero(mass)
    w = weights if weights is not None else np.ones(key.size)
    sums = np.stack([np.bincount(key, weights=w * feats[:, c], minlength=n_bins)[occupied] for c in range(3)], 1)
    mass = mass[occupied].astype(np.float64)
    return occupied, mass, (sums / mass[:, None]).astype(np.float32)


def _kmeans(rgb: np.ndarray, u8: np.ndarray, n_colors: int, space: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k-means palette of an (H,W,3) image given as float and uint8: (palette RGB (K,3) in [0,1], index (H,W))."""
    h, w_, _ = u8.shape
    px = u8.reshape(-1, 3)
    rgb = rgb.reshape(-1, 3)
    # Bins come from the 8-bit colors, but means are of the float pixels, so colors are not rounded to 8 bits.
    if space == "lab":
        feats = rgb_to_lab(torch.from_numpy(rgb)).numpy().astype(np.float32)
    else:
        feats = rgb * np.float32(255.0)

    # Weighted color histograms: each occupied bin is one point at the mean feature of its pixels, so Lloyd costs
    # O(bins * K) instead of O(pixels * K). Seeding and most iterations run on the coarse histogram; the fine one
    # then only polishes an almost converged solution.
    fb, cb = _FINE_BITS, _COARSE_BITS
    p32 = px.astype(np.int32) >> (8 - fb)
    key = (p32[:, 0] << (2 * fb)) | (p32[:, 1] << fb) | p32[:, 2]
    fine_ids, fine_w, fine_x = _histogram(key, 1 << (3 * fb), feats)
    levels = [(fine_x, fine_w)]
    # Strictly more bins than colors: with at most n_colors bins the image may have at most n_colors distinct
    # colors, and those must come back exactly (not through a Lab round trip).
    if fine_ids.size > n_colors:
        drop = fb - cb
        mask = (1 << fb) - 1
        coarse_key = (
            (((fine_ids >> (2 * fb)) >> drop) << (2 * cb))
            | ((((fine_ids >> fb) & mask) >> drop) << cb)
            | ((fine_ids & mask) >> drop)
        )
        _, coarse_w, coarse_x = _histogram(coarse_key, 1 << (3 * cb), fine_x, fine_w)
        if coarse_w.size >= n_colors:
            levels.insert(0, (coarse_x, coarse_w))
    else:
        # Too few bins for n_colors: work on the exact distinct colors; if there are at most n_colors of them,
        # they are the palette and the quantization is lossless.
        exact = (px[:, 0].astype(np.int32) << 16) | (px[:, 1].astype(np.int32) << 8) | px[:, 2]
        _, inverse, counts = np.unique(exact, return_inverse=True, return_counts=True)
        if counts.size <= n_colors:
            palette, _ = _weighted_means(inverse, np.ones(inverse.size), rgb, counts.size)
            return palette, inverse.reshape(h, w_)
        exact_x, exact_w = _weighted_means(inverse, np.ones(inverse.size), feats, counts.size)
        levels = [(exact_x.astype(np.float32), exact_w)]

    rng = np.random.default_rng(seed)
    centers = _kmeanspp(*levels[0], n_colors, rng)
    schedule = ((_MAX_ITER, _COARSE_TOL), (_FINE_ITER, _TOL)) if len(levels) == 2 else ((_MAX_ITER, _TOL),)
    for (x, w), (max_iter, tol) in zip(levels, schedule):
        centers = _lloyd(x, w, centers, max_iter, tol)
    # Exact assignment of every pixel, then one exact centroid update: the centers become the true means of
    # their pixels, which can only lower the error of this partition.
    labels = _nearest(feats, centers)
    means, mass = _weighted_means(labels, np.ones(labels.size), feats, n_colors)
    centers = np.where((mass > 0)[:, None], means, centers).astype(np.float32)
    if space == "lab":
        palette = lab_to_rgb(torch.from_numpy(centers)).numpy()
    else:
        palette = centers / 255.0
    return np.clip(palette, 0.0, 1.0), labels.reshape(h, w_)


def _quantize_one(image: Tensor, n_colors: int, method: str, space: str, seed: int) -> Quantized:
    rgb, u8 = _to_hwc(image)
    if method == "median_cut":
        raw, index = _median_cut(u8, n_colors)
        palette = raw.astype(np.float32) / 255.0
    else:
        palette, index = _kmeans(rgb, u8, n_colors, space, seed)
    q = Quantized.from_assignment(
        torch.from_numpy(np.ascontiguousarray(palette, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(index, dtype=np.int64)),
    )
    device = image.device
    if device.type != "cpu":
        q = Quantized(q.palette.to(device), q.index.to(device), q.fractions.to(device))
    return q


def quantize(
    image: Tensor, n_colors: int, method: str = "median_cut", space: str = "rgb", seed: int = 0
) -> Quantized | list[Quantized]:
    """Quantize `(3,H,W)` to a Quantized, or `(B,3,H,W)` to a list of B Quantized (each with the same seed).

    `median_cut` is Pillow's undithered median cut of the image rounded to 8 bits
    (`Image.quantize(colors=n, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)`, the same C routine as
    `convert("P", palette=Image.ADAPTIVE, colors=n)`), palette on the 8-bit grid; it works in RGB only
    (space="lab" raises ValueError). `kmeans` clusters in RGB or CIELab (palette returned in RGB), bins the 8-bit
    colors but averages the float pixels, so its palette is not rounded; deterministic for a given `seed`. An image
    with fewer distinct colors than `n_colors` gets fewer colors. Results live on the input's device.
    """
    batch, was_batched = check_image(image, "image")
    n = _check_n_colors(n_colors)
    _check_method_space(method, space)
    seed = _check_seed(seed)
    out = [_quantize_one(img, n, method, space, seed) for img in batch]
    return out if was_batched else out[0]


class Quantizer:
    """Configured quantizer (target of the Hydra `quantizer/` group): `Quantizer(method, space)(image, n_colors)`."""

    def __init__(self, method: str = "median_cut", space: str = "rgb") -> None:
        _check_method_space(method, space)
        self.method = method
        self.space = space

    def __call__(self, image: Tensor, n_colors: int, seed: int = 0) -> Quantized:
        """Quantize one image `(3, H, W)` to at most `n_colors` colors."""
        batch, _ = check_image(image, "image", allow_batch=False)
        return _quantize_one(batch[0], _check_n_colors(n_colors), self.method, self.space, _check_seed(seed))

    def color_array(self, rgb: np.ndarray, n_colors: int, seed: int = 0, u8: np.ndarray | None = None,
                    out: np.ndarray | None = None) -> np.ndarray:
        """`self(torch.from_numpy(rgb), n_colors, seed).image` as a float32 array `(3, H, W)`, without validating
        `rgb` (a float32 `(3, H, W)` array in [0, 1] that the caller made; `u8`: its `to_u8_array`, if at hand),
        written into `out` (a float32 `(3, H, W)` array, e.g. the color channels of a hint) when given.

        The median cut skips building a `Quantized` (its merging and sorting of colors does not change the image).
        """
        n = _check_n_colors(n_colors)
        if self.method != "median_cut":
            image = self(torch.from_numpy(rgb), n, seed).image.numpy()
            if out is None:
                return image
            out[...] = image
            return out
        palette, index = median_cut_planes(to_u8_array(rgb) if u8 is None else u8, n)
        return palette_colors(palette, index, out)  # the palette of _quantize_one, / 255 in float32

    def index_array(self, rgb: np.ndarray, n_colors: int, seed: int = 0, u8: np.ndarray | None = None) -> np.ndarray:
        """`self(torch.from_numpy(rgb), n_colors, seed).index` as an int64 array `(H, W)`, without validating `rgb`
        (as `color_array`); the median cut renumbers its colors as `Quantized.from_assignment` does, in numpy."""
        n = _check_n_colors(n_colors)
        if self.method != "median_cut":
            return self(torch.from_numpy(rgb), n, seed).index.numpy()
        palette, index = median_cut_planes(to_u8_array(rgb) if u8 is None else u8, n)
        # from_assignment: equal colors merge (rows sorted as torch.unique sorts them), then colors are ordered by
        # pixel count, descending, ties in that row order; unused colors go.
        _, remap = np.unique(palette, axis=0, return_inverse=True)
        remap = remap.reshape(-1)
        counts = np.bincount(remap[index.ravel()], minlength=int(remap.max()) + 1)
        order = np.argsort(-counts, kind="stable")
        order = order[counts[order] > 0]
        new_of_old = np.full(counts.size, -1, dtype=np.int64)
        new_of_old[order] = np.arange(order.size)
        return new_of_old[remap][index]

    def __repr__(self) -> str:
        return f"Quantizer(method={self.method!r}, space={self.space!r})"
