"""dequant.data.resize: the one resize policy (examples, evaluation crops, dequant-edit)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from dequant.data.resize import interpolation, resize, resize_array, short_side_size


def test_area_only_when_shrinking_by_more_than_2x() -> None:
    assert interpolation(0.49) == cv2.INTER_AREA and interpolation(0.5) == cv2.INTER_CUBIC
    assert interpolation(3.0) == cv2.INTER_CUBIC


def test_resize_matches_opencv_per_channel_and_clips() -> None:
    rng = np.random.default_rng(0)
    chw = rng.random((3, 40, 60), dtype=np.float32)
    small = resize_array(chw, 10, 15)  # 4x smaller: area
    expected = cv2.resize(np.ascontiguousarray(chw.transpose(1, 2, 0)), (15, 10), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(small, expected.transpose(2, 0, 1), atol=1e-6)
    big = resize_array(chw, 80, 120)  # bicubic overshoots at edges: clipped back to [0, 1]
    assert big.shape == (3, 80, 120) and big.min() >= 0.0 and big.max() <= 1.0
    assert resize_array(chw, 40, 60) is chw


def test_tensor_resize_is_a_new_float_tensor() -> None:
    image = torch.rand(3, 8, 8)
    same = resize(image, 8, 8)
    assert torch.equal(same, image) and same.data_ptr() != image.data_ptr()
    assert resize(image, 16, 4).shape == (3, 16, 4)
    with pytest.raises(ValueError, match=r"image must be a \(C, H, W\) tensor, got torch.Size\(\[1, 3, 8, 8\]\)"):
        resize(image[None], 4, 4)
    with pytest.raises(ValueError, match="height and width must be >= 1, got 0 x 4"):
        resize(image, 0, 4)


def test_short_side_size_keeps_the_aspect_ratio() -> None:
    assert short_side_size(100, 150, 32) == (32, 48) and short_side_size(150, 100, 32) == (48, 32)
    assert short_side_size(10, 10, 32) == (32, 32) and short_side_size(3, 1000, 2) == (2, 667)


def test_every_caller_uses_this_policy() -> None:
    from dequant import edit
    from dequant.evaluation.runner import prepare_image

    assert edit.resize is resize
    image = torch.rand(3, 90, 60)
    crop = prepare_image(image, 30)
    h, w = short_side_size(90, 60, 30)
    top = (h - 30) // 2
    assert torch.equal(crop, resize(image, h, w)[:, top:top + 30, :30])
