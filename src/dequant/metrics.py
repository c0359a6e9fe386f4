"""Evaluation metrics (SPEC 5), each per image: `(B, 3, H, W)` or `(3, H, W)` inputs give `(B,)` float tensors.

- `l1`: mean absolute error over channels and pixels.
- `smape`: mean |p - g| / (|p| + |g| + 0.01), the authors' symmetric relative error.
- `psnr`: 10 log10(1 / MSE) for data range 1; MSE is floored at 1e-10, so identical images give 100 dB, not inf
  (keeps means and standard errors finite).
- `ssim`: SSIM (Wang et al. 2004) with an 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, data range 1,
  over the windows that fit inside the image, averaged over pixels and channels: the authors' piq `ssim` at 256 px
  and skimage's `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)` (tested).
  torchmetrics differs slightly (it also averages windows over reflect-padded borders). Inputs are centered per
  channel first so that float32 stays accurate.
- `ciede2000`: the CIEDE2000 color difference (Sharma, Wu, Dalal 2005) with kL = kC = kH = 1.
- `palette_error_ciede`: for every palette index present in the requested index map, CIEDE2000 between the
  requested palette color and the output's mean sRGB color over that region (mean taken in sRGB, then both colors
  converted to CIELab), averaged with weights = region area / image area.
- `palette_error_requantize`: output and requested image are each quantized with the same quantizer (median cut,
  N colors) independently; the two palettes are matched by a minimum-cost assignment on RGB Euclidean distance
  (colors in [0, 1]); the error is sum_i a_i ||r_i - o_m(i)||, a_i the requested image's color fractions, each
  requested color r_i paired with its assigned output color o_m(i) (when the requested palette has more colors
  than the output's, the unassigned ones take their nearest output color). 0 when both quantize alike.
  `requantize_pair` returns the two re-quantized images, the authors' exact procedure, which then scores them
  pixel-wise (`palette_l1_requant` in `compute_metrics`).
- `texture_fidelity`: Pearson correlation between the gradient magnitudes of the two images' 8-bit gray
  (`rgb_to_gray255`, `numpy.gradient`-style central differences, as the texture cues). Magnitudes ignore the sign,
  so an inverted image still scores 1. One image flat (no gradient anywhere) and the other not: 0; both flat: 1.
- `speckle`: high-frequency energy of the output where the source is flat, relative to the source's own (1 = as
  grainy as the source, > 1 speckled, < 1 smoothed); the exact definition is in its docstring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from dequant.color._checks import check_image, check_palette
from dequant.color.colorspace import rgb_to_lab
from dequant.color.cues import gray_gradients
from dequant.color.quantize import Quantized, quantize

_SMAPE_EPS = 0.01
_MSE_FLOOR = 1e-10
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03
# The T cue's default threshold (8 gray levels per pixel) on the [0, 1] scale: below it the source counts as flat.
_SPECKLE_EDGE = 8.0 / 255.0
# One 8-bit level squared: keeps a perfectly flat source finite without moving ratios of real photos.
_SPECKLE_EPS = (1.0 / 255.0) ** 2


def _pair(output: Tensor, target: Tensor, names: tuple[str, str] = ("output", "target")) -> tuple[Tensor, Tensor]:
    """Batched copies of two images of the same shape."""
    a, _ = check_image(output, names[0])
    b, _ = check_image(target, names[1])
    if a.shape != b.shape:
        raise ValueError(
            f"{names[1]} must have the shape of {names[0]} {tuple(output.shape)}, got {tuple(target.shape)}"
        )
    return a.float(), b.float()


def l1(output: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error per image, (B,)."""
    p, g = _pair(output, target)
    return (p - g).abs().flatten(1).mean(1)


def smape(output: Tensor, target: Tensor) -> Tensor:
    """Symmetric mean absolute percentage error mean(|p-g| / (|p|+|g|+0.01)) per image, (B,)."""
    p, g = _pair(output, target)
    return ((p - g).abs() / (p.abs() + g.abs() + _SMAPE_EPS)).flatten(1).mean(1)


