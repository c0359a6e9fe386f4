"""Classical baselines on crafted cases whose answer is known."""

from __future__ import annotations

import kornia
import pytest
import torch

from dequant.color.colorspace import lab_to_rgb, rgb_to_lab
from dequant.color.quantize import quantize
from dequant.evaluation.baselines import (
    BASELINES,
    bilateral_smooth,
    luminance_swap,
    ot_transfer,
    quantized_input,
    reinhard_transfer,
)


def _noise(seed: int, shape: tuple[int, ...] = (3, 16, 16)) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _lab_round_trip(x: torch.Tensor) -> torch.Tensor:
    return lab_to_rgb(rgb_to_lab(x))


def test_quantized_input_is_identity_copy() -> None:
    x = _noise(0)
    out = quantized_input(x)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    assert quantized_input(x[None]).shape == (1, 3, 16, 16)


def test_bilateral_keeps_constant_and_smooths_noise_but_not_edges() -> None:
    const = torch.full((2, 3, 16, 16), 0.3)
    assert torch.allclose(bilateral_smooth(const), const, atol=1e-6)
    step = torch.full((3, 16, 16), 0.2)
    step[:, :, 8:] = 0.8
    noisy = step + 0.1 * (_noise(1) - 0.5)
    out = bilateral_smooth(noisy)
    assert out.shape == noisy.shape
    assert float((out - step).abs().mean()) < 0.5 * float((noisy - step).abs().mean())
    assert float(out[:, :, 8:].min()) > 0.7 and float(out[:, :, :8].max()) < 0.3  # the edge survives


def test_luminance_swap() -> None:
    x = _noise(2, (2, 3, 16, 16))
    assert torch.allclose(luminance_swap(x, x), _lab_round_trip(x), atol=1e-5)
    assert torch.allclose(luminance_swap(x, x), x, atol=1e-3)
    q = quantize(x[0], 4).image
    out = luminance_swap(q, x[0])
    assert out.shape == q.shape
    lab_out, lab_src, lab_q = rgb_to_lab(out), rgb_to_lab(x[0]), rgb_to_lab(q)
    # In gamut the output carries the source's L and the quantized chroma; out of gamut, clipping changes them.
    raw = kornia.color.lab_to_rgb(torch.cat([lab_src[:1], lab_q[1:]]), clip=False)
    inside = ((raw >= 0) & (raw <= 1)).all(0)
    assert int(inside.sum()) > 20
    assert torch.allclose(lab_out[0][inside], lab_src[0][inside], atol=1e-2)
    assert torch.allclose(lab_out[1:][:, inside], lab_q[1:][:, inside], atol=1e-2)


def test_reinhard() -> None:
    x = _noise(3, (2, 3, 16, 16))
    assert torch.allclose(reinhard_transfer(x, x), _lab_round_trip(x), atol=1e-4)
    assert torch.allclose(reinhard_transfer(x, x, space="rgb"), x, atol=1e-5)
    # RGB space: the output's per-channel mean and std are the target's.
    target = 0.3 + 0.2 * _noise(4)
    out = reinhard_transfer(x[0], target, space="rgb")
    assert torch.allclose(out.mean(dim=(1, 2)), target.mean(dim=(1, 2)), atol=1e-4)
    assert torch.allclose(out.std(dim=(1, 2), unbiased=False), target.std(dim=(1, 2), unbiased=False), atol=1e-4)
    # A one-color palette target makes everything that color.
    red = torch.tensor([[0.8, 0.1, 0.1]])
    flat = reinhard_transfer(x, red)
    assert torch.allclose(flat, red[0].view(1, 3, 1, 1).expand_as(x), atol=2e-3)


