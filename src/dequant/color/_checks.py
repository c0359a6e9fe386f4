"""Input validation shared by the color core: every public function fails with a ValueError naming its argument."""

from __future__ import annotations

import operator
import torch
from torch import Tensor


def check_image(image: Tensor, name: str = "image", *, allow_batch: bool = True) -> tuple[Tensor, bool]:
    """Validate an RGB image `(3, H, W)` or batch `(B, 3, H, W)` in [0, 1]; return it batched and whether it was."""
    if not isinstance(image, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
    if not image.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [0, 1], got dtype {image.dtype}")
    if image.ndim == 3:
        batched = False
        image = image.unsqueeze(0)
    elif image.ndim == 4 and allow_batch:
        batched = True
    else:
        shapes = "(3, H, W) or (B, 3, H, W)" if allow_batch else "(3, H, W)"
        raise ValueError(f"{name} must have shape {shapes}, got {tuple(image.shape)}")
    if image.shape[1] != 3:
        raise ValueError(f"{name} must have 3 (RGB) channels, got shape {tuple(image.shape)}")
    if image.shape[-1] < 1 or image.shape[-2] < 1:
        raise ValueError(f"{name} must have at least one pixel, got shape {tuple(image.shape)}")
    if not torch.isfinite(image).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    lo, hi = float(image.min()), float(image.max())
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise ValueError(f"{name} values must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    return image.clamp(0.0, 1.0), batched


def check_palette(palette: Tensor, name: str = "palette") -> Tensor:
    """Validate a palette `(K, 3)` in [0, 1] with K >= 1."""
    if not isinstance(palette, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(palette).__name__}")
    if palette.ndim != 2 or palette.shape[1] != 3 or palette.shape[0] < 1:
        raise ValueError(f"{name} must have shape (K, 3) with K >= 1, got {tuple(palette.shape)}")
    if not palette.is_floating_point():
        raise ValueError(f"{name} must be float in [0, 1], got dtype {palette.dtype}")
    if not torch.isfinite(palette).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    lo, hi = float(palette.min()), float(palette.max())
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise ValueError(f"{name} values must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    return palette.clamp(0.0, 1.0)


def check_choice(value: str, choices: tuple[str, ...] | list[str], name: str) -> str:
    """Raise a ValueError naming `name` unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_point(x: int, y: int, width: int, height: int) -> tuple[int, int]:
    """(column, row) of a pixel given as integer coordinates inside a width x height image, else a ValueError."""
    try:
        if isinstance(x, bool) or isinstance(y, bool):
            raise TypeError
        col, row = operator.index(x), operator.index(y)
    except TypeError:
        raise ValueError(f"point (x={x!r}, y={y!r}) must be integer pixel coordinates") from None
    if not (0 <= col < width and 0 <= row < height):
        raise ValueError(f"point (x={col}, y={row}) lies outside the image of width {width} and height {height}")
    return col, row