def psnr(output: Tensor, target: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB for data range 1 per image, (B,), capped at 100 dB."""
    p, g = _pair(output, target)
    mse = (p.double() - g.double()).pow(2).flatten(1).mean(1).clamp_min(_MSE_FLOOR)
    return (-10.0 * torch.log10(mse)).float()


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return (w / w.sum()).to(device, dtype)


def ssim(output: Tensor, target: Tensor) -> Tensor:
    """Structural similarity per image, (B,): Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, data range 1."""
    p, g = _pair(output, target)
    if min(p.shape[-2:]) < _SSIM_WINDOW:
        raise ValueError(f"output must be at least {_SSIM_WINDOW}x{_SSIM_WINDOW} for SSIM, got {tuple(p.shape[-2:])}")
    b, c, h, w = p.shape
    # Shift each channel pair by a common constant: variances are shift-invariant, and E[x^2] - E[x]^2 of centered
    # data keeps float32 accurate (uncentered, a flat window gets a spurious variance that biases SSIM by ~1e-3).
    shift = (p.mean(dim=(2, 3), keepdim=True) + g.mean(dim=(2, 3), keepdim=True)) / 2
    x, y = p - shift, g - shift
    win = _gaussian_window(_SSIM_WINDOW, _SSIM_SIGMA, p.dtype, p.device)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1).reshape(b * 5 * c, 1, h, w)
    # Separable "valid" filtering: only windows fully inside the image count (as in piq and skimage).
    blurred = torch.nn.functional.conv2d(stack, win.view(1, 1, -1, 1))
    blurred = torch.nn.functional.conv2d(blurred, win.view(1, 1, 1, -1))
    mx, my, sxx, syy, sxy = blurred.reshape(b, 5, c, *blurred.shape[-2:]).unbind(1)
    var_x, var_y, cov = sxx - mx * mx, syy - my * my, sxy - mx * my
    mx, my = mx + shift, my + shift
    c1, c2 = _SSIM_K1**2, _SSIM_K2**2
    ssim_map = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1)


def ciede2000(lab1: Tensor, lab2: Tensor, channel_dim: int = -1) -> Tensor:
    """CIEDE2000 difference between CIELab colors (L, a, b along `channel_dim`, removed in the result)."""
    for name, x in (("lab1", lab1), ("lab2", lab2)):
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim == 0 or x.shape[channel_dim] != 3:
            raise ValueError(f"{name} must have 3 (L, a, b) channels along dim {channel_dim}, got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    if lab1.shape != lab2.shape:
        raise ValueError(f"lab2 must have the shape of lab1 {tuple(lab1.shape)}, got {tuple(lab2.shape)}")
    out_dtype = lab1.dtype if lab1.is_floating_point() else torch.float32
    L1, a1, b1 = lab1.double().unbind(channel_dim)
    L2, a2, b2 = lab2.double().unbind(channel_dim)
    deg = math.pi / 180.0

    c_bar = (torch.hypot(a1, b1) + torch.hypot(a2, b2)) / 2
    c7 = c_bar.pow(7)
    g = 0.5 * (1 - torch.sqrt(c7 / (c7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = torch.hypot(a1p, b1), torch.hypot(a2p, b2)
    # atan2(0, 0) is 0 in torch, which is the convention of the formula for achromatic colors.
    h1p = torch.remainder(torch.atan2(b1, a1p) / deg, 360.0)
    h2p = torch.remainder(torch.atan2(b2, a2p) / deg, 360.0)

    d_l = L2 - L1
    d_c = c2p - c1p
    chroma_prod = c1p * c2p
    dh = h2p - h1p
    dh = torch.where(dh > 180, dh - 360, torch.where(dh < -180, dh + 360, dh))
    dh = torch.where(chroma_prod == 0, torch.zeros_like(dh), dh)
    d_h = 2 * torch.sqrt(chroma_prod) * torch.sin(dh * deg / 2)

    l_bar = (L1 + L2) / 2
    cp_bar = (c1p + c2p) / 2
    h_sum = h1p + h2p
    h_bar = torch.where(
        (h1p - h2p).abs() <= 180, h_sum / 2, torch.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2)
    )
    h_bar = torch.where(chroma_prod == 0, h_sum, h_bar)
    t = (
        1
        - 0.17 * torch.cos((h_bar - 30) * deg)
        + 0.24 * torch.cos(2 * h_bar * deg)
        + 0.32 * torch.cos((3 * h_bar + 6) * deg)
        - 0.20 * torch.cos((4 * h_bar - 63) * deg)
    )
    d_theta = 30 * torch.exp(-(((h_bar - 275) / 25) ** 2))
    cp7 = cp_bar.pow(7)
    r_c = 2 * torch.sqrt(cp7 / (cp7 + 25.0**7))
    s_l = 1 + 0.015 * (l_bar - 50) ** 2 / torch.sqrt(20 + (l_bar - 50) ** 2)
    s_c = 1 + 0.045 * cp_bar
    s_h = 1 + 0.015 * cp_bar * t
    r_t = -torch.sin(2 * d_theta * deg) * r_c
    tl, tc, th = d_l / s_l, d_c / s_c, d_h / s_h
    return torch.sqrt((tl**2 + tc**2 + th**2 + r_t * tc * th).clamp_min(0)).to(out_dtype)


def _palettes_per_image(palette: Tensor | Sequence[Tensor], batch: int) -> list[Tensor]:
    if isinstance(palette, Tensor) and palette.ndim == 3:
        if palette.shape[0] != batch:
            raise ValueError(f"palette must have {batch} palettes (one per image), got shape {tuple(palette.shape)}")
        return [check_palette(p, "palette") for p in palette]
    if isinstance(palette, Tensor):
        return [check_palette(palette, "palette")] * batch
    if isinstance(palette, (list, tuple)):
        if len(palette) != batch:
            raise ValueError(f"palette must hold {batch} palettes (one per image), got {len(palette)}")
        return [check_palette(p, "palette") for p in palette]
    raise ValueError(
        f"palette must be a (K,3) or (B,K,3) tensor or a list of (K,3) tensors, got {type(palette).__name__}"
    )


def _index_per_image(index: Tensor, batch: int, hw: tuple[int, int]) -> Tensor:
    if not isinstance(index, Tensor) or index.is_floating_point() or index.dtype == torch.bool:
        raise ValueError(f"index must be an integer tensor (H, W) or (B, H, W), got {type(index).__name__}")
    if index.ndim == 2:
        index = index.unsqueeze(0).expand(batch, *index.shape)
    if index.ndim != 3 or index.shape[0] != batch or tuple(index.shape[1:]) != hw:
        raise ValueError(f"index must have shape {hw} or ({batch}, {hw[0]}, {hw[1]}), got {tuple(index.shape)}")
    return index.long()


def palette_error_ciede(output: Tensor, index: Tensor, palette: Tensor | Sequence[Tensor]) -> Tensor:
    """Area-weighted mean CIEDE2000 between each requested palette color and the output's mean color in its region."""
    out, _ = check_image(output, "output")
    b, _, h, w = out.shape
    idx = _index_per_image(index, b, (h, w))
    palettes = _palettes_per_image(palette, b)
    errors = []
    for i in range(b):
        pal = palettes[i].float().to(out.device)
        flat = idx[i].reshape(-1).to(out.device)
        if bool((flat < 0).any()) or bool((flat >= pal.shape[0]).any()):
            raise ValueError(f"index values must lie in [0, {pal.shape[0] - 1}] for palette {i}")
        counts = torch.bincount(flat, minlength=pal.shape[0]).double()
        sums = torch.zeros(pal.shape[0], 3, dtype=torch.float64, device=out.device)
        sums.index_add_(0, flat, out[i].reshape(3, -1).t().double())
        present = counts > 0
        means = (sums[present] / counts[present, None]).float()
        de = ciede2000(rgb_to_lab(means), rgb_to_lab(pal[present])).double()
        weights = counts[present] / counts.sum()
        errors.append((de * weights).sum())
    return torch.stack(errors).float()


def _n_colors_per_image(n_colors: int | Sequence[int], batch: int) -> list[int]:
    if isinstance(n_colors, (int, np.integer)) and not isinstance(n_colors, bool):
        return [int(n_colors)] * batch
    if isinstance(n_colors, (list, tuple)) and len(n_colors) == batch:
        return [int(n) for n in n_colors]
    raise ValueError(f"n_colors must be an int or a list of {batch} ints, got {n_colors!r}")


def _requantized(output: Tensor, requested: Tensor, n_colors: int | Sequence[int]) -> list[tuple[Quantized, Quantized]]:
    """Median-cut quantizations (output, requested) per image, each with its own N-color palette."""
    out, req = _pair(output, requested, ("output", "requested"))
    ns = _n_colors_per_image(n_colors, out.shape[0])
    return [(quantize(o, n), quantize(r, n)) for o, r, n in zip(out, req, ns)]


def _matched_palette_error(q_out: Quantized, q_req: Quantized) -> float:
    """sum_i a_i ||r_i - o_m(i)|| over the requested colors, m a minimum-cost assignment (nearest for leftovers)."""
    po, pr = q_out.palette.detach().cpu().double(), q_req.palette.detach().cpu().double()
    a = q_req.fractions.detach().cpu().double().numpy()
    a = a / a.sum()
    dist = torch.cdist(pr, po).numpy()
    rows, cols = linear_sum_assignment(dist)
    matched = np.full(pr.shape[0], -1, dtype=np.int64)
    matched[rows] = cols
    # Requested colors left over when the output has fewer colors take their nearest output color.
    left = matched < 0
    matched[left] = np.argmin(dist[left], axis=1)
    return float((a * dist[np.arange(pr.shape[0]), matched]).sum())


def requantize_pair(output: Tensor, requested: Tensor, n_colors: int | Sequence[int]) -> tuple[Tensor, Tensor]:
    """Quantize output and requested image independently (median cut, N colors): the authors' palette-error inputs."""
    pairs = _requantized(output, requested, n_colors)
    return torch.stack([qo.image for qo, _ in pairs]).float(), torch.stack([qr.image for _, qr in pairs]).float()


def palette_error_requantize(output: Tensor, requested: Tensor, n_colors: int | Sequence[int]) -> Tensor:
    """Fraction-weighted RGB distance between the matched median-cut palettes of output and requested image, (B,)."""
    pairs = _requantized(output, requested, n_colors)
    errors = [_matched_palette_error(qo, qr) for qo, qr in pairs]
    return torch.tensor(errors, dtype=torch.float32, device=output.device)


def _gradient_magnitude(image: Tensor) -> Tensor:
    """Gradient magnitude (B, H*W) of the 8-bit gray of a batched RGB image, on the 0-255 scale."""
    # The same central differences as the texture cues (gray values are integers, so float32 is exact here).
    g = gray_gradients(image).double()
    return torch.hypot(g[:, 0], g[:, 1]).flatten(1)


def texture_fidelity(output: Tensor, source: Tensor) -> Tensor:
    """Pearson correlation of the gray gradient magnitudes of output and source per image, (B,)."""
    out, src = _pair(output, source, ("output", "source"))
    go, gs = _gradient_magnitude(out), _gradient_magnitude(src)
    go = go - go.mean(1, keepdim=True)
    gs = gs - gs.mean(1, keepdim=True)
    so, ss = go.norm(dim=1), gs.norm(dim=1)
    # Magnitudes are multiples of 0.5 * luma weights, so a "flat" image has exactly zero spread up to rounding.
    flat_o, flat_s = so < 1e-9, ss < 1e-9
    corr = (go * gs).sum(1) / (so * ss).clamp_min(1e-300)
    corr = torch.where(flat_o | flat_s, torch.where(flat_o & flat_s, 1.0, 0.0).double(), corr)
    return corr.clamp(-1, 1).float()


def _laplacian_energy(image: Tensor) -> Tensor:
    """Sum over RGB of the squared 5-point Laplacian at the interior pixels, (B, H-2, W-2)."""
    x = image.double()
    c = x[..., 1:-1, 1:-1]
    lap = x[..., :-2, 1:-1] + x[..., 2:, 1:-1] + x[..., 1:-1, :-2] + x[..., 1:-1, 2:] - 4 * c
    return lap.pow(2).sum(1)


def _flat_mask(source: Tensor) -> Tensor:
    """Interior pixels (B, H-2, W-2) with no source edge (RGB gradient above the T threshold) within one pixel."""
    s = source.double()
    gx = (s[..., 1:-1, 2:] - s[..., 1:-1, :-2]) / 2
    gy = (s[..., 2:, 1:-1] - s[..., :-2, 1:-1]) / 2
    edges = (torch.hypot(gx, gy).amax(1) > _SPECKLE_EDGE).double()
    # Dilated by one pixel: the 3x3 Laplacian next to an edge sees the edge's step, not grain.
    near = torch.nn.functional.max_pool2d(edges[:, None], 3, stride=1, padding=1)[:, 0]
    return near == 0


def speckle(output: Tensor, source: Tensor) -> Tensor:
    """High-frequency energy of `output` where `source` is flat, over the source's own, per image (B,).

    Definition, on images in [0, 1] at their interior pixels (the 1-pixel border is left out):
    - energy E(y) at a pixel: the 5-point Laplacian y(up) + y(down) + y(left) + y(right) - 4 y, squared and summed
      over R, G and B;
    - flat region F of the source: pixels where no pixel of their 3x3 neighbourhood is an edge, an edge being a
      pixel where the largest RGB channel gradient magnitude (central differences, hypot of x and y) exceeds
      8/255 (the T cue's threshold); if an image has no such pixel, F is all interior pixels;
    - speckle = (mean_F E(output) + eps) / (mean_F E(source) + eps), eps = (1/255)^2.
    1 means as grainy as the source (the source against itself is exactly 1), above 1 speckled (diffusion noise
    left in flat areas; quantization contours in smooth gradients count too), below 1 smoother than the source.
    Needs at least 3x3 pixels.
    """
    out, src = _pair(output, source, ("output", "source"))
    if min(out.shape[-2:]) < 3:
        raise ValueError(f"output must be at least 3x3 for speckle, got {tuple(out.shape[-2:])}")
    flat = _flat_mask(src)
    flat = torch.where(flat.flatten(1).any(1)[:, None, None], flat, torch.ones_like(flat))
    weight = flat.double() / flat.flatten(1).sum(1).double()[:, None, None]
    e_out = (_laplacian_energy(out) * weight).flatten(1).sum(1)
    e_src = (_laplacian_energy(src) * weight).flatten(1).sum(1)
    return ((e_out + _SPECKLE_EPS) / (e_src + _SPECKLE_EPS)).float()


def mean_sem(values: Tensor | np.ndarray | Sequence[float]) -> tuple[float, float]:
    """Mean and standard error std(ddof=1)/sqrt(n) of a 1-D set of values (sem 0 for a single value)."""
    v = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("values must hold at least one value, got none")
    if not np.isfinite(v).all():
        raise ValueError("values contains NaN or infinite values")
    if v.size == 1:
        return float(v[0]), 0.0
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.size))


