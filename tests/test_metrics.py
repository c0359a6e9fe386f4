"""Metrics against hand-computed values on crafted images, CIEDE2000 against skimage and Sharma's table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.color import deltaE_ciede2000

from dequant.color.colorspace import rgb_to_lab
from dequant.metrics import (
    ciede2000,
    compute_metrics,
    l1,
    mean_sem,
    palette_error_ciede,
    palette_error_requantize,
    psnr,
    requantize_pair,
    smape,
    speckle,
    ssim,
    texture_fidelity,
)


def _const(value: float | tuple[float, float, float], b: int = 2, size: int = 16) -> torch.Tensor:
    v = torch.tensor(value, dtype=torch.float32).reshape(-1, 1, 1).expand(3, size, size)
    return v.unsqueeze(0).repeat(b, 1, 1, 1).contiguous()


def _noise(seed: int, shape: tuple[int, ...] = (3, 32, 32)) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_pixel_metrics_on_constant_images() -> None:
    p, g = _const(0.25), _const(0.75)
    assert torch.allclose(l1(p, g), torch.tensor([0.5, 0.5]))
    assert torch.allclose(smape(p, g), torch.full((2,), 0.5 / 1.01))
    assert torch.allclose(psnr(p, g), torch.full((2,), -10 * math.log10(0.25)), atol=1e-5)
    assert torch.allclose(psnr(p, p), torch.full((2,), 100.0))
    c1 = 0.01**2
    expected_ssim = (2 * 0.25 * 0.75 + c1) / (0.25**2 + 0.75**2 + c1)  # flat images: only the luminance term
    assert torch.allclose(ssim(p, g), torch.full((2,), expected_ssim), atol=1e-5)
    assert torch.allclose(ssim(p, p), torch.ones(2), atol=1e-6)
    # Unbatched input gives a (1,) result.
    assert l1(p[0], g[0]).shape == (1,)


def test_pixel_metrics_per_image_and_smape_formula() -> None:
    p, g = _noise(0, (3, 3, 16, 16)), _noise(1, (3, 3, 16, 16))
    expected = ((p - g).abs() / (p.abs() + g.abs() + 0.01)).mean(dim=(1, 2, 3))
    assert torch.allclose(smape(p, g), expected)
    assert torch.allclose(l1(p, g), (p - g).abs().mean(dim=(1, 2, 3)))
    mse = ((p - g) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(psnr(p, g), 10 * torch.log10(1 / mse), atol=1e-4)
    s = ssim(p, g)
    assert s.shape == (3,)
    assert torch.allclose(s[1:2], ssim(p[1], g[1]))  # per image, independent of the batch
    assert float(s.abs().max()) < 0.2  # independent noise


def test_ssim_matches_skimage() -> None:
    from skimage.metrics import structural_similarity

    p, g = _noise(2, (2, 3, 24, 20)), _noise(3, (2, 3, 24, 20))
    g = 0.7 * p + 0.3 * g  # correlated, so that all three SSIM terms matter
    ours = ssim(p, g)
    assert ours.dtype == torch.float32
    for i in range(2):
        ref = structural_similarity(
            p[i].double().numpy(), g[i].double().numpy(), data_range=1.0, channel_axis=0,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        )
        assert ours[i].item() == pytest.approx(ref, abs=1e-5)


def test_sharma_table_values() -> None:
    lab1 = torch.tensor([[50, 2.6772, -79.7751], [50, 0, 0], [50, 2.5, 0], [50, -1.3802, -84.2814],
                         [60.2574, -34.0099, 36.2677]], dtype=torch.float64)
    lab2 = torch.tensor([[50, 0, -82.7485], [50, -1, 2], [73, 25, -18], [50, 0, -82.7485],
                         [60.4626, -34.1751, 39.4387]], dtype=torch.float64)
    expected = torch.tensor([2.0425, 2.3669, 27.1492, 1.0000, 1.2644], dtype=torch.float64)
    assert torch.allclose(ciede2000(lab1, lab2), expected, atol=1e-4)


def test_ciede2000_matches_skimage_on_random_pairs() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    lab1 = np.stack([rng.uniform(0, 100, n), rng.uniform(-110, 110, n), rng.uniform(-110, 110, n)], axis=1)
    lab2 = np.stack([rng.uniform(0, 100, n), rng.uniform(-110, 110, n), rng.uniform(-110, 110, n)], axis=1)
    # Close pairs, achromatic colors and hue differences near 180 degrees exercise the formula's branches.
    lab2[:500] = lab1[:500] + rng.normal(0, 2, (500, 3))
    lab1[500:600, 1:] = 0
    # Near (not exactly: CIEDE2000 jumps there and rounding picks a side) opposite hues.
    lab2[600:700, 1:] = -lab1[600:700, 1:] + rng.normal(0, 0.5, (100, 2))
    ours = ciede2000(torch.from_numpy(lab1), torch.from_numpy(lab2)).numpy()
    assert np.allclose(ours, deltaE_ciede2000(lab1, lab2), atol=1e-8)
    assert np.allclose(ciede2000(torch.from_numpy(lab2), torch.from_numpy(lab1)).numpy(), ours, atol=1e-8)
    assert float(ciede2000(torch.from_numpy(lab1), torch.from_numpy(lab1)).abs().max()) == 0.0


def test_ciede2000_on_images_with_channel_dim() -> None:
    a, b = rgb_to_lab(_noise(0, (2, 3, 8, 8))), rgb_to_lab(_noise(1, (2, 3, 8, 8)))
    img = ciede2000(a, b, channel_dim=1)
    assert img.shape == (2, 8, 8)
    flat = ciede2000(a.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1))
    assert torch.allclose(img, flat)


def _two_region_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Index map with color 0 on the top 3/4 and color 1 on the bottom 1/4 of a 16x16 image, and its palette."""
    index = torch.zeros(16, 16, dtype=torch.int64)
    index[12:] = 1
    palette = torch.tensor([[40, 80, 200], [220, 120, 20]], dtype=torch.float32) / 255.0
    return index, palette


