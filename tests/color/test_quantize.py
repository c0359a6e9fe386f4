"""Tests of dequant.color.quantize: palette/index consistency, fewer colors, determinism, quality, bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageOps

import dequant
from dequant.color.colorspace import rgb_to_lab
from dequant.color.quantize import Quantized, Quantizer, quantize

COMBOS = [("median_cut", "rgb"), ("kmeans", "rgb"), ("kmeans", "lab")]
ASSETS = Path(dequant.__file__).parent / "assets" / "images"


def photo(name: str = "astronaut", size: int = 32) -> torch.Tensor:
    """A shipped photo, center-cropped and resized to size x size, as (3,H,W) in [0,1]."""
    im = ImageOps.fit(Image.open(ASSETS / f"{name}.jpg").convert("RGB"), (size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255.0


def from_colors(colors: np.ndarray, index: np.ndarray) -> torch.Tensor:
    """Image (3,H,W) on the 8-bit grid whose pixel (i,j) is colors[index[i,j]]."""
    return torch.from_numpy(colors[index].astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def check_consistent(q: Quantized, h: int, w: int, n_colors: int) -> None:
    k = q.palette.shape[0]
    assert q.palette.dtype == torch.float32 and q.palette.shape == (k, 3)
    assert q.index.dtype == torch.int64 and q.index.shape == (h, w)
    assert q.fractions.dtype == torch.float32 and q.fractions.shape == (k,)
    assert 1 <= k <= n_colors
    assert 0.0 <= float(q.palette.min()) and float(q.palette.max()) <= 1.0
    assert int(q.index.min()) >= 0 and int(q.index.max()) < k
    counts = torch.bincount(q.index.flatten(), minlength=k)
    assert (counts > 0).all(), "every palette color must be used"
    torch.testing.assert_close(q.fractions, counts.float() / (h * w))
    assert abs(float(q.fractions.sum()) - 1.0) < 1e-5
    assert (q.fractions[:-1] >= q.fractions[1:]).all(), "colors must be sorted by fraction, descending"
    assert torch.equal(q.image, q.palette[q.index].permute(2, 0, 1))
    assert q.image.shape == (3, h, w)


@st.composite
def few_color_images(draw):
    """A small image built from 1..6 distinct 8-bit colors, with the number of distinct colors it really has."""
    h = draw(st.integers(1, 8))
    w = draw(st.integers(1, 8))
    n = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    colors = np.unique(rng.integers(0, 256, size=(n, 3)), axis=0)
    index = rng.integers(0, len(colors), size=(h, w))
    return from_colors(colors, index), len(np.unique(index))


@pytest.mark.parametrize("method,space", COMBOS)
@given(data=few_color_images(), n_colors=st.integers(1, 20))
def test_properties_few_colors(method, space, data, n_colors):
    image, distinct = data
    q = quantize(image, n_colors, method=method, space=space, seed=0)
    check_consistent(q, image.shape[1], image.shape[2], n_colors)
    assert q.n_colors <= distinct
    if distinct <= n_colors:
        # Enough colors: the quantization is lossless (median cut is exact on the 8-bit grid).
        assert q.n_colors == distinct
        torch.testing.assert_close(q.image, image, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method,space", COMBOS)
@pytest.mark.parametrize("n_distinct", [1, 3])
def test_exactly_n_colors_come_back_exactly(method, space, n_distinct):
    """As many distinct colors as asked for: they come back bit-exact, not through a Lab round trip (CI regression)."""
    colors = np.array([[1, 146, 203], [250, 3, 77], [12, 12, 12]])[:n_distinct]
    index = np.arange(n_distinct).reshape(1, n_distinct)
    image = from_colors(colors, index)
    q = quantize(image, n_distinct, method=method, space=space)
    assert q.n_colors == n_distinct
    assert torch.equal(q.image, image)


@pytest.mark.parametrize("method,space", COMBOS)
@pytest.mark.parametrize("n_colors", [1, 4, 16, 64])
def test_photo_properties(method, space, n_colors):
    image = photo("chelsea", 24)
    q = quantize(image, n_colors, method=method, space=space)
    check_consistent(q, 24, 24, n_colors)
    distinct = len(np.unique((image * 255).round().reshape(3, -1).numpy(), axis=1).T)
    assert distinct > 64
    if method == "kmeans":
        # k-means uses every color it is given when the image has many more distinct colors.
        assert q.n_colors == n_colors
    # Compared with the best single color (the RGB mean): about as good for 1 color, much better with more.
    err = float(((q.image - image) ** 2).mean())
    flat = float(((image - image.mean((1, 2), keepdim=True)) ** 2).mean())
    assert err <= (1.05 * flat if n_colors == 1 else 0.5 * flat)


@pytest.mark.parametrize("method,space", COMBOS)
def test_one_color_image(method, space):
    image = torch.full((3, 5, 7), 0.25)
    image[1] = 0.5
    q = quantize(image, 16, method=method, space=space)
    assert q.n_colors == 1
    assert torch.equal(q.index, torch.zeros(5, 7, dtype=torch.int64))
    assert torch.equal(q.fractions, torch.ones(1))
    torch.testing.assert_close(q.palette[0], torch.tensor([0.25, 0.5, 0.25]), atol=1 / 255, rtol=0)


@pytest.mark.parametrize("method,space", COMBOS)
def test_two_color_image_n16(method, space):
    colors = np.array([[250, 10, 30], [20, 40, 200]])
    index = np.zeros((6, 6), dtype=np.int64)
    index[:2] = 1  # 12 of 36 pixels
    q = quantize(from_colors(colors, index), 16, method=method, space=space)
    assert q.n_colors == 2
    torch.testing.assert_close(q.palette, torch.from_numpy(colors[[0, 1]] / 255.0).float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(q.fractions, torch.tensor([24 / 36, 12 / 36]))
    assert torch.equal(q.index, torch.from_numpy(index))


@pytest.mark.parametrize("method,space", COMBOS)
def test_more_colors_than_pixels(method, space):
    image = torch.rand(3, 3, 4, generator=torch.Generator().manual_seed(3))
    q = quantize(image, 256, method=method, space=space)
    check_consistent(q, 3, 4, 256)
    assert q.n_colors == 12
    torch.testing.assert_close(q.image, image, atol=0.5 / 255 + 1e-6, rtol=0)


def test_kmeans_float_colors_not_rounded():
    # k-means palettes are means of the float pixels, so off-grid colors survive exactly.
    image = torch.zeros(3, 2, 2)
    image[:, 0, 0] = torch.tensor([0.1234, 0.5, 0.777])
    q = quantize(image, 4, method="kmeans")
    torch.testing.assert_close(q.image, image, atol=1e-6, rtol=0)


def test_median_cut_is_pillow():
    image = photo("coffee", 32)
    q = quantize(image, 8, method="median_cut")
    u8 = (image * 255).round().byte().permute(1, 2, 0).numpy()
    ref = Image.fromarray(u8).convert("P", palette=Image.Palette.ADAPTIVE, colors=8).convert("RGB")
    expected = torch.from_numpy(np.asarray(ref).copy()).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(q.image, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method,space", COMBOS)
def test_batched_returns_list(method, space):
    images = torch.stack([photo("coffee", 12), photo("retina", 12)])
    out = quantize(images, 8, method=method, space=space, seed=5)
    assert isinstance(out, list) and len(out) == 2
    for q, image in zip(out, images):
        single = quantize(image, 8, method=method, space=space, seed=5)
        assert torch.equal(q.index, single.index) and torch.equal(q.palette, single.palette)


@pytest.mark.parametrize("space", ["rgb", "lab"])
def test_kmeans_deterministic_for_seed(space):
    image = photo("flower", 24)
    a = quantize(image, 8, method="kmeans", space=space, seed=7)
    b = quantize(image, 8, method="kmeans", space=space, seed=7)
    assert torch.equal(a.palette, b.palette) and torch.equal(a.index, b.index)
    assert torch.equal(a.fractions, b.fractions)
    others = [quantize(image, 8, method="kmeans", space=space, seed=s) for s in range(1, 6)]
    assert any(not torch.equal(o.palette, a.palette) for o in others), "seed must reach the initialisation"


def test_kmeans_lab_differs_from_rgb_and_is_better_in_lab():
    image = photo("china", 24)
    rgb = quantize(image, 8, method="kmeans", space="rgb")
    lab = quantize(image, 8, method="kmeans", space="lab")
    assert not torch.equal(rgb.palette, lab.palette)

    def lab_err(q: Quantized) -> float:
        return float(((rgb_to_lab(q.image) - rgb_to_lab(image)) ** 2).mean())

    def rgb_err(q: Quantized) -> float:
        return float(((q.image - image) ** 2).mean())

    assert lab_err(lab) < lab_err(rgb)
    assert rgb_err(rgb) < rgb_err(lab)


def test_kmeans_mse_close_to_cv2():
    cv2.setNumThreads(1)
    image = photo("astronaut", 64)
    data = (image * 255).permute(1, 2, 0).reshape(-1, 3).numpy().astype(np.float32)
    ours, ref = [], []
    for seed in range(3):
        q = quantize(image, 16, method="kmeans", seed=seed)
        ours.append(float(((q.image - image) ** 2).mean()) * 255**2)
        cv2.setRNGSeed(seed)
        crit = (cv2.TERM_CRITERIA_MAX_ITER, 20, 0)
        _, labels, centers = cv2.kmeans(data, 16, None, crit, 1, cv2.KMEANS_PP_CENTERS)
        ref.append(float(((centers[labels.ravel()] - data) ** 2).mean()))
    assert np.mean(ours) <= 1.05 * np.mean(ref)


def test_median_cut_worse_than_kmeans_on_photo():
    # Sanity check of the comparison the benchmark reports: k-means minimizes MSE, median cut does not.
    image = photo("astronaut", 48)
    mc = quantize(image, 16, method="median_cut")
    km = quantize(image, 16, method="kmeans")
    assert float(((km.image - image) ** 2).mean()) < float(((mc.image - image) ** 2).mean())


def test_quantizer_class():
    image = photo("ihc", 16)
    qz = Quantizer(method="kmeans", space="lab")
    a = qz(image, 6, seed=3)
    b = quantize(image, 6, method="kmeans", space="lab", seed=3)
    assert torch.equal(a.index, b.index) and torch.equal(a.palette, b.palette)
    assert isinstance(Quantizer()(image, 4), Quantized)
    with pytest.raises(ValueError, match="image"):
        qz(image[None], 6)
    with pytest.raises(ValueError, match="n_colors"):
        qz(image, 257)
    with pytest.raises(ValueError, match="seed"):
        qz(image, 4, seed="0")


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"method": "octree"}, "method"),
        ({"space": "hsv"}, "space"),
        ({"method": "median_cut", "space": "lab"}, "space"),
    ],
)
def test_quantizer_validates_at_construction(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Quantizer(**kwargs)


@pytest.mark.parametrize(
    "image,match",
    [
        (torch.rand(4, 8, 8), "image"),
        (torch.rand(1, 8, 8), "image"),
        (torch.rand(8, 8), "image"),
        (torch.rand(2, 1, 3, 8, 8), "image"),
        (torch.rand(3, 8, 8) + 1.5, r"image.*\[0, 1\]"),
        (torch.rand(3, 8, 8) - 1.5, r"image.*\[0, 1\]"),
        (torch.full((3, 8, 8), float("nan")), "image.*NaN"),
        (np.random.rand(3, 8, 8), "image.*torch.Tensor"),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), "image.*float"),
    ],
)
def test_bad_image(image, match):
    with pytest.raises(ValueError, match=match):
        quantize(image, 4)


@pytest.mark.parametrize("n_colors", [0, -3, 257, 1000, 4.0, "16", None, True])
@pytest.mark.parametrize("method", ["median_cut", "kmeans"])
def test_bad_n_colors(n_colors, method):
    with pytest.raises(ValueError, match="n_colors") as err:
        quantize(torch.rand(3, 4, 4), n_colors, method=method)
    assert repr(n_colors) in str(err.value)


def test_n_colors_accepts_numpy_int_and_bounds():
    image = torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(0))
    assert quantize(image, np.int64(3), method="kmeans").n_colors == 3
    assert quantize(image, 256, method="median_cut").n_colors <= 256
    assert quantize(image, 1, method="median_cut").n_colors == 1


@pytest.mark.parametrize(
    "kwargs,name",
    [({"method": "octree"}, "method"), ({"space": "xyz"}, "space"), ({"method": "median_cut", "space": "lab"}, "space"),
     ({"seed": 1.5}, "seed"), ({"seed": None}, "seed"), ({"seed": -1}, "seed")],
)
def test_bad_choices(kwargs, name):
    with pytest.raises(ValueError, match=name):
        quantize(torch.rand(3, 4, 4), 4, **kwargs)


def test_from_assignment_compacts_and_sorts():
    palette = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]])
    index = torch.tensor([[1, 3, 3], [0, 3, 1]])  # white (1 and 3) x5, black x1, gray unused
    q = Quantized.from_assignment(palette, index)
    check_consistent(q, 2, 3, 4)
    assert q.n_colors == 2
    torch.testing.assert_close(q.palette, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(q.fractions, torch.tensor([5 / 6, 1 / 6]))
    assert torch.equal(q.image, palette[index].permute(2, 0, 1))
    with pytest.raises(ValueError, match="index"):
        Quantized.from_assignment(palette, torch.tensor([[4]]))


@given(seed=st.integers(0, 2**32 - 1), n_colors=st.integers(1, 40), levels=st.sampled_from([2, 3, 256]))
def test_color_and_index_arrays_equal_the_quantized(seed, n_colors, levels):
    # The example maker's median cut (no Quantized built): the same image, and the same index map as
    # Quantized.from_assignment numbers it (equal palette colors merged, sorted by pixel count).
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(1, 20, 2))
    x = (rng.integers(0, levels, (3, h, w)) / (levels - 1)).astype(np.float32)
    q = Quantizer()
    ref = q(torch.from_numpy(x), n_colors)
    assert torch.equal(torch.from_numpy(q.color_array(x, n_colors)), ref.image)
    assert torch.equal(torch.from_numpy(q.index_array(x, n_colors)), ref.index)
    hint = np.full((7, h, w), np.nan, dtype=np.float32)  # written into the color channels of a hint
    assert q.color_array(x, n_colors, out=hint[:3]) is not None
    assert torch.equal(torch.from_numpy(hint[:3]), ref.image) and np.isnan(hint[3:]).all()


def test_color_and_index_arrays_of_kmeans_go_through_the_quantizer():
    x = np.random.default_rng(0).random((3, 12, 10), dtype=np.float32)
    q = Quantizer("kmeans")
    ref = q(torch.from_numpy(x), 5, seed=7)
    assert torch.equal(torch.from_numpy(q.color_array(x, 5, seed=7)), ref.image)
    assert torch.equal(torch.from_numpy(q.index_array(x, 5, seed=7)), ref.index)
    out = np.zeros((3, 12, 10), dtype=np.float32)
    assert q.color_array(x, 5, seed=7, out=out) is out and torch.equal(torch.from_numpy(out), ref.image)
