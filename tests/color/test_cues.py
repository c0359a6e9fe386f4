"""Texture cues against a direct numpy computation (np.gradient on the 8-bit BT.601 gray)."""

import cv2
import numpy as np
import pytest
import torch
from skimage.color import rgb2lab

from dequant.color.colorspace import rgb_to_gray255
from dequant.color.cues import CUE_MODES, TextureCue, neutral_value, texture_cue


def random_image(seed: int, h: int = 16, w: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g).float() / 255.0


def numpy_gradients(image: torch.Tensor) -> list[np.ndarray]:
    u8 = np.round(image.numpy() * 255.0).astype(np.float64)
    gray = cv2.cvtColor(np.ascontiguousarray(u8.transpose(1, 2, 0)).astype(np.uint8), cv2.COLOR_RGB2GRAY)
    gray = gray.astype(np.float64)
    return np.gradient(gray)


@pytest.mark.parametrize("seed", range(3))
def test_g_mode_matches_np_gradient(seed):
    image = random_image(seed, 12, 17)
    cue = texture_cue(image, "G").numpy()
    gy, gx = numpy_gradients(image)
    np.testing.assert_allclose(cue[0], (gy + 255) / 510, atol=1e-5)
    np.testing.assert_allclose(cue[1], (gx + 255) / 510, atol=1e-5)


@pytest.mark.parametrize("threshold", [8.0, 20.0, 0.0])
def test_t_mode_matches_numpy_threshold(threshold):
    image = random_image(7, 20, 13)
    cue = texture_cue(image, "T", threshold=threshold).numpy()
    for channel, g in enumerate(numpy_gradients(image)):
        # float32 vs float64 gray may round differently only where |g| sits on the threshold itself.
        clear = np.abs(np.abs(g) - threshold) > 1e-3
        assert clear.mean() > 0.9
        np.testing.assert_array_equal(cue[channel][clear], (np.abs(g) > threshold)[clear].astype(np.float32))
    assert set(np.unique(cue)) <= {0.0, 1.0}


def test_threshold_is_strictly_greater():
    # Columns of gray 0, 0, 16, 16: central difference 8 at columns 1 and 2.
    values = torch.tensor([0.0, 0.0, 16.0, 16.0]) / 255.0
    image = values.view(1, 1, 4).expand(3, 3, 4).contiguous()
    gx = np.gradient(rgb_to_gray255(image)[0].numpy(), axis=1)
    exact = float(np.abs(gx[0, 1]))
    assert exact == pytest.approx(8.0, abs=1e-4)
    on = texture_cue(image, "T", threshold=exact)
    assert float(on[1, :, 1:3].max()) == 0.0
    below = texture_cue(image, "T", threshold=np.nextafter(np.float32(exact), np.float32(0)).item())
    assert float(below[1, :, 1:3].min()) == 1.0
    assert float(below[0].max()) == 0.0  # no change along rows


def test_l_mode_both_channels_lab_lightness():
    image = random_image(3)
    cue = texture_cue(image, "L")
    assert torch.equal(cue[0], cue[1])
    lab = rgb2lab(image.permute(1, 2, 0).double().numpy())
    np.testing.assert_allclose(cue[0].numpy(), lab[..., 0] / 100.0, atol=2e-3)


def test_none_mode_is_neutral_everywhere():
    cue = texture_cue(random_image(1), "none")
    assert cue.shape == (2, 16, 16)
    assert float(cue.abs().max()) == 0.0 == neutral_value("none")


@pytest.mark.parametrize("mode", CUE_MODES)
def test_shapes_ranges_and_batching(mode):
    batch = torch.stack([random_image(s, 9, 11) for s in range(3)])
    cue = texture_cue(batch, mode)
    assert cue.shape == (3, 2, 9, 11) and cue.dtype == torch.float32
    assert float(cue.min()) >= 0.0 and float(cue.max()) <= 1.0
    singles = torch.stack([texture_cue(img, mode) for img in batch])
    torch.testing.assert_close(cue, singles)