def test_palette_error_ciede_zero_when_output_is_requested() -> None:
    index, palette = _two_region_case()
    requested = palette[index].permute(2, 0, 1)
    assert torch.allclose(palette_error_ciede(requested, index, palette), torch.zeros(1), atol=1e-4)


def test_palette_error_ciede_known_shift_and_area_weights() -> None:
    index, palette = _two_region_case()
    shifted = palette.clone()
    shifted[1] = torch.tensor([200, 140, 60]) / 255.0
    output = shifted[index].permute(2, 0, 1)
    de = deltaE_ciede2000(rgb_to_lab(shifted[1:]).double().numpy(), rgb_to_lab(palette[1:]).double().numpy())[0]
    err = palette_error_ciede(output, index, palette)
    assert err.item() == pytest.approx(0.25 * de, rel=1e-4)
    # The region mean, not the pixels, is compared: zero-mean noise inside a region leaves the error unchanged.
    noisy = output.clone()
    noisy[:, :12, 0::2] += 0.05
    noisy[:, :12, 1::2] -= 0.05
    assert palette_error_ciede(noisy, index, palette).item() == pytest.approx(err.item(), abs=1e-3)


def test_palette_error_ciede_batched_forms() -> None:
    index, palette = _two_region_case()
    requested = palette[index].permute(2, 0, 1)
    outputs = torch.stack([requested, 1 - requested])
    shared = palette_error_ciede(outputs, index, palette)
    assert shared.shape == (2,) and shared[0] < 1e-3 < shared[1]
    stacked = palette_error_ciede(outputs, index.expand(2, 16, 16), torch.stack([palette, palette]))
    listed = palette_error_ciede(outputs, index, [palette, palette])
    assert torch.allclose(shared, stacked) and torch.allclose(shared, listed)
    # Palette entries absent from the index map do not count.
    bigger = torch.cat([palette, torch.tensor([[0.0, 1.0, 0.0]])])
    assert torch.allclose(palette_error_ciede(outputs, index, bigger), shared)