def test_ot_transfer() -> None:
    x = _noise(5)
    const = torch.tensor([[0.2, 0.6, 0.4]])
    out = ot_transfer(x, const)
    assert torch.allclose(out, const[0].view(3, 1, 1).expand_as(x), atol=1e-6)
    # Transport onto itself with all pixels sampled is the identity.
    assert torch.allclose(ot_transfer(x, x, n_samples=256), x, atol=1e-6)
    # Onto a two-color image of equal areas: half the pixels go to each color.
    two = torch.zeros(3, 16, 16)
    two[:, 8:] = 1.0
    moved = ot_transfer(x, two, n_samples=256)
    assert set(torch.unique(moved.round(decimals=4)).tolist()) == {0.0, 1.0}
    assert float(moved.mean()) == pytest.approx(0.5, abs=1e-6)
    # Subsampled fits are seeded and per image: batch results equal single-image results.
    big = _noise(6, (2, 3, 24, 24))
    batch = ot_transfer(big, two, n_samples=100, seed=3)
    assert torch.equal(batch, ot_transfer(big, two, n_samples=100, seed=3))
    assert torch.allclose(batch[1], ot_transfer(big[1:], two, n_samples=100, seed=3)[0])
    sink = ot_transfer(x, const, method="sinkhorn", reg=0.05)
    assert torch.allclose(sink, const[0].view(3, 1, 1).expand_as(x), atol=1e-4)


def test_ot_transfer_reaches_the_optimum_on_a_quantized_target() -> None:
    """A photo onto another photo's 8-color quantization (test t's setting): POT's default iteration limit stops the
    network simplex short of the optimum (it warns); the baseline's default does not."""
    import warnings

    import torch.nn.functional as F

    from dequant.config import assets_path
    from dequant.data.io import load_rgb

    def photo(name: str) -> torch.Tensor:
        image = load_rgb(f"{assets_path('images')}/{name}")
        return F.interpolate(image[None], size=(64, 64), mode="area")[0].clamp(0, 1)

    source, target = photo("coffee.jpg"), quantize(photo("flower.jpg"), 8).image
    for max_iter, stops_short in ((100_000, True), (None, False)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ot_transfer(source, target, **({} if max_iter is None else {"max_iter": max_iter}))
        assert any("numItermax" in str(w.message) for w in caught) == stops_short, max_iter


def test_ot_out_of_sample_rule_matches_pot() -> None:
    import numpy as np
    import ot

    x, target = _noise(8), _noise(9) * 0.5
    ours = ot_transfer(x, target, n_samples=60, seed=4)
    # The same fit through POT's own transform (nearest sample's displacement for out-of-sample pixels).
    rng = np.random.default_rng(4)
    pixels = x.reshape(3, -1).t().double().numpy()
    xs = pixels[rng.choice(256, size=60, replace=False)]
    xt = target.reshape(3, -1).t().double().numpy()[rng.choice(256, size=60, replace=False)]
    model = ot.da.EMDTransport()
    model.fit(Xs=xs, Xt=xt)
    ref = torch.from_numpy(model.transform(Xs=pixels)).t().reshape(3, 16, 16).clamp(0, 1).float()
    assert torch.allclose(ours, ref, atol=1e-6)


def test_registry_runs_every_baseline() -> None:
    src = _noise(7)
    requested = quantize(src, 4).image
    for name, fn in BASELINES.items():
        out = fn(requested, src)
        assert out.shape == src.shape, name
        assert float(out.min()) >= 0 and float(out.max()) <= 1, name


def test_bad_inputs_name_the_argument() -> None:
    x = _noise(0)
    with pytest.raises(ValueError, match="image"):
        bilateral_smooth(torch.full((3, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="d must"):
        bilateral_smooth(x, d=0)
    with pytest.raises(ValueError, match="sigma_color"):
        bilateral_smooth(x, sigma_color=-1.0)
    with pytest.raises(ValueError, match="source"):
        luminance_swap(x, torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="space"):
        reinhard_transfer(x, x, space="hsv")
    with pytest.raises(ValueError, match="target_palette_or_image"):
        reinhard_transfer(x, torch.rand(4, 4))
    with pytest.raises(ValueError, match="target"):
        ot_transfer(x[None].repeat(2, 1, 1, 1), torch.rand(3, 3, 8, 8))
    with pytest.raises(ValueError, match="method"):
        ot_transfer(x, x, method="gw")
    with pytest.raises(ValueError, match="n_samples"):
        ot_transfer(x, x, n_samples=0)
    with pytest.raises(ValueError, match="quantized_image"):
        quantized_input(torch.rand(2, 16, 16))
