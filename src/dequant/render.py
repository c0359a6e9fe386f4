"""Run a convolutional model on an image of any size: whole when it fits a pixel cap, else in blended tiles.

`render_tiled(sample_fn, hint, tile=..., overlap=..., max_pixels=..., multiple=...)` is a pure function on tensors
(no Lightning or Hydra): it pads the hint (reflect) to a multiple of the net's downsampling factor, runs
`sample_fn` on the whole padded image when it has at most `max_pixels` pixels, and otherwise on overlapping
`tile` x `tile` windows whose outputs are blended with a smooth window (raised-cosine ramps across every overlap,
so neighbouring tiles fade into each other without a seam), then crops back to the input's size.

`sample_fn(hints (B, C, h, w), ids list[int]) -> (B, 3, h, w)` gets one id per tile: the whole image is id 0,
tiles are numbered 0, 1, ... in raster order (row by row). A sampler that draws its noise from (seed, id), as
`DequantModule.sample(..., image_ids=ids)` does, is therefore deterministic per tile, whatever the batching.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

SampleFn = Callable[[Tensor, Sequence[int]], Tensor]


def _check_int(value: object, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value}")
    return value


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= `value` (and >= `multiple`)."""
    return max(multiple, -(-value // multiple) * multiple)


def pad_to_multiple(image: Tensor, multiple: int) -> Tensor:
    """Pad `(B, C, H, W)` at the bottom and right to sides that are multiples of `multiple`.

    Reflect padding along each axis where the image is long enough for it (pad < side), else edge replication."""
    h, w = image.shape[-2:]
    ph, pw = round_up(h, multiple) - h, round_up(w, multiple) - w
    if pw:
        image = F.pad(image, (0, pw, 0, 0), mode="reflect" if pw < w else "replicate")
    if ph:
        image = F.pad(image, (0, 0, 0, ph), mode="reflect" if ph < h else "replicate")
    return image


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of the fewest `tile`-long windows covering [0, length) with at least `overlap` shared between
    neighbours, spread evenly (first at 0, last ending at `length`)."""
    if length <= tile:
        return [0]
    n = 1 + math.ceil((length - tile) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _ramp(n: int) -> Tensor:
    """n weights rising smoothly from near 0 to near 1 (raised cosine at pixel centres); a ramp and its mirror
    sum to 1 pixel by pixel."""
    k = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return torch.sin(0.5 * math.pi * k) ** 2


def axis_weights(starts: Sequence[int], tile: int) -> list[Tensor]:
    """1-D blending weights of each window along one axis: 1, with a ramp across each overlap with a neighbour
    (none at the image's own border)."""
    out = []
    for i, s in enumerate(starts):
        w = torch.ones(tile, dtype=torch.float64)
        if i > 0:
            ov = starts[i - 1] + tile - s
            if ov > 0:
                w[:ov] *= _ramp(ov)
        if i + 1 < len(starts):
            ov = s + tile - starts[i + 1]
            if ov > 0:
                w[tile - ov:] *= _ramp(ov).flip(0)
        out.append(w)
    return out


def render_tiled(
    sample_fn: SampleFn,
    hint: Tensor,
    *,
    tile: int = 128,
    overlap: int = 32,
    max_pixels: int = 128 * 128,
    multiple: int = 1,
) -> Tensor:
    """The model's output `(3, H, W)` (or `(1, 3, H, W)`, as given) for one hint `(C, H, W)` at its own size.

    - `multiple`: the net's size multiple (its downsampling factor); the hint is reflect-padded to it and the
      output cropped back.
    - `max_pixels`: the most pixels one call of `sample_fn` may see. A (padded) image within it is rendered whole
      (one call, id 0); a larger one in `tile` x `tile` windows (`tile` a multiple of `multiple`, `tile`**2 at most
      `max_pixels`), as many per call as fit, neighbours sharing at least `overlap` pixels (0 <= overlap < tile)
      and blended with raised-cosine weights normalized to sum to 1 at every pixel.
    """
    if not isinstance(hint, Tensor) or hint.ndim not in (3, 4) or (hint.ndim == 4 and hint.shape[0] != 1):
        raise ValueError(f"hint must be a (C, H, W) or (1, C, H, W) tensor, got "
                         f"{getattr(hint, 'shape', type(hint).__name__)}")
    if not callable(sample_fn):
        raise ValueError(f"sample_fn must be callable, got {type(sample_fn).__name__}")
    multiple = _check_int(multiple, "multiple", 1)
    tile = _check_int(tile, "tile", 1)
    overlap = _check_int(overlap, "overlap", 0)
    max_pixels = _check_int(max_pixels, "max_pixels", 1)
    if tile % multiple:
        raise ValueError(f"tile must be a multiple of the net's size multiple {multiple}, got {tile}")
    if overlap >= tile:
        raise ValueError(f"overlap must be smaller than tile ({tile}), got {overlap}")
    if tile * tile > max_pixels:
        raise ValueError(f"tile {tile} x {tile} = {tile * tile} pixels exceeds max_pixels {max_pixels}")
    batched = hint.ndim == 4
    x = hint if batched else hint[None]
    h, w = x.shape[-2:]
    if h < 1 or w < 1:
        raise ValueError(f"hint must have at least one pixel, got size {h}x{w}")
    padded = pad_to_multiple(x, multiple)
    hp, wp = padded.shape[-2:]

    if hp * wp <= max_pixels:
        out = _call(sample_fn, padded, [0])[..., :h, :w]
        return out if batched else out[0]

    th, tw = min(tile, hp), min(tile, wp)  # both multiples of `multiple`
    rows, cols = tile_starts(hp, th, overlap), tile_starts(wp, tw, overlap)
    wy, wx = axis_weights(rows, th), axis_weights(cols, tw)
    windows = [(i * len(cols) + j, r, c, wy[i][:, None] * wx[j][None, :])
               for i, r in enumerate(rows) for j, c in enumerate(cols)]
    acc = torch.zeros(1, 3, hp, wp, dtype=torch.float64)
    total = torch.zeros(1, 1, hp, wp, dtype=torch.float64)
    per_call = max(1, max_pixels // (th * tw))
    for k in range(0, len(windows), per_call):
        group = windows[k:k + per_call]
        batch = torch.cat([padded[..., r:r + th, c:c + tw] for _, r, c, _ in group])
        outs = _call(sample_fn, batch, [tid for tid, *_ in group])
        for (_, r, c, weight), o in zip(group, outs):
            acc[0, :, r:r + th, c:c + tw] += weight * o.to(torch.float64)
            total[0, :, r:r + th, c:c + tw] += weight
    out = (acc / total).to(padded.dtype)[..., :h, :w]
    return out if batched else out[0]


def render_calls(height: int, width: int, *, tile: int = 128, overlap: int = 32, max_pixels: int = 128 * 128,
                 multiple: int = 1) -> int:
    """How many times `render_tiled` calls `sample_fn` for a hint of `height` x `width` (for progress)."""
    hp, wp = round_up(height, multiple), round_up(width, multiple)
    if hp * wp <= max_pixels:
        return 1
    th, tw = min(tile, hp), min(tile, wp)
    windows = len(tile_starts(hp, th, overlap)) * len(tile_starts(wp, tw, overlap))
    per_call = max(1, max_pixels // (th * tw))
    return -(-windows // per_call)


def _call(sample_fn: SampleFn, batch: Tensor, ids: list[int]) -> Tensor:
    out = sample_fn(batch, ids)
    expected = (batch.shape[0], 3, *batch.shape[-2:])
    if not isinstance(out, Tensor) or tuple(out.shape) != expected:
        raise ValueError(f"sample_fn must return a {expected} tensor for hints {tuple(batch.shape)}, got "
                         f"{getattr(out, 'shape', type(out).__name__)}")
    return out.detach().cpu()