def test_palette_error_requantize_known_values() -> None:
    index, palette = _two_region_case()
    requested = palette[index].permute(2, 0, 1)
    assert palette_error_requantize(requested, requested, 2).item() == pytest.approx(0.0, abs=1e-7)
    assert palette_error_requantize(requested, requested, 16).item() == pytest.approx(0.0, abs=1e-7)
    moved = palette.clone()
    moved[1] = torch.tensor([200, 140, 60]) / 255.0
    output = moved[index].permute(2, 0, 1)
    expected = 0.25 * float(torch.linalg.vector_norm(moved[1] - palette[1]))
    assert palette_error_requantize(output, requested, 2).item() == pytest.approx(expected, rel=1e-5)
    # A flat output has one color: both requested colors are compared with it (the leftover by nearest).
    gray = torch.full((3, 16, 16), 128 / 255.0)
    d = torch.linalg.vector_norm(palette - 128 / 255.0, dim=1)
    expected_flat = float(0.75 * d[0] + 0.25 * d[1])
    assert palette_error_requantize(gray, requested, 2).item() == pytest.approx(expected_flat, rel=1e-5)
    q_out, q_req = requantize_pair(output, requested, 2)
    assert torch.allclose(q_out, output, atol=1e-6) and torch.allclose(q_req, requested, atol=1e-6)


def test_texture_fidelity_cases() -> None:
    x = _noise(0)
    assert texture_fidelity(x, x).item() == pytest.approx(1.0, abs=1e-6)
    # Gradient magnitudes ignore the sign: an inverted image keeps its texture.
    assert texture_fidelity(1 - x, x).item() > 0.99
    assert texture_fidelity(x * 0.5 + 0.2, x).item() > 0.97
    assert abs(texture_fidelity(_noise(1), x).item()) < 0.2
    flat = torch.full((3, 32, 32), 0.4)
    assert texture_fidelity(flat, x).item() == 0.0
    assert texture_fidelity(flat, torch.full((3, 32, 32), 0.7)).item() == 1.0
    # A smooth version keeps the edges of a step image but a shifted step does not.
    step = torch.zeros(3, 32, 32)
    step[:, :, 16:] = 1.0
    shifted = torch.zeros(3, 32, 32)
    shifted[:, :, 8:] = 1.0
    assert texture_fidelity(shifted, step).item() < 0.0
    batch = texture_fidelity(torch.stack([x, _noise(1)]), torch.stack([x, x]))
    assert batch.shape == (2,) and batch[0] > 0.99 > batch[1]


def _grainy_ramp(b: int = 2, size: int = 32) -> torch.Tensor:
    """A smooth color ramp with faint grain (flat by the speckle edge threshold everywhere) and one sharp edge."""
    ramp = torch.linspace(0.2, 0.6, size).view(1, 1, 1, size).expand(b, 3, size, size).clone()
    ramp[:, 1] = 0.5
    grain = 0.004 * torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(3))
    image = ramp + grain
    image[:, :, :, 24:] += 0.3  # an edge: excluded from the flat region with its dilation
    return image.clamp(0, 1)


def test_speckle_source_noise_and_blur() -> None:
    src = _grainy_ramp()
    assert speckle(src, src).tolist() == [1.0, 1.0]
    noisy = (src + 0.03 * torch.randn(src.shape, generator=torch.Generator().manual_seed(4))).clamp(0, 1)
    assert torch.all(speckle(noisy, src) > 5)
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(src, (1, 1, 1, 1), mode="replicate"), 3, 1)
    assert torch.all(speckle(blurred, src) < 0.5)
    # The edge itself is not grain: sharpening only the edge's neighbourhood leaves the score at 1.
    moved = src.clone()
    moved[:, :, :, 23:25] = src[:, :, :, 23:25] * 0.5
    assert speckle(moved, src) == pytest.approx(torch.ones(2), abs=1e-6)
    out = speckle(noisy[0], src[0])
    assert out.shape == (1,) and out.dtype == torch.float32


