"""Color-space conversions on `(B, 3, H, W)` / `(3, H, W)` images or `(K, 3)` palettes, all built on kornia."""

from __future__ import annotations

import kornia.color as kc
import torch
from torch import Tensor

def _as_image(x: Tensor) -> tuple[Tensor, str]:
    """View a palette (K, 3) as a (1, 3, K, 1) image so that one code path converts both."""
    if x.ndim == 2 and x.shape[-1] == 3:
        return x.t().reshape(1, 3, -1, 1), "palette"
    return x, "image"


def _restore(x: Tensor, kind: str) -> Tensor:
    return x.reshape(3, -1).t() if kind == "palette" else x


def rgb_to_lab(x: Tensor) -> Tensor:
    """sRGB in [0, 1] -> CIELab (L in [0, 100], a/b roughly [-128, 127]); images or (K, 3) palettes."""
    y, kind = _as_image(x)
    return _restore(kc.rgb_to_lab(y.float()), kind)


def lab_to_rgb(x: Tensor) -> Tensor:
    """CIELab -> sRGB clipped to [0, 1]; images or (K, 3) palettes."""
    y, kind = _as_image(x)
    return _restore(kc.lab_to_rgb(y.float(), clip=True), kind)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """sRGB in [0, 1] -> HSV with all three channels in [0, 1] (hue as a fraction of the full circle)."""
    y, kind = _as_image(x)
    hsv = kc.rgb_to_hsv(y.float())
    hsv = torch.cat([hsv[..., :1, :, :] / (2 * torch.pi), hsv[..., 1:, :, :]], dim=-3)
    return _restore(hsv, kind)


def hsv_to_rgb(x: Tensor) -> Tensor:
    """HSV with channels in [0, 1] (hue wraps) -> sRGB in [0, 1]; images or (K, 3) palettes."""
    y, kind = _as_image(x)
    h = torch.remainder(y[..., :1, :, :], 1.0) * (2 * torch.pi)
    rgb = kc.hsv_to_rgb(torch.cat([h, y[..., 1:, :, :].clamp(0, 1)], dim=-3))
    return _restore(rgb.clamp(0, 1), kind)


def rgb_to_gray255(image: Tensor) -> Tensor:
    """Gray on the uint8 scale (0-255, integer-valued float) from RGB in [0, 1], bit-exact with OpenCV's RGB2GRAY."""
    u8 = torch.round(image.float().clamp(0, 1) * 255.0).to(torch.int32)
    # OpenCV's fixed-point BT.601 (weights scaled by 2^15, rounded): the authors' cue comes from cv2's uint8 gray.
    r, g, b = u8.unbind(dim=-3)
    gray = (r * 9798 + g * 19235 + b * 3735 + 16384) >> 15
    return gray.unsqueeze(-3).to(image.dtype if image.is_floating_point() else torch.float32)
