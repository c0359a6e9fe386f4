"""Labelled image grids for validation, evaluation and the demo (pure: torch, numpy, OpenCV, Pillow)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dequant.atomic import atomic_path
from dequant.color.hint import COLOR, CUE, TEX_IND

_LABEL_HEIGHT = 14
_PAD = 2


def cue_to_rgb(cue: Tensor) -> Tensor:
    """Show a 2-channel texture cue `(B, 2, H, W)` as gray RGB: the larger of the two channels."""
    gray = cue.amax(dim=1, keepdim=True)
    return gray.expand(-1, 3, -1, -1)


def hint_columns(hint: Tensor) -> dict[str, Tensor]:
    """Split a batch of 7-channel hints `(B, 7, H, W)` in [0, 1] into displayable RGB columns."""
    color = hint[:, COLOR]
    cue = hint[:, CUE]
    tex_ind = hint[:, TEX_IND:TEX_IND + 1]
    # Where texture was dropped the cue shows its neutral value; tint it so a reader sees what the model got.
    cue_rgb = cue_to_rgb(cue).clone()
    cue_rgb[:, 0:1] = torch.where(tex_ind > 0.5, cue_rgb[:, 0:1], 0.35 + 0.3 * cue_rgb[:, 0:1])
    return {"hint color": color, "cue": cue_rgb}


def _label(text: str, width: int) -> np.ndarray:
    """Render `text` in a white strip of the given width (uint8 HWC)."""
    strip = np.full((_LABEL_HEIGHT, width, 3), 255, np.uint8)
    scale = 0.35
    (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    while tw > width - 2 and len(text) > 3:
        text = text[:-2] + "."
        (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(strip, text, (max(1, (width - tw) // 2), _LABEL_HEIGHT - 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def labelled_grid(columns: dict[str, Tensor], scale: int = 1, row_labels: list[str] | None = None) -> Tensor:
    """Lay out named columns of images `(B, 3, H, W)` in [0, 1] as one `(3, H', W')` grid, a label over each column."""
    if not columns:
        raise ValueError("columns must name at least one image batch")
    batches = [c.detach().float().cpu().clamp(0, 1) for c in columns.values()]
    n = batches[0].shape[0]
    h, w = batches[0].shape[-2:]
    for name, b in zip(columns, batches):
        if b.ndim != 4 or b.shape[0] != n or b.shape[1] != 3 or tuple(b.shape[-2:]) != (h, w):
            raise ValueError(f"columns[{name!r}] must have shape ({n}, 3, {h}, {w}), got {tuple(b.shape)}")
    cw, ch = w * scale, h * scale
    cell_w = max(cw, 48)
    label_w = 0 if row_labels is None else 70
    out_h = _LABEL_HEIGHT + n * (ch + _PAD) + _PAD
    out_w = label_w + len(batches) * (cell_w + _PAD) + _PAD
    canvas = np.full((out_h, out_w, 3), 255, np.uint8)
    for j, (name, b) in enumerate(zip(columns, batches)):
        x0 = label_w + _PAD + j * (cell_w + _PAD)
        canvas[:_LABEL_HEIGHT, x0:x0 + cell_w] = _label(name, cell_w)
        imgs = (b.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
        for i in range(n):
            img = imgs[i]
            if scale != 1:
                img = cv2.resize(img, (cw, ch), interpolation=cv2.INTER_NEAREST)
            y0 = _LABEL_HEIGHT + _PAD + i * (ch + _PAD)
            xo = x0 + (cell_w - cw) // 2
            canvas[y0:y0 + ch, xo:xo + cw] = img
    if row_labels is not None:
        for i, text in enumerate(row_labels[:n]):
            y0 = _LABEL_HEIGHT + _PAD + i * (ch + _PAD) + (ch - _LABEL_HEIGHT) // 2
            canvas[y0:y0 + _LABEL_HEIGHT, :label_w] = _label(text, label_w)
    return torch.from_numpy(canvas).permute(2, 0, 1).float() / 255.0


def save_png(image: Tensor, path: str | Path) -> Path:
    """Write a `(3, H, W)` image in [0, 1] as PNG atomically (temporary file, then rename); returns the path."""
    path = Path(path)
    arr = (image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return path
