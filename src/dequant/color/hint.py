"""The 7-channel conditioning tensor (SPEC 1.7): the one place in the project where a hint is made.

Layout, all channels in [0, 1]: ``[color RGB (3) | texture cue (2) | color indicator (1) | texture indicator (1)]``.
- palette mode: color = the quantized image; color indicator ``n_colors / 256`` everywhere; texture kept or dropped
  everywhere.
- patch mode: color = the image with the mask already filled (see `fill_mask`); color indicator ``1/256`` inside
  the mask and 1 outside; texture always given outside the mask, inside only when kept.
Dropped texture: the cue takes the mode's neutral value (`dequant.color.cues.neutral_value`) and the texture
indicator is 0 there. ``cue_mode="none"`` drops texture everywhere.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from dequant.color._checks import check_choice, check_image
from dequant.color.cues import CUE_MODES, neutral_value

HINT_CHANNELS = 7
COLOR = slice(0, 3)
CUE = slice(3, 5)
COLOR_IND = 5
TEX_IND = 6

HINT_MODES: tuple[str, ...] = ("palette", "patch")
MAX_COLORS_SCALE = 256  # the authors' 2 * MAX_COLORS (128)


def _check_mask(mask: Tensor | np.ndarray, name: str, batch: int, height: int, width: int, batched: bool) -> Tensor:
    """A bool mask `(H, W)` (or `(B, H, W)` for batched images) as a `(B, 1, H, W)` bool tensor."""
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    if not isinstance(mask, Tensor):
        raise ValueError(f"{name} must be a bool torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must have dtype bool, got {mask.dtype}")
    if mask.ndim == 2 or (batched and mask.ndim == 3):
        if tuple(mask.shape[-2:]) != (height, width):
            raise ValueError(f"{name} has size {tuple(mask.shape[-2:])}, the image has size {(height, width)}")
        if mask.ndim == 3 and mask.shape[0] != batch:
            raise ValueError(f"{name} holds {mask.shape[0]} masks for a batch of {batch} images")
    else:
        shapes = "(H, W) or (B, H, W)" if batched else "(H, W)"
        raise ValueError(f"{name} must have shape {shapes}, got {tuple(mask.shape)}")
    return mask.reshape(-1, 1, height, width).expand(batch, 1, height, width)


def _check_keep(keep_texture: bool | Tensor, batch: int, batched: bool) -> Tensor:
    """keep_texture as a `(B,)` bool tensor."""
    if isinstance(keep_texture, (bool, np.bool_)):
        return torch.full((batch,), bool(keep_texture), dtype=torch.bool)
    if isinstance(keep_texture, Tensor) and keep_texture.dtype == torch.bool:
        if keep_texture.ndim == 0:
            return keep_texture.reshape(1).expand(batch).cpu()
        if batched and keep_texture.shape == (batch,):
            return keep_texture.cpu()
    shapes = "a bool or a bool tensor of shape (B,)" if batched else "a bool"
    got = tuple(keep_texture.shape) if isinstance(keep_texture, Tensor) else repr(keep_texture)
    raise ValueError(f"keep_texture must be {shapes}, got {got}")


def _check_n_colors(n_colors: int | Sequence[int] | Tensor | None, batch: int, batched: bool) -> Tensor:
    """n_colors as a `(B,)` float tensor of palette sizes in [1, 256]."""
    if n_colors is None:
        raise ValueError("n_colors is required in palette mode")
    if isinstance(n_colors, (Tensor, np.ndarray, list, tuple)):
        values = torch.as_tensor(n_colors)
        if values.ndim == 0:
            values = values.reshape(1)
        elif not batched or values.shape != (batch,):
            raise ValueError(f"n_colors must be an int or hold one int per image ({batch}), got shape "
                             f"{tuple(values.shape)}")
        if values.is_floating_point() or values.dtype == torch.bool or values.is_complex():
            raise ValueError(f"n_colors must be integers, got dtype {values.dtype}")
    else:
        if isinstance(n_colors, bool):
            raise ValueError(f"n_colors must be an int, got {n_colors!r}")
        try:
            values = torch.tensor([operator.index(n_colors)])
        except TypeError:
            raise ValueError(f"n_colors must be an int, got {n_colors!r}") from None
    if int(values.min()) < 1 or int(values.max()) > 256:
        raise ValueError(f"n_colors must lie in [1, 256], got {values.tolist()}")
    return values.cpu().float().expand(batch)


def _check_cue(cue: Tensor, batch: int, height: int, width: int, batched: bool) -> Tensor:
    """A cue `(2, H, W)` / `(B, 2, H, W)` in [0, 1], returned batched."""
    if not isinstance(cue, Tensor) or not cue.is_floating_point():
        raise ValueError(f"cue must be a float torch.Tensor, got {getattr(cue, 'dtype', type(cue).__name__)}")
    expected = (batch, 2, height, width) if batched else (2, height, width)
    if tuple(cue.shape) != expected:
        raise ValueError(f"cue must have shape {expected} to match color, got {tuple(cue.shape)}")
    if not torch.isfinite(cue).all():
        raise ValueError("cue contains NaN or infinite values")
    lo, hi = float(cue.min()), float(cue.max())
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise ValueError(f"cue values must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    return cue.reshape(batch, 2, height, width).clamp(0.0, 1.0)


def _check_fill_color(color: Tensor | Sequence[float], batch: int, batched: bool) -> Tensor:
    """A fill color `(3,)` (or `(B, 3)` for batched images) in [0, 1] as `(B, 3)` float."""
    values = torch.as_tensor(color, dtype=torch.float32) if not isinstance(color, Tensor) else color.float()
    if values.shape == (3,):
        values = values.reshape(1, 3).expand(batch, 3)
    elif not (batched and values.shape == (batch, 3)):
        shapes = "(3,) or (B, 3)" if batched else "(3,)"
        raise ValueError(f"color must have shape {shapes}, got {tuple(values.shape)}")
    if not torch.isfinite(values).all() or float(values.min()) < 0 or float(values.max()) > 1:
        raise ValueError(f"color values must lie in [0, 1], got {values.tolist()}")
    return values


def fill_mask(image: Tensor, mask: Tensor, color: Tensor | Sequence[float] | None = None) -> Tensor:
    """Image with the masked pixels set to `color` (3,) or, if None, to the per-channel mean of the masked pixels."""
    x, batched = check_image(image, "image")
    b, _, h, w = x.shape
    m = _check_mask(mask, "mask", b, h, w, batched).to(x.device)
    if color is None:
        count = m.sum(dim=(-2, -1)).clamp(min=1)
        fill = (x * m).sum(dim=(-2, -1)) / count
    else:
        fill = _check_fill_color(color, b, batched).to(x.device, x.dtype)
    # An empty mask selects nothing, so where() leaves that image untouched.
    out = torch.where(m, fill.reshape(b, 3, 1, 1), x)
    return out if batched else out[0]


def hint(
    color: Tensor,
    cue: Tensor,
    *,
    mode: str = "palette",
    n_colors: int | Sequence[int] | Tensor | None = None,
    mask: Tensor | None = None,
    keep_texture: bool | Tensor = True,
    cue_mode: str = "T",
    g_neutral: float = 0.5,
) -> Tensor:
    """The 7-channel hint `(7, H, W)` / `(B, 7, H, W)` in [0, 1] (SPEC 1.7; see the module docstring)."""
    check_choice(mode, HINT_MODES, "mode")
    check_choice(cue_mode, CUE_MODES, "cue_mode")
    neutral = neutral_value(cue_mode, g_neutral)
    x, batched = check_image(color, "color")
    x = x.float()
    b, _, h, w = x.shape
    c = _check_cue(cue, b, h, w, batched).to(x.device, x.dtype)
    keep = _check_keep(keep_texture, b, batched).to(x.device).reshape(b, 1, 1, 1)

    if mode == "palette":
        if mask is not None:
            raise ValueError("mask is only used in patch mode; pass mask=None in palette mode")
        n = _check_n_colors(n_colors, b, batched).to(x.device)
        color_ind = (n / MAX_COLORS_SCALE).reshape(b, 1, 1, 1).expand(b, 1, h, w)
        given = keep.expand(b, 1, h, w)
    else:
        if n_colors is not None:
            raise ValueError("n_colors is only used in palette mode; pass n_colors=None in patch mode")
        if mask is None:
            raise ValueError("mask is required in patch mode")
        m = _check_mask(mask, "mask", b, h, w, batched).to(x.device)
        color_ind = torch.where(m, 1.0 / MAX_COLORS_SCALE, 1.0).to(x.dtype)
        given = ~m | keep
    if cue_mode == "none":
        given = torch.zeros_like(given)

    cue_out = torch.where(given, c, torch.full_like(c, neutral))
    out = torch.cat([x, cue_out, color_ind, given.to(x.dtype)], dim=1)
    return out if batched else out[0]


def fill_mask_array(image: np.ndarray, mask: np.ndarray, color: np.ndarray | None = None) -> np.ndarray:
    """`fill_mask` of one `(3, H, W)` float32 image array with an `(H, W)` bool mask, the same values, without
    validating (for callers that made both arrays); `color`: a `(3,)` float32 fill, None for the masked mean."""
    if color is None:
        m = torch.from_numpy(mask)
        # fill_mask's own torch reduction (the same sum over the same contiguous planes), so the mean is bit-equal.
        fill = ((torch.from_numpy(image) * m).sum(dim=(-2, -1)) / m.sum().clamp(min=1)).numpy()
    else:
        fill = np.asarray(color, dtype=np.float32)
    out = np.array(image, dtype=np.float32)
    # copyto with where= is ~7x cheaper than boolean-index assignment on every channel.
    np.copyto(out, fill[:, None, None], where=mask)
    return out


def hint_array(
    color: np.ndarray,
    cue: np.ndarray | None,
    *,
    mode: str,
    n_colors: int | None = None,
    mask: np.ndarray | None = None,
    keep_texture: bool = True,
    cue_mode: str = "T",
    g_neutral: float = 0.5,
) -> np.ndarray:
    """`hint` of one image as a float32 array `(7, H, W)`, the same values, from arrays the caller made and knows
    to be valid (no validation): `color` `(3, H, W)` float32 in [0, 1], `cue` `(2, H, W)` float32 (None allowed in
    palette mode when texture is dropped), `mask` `(H, W)` bool in patch mode, `n_colors` an int in [1, 256] in
    palette mode."""
    check_choice(mode, HINT_MODES, "mode")
    neutral = np.float32(neutral_value(cue_mode, g_neutral))
    h, w = color.shape[1:]
    out = np.empty((HINT_CHANNELS, h, w), dtype=np.float32)
    out[COLOR] = color
    if mode == "palette":
        given = bool(keep_texture) and cue_mode != "none"
        if given:
            np.clip(cue, 0.0, 1.0, out=out[CUE])
        else:
            out[CUE] = neutral
        out[COLOR_IND] = np.float32(n_colors) / np.float32(MAX_COLORS_SCALE)
        out[TEX_IND] = np.float32(given)
        return out
    if cue_mode == "none":
        given_map = np.zeros((h, w), dtype=bool)
    else:
        given_map = ~mask | bool(keep_texture)
    np.clip(cue, 0.0, 1.0, out=out[CUE])
    np.copyto(out[CUE], neutral, where=~given_map)
    out[COLOR_IND] = np.float32(1.0)
    out[COLOR_IND][mask] = np.float32(1.0 / MAX_COLORS_SCALE)
    out[TEX_IND] = given_map
    return out


def split_hint(h: Tensor) -> dict[str, Tensor]:
    """Views of a hint's parts: color (3), cue (2), color_indicator (1), texture_indicator (1), channel dim kept."""
    if not isinstance(h, Tensor) or h.ndim not in (3, 4) or h.shape[-3] != HINT_CHANNELS:
        got = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
        raise ValueError(f"h must have shape ({HINT_CHANNELS}, H, W) or (B, {HINT_CHANNELS}, H, W), got {got}")
    return {
        "color": h[..., COLOR, :, :],
        "cue": h[..., CUE, :, :],
        "color_indicator": h[..., COLOR_IND : COLOR_IND + 1, :, :],
        "texture_indicator": h[..., TEX_IND : TEX_IND + 1, :, :],
    }
