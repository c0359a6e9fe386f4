"""The one resize policy for photos (training examples, evaluation crops, dequant-edit and the page): bicubic, or
area averaging when shrinking by more than 2x (bicubic aliases there), clipped back to [0, 1]."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

# Below this scale factor (output / input side) area averaging replaces bicubic.
AREA_BELOW = 0.5


def interpolation(scale: float) -> int:
    """The OpenCV interpolation for a resize by `scale` (the smaller of the two axes' factors)."""
    return cv2.INTER_AREA if scale < AREA_BELOW else cv2.INTER_CUBIC


def resize_array(chw: np.ndarray, height: int, width: int, *, clip: bool = True) -> np.ndarray:
    """Resize a `(3, H, W)` float32 array to `height` x `width`; the same array when the size already fits.

    `clip=False` leaves bicubic's overshoot outside [0, 1] in place, for a caller that clips only the part it keeps
    (clipping commutes with cropping, so the kept part is the same).
    """
    h, w = chw.shape[1:]
    if (h, w) == (height, width):
        return chw
    interp = interpolation(min(height / h, width / w))
    # One call per channel on contiguous planes, each written straight into its plane of the result: no HWC
    # transpose copy of the whole image, and no stacking copy.
    out = np.empty((chw.shape[0], height, width), dtype=chw.dtype)
    for plane, dst in zip(chw, out):
        cv2.resize(np.ascontiguousarray(plane), (width, height), dst=dst, interpolation=interp)
    return np.clip(out, 0.0, 1.0, out=out) if clip else out


def resize(image: Tensor, height: int, width: int) -> Tensor:
    """Resize `(3, H, W)` in [0, 1] to `height` x `width` (float32, a new tensor)."""
    if not isinstance(image, Tensor) or image.ndim != 3:
        raise ValueError(f"image must be a (C, H, W) tensor, got {getattr(image, 'shape', type(image).__name__)}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height} x {width}")
    chw = np.ascontiguousarray(image.detach().cpu().numpy(), dtype=np.float32)
    out = resize_array(chw, height, width)
    return torch.from_numpy(out.copy() if out is chw else out)


def short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(H, W) scaled so that the short side is exactly `short`, aspect ratio kept (the long side rounded)."""
    if height <= width:
        return short, max(short, round(width * short / height))
    return max(short, round(height * short / width)), short
