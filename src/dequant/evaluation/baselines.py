"""Classical baselines beside the model (SPEC 5), on `(3,H,W)` / `(B,3,H,W)` images in [0, 1], same shape out.

- `quantized_input`: the requested (quantized) color image itself.
- `bilateral_smooth`: OpenCV's bilateral filter (not a guided filter) on the float32 image, sigma_color in [0, 1]
  intensity units, sigma_space in pixels.
- `luminance_swap`: CIELab L from the source, a and b from the quantized image (the classical answer to `L` mode).
- `reinhard_transfer`: Reinhard et al. 2001 per-channel mean/std matching, in CIELab by default (`space="rgb"`
  optional; the original paper used l-alpha-beta).
- `ot_transfer`: optimal-transport color transfer with POT (`ot.da.EMDTransport`, or Sinkhorn), fitted on pixel
  samples in RGB; pixels outside the sample move like their nearest sampled pixel (POT's out-of-sample rule, done
  here with a k-d tree).

`BASELINES` maps a name to a callable `(requested, source) -> output`: every baseline seen as "turn the requested
color image (quantized / edited) into an output, possibly using the source for texture or statistics".
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from dequant.color._checks import check_choice, check_image, check_palette
from dequant.color.colorspace import lab_to_rgb, rgb_to_lab

REINHARD_SPACES = ("lab", "rgb")
OT_METHODS = ("emd", "sinkhorn")


def _restore_shape(batch: Tensor, was_batched: bool) -> Tensor:
    return batch if was_batched else batch[0]


def _check_same(a: Tensor, b: Tensor, names: tuple[str, str]) -> tuple[Tensor, Tensor, bool]:
    x, was_batched = check_image(a, names[0])
    y, _ = check_image(b, names[1])
    if x.shape != y.shape:
        raise ValueError(f"{names[1]} must have the shape of {names[0]} {tuple(a.shape)}, got {tuple(b.shape)}")
    return x.float(), y.float(), was_batched


def _targets(target: Tensor, batch: int, name: str) -> list[Tensor]:
    """Per-image target color sets (N, 3): a palette (K,3), one image for all, or one image per source image."""
    if isinstance(target, Tensor) and target.ndim == 2:
        return [check_palette(target, name).float()] * batch
    t, _ = check_image(target, name)
    if t.shape[0] not in (1, batch):
        raise ValueError(f"{name} must hold 1 or {batch} images, got {t.shape[0]}")
    pixels = [img.reshape(3, -1).t().float() for img in t]
    return pixels * batch if len(pixels) == 1 else pixels


def quantized_input(quantized_image: Tensor) -> Tensor:
    """The trivial baseline: the quantized (requested) color image, unchanged."""
    x, _ = check_image(quantized_image, "quantized_image")
    return x.reshape(quantized_image.shape).clone()


def bilateral_smooth(image: Tensor, d: int = 9, sigma_color: float = 0.1, sigma_space: float = 5.0) -> Tensor:
    """Edge-preserving smoothing with cv2.bilateralFilter (diameter d, sigmas in [0,1] units and pixels)."""
    x, was_batched = check_image(image, "image")
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d must be a positive int (filter diameter in pixels), got {d!r}")
    for name, v in (("sigma_color", sigma_color), ("sigma_space", sigma_space)):
        if not np.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a positive number, got {v!r}")
    out = []
    for img in x:
        hwc = np.ascontiguousarray(img.permute(1, 2, 0).cpu().numpy().astype(np.float32))
        out.append(torch.from_numpy(cv2.bilateralFilter(hwc, int(d), float(sigma_color), float(sigma_space))))
    res = torch.stack(out).permute(0, 3, 1, 2).clamp(0, 1).to(image.device, image.dtype)
    return _restore_shape(res, was_batched)


def luminance_swap(quantized: Tensor, source: Tensor) -> Tensor:
    """CIELab recombination: L of `source`, a and b of `quantized`, back to sRGB clipped to [0, 1]."""
    q, s, was_batched = _check_same(quantized, source, ("quantized", "source"))
    lab_q, lab_s = rgb_to_lab(q), rgb_to_lab(s)
    out = lab_to_rgb(torch.cat([lab_s[:, :1], lab_q[:, 1:]], dim=1)).clamp(0, 1)
    return _restore_shape(out.to(quantized.dtype), was_batched)


def reinhard_transfer(source: Tensor, target_palette_or_image: Tensor, space: str = "lab") -> Tensor:
    """Reinhard color transfer: match each channel's mean and std of `source` to the target's, in `space`.

    The target is an image (one for all or one per source image) or a palette (K,3), whose colors then count
    equally.
    """
    check_choice(space, REINHARD_SPACES, "space")
    x, was_batched = check_image(source, "source")
    targets = _targets(target_palette_or_image, x.shape[0], "target_palette_or_image")
    out = []
    for img, tgt in zip(x.float(), targets):
        feats = rgb_to_lab(img) if space == "lab" else img
        tgt = tgt.to(img.device)
        t = rgb_to_lab(tgt) if space == "lab" else tgt  # (N, 3)
        f = feats.reshape(3, -1).double()
        mu_s, sd_s = f.mean(1), f.std(1, unbiased=False)
        mu_t, sd_t = t.double().mean(0), t.double().std(0, unbiased=False)
        # A flat source channel has nothing to scale: it just moves to the target mean.
        scale = torch.where(sd_s > 1e-8, sd_t / sd_s.clamp_min(1e-8), torch.ones_like(sd_s))
        moved = ((f - mu_s[:, None]) * scale[:, None] + mu_t[:, None]).float().reshape(feats.shape)
        out.append(lab_to_rgb(moved) if space == "lab" else moved)
    res = torch.stack(out).clamp(0, 1).to(source.dtype)
    return _restore_shape(res, was_batched)


def _sample_rows(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """All rows if there are at most n, else n rows drawn without replacement."""
    if x.shape[0] <= n:
        return x
    return x[rng.choice(x.shape[0], size=n, replace=False)]


def ot_transfer(
    source: Tensor,
    target: Tensor,
    n_samples: int = 2000,
    seed: int = 0,
    method: str = "emd",
    reg: float = 0.01,
    max_iter: int = 10_000_000,
) -> Tensor:
    """Optimal-transport color transfer in RGB (POT EMD or Sinkhorn transport fitted on pixel samples), seeded.

    Every image draws its samples from a fresh numpy.random.default_rng(seed), so an image's result does not depend
    on the batch it comes in. `max_iter` bounds the EMD network simplex (POT's default, 100000, stops short of the
    optimum on quantized images, whose many identical colors make the problem degenerate).
    """
    import ot  # deferred: POT is only needed by this baseline

    check_choice(method, OT_METHODS, "method")
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if not np.isfinite(reg) or reg <= 0:
        raise ValueError(f"reg must be a positive number, got {reg!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    x, was_batched = check_image(source, "source")
    targets = _targets(target, x.shape[0], "target")
    out = []
    for img, tgt in zip(x, targets):
        rng = np.random.default_rng(int(seed))
        pixels = img.reshape(3, -1).t().double().cpu().numpy()
        xs = _sample_rows(pixels, int(n_samples), rng)
        xt = _sample_rows(tgt.double().cpu().numpy(), int(n_samples), rng)
        if method == "emd":
            model = ot.da.EMDTransport(max_iter=int(max_iter))
        else:
            model = ot.da.SinkhornTransport(reg_e=float(reg))
        model.fit(Xs=xs, Xt=xt)
        # POT's out-of-sample rule (a pixel moves like its nearest sample) with a k-d tree: POT's own batched
        # search takes ~15 s for a 256x256 image, this well under a second.
        shift = np.asarray(model.transform(Xs=xs)) - xs
        if xs is pixels:  # every pixel was a sample: its own barycentric image
            moved = pixels + shift
        else:
            _, nearest = cKDTree(xs).query(pixels, k=1)
            moved = pixels + shift[nearest]
        out.append(torch.from_numpy(moved).t().reshape(img.shape))
    res = torch.stack(out).clamp(0, 1).to(source.device, source.dtype)
    return _restore_shape(res, was_batched)


BASELINES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "quantized": lambda requested, source: quantized_input(requested),
    "bilateral": lambda requested, source: bilateral_smooth(requested),
    "luminance_swap": lambda requested, source: luminance_swap(requested, source),
    "reinhard": lambda requested, source: reinhard_transfer(source, requested),
    "ot": lambda requested, source: ot_transfer(source, requested),
}
