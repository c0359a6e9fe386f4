"""Color-space round trips on images (batched and not) and palettes, against OpenCV where it defines the answer."""

import cv2
import numpy as np
import pytest
import torch

from dequant.color.colorspace import hsv_to_rgb, lab_to_rgb, rgb_to_gray255, rgb_to_hsv, rgb_to_lab


@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 3, 5, 7), (6, 3)])
def test_round_trips(shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(x)), x, atol=1e-4, rtol=0)
    assert rgb_to_hsv(x).shape == x.shape


def test_hue_is_a_fraction_of_the_circle():
    red, green = torch.tensor([[1.0, 0, 0]]), torch.tensor([[0, 1.0, 0]])
    assert float(rgb_to_hsv(red)[0, 0]) == pytest.approx(0.0, abs=1e-6)
    assert float(rgb_to_hsv(green)[0, 0]) == pytest.approx(1 / 3, abs=1e-5)


def test_gray_is_bit_exact_with_opencv():
    x = torch.randint(0, 256, (3, 64, 64), generator=torch.Generator().manual_seed(1)).float() / 255
    u8 = np.ascontiguousarray((x * 255).round().byte().permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(rgb_to_gray255(x)[0].numpy(), cv2.cvtColor(u8, cv2.COLOR_RGB2GRAY))


def test_color_core_imports_without_lightning_or_hydra():
    import subprocess
    import sys

    code = ("import sys, dequant.color, dequant.metrics, dequant.evaluation.baselines; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pytorch_lightning', 'hydra', "
            "'diffusers', 'wandb'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
