"""Texture cues (SPEC 1.6): two channels in [0, 1] computed from the 8-bit gray source.

Modes
- ``T``: thresholded gradients, 1 where ``|g| > threshold`` (strictly greater) else 0, per axis.
- ``G``: raw gradients mapped to [0, 1] as ``(g + 255) / 510``.
- ``L``: the CIELab lightness ``L / 100`` in both channels.
- ``none``: no texture; the neutral value everywhere.

Gradients follow ``numpy.gradient``: central differences ``(g[i+1] - g[i-1]) / 2`` inside, one-sided differences
at the borders, 0 along an axis of a single pixel. Channel 0 is the gradient along rows (axis -2), channel 1 along
columns (axis -1).

Neutral value: what a dropped cue is set to. 0 for ``T``, ``L`` and ``none``. For ``G`` a zero gradient maps to
0.5, so 0.5 is the neutral default; the authors set dropped ``G`` cues to 0, which reads as a strong negative
gradient (pass ``g_neutral=0.0`` to reproduce them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dequant.color._checks import check_choice, check_image
from dequant.color.colorspace import rgb_to_gray255, rgb_to_lab

CUE_MODES: tuple[str, ...] = ("T", "G", "L", "none")


def _check_unit(value: float, name: str) -> float:
    """A finite real number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


def _check_threshold(threshold: float) -> float:
    """A finite, non-negative gradient threshold on the 0-255 scale."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        raise ValueError(f"threshold must be a non-negative number, got {threshold!r}")
    threshold = float(threshold)
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold}")
    return threshold


def _gradient(x: Tensor, dim: int) -> Tensor:
    """`numpy.gradient` along `dim` with unit spacing and first-order edges."""
    n = x.shape[dim]
    if n < 2:
        # numpy refuses a single sample; a constant signal has no gradient, so 0 is the honest answer.
        return torch.zeros_like(x)
    first = x.narrow(dim, 1, 1) - x.narrow(dim, 0, 1)
    last = x.narrow(dim, n - 1, 1) - x.narrow(dim, n - 2, 1)
    inner = (x.narrow(dim, 2, n - 2) - x.narrow(dim, 0, n - 2)) / 2.0
    return torch.cat([first, inner, last], dim=dim)


def gray_gradients(image: Tensor) -> Tensor:
    """Gradients `(B, 2, H, W)` (rows, columns) of the 0-255 gray of a batched RGB image `(B, 3, H, W)`."""
    gray = rgb_to_gray255(image)
    return torch.cat([_gradient(gray, -2), _gradient(gray, -1)], dim=1)


def neutral_value(mode: str, g_neutral: float = 0.5) -> float:
    """The cue value meaning "no texture here": 0 for T, L and none; `g_neutral` for G (authors: 0)."""
    check_choice(mode, CUE_MODES, "mode")
    g_neutral = _check_unit(g_neutral, "g_neutral")
    return g_neutral if mode == "G" else 0.0


def texture_cue(image: Tensor, mode: str = "T", threshold: float = 8.0) -> Tensor:
    """Texture cue `(2, H, W)` or `(B, 2, H, W)` in [0, 1] of an RGB image in [0, 1] (SPEC 1.6)."""
    check_choice(mode, CUE_MODES, "mode")
    threshold = _check_threshold(threshold)
    x, batched = check_image(image, "image")
    x = x.float()
    b, _, h, w = x.shape
    if mode == "none":
        cue = x.new_zeros((b, 2, h, w))
    elif mode == "L":
        lightness = (rgb_to_lab(x)[:, :1] / 100.0).clamp(0.0, 1.0)
        cue = lightness.expand(b, 2, h, w).contiguous()
    else:
        grad = gray_gradients(x)
        if mode == "T":
            cue = (grad.abs() > threshold).to(x.dtype)
        else:
            cue = ((grad + 255.0) / 510.0).clamp(0.0, 1.0)
    return cue if batched else cue[0]


def gray255_array(u8: np.ndarray) -> np.ndarray:
    """The 0-255 gray `(H, W)` float32 of a `(3, H, W)` uint8 image: `rgb_to_gray255` on numpy planes, same values."""
    r, g, b = (u8[c].astype(np.int32) for c in range(3))
    return ((r * 9798 + g * 19235 + b * 3735 + 16384) >> 15).astype(np.float32)


def _gradient_array(x: np.ndarray, axis: int) -> np.ndarray:
    """`_gradient` of a float32 array in numpy: the same float32 operations, so the same values."""
    n = x.shape[axis]
    if n < 2:
        return np.zeros_like(x)
    out = np.empty_like(x)
    src, dst = np.moveaxis(x, axis, 0), np.moveaxis(out, axis, 0)
    np.subtract(src[1], src[0], out=dst[0])
    np.subtract(src[n - 1], src[n - 2], out=dst[n - 1])
    np.subtract(src[2:], src[:-2], out=dst[1:n - 1])
    dst[1:n - 1] /= np.float32(2.0)
    return out


def texture_cue_array(u8: np.ndarray, mode: str = "T", threshold: float = 8.0) -> np.ndarray:
    """`texture_cue` of the image whose 8-bit rounding is `u8` `(3, H, W)`, for modes T, G and none, as a float32
    array `(2, H, W)`; no validation (the caller made `u8`). T and G read only the 8-bit gray, so the cue is
    `texture_cue`'s bit for bit (tests/color/test_cues.py)."""
    h, w = u8.shape[1:]
    if mode == "none":
        return np.zeros((2, h, w), dtype=np.float32)
    if mode not in ("T", "G"):
        raise ValueError(f"texture_cue_array computes modes T, G and none, got {mode!r}")
    gray = gray255_array(u8)
    grad = np.stack([_gradient_array(gray, 0), _gradient_array(gray, 1)])
    if mode == "T":
        # torch compares a float32 tensor with a Python number in float32.
        return (np.abs(grad) > np.float32(threshold)).astype(np.float32)
    grad += np.float32(255.0)
    grad /= np.float32(510.0)
    return np.clip(grad, np.float32(0.0), np.float32(1.0), out=grad)


