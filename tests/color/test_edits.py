"""HSV edit: identity at strength 0, palette/image agreement, hue wrap-around, parameter ranges, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dequant.color.colorspace import rgb_to_hsv
from dequant.color.edits import HSVShift, apply_hsv_shift, hsv_edit, hsv_params
from dequant.color.quantize import quantize


def _image(seed: int = 0, shape: tuple[int, ...] = (3, 16, 16)) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_strength_zero_is_identity() -> None:
    x = _image()
    shift = hsv_params(0.0, np.random.default_rng(0))
    assert shift == HSVShift(0.0, 1.0, 1.0)
    out = hsv_edit(x, 0.0, np.random.default_rng(0))
    assert out.shape == x.shape
    assert torch.allclose(out, x, atol=1e-5)


@pytest.mark.parametrize("strength", [0.1, 0.3, 0.5, 1.0])
def test_params_ranges_and_determinism(strength: float) -> None:
    draws = [hsv_params(strength, np.random.default_rng(i)) for i in range(200)]
    hues = np.array([d.hue for d in draws])
    sats = np.array([d.sat for d in draws])
    vals = np.array([d.val for d in draws])
    assert np.all(np.abs(hues) <= strength)
    assert np.all(np.abs(sats - 1) <= strength) and np.all(np.abs(vals - 1) <= strength)
    assert hues.std() > strength / 4  # really spread over the range
    assert hsv_params(strength, np.random.default_rng(3)) == draws[3]


@pytest.mark.parametrize("seed", range(4))
def test_palette_edit_then_index_equals_image_edit(seed: int) -> None:
    q = quantize(_image(seed), 8)
    shift = hsv_params(0.5, np.random.default_rng(seed))
    via_palette = apply_hsv_shift(q.palette, shift)[q.index].permute(2, 0, 1)
    via_image = apply_hsv_shift(q.image, shift)
    assert via_palette.shape == via_image.shape == (3, 16, 16)
    assert torch.allclose(via_palette, via_image, atol=1e-6)


def test_hue_wraps_around() -> None:
    x = _image(1)
    a = apply_hsv_shift(x, HSVShift(0.25, 1.0, 1.0))
    b = apply_hsv_shift(x, HSVShift(-0.75, 1.0, 1.0))
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(apply_hsv_shift(x, HSVShift(1.0, 1.0, 1.0)), x, atol=1e-5)
    red = torch.tensor([[1.0, 0.0, 0.0]])
    # A third of the circle turns red into green, two thirds into blue.
    assert torch.allclose(apply_hsv_shift(red, HSVShift(1 / 3, 1.0, 1.0)), torch.tensor([[0.0, 1.0, 0.0]]), atol=1e-5)
    assert torch.allclose(apply_hsv_shift(red, HSVShift(-1 / 3, 1.0, 1.0)), torch.tensor([[0.0, 0.0, 1.0]]), atol=1e-5)


def test_saturation_and_value_scale_and_clip() -> None:
    pal = torch.tensor([[0.8, 0.4, 0.4], [0.2, 0.2, 0.2]])
    out = apply_hsv_shift(pal, HSVShift(0.0, 0.5, 1.0))
    hsv_in, hsv_out = rgb_to_hsv(pal), rgb_to_hsv(out)
    assert torch.allclose(hsv_out[0, 1], hsv_in[0, 1] * 0.5, atol=1e-5)
    assert torch.allclose(hsv_out[:, 2], hsv_in[:, 2], atol=1e-5)
    bright = apply_hsv_shift(pal, HSVShift(0.0, 1.0, 2.0))
    assert float(bright.max()) <= 1.0
    assert torch.allclose(bright[0], torch.tensor([1.0, 0.5, 0.5]), atol=1e-5)  # V 0.8 -> clipped 1, S kept
    assert torch.allclose(bright[1], torch.tensor([0.4, 0.4, 0.4]), atol=1e-5)


def test_batched_image_keeps_shape() -> None:
    x = _image(2, (2, 3, 8, 8))
    out = hsv_edit(x, 0.4, np.random.default_rng(5))
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.allclose(out[1], apply_hsv_shift(x[1], hsv_params(0.4, np.random.default_rng(5))))


def test_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="strength"):
            hsv_params(bad, rng)
    with pytest.raises(ValueError, match="rng"):
        hsv_params(0.2, 0)
    with pytest.raises(ValueError, match="x"):
        apply_hsv_shift(torch.full((3, 4, 4), float("nan")), HSVShift(0, 1, 1))
    with pytest.raises(ValueError, match="x"):
        apply_hsv_shift(torch.rand(4, 4), HSVShift(0, 1, 1))
    with pytest.raises(ValueError, match="sat"):
        HSVShift(0.0, -1.0, 1.0)
    with pytest.raises(ValueError, match="hue"):
        HSVShift(float("inf"), 1.0, 1.0)
    with pytest.raises(ValueError, match="shift"):
        apply_hsv_shift(torch.rand(2, 3), (0.0, 1.0, 1.0))


def test_post_l_takes_the_sources_lightness_and_keeps_the_outputs_chroma() -> None:
    from dequant.color.colorspace import lab_to_rgb, rgb_to_lab
    from dequant.color.edits import post_l

    # Muted colors stay in gamut under any L swap, so L and a, b can be checked exactly.
    source = 0.3 + 0.4 * _image(6, (2, 3, 12, 12))
    output = 0.35 + 0.3 * _image(7, (2, 3, 12, 12))
    out = post_l(output, source)
    assert out.shape == output.shape and out.dtype == output.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    lab_out, lab_src, lab_in = rgb_to_lab(out), rgb_to_lab(source), rgb_to_lab(output)
    assert torch.allclose(lab_out[:, 0], lab_src[:, 0], atol=0.05)
    assert torch.allclose(lab_out[:, 1:], lab_in[:, 1:], atol=0.05)
    # The source against itself is a Lab round trip; unbatched inputs stay unbatched.
    assert torch.allclose(post_l(source, source), lab_to_rgb(rgb_to_lab(source)), atol=1e-5)
    assert torch.allclose(post_l(output[0], source[0]), out[0])
    # A flat gray output takes on the source's shading, gray stays gray.
    shaded = post_l(torch.full((3, 12, 12), 0.5), source[0])
    assert (shaded.max(0).values - shaded.min(0).values).max() < 0.02
    assert torch.corrcoef(torch.stack([shaded[0].flatten(), rgb_to_lab(source[0])[0].flatten()]))[0, 1] > 0.99


def test_post_l_bad_input() -> None:
    from dequant.color.edits import post_l

    with pytest.raises(ValueError, match="source"):
        post_l(torch.rand(3, 8, 8), torch.rand(3, 8, 9))
    with pytest.raises(ValueError, match="output"):
        post_l(torch.full((3, 8, 8), float("nan")), torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="source"):
        post_l(torch.rand(3, 8, 8), torch.rand(3, 8, 8) + 2)
