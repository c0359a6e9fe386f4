"""Color edits: the HSV edit of evaluation test `h` (SPEC 5), a hue rotation and saturation/value scaling on images
or palettes; and `post_l`, the authors' post-processing for `L` mode (the output's CIELab L replaced by the
source's)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dequant.color._checks import check_image, check_palette
from dequant.color.colorspace import hsv_to_rgb, lab_to_rgb, rgb_to_hsv, rgb_to_lab


@dataclass(frozen=True)
class HSVShift:
    """Hue shift (fraction of the full circle, wraps) and saturation / value scale factors."""

    hue: float
    sat: float
    val: float

    def __post_init__(self) -> None:
        for field in ("hue", "sat", "val"):
            if not math.isfinite(float(getattr(self, field))):
                raise ValueError(f"{field} must be finite, got {getattr(self, field)!r}")
        for field in ("sat", "val"):
            if float(getattr(self, field)) < 0:
                raise ValueError(f"{field} must be a non-negative scale factor, got {getattr(self, field)!r}")


def _check_strength(strength: float) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float, np.floating)) or not 0.0 <= strength <= 1:
        raise ValueError(f"strength must be a number in [0, 1], got {strength!r}")
    return float(strength)


def hsv_params(strength: float, rng: np.random.Generator) -> HSVShift:
    """Draw an edit: hue shift U(-s, s) of the full circle, S and V scales U(1 - s, 1 + s), in that order."""
    s = _check_strength(strength)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    hue, sat, val = rng.uniform(-s, s), rng.uniform(1 - s, 1 + s), rng.uniform(1 - s, 1 + s)
    return HSVShift(hue=float(hue), sat=float(sat), val=float(val))


def apply_hsv_shift(x: Tensor, shift: HSVShift) -> Tensor:
    """Apply `shift` to an image (3,H,W)/(B,3,H,W) or a palette (K,3); the result is clipped to [0, 1]."""
    if not isinstance(shift, HSVShift):
        raise ValueError(f"shift must be an HSVShift, got {type(shift).__name__}")
    if isinstance(x, Tensor) and x.ndim == 2:
        rgb, squeeze = check_palette(x, "x"), False
    else:
        # Always batched: colorspace's HSV conversions read dim 1 as the channel dim.
        rgb, was_batched = check_image(x, "x")
        squeeze = not was_batched
    channel = -1 if rgb.ndim == 2 else -3
    h, s, v = rgb_to_hsv(rgb).unbind(dim=channel)
    # Hue wraps in hsv_to_rgb; S and V saturate at 1.
    shifted = [h + shift.hue, (s * shift.sat).clamp(0, 1), (v * shift.val).clamp(0, 1)]
    out = hsv_to_rgb(torch.stack(shifted, dim=channel))
    out = out[0] if squeeze else out
    return out.clamp(0, 1).to(x.dtype)


def hsv_edit(x: Tensor, strength: float, rng: np.random.Generator) -> Tensor:
    """Draw an HSV edit of the given strength from `rng` and apply it to an image or palette."""
    return apply_hsv_shift(x, hsv_params(strength, rng))


def post_l(output: Tensor, source: Tensor) -> Tensor:
    """CIELab L of `source`, a and b of `output`, back to sRGB clipped to [0, 1]; (3,H,W) or (B,3,H,W) as given."""
    out, was_batched = check_image(output, "output")
    src, _ = check_image(source, "source")
    if out.shape != src.shape:
        raise ValueError(f"source must have the shape of output {tuple(output.shape)}, got {tuple(source.shape)}")
    lab_out, lab_src = rgb_to_lab(out.float()), rgb_to_lab(src.float())
    rgb = lab_to_rgb(torch.cat([lab_src[:, :1], lab_out[:, 1:]], dim=1)).clamp(0, 1).to(output.dtype)
    return rgb if was_batched else rgb[0]