def test_borders_and_single_pixel_axis():
    line = random_image(5, 1, 6)
    cue = texture_cue(line, "G")
    assert torch.all(cue[0] == 0.5)  # one row: no gradient along rows
    u8 = np.round(line.numpy() * 255.0).astype(np.uint8).transpose(1, 2, 0)
    gx = np.gradient(cv2.cvtColor(np.ascontiguousarray(u8), cv2.COLOR_RGB2GRAY)[0].astype(np.float64))
    np.testing.assert_allclose(cue[1, 0].numpy(), (gx + 255) / 510, atol=1e-5)
    pixel = texture_cue(random_image(6, 1, 1), "T")
    assert pixel.shape == (2, 1, 1) and float(pixel.max()) == 0.0
    two = random_image(8, 2, 2)  # only one-sided differences
    gy, gx = numpy_gradients(two)
    cue = texture_cue(two, "G")
    np.testing.assert_allclose(cue[0].numpy(), (gy + 255) / 510, atol=1e-5)
    np.testing.assert_allclose(cue[1].numpy(), (gx + 255) / 510, atol=1e-5)


def test_neutral_values():
    assert neutral_value("T") == neutral_value("L") == neutral_value("none") == 0.0
    assert neutral_value("G") == 0.5
    assert neutral_value("G", g_neutral=0.0) == 0.0
    assert neutral_value("T", g_neutral=0.3) == 0.0


def test_texture_cue_object():
    image = random_image(2)
    cue = TextureCue(mode="G", threshold=8, g_neutral=0.25, p_drop=0.5)
    torch.testing.assert_close(cue(image), texture_cue(image, "G"))
    assert cue.neutral == 0.25 and TextureCue().neutral == 0.0
    assert isinstance(cue.threshold, float)


def test_keep_texture_draws():
    rng = np.random.default_rng(0)
    draws = [TextureCue(p_drop=0.65).keep_texture(rng) for _ in range(4000)]
    assert abs(np.mean(draws) - 0.35) < 0.03
    assert all(TextureCue(p_drop=0.0).keep_texture(rng) for _ in range(50))
    assert not any(TextureCue(p_drop=1.0).keep_texture(rng) for _ in range(50))
    assert not any(TextureCue(mode="none", p_drop=0.0).keep_texture(rng) for _ in range(50))
    a = [TextureCue().keep_texture(np.random.default_rng(3)) for _ in range(5)]
    assert len(set(a)) == 1


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: texture_cue(random_image(0), "X"), "mode"),
        (lambda: texture_cue(random_image(0), "T", threshold=-1.0), "threshold"),
        (lambda: texture_cue(random_image(0), "T", threshold=float("nan")), "threshold"),
        (lambda: texture_cue(torch.rand(2, 8, 8), "T"), "image"),
        (lambda: texture_cue(torch.rand(3, 8, 8) * 2, "T"), "image"),
        (lambda: neutral_value("gradient"), "mode"),
        (lambda: neutral_value("G", g_neutral=1.5), "g_neutral"),
        (lambda: TextureCue(mode="t"), "mode"),
        (lambda: TextureCue(threshold="8"), "threshold"),
        (lambda: TextureCue(p_drop=1.1), "p_drop"),
        (lambda: TextureCue(g_neutral=-0.1), "g_neutral"),
        (lambda: TextureCue().keep_texture(0), "rng"),
    ],
)
def test_bad_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("mode", CUE_MODES)
def test_gpu_matches_cpu(mode):
    image = random_image(4, 32, 32)
    on_gpu = texture_cue(image.cuda(), mode)
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), texture_cue(image, mode), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", CUE_MODES)
def test_cue_from_the_8bit_planes_equals_texture_cue(mode):
    # TextureCue.array (the example maker's cue) against texture_cue, on pixels exactly halfway between 8-bit
    # levels (the rounding) and thresholds just below a half-integer gradient (torch compares in float32).
    from dequant.color.quantize import _to_hwc, to_u8_array

    rng = np.random.default_rng(0)
    for trial in range(30):
        h, w = (int(v) for v in rng.integers(1, 14, 2))
        x = rng.random((3, h, w), dtype=np.float32)
        if trial % 2:
            x = ((rng.integers(0, 255, (3, h, w)) + 0.5) / 255).astype(np.float32)
        u8 = to_u8_array(x)
        assert np.array_equal(u8, _to_hwc(torch.from_numpy(x))[1].transpose(2, 0, 1))
        threshold = float(rng.choice([8.0, 7.9999999, 3.5, 0.0, 12.25]))
        cue = TextureCue(mode=mode, threshold=threshold)
        got = cue.array(x, u8)
        assert got.dtype == np.float32 and torch.equal(torch.from_numpy(got), texture_cue(torch.from_numpy(x),
                                                                                            mode, threshold))