@dataclass(frozen=True)
class TextureCue:
    """A configured texture cue (the Hydra `cond/` group): computes cues, knows its neutral value and drop rate."""

    mode: str = "T"
    threshold: float = 8.0
    g_neutral: float = 0.5
    p_drop: float = 0.65

    def __post_init__(self) -> None:
        check_choice(self.mode, CUE_MODES, "mode")
        # Normalise ints from YAML to floats so that equal configs compare equal.
        object.__setattr__(self, "threshold", _check_threshold(self.threshold))
        object.__setattr__(self, "g_neutral", _check_unit(self.g_neutral, "g_neutral"))
        object.__setattr__(self, "p_drop", _check_unit(self.p_drop, "p_drop"))

    def __call__(self, image: Tensor) -> Tensor:
        """Texture cue of `image` `(3, H, W)` or `(B, 3, H, W)`."""
        return texture_cue(image, self.mode, self.threshold)

    def array(self, rgb: np.ndarray, u8: np.ndarray) -> np.ndarray:
        """The cue `(2, H, W)` float32 of a `(3, H, W)` float32 image `rgb` in [0, 1] whose 8-bit rounding is `u8`,
        equal to `self(torch.from_numpy(rgb))`, without validating (for callers that made both arrays)."""
        if self.mode == "L":
            return self(torch.from_numpy(rgb)).numpy()
        return texture_cue_array(u8, self.mode, self.threshold)

    @property
    def neutral(self) -> float:
        """Value a dropped cue takes."""
        return neutral_value(self.mode, self.g_neutral)

    def keep_texture(self, rng: np.random.Generator) -> bool:
        """Draw whether texture is kept (probability 1 - p_drop); always False for mode "none"."""
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        # Draw even for "none" so that every cue mode consumes the same random stream.
        keep = bool(rng.random() >= self.p_drop)
        return keep and self.mode != "none"
