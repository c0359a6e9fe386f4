"""Palette transfer by weighted bipartite matching (SPEC 3): scores, assignment, colormaps, hex palettes, transfer.

Distances: in `space="rgb"` Euclidean distance between colors in [0, 1] (at most sqrt(3)), as the authors do; in
`space="lab"` the CIELab (CIE76) distance divided by 100, so that both spaces give distances of order 1 and the
exponential scores keep a comparable dynamic range.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from dequant.color._checks import check_choice, check_palette
from dequant.color.colorspace import rgb_to_lab
from dequant.color.quantize import Quantized

SCORES = ("color", "neg", "freq", "int", "cmap")
SPACES = ("rgb", "lab")

# CIELab distances are ~100x larger than RGB ones in [0, 1]; this keeps exp(-d) away from underflow.
_LAB_SCALE = 100.0
_HEX_RE = re.compile(r"^#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})$")


def _as_palette(x: Tensor | np.ndarray, name: str) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    # The assignment runs in scipy, so scores live on the CPU whatever device the palettes come from.
    return check_palette(x, name).detach().cpu().double()


def _as_fractions(x: Tensor | np.ndarray | Sequence[float] | None, k: int, name: str) -> Tensor | None:
    if x is None:
        return None
    f = x.detach().cpu().double() if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float64))
    if f.ndim != 1 or f.shape[0] != k:
        raise ValueError(f"{name} must have shape ({k},) to match its palette, got {tuple(f.shape)}")
    if not torch.isfinite(f).all() or bool((f < 0).any()):
        raise ValueError(f"{name} must be finite and non-negative")
    return f


def _distances(source: Tensor, target: Tensor, space: str) -> Tensor:
    """Pairwise color distances (Ks, Kt) in the chosen space (see module docstring for the scale)."""
    check_choice(space, SPACES, "space")
    if space == "lab":
        return torch.cdist(rgb_to_lab(source.float()).double(), rgb_to_lab(target.float()).double()) / _LAB_SCALE
    return torch.cdist(source, target)


def score_matrix(
    source: Tensor,
    target: Tensor,
    score: str = "color",
    source_fractions: Tensor | np.ndarray | Sequence[float] | None = None,
    target_fractions: Tensor | np.ndarray | Sequence[float] | None = None,
    space: str = "rgb",
    weight_by_area: bool = False,
) -> Tensor:
    """Pairwise matching scores (Ks, Kt) float64 for source/target palettes; higher is a better match.

    `int` compares sum(R, G, B) in RGB and the lightness L / 100 in Lab (a channel sum of Lab means nothing).
    `weight_by_area=True` multiplies row i by the source fraction a_i, so that the assignment favors getting the
    large source regions right (needs `source_fractions`).
    """
    check_choice(score, SCORES, "score")
    check_choice(space, SPACES, "space")
    s = _as_palette(source, "source")
    t = _as_palette(target, "target")
    a = _as_fractions(source_fractions, s.shape[0], "source_fractions")
    b = _as_fractions(target_fractions, t.shape[0], "target_fractions")
    if score in ("color", "cmap"):
        scores = torch.exp(-_distances(s, t, space))
    elif score == "neg":
        scores = torch.exp(_distances(s, t, space))
    elif score == "freq":
        if a is None or b is None:
            raise ValueError("score='freq' needs both source_fractions and target_fractions")
        scores = torch.exp(-(a[:, None] - b[None, :]).abs())
    else:  # "int": intensity only; in Lab the lightness L/100 plays the role of the channel sum
        if space == "lab":
            ls = rgb_to_lab(s.float()).double()[:, 0] / _LAB_SCALE
            lt = rgb_to_lab(t.float()).double()[:, 0] / _LAB_SCALE
        else:
            ls, lt = s.sum(dim=1), t.sum(dim=1)
        scores = torch.exp(-(ls[:, None] - lt[None, :]).abs())
    if weight_by_area:
        if a is None:
            raise ValueError("weight_by_area=True needs source_fractions")
        scores = scores * a[:, None]
    return scores


def match_palettes(
    source: Tensor,
    target: Tensor,
    score: str = "color",
    source_fractions: Tensor | np.ndarray | Sequence[float] | None = None,
    target_fractions: Tensor | np.ndarray | Sequence[float] | None = None,
    space: str = "rgb",
    weight_by_area: bool = False,
) -> Tensor:
    """Map every source color to a target color index (Ks,) int64 by a maximum-score linear assignment.

    Ks <= Kt: a rectangular assignment (distinct targets, total score maximal). Ks > Kt: Kt source colors are
    assigned optimally (every target used once); each remaining source color then takes its nearest matched target
    by color distance in `space`, whatever the score (SPEC 3), so even `neg` extends with the nearest color.
    """
    scores = score_matrix(source, target, score, source_fractions, target_fractions, space, weight_by_area)
    rows, cols = linear_sum_assignment(scores.numpy(), maximize=True)
    ks = scores.shape[0]
    mapping = np.full(ks, -1, dtype=np.int64)
    mapping[rows] = cols
    unmatched = np.flatnonzero(mapping < 0)
    if unmatched.size:
        used = np.unique(cols)
        dist = _distances(_as_palette(source, "source"), _as_palette(target, "target"), space).numpy()
        sub = dist[np.ix_(unmatched, used)]
        mapping[unmatched] = used[np.argmin(sub, axis=1)]
    return torch.from_numpy(mapping)


def colormap_palette(name: str, n: int) -> Tensor:
    """A palette (n, 3) float32 of matplotlib colormap `name` sampled evenly at (i + 0.5) / n."""
    import matplotlib  # deferred: importing matplotlib costs time that most callers of this module never need

    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if name not in matplotlib.colormaps:
        raise ValueError(f"name must be a matplotlib colormap, got unknown colormap {name!r}")
    cmap = matplotlib.colormaps[name]
    rgba = cmap((np.arange(n) + 0.5) / n)
    return torch.from_numpy(np.asarray(rgba)[:, :3].astype(np.float32))


def palette_from_hex(colors: str | Sequence[str]) -> Tensor:
    """Parse '#264653,#2a9d8f' (or a list of such strings; '#' optional, 3 or 6 digits) into a (K, 3) palette."""
    if isinstance(colors, str):
        entries = [c.strip() for c in colors.split(",")]
    else:
        entries = [str(c).strip() for c in colors]
    if not entries or entries == [""]:
        raise ValueError("colors must contain at least one hex color, got none")
    rows = []
    for entry in entries:
        m = _HEX_RE.match(entry)
        if m is None:
            raise ValueError(f"colors: malformed hex color {entry!r} (expected #RRGGBB or #RGB)")
        digits = m.group(1)
        if len(digits) == 3:
            digits = "".join(ch * 2 for ch in digits)
        rows.append([int(digits[i : i + 2], 16) / 255.0 for i in (0, 2, 4)])
    return torch.tensor(rows, dtype=torch.float32)


def transfer(
    quantized: Quantized, target_palette: Tensor, mapping: Tensor | np.ndarray, blend: float = 1.0
) -> Quantized:
    """Recolor a quantized image: color i becomes blend * target[mapping[i]] + (1 - blend) * source[i]; index kept."""
    if not isinstance(quantized, Quantized):
        raise ValueError(f"quantized must be a Quantized, got {type(quantized).__name__}")
    if not np.isfinite(blend) or not 0.0 <= float(blend) <= 1.0:
        raise ValueError(f"blend must be in [0, 1], got {blend!r}")
    src = quantized.palette.float()
    target = check_palette(torch.as_tensor(target_palette), "target_palette").float().to(src.device)
    m = torch.as_tensor(np.asarray(mapping) if not isinstance(mapping, Tensor) else mapping).to(src.device)
    if m.ndim != 1 or m.shape[0] != src.shape[0] or m.is_floating_point() or m.dtype == torch.bool:
        raise ValueError(
            f"mapping must be an integer tensor of shape ({src.shape[0]},), got {tuple(m.shape)} {m.dtype}"
        )
    if bool((m < 0).any()) or bool((m >= target.shape[0]).any()):
        raise ValueError(f"mapping values must index target_palette (0..{target.shape[0] - 1})")
    new = float(blend) * target[m.long()] + (1.0 - float(blend)) * src
    return Quantized(palette=new.clamp(0, 1).to(quantized.palette.dtype), index=quantized.index.clone(),
                     fractions=quantized.fractions.clone())