def compute_metrics(
    output: Tensor,
    target: Tensor | None = None,
    *,
    requested_index: Tensor | None = None,
    requested_palette: Tensor | Sequence[Tensor] | None = None,
    source: Tensor | None = None,
    n_colors: int | Sequence[int] | None = None,
    requested_image: Tensor | None = None,
) -> dict[str, Tensor]:
    """Every metric the inputs allow, each a (B,) tensor.

    target -> l1, smape, psnr, ssim; requested_index + requested_palette -> palette_de2000; n_colors with the
    requested image (given, or palette[index]) -> palette_err_requant and palette_l1_requant (the authors' L1
    between the two re-quantized images); source -> texture_corr and speckle (source needs at least 3x3 pixels).
    """
    out, _ = check_image(output, "output")
    b = out.shape[0]
    metrics: dict[str, Tensor] = {}
    if target is not None:
        metrics["l1"] = l1(output, target)
        metrics["smape"] = smape(output, target)
        metrics["psnr"] = psnr(output, target)
        metrics["ssim"] = ssim(output, target)
    if (requested_index is None) != (requested_palette is None):
        raise ValueError("requested_index and requested_palette must be given together")
    if requested_index is not None:
        metrics["palette_de2000"] = palette_error_ciede(output, requested_index, requested_palette)
        if requested_image is None:
            idx = _index_per_image(requested_index, b, tuple(out.shape[-2:]))
            pals = _palettes_per_image(requested_palette, b)
            requested_image = torch.stack([p.float()[i].permute(2, 0, 1) for p, i in zip(pals, idx)])
    if n_colors is not None and requested_image is not None:
        req, _ = check_image(requested_image, "requested_image")
        if req.shape[0] == 1 and b > 1:  # one requested image shared by the whole batch
            req = req.expand(b, *req.shape[1:])
        pairs = _requantized(out, req, n_colors)
        errors = [_matched_palette_error(qo, qr) for qo, qr in pairs]
        metrics["palette_err_requant"] = torch.tensor(errors, dtype=torch.float32, device=out.device)
        metrics["palette_l1_requant"] = l1(
            torch.stack([qo.image for qo, _ in pairs]).float(), torch.stack([qr.image for _, qr in pairs]).float()
        )
    if source is not None:
        metrics["texture_corr"] = texture_fidelity(output, source)
        metrics["speckle"] = speckle(output, source)
    return metrics
