"""The compiled quickshift, Felzenszwalb and SLIC give scikit-image's labels: scikit-image stays the reference."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import filters, segmentation

import dequant
from dequant.color import masks

pytest.importorskip("numba")
from dequant.color import _felzenszwalb_jit as felz_jit  # noqa: E402
from dequant.color import _quickshift_jit as jit  # noqa: E402
from dequant.color import _slic_jit as slic_jit  # noqa: E402

ASSETS = Path(dequant.__file__).parent / "assets"


def qs_reference(image: np.ndarray) -> np.ndarray:
    """scikit-image's quickshift with the authors' settings."""
    return segmentation.quickshift(image, kernel_size=3, max_dist=6, ratio=0.5)


def felz_reference(image: np.ndarray) -> np.ndarray:
    """scikit-image's Felzenszwalb with the authors' settings."""
    return segmentation.felzenszwalb(image, scale=100, sigma=0.5, min_size=50)


def slic_reference(image: np.ndarray, n_segments: int = 250) -> np.ndarray:
    """scikit-image's SLIC with the authors' settings."""
    return segmentation.slic(image, n_segments=n_segments, compactness=10, sigma=1, start_label=0)


def photos(size: int, step: int):
    """Every `step`-th bundled photo (the demo's, the training and the held-out ones), its shorter side resized to
    `size`."""
    paths = [p for folder in ("images", "train_photos", "heldout_photos") for p in sorted((ASSETS / folder).glob("*"))
             if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    for path in paths[::step]:
        img = Image.open(path).convert("RGB")
        scale = size / min(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
        yield path.name, np.asarray(img, dtype=np.float64) / 255


@pytest.mark.parametrize(("size", "step"), [(24, 1), (48, 3), (96, 12)])
def test_labels_equal_scikit_image_on_photos(size, step):
    for name, image in photos(size, step):
        np.testing.assert_array_equal(masks._quickshift(image), qs_reference(image), err_msg=name)
        np.testing.assert_array_equal(masks._felzenszwalb(image), felz_reference(image), err_msg=name)
        np.testing.assert_array_equal(masks._slic(image), slic_reference(image), err_msg=name)
        # fewer segments per image, as segment_image asks for when a crop is a fraction of it
        np.testing.assert_array_equal(masks._slic(image, 0.3), slic_reference(image, 75), err_msg=name)


def synthetic(rng: np.random.Generator):
    """Noise, flat blocks (every density and distance tied), ramps and strips of every small shape."""
    for h, w in [(1, 1), (1, 7), (6, 1), (2, 3), (9, 9), (13, 31), (40, 17)]:
        yield rng.random((h, w, 3))
        blocks = rng.random((3, 3, 3))[rng.integers(0, 3, (h, w)), rng.integers(0, 3, (h, w))]
        yield np.ascontiguousarray(blocks)
        yield np.full((h, w, 3), 0.5)
        ramp = np.linspace(0, 1, h * w).reshape(h, w, 1) * np.array([1.0, 0.5, 0.2])
        yield ramp + 0.01 * rng.random((h, w, 3))


def test_labels_equal_scikit_image_on_synthetic_images_and_settings():
    rng = np.random.default_rng(0)
    for image in synthetic(rng):
        np.testing.assert_array_equal(masks._quickshift(image), qs_reference(image))
        for kernel_size, max_dist, ratio, seed in [(1, 3, 1.0, 0), (2.5, 10, 0.3, 7), (5, 1e9, 2.0, 42)]:
            # convert2lab=False: the kernel then sees the image times ratio, exactly as scikit-image's does
            want = segmentation.quickshift(image, ratio=ratio, kernel_size=kernel_size, max_dist=max_dist,
                                           convert2lab=False, rng=seed)
            np.testing.assert_array_equal(jit.quickshift(image * ratio, kernel_size, max_dist, seed), want)


def test_felzenszwalb_equals_scikit_image_on_synthetic_images_and_settings():
    rng = np.random.default_rng(3)
    for image in synthetic(rng):
        np.testing.assert_array_equal(masks._felzenszwalb(image), felz_reference(image))
        for scale, sigma, min_size in [(1, 0.8, 20), (300, 0.0, 1), (50, 2.0, 200)]:
            smoothed = filters.gaussian(image, sigma=[sigma, sigma, 0], mode="reflect", channel_axis=-1)
            want = segmentation.felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size)
            np.testing.assert_array_equal(felz_jit.felzenszwalb(smoothed, scale, min_size), want)


def test_slic_equals_scikit_image_on_synthetic_images_and_settings():
    rng = np.random.default_rng(5)
    for image in synthetic(rng):
        np.testing.assert_array_equal(masks._slic(image), slic_reference(image))
        for n_segments, compactness, sigma in [(1, 10, 1), (7, 0.1, 0), (100, 100, 2.5)]:
            want = segmentation.slic(image, n_segments=n_segments, compactness=compactness, sigma=sigma,
                                     start_label=0)
            np.testing.assert_array_equal(slic_jit.slic(image, n_segments, compactness, sigma), want)


def test_felzenszwalb_edge_costs_are_scikit_images_doubles():
    # The sort order, and so every merge, hangs on these being the same doubles as scikit-image's numpy expression.
    image = filters.gaussian(np.random.default_rng(4).random((23, 17, 3)), sigma=[0.5, 0.5, 0], channel_axis=-1)

    def cost(a, b):
        return np.sqrt(np.sum((a - b) * (a - b), axis=-1)).ravel()

    want = np.concatenate([cost(image[:, 1:], image[:, :-1]), cost(image[1:], image[:-1]),
                           cost(image[1:, 1:], image[:-1, :-1]), cost(image[1:, :-1], image[:-1, 1:])])
    assert np.array_equal(felz_jit.edge_costs(image), want)


def test_exp_is_within_an_ulp_of_libm():
    x = -np.concatenate([np.random.default_rng(1).random(200_000) * 700, np.linspace(0, 1, 10_001), [0.0, 700.0]])
    got, want = jit.exp_neg(x), np.exp(x)
    assert got[x == 0].tolist() == [1.0] * int((x == 0).sum())
    # two units of the last place: one for this exp, one for numpy's own
    np.testing.assert_allclose(got, want, rtol=2 * np.finfo(np.float64).eps, atol=0)
    assert np.all(jit.exp_neg(np.array([-700.5, -1e4, -np.inf])) < 1e-303)


def test_other_dtypes_take_scikit_images_path():
    image = np.random.default_rng(2).random((12, 10, 3)).astype(np.float32)
    np.testing.assert_array_equal(masks._quickshift(image), qs_reference(image))
    np.testing.assert_array_equal(masks._felzenszwalb(image), felz_reference(image))
    np.testing.assert_array_equal(masks._slic(image), slic_reference(image))
