"""Click-to-select regions that follow an object: the connected region of the clicked palette color.

A superpixel under a click (`masks.mask_from_point`) is a blob a few pixels wide; what a person clicking an orange
means is the orange. On a quantized image the object is, to a first approximation, the 4-connected region of pixels
sharing the clicked pixel's palette color, or colors close to it (`tolerance`, a plain CIELab distance, so
an orange's highlight and shadow colors can join), with holes filled (a specular highlight inside the object is part
of it) and the boundary moved outwards or inwards by `grow` pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from dequant.color._checks import check_palette, check_point
from dequant.color.colorspace import rgb_to_lab

# 4-connectivity, as the segments of dequant.color.masks.
_FOUR = ndimage.generate_binary_structure(2, 1)


def _check_index(index: Tensor) -> np.ndarray:
    if not isinstance(index, Tensor) or index.ndim != 2 or index.numel() == 0:
        raise ValueError(f"index must be an (H, W) integer tensor, got {getattr(index, 'shape', type(index).__name__)}")
    if index.is_floating_point() or index.dtype == torch.bool or index.is_complex():
        raise ValueError(f"index must hold integers, got dtype {index.dtype}")
    if int(index.min()) < 0:
        raise ValueError(f"index values must be >= 0, got minimum {int(index.min())}")
    return index.detach().cpu().numpy().astype(np.int64, copy=False)


def _similar_colors(palette: Tensor | None, seed: int, n_labels: int, tolerance: float) -> np.ndarray:
    """Bool (n_labels,): the palette entries within `tolerance` (CIELab distance) of entry `seed`."""
    same = np.zeros(n_labels, dtype=bool)
    same[seed] = True
    if palette is None or tolerance == 0:
        return same
    pal = check_palette(palette, "palette").float()
    if pal.shape[0] < n_labels:
        raise ValueError(f"palette has {pal.shape[0]} colors, the index map uses {n_labels}")
    lab = rgb_to_lab(pal.cpu())
    dist = torch.linalg.vector_norm(lab - lab[seed], dim=1).numpy()
    same[: pal.shape[0]] |= dist[:n_labels] <= tolerance
    return same


def color_region(
    index: Tensor,
    x: int,
    y: int,
    *,
    palette: Tensor | None = None,
    tolerance: float = 0.0,
    grow: int = 0,
    fill_holes: bool = True,
) -> Tensor:
    """The region `(H, W)` bool of the palette color under pixel (x = column, y = row) of a quantized `index` map.

    The 4-connected region of pixels whose palette color is the clicked one (or within `tolerance` CIELab units of
    it; needs `palette` (K, 3)), holes filled when `fill_holes`, then grown (`grow` > 0) or shrunk (`grow` < 0) by
    `abs(grow)` pixels (Euclidean distance). Raises ValueError when shrinking leaves nothing.
    """
    idx = _check_index(index)
    height, width = idx.shape
    col, row = check_point(x, y, width, height)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not math.isfinite(tolerance) \
            or tolerance < 0:
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    if isinstance(grow, bool) or not isinstance(grow, (int, np.integer)):
        raise ValueError(f"grow must be an integer number of pixels, got {grow!r}")
    if tolerance > 0 and palette is None:
        raise ValueError("tolerance > 0 needs the palette (K, 3) to measure color distances")
    same = _similar_colors(palette, int(idx[row, col]), int(idx.max()) + 1, float(tolerance))
    labels, _ = ndimage.label(same[idx], structure=_FOUR)
    region = labels == labels[row, col]
    if fill_holes:
        region = ndimage.binary_fill_holes(region, structure=_FOUR)
    if grow > 0:
        region = ndimage.distance_transform_edt(~region) <= grow
    elif grow < 0:
        # Distance to the nearest outside pixel; the image border counts as outside so an object at the edge
        # shrinks there too.
        inner = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
        region = inner > -grow
        if not region.any():
            raise ValueError(f"grow={grow}: shrinking by {-grow} pixels leaves nothing of the region; use a smaller "
                             "shrink")
    return torch.from_numpy(region)