def test_speckle_flat_source_and_no_flat_pixel() -> None:
    flat = torch.full((1, 3, 16, 16), 0.5)
    assert speckle(flat, flat).item() == 1.0
    # A perfectly flat source does not divide by zero: noise on it scores far above 1.
    assert speckle((flat + 0.05 * torch.randn(1, 3, 16, 16)).clamp(0, 1), flat).item() > 100
    # A checkerboard has no flat pixel: every interior pixel counts.
    board = ((torch.arange(16).view(-1, 1) + torch.arange(16)) % 2).float().expand(1, 3, 16, 16)
    assert speckle(board, board).item() == 1.0 and speckle(flat, board).item() < 1e-3


def test_speckle_bad_input() -> None:
    x = _noise(0, (3, 16, 16))
    with pytest.raises(ValueError, match="source"):
        speckle(x, torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="output"):
        speckle(torch.full((3, 16, 16), float("nan")), x)
    with pytest.raises(ValueError, match="output"):
        speckle(torch.rand(4, 16, 16), x)
    with pytest.raises(ValueError, match="3x3"):
        speckle(torch.rand(3, 2, 16), torch.rand(3, 2, 16))


def test_mean_sem() -> None:
    mean, sem = mean_sem([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert sem == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
    assert mean_sem(torch.tensor([3.0])) == (3.0, 0.0)
    assert mean_sem(np.array([2.0, 2.0])) == (2.0, 0.0)
    with pytest.raises(ValueError, match="values"):
        mean_sem([])
    with pytest.raises(ValueError, match="values"):
        mean_sem([1.0, float("nan")])


def test_compute_metrics_keys_follow_inputs() -> None:
    index, palette = _two_region_case()
    requested = palette[index].permute(2, 0, 1)
    out = torch.stack([requested, requested.flip(-2)])
    assert set(compute_metrics(out)) == set()
    assert set(compute_metrics(out, out)) == {"l1", "smape", "psnr", "ssim"}
    full = compute_metrics(out, out, requested_index=index, requested_palette=palette, source=out, n_colors=2)
    assert set(full) == {"l1", "smape", "psnr", "ssim", "palette_de2000", "palette_err_requant",
                         "palette_l1_requant", "texture_corr", "speckle"}
    assert all(v.shape == (2,) for v in full.values())
    assert full["palette_de2000"][0] < 1e-3 < full["palette_de2000"][1]
    assert full["palette_err_requant"][0] == pytest.approx(0.0, abs=1e-6)
    assert full["palette_l1_requant"][1] > 0.1
    only_requant = compute_metrics(out, requested_image=requested, n_colors=[2, 2])
    assert set(only_requant) == {"palette_err_requant", "palette_l1_requant"}
    with pytest.raises(ValueError, match="requested_index and requested_palette"):
        compute_metrics(out, requested_index=index)


def test_bad_inputs_name_the_argument() -> None:
    x = _noise(0, (3, 16, 16))
    with pytest.raises(ValueError, match="target"):
        l1(x, torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="output"):
        psnr(torch.full((3, 16, 16), float("nan")), x)
    with pytest.raises(ValueError, match="output"):
        smape(torch.rand(4, 16, 16), x)
    with pytest.raises(ValueError, match="output"):
        ssim(torch.rand(3, 8, 8), torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="lab2"):
        ciede2000(torch.zeros(4, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="lab1"):
        ciede2000(torch.zeros(4, 2), torch.zeros(4, 2))
    index, palette = _two_region_case()
    with pytest.raises(ValueError, match="index"):
        palette_error_ciede(x, index[:8], palette)
    with pytest.raises(ValueError, match="index"):
        palette_error_ciede(x, index + 5, palette)
    with pytest.raises(ValueError, match="palette"):
        palette_error_ciede(x, index, [palette, palette])
    with pytest.raises(ValueError, match="n_colors"):
        palette_error_requantize(x, x, 0)
    with pytest.raises(ValueError, match="requested"):
        palette_error_requantize(x, torch.rand(3, 8, 8), 4)
    with pytest.raises(ValueError, match="source"):
        texture_fidelity(x, torch.rand(2, 3, 8, 8))
