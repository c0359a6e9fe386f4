"""JPEGs decoded only as far as an example needs (issue 26): EncodedJpeg, the crop resampler, the examples' statistics."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from dequant.data import _example_jit as kernels
from dequant.data.examples import ExampleMaker
from dequant.data.io import EncodedJpeg, ImageLoadError, _load_with_pillow, load_rgb, load_rgb_bytes
from dequant.data.palette_sizes import FixedPaletteSize
from dequant.data.resize import resize_array

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "src" / "dequant" / "assets"


def _jpeg(tmp_path: Path, name: str, array: np.ndarray, **save) -> Path:
    path = tmp_path / name
    Image.fromarray(array).save(path, "JPEG", quality=92, **save)
    return path


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth color photo with some edges and noise (JPEG-friendly, like a photo)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([np.sin(xx / 9.0 + c) * np.cos(yy / 13.0 - c) for c in range(3)], axis=-1) * 90 + 128
    img[h // 3: h // 2, w // 4: w // 2] = rng.uniform(0, 255, 3)
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def test_full_decode_equals_pillow_on_every_shipped_photo():
    for path in sorted(ASSETS.glob("*/*.jpg")):
        assert torch.equal(load_rgb(path), _load_with_pillow(path)), path.name


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_and_size(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _jpeg(tmp_path, "o.jpg", _photo(30, 50), exif=exif.tobytes())
    jpeg = EncodedJpeg.read(path)
    expected = _load_with_pillow(path)
    assert (jpeg.height, jpeg.width) == tuple(expected.shape[1:])
    assert ((jpeg.height, jpeg.width) == (50, 30)) == (orientation in (6, 8))
    assert torch.equal(jpeg.tensor(), expected)
    # Every DCT scale is oriented the same way and as large as asked.
    for denom in (2, 4, 8):
        small = jpeg.decode(denom)
        assert small.shape[:2] == (-(-jpeg.height // denom), -(-jpeg.width // denom))


def test_gray_jpeg_and_what_goes_to_pillow(tmp_path):
    gray = _jpeg(tmp_path, "g.jpg", _photo(20, 24)[..., 0])
    assert torch.equal(load_rgb(gray), _load_with_pillow(gray))
    cmyk = tmp_path / "c.jpg"
    Image.fromarray(_photo(20, 24)).convert("CMYK").save(cmyk, "JPEG")
    assert EncodedJpeg.read(cmyk) is None  # libjpeg-turbo cannot give RGB: Pillow's path
    assert load_rgb(cmyk).shape == (3, 20, 24)
    png = tmp_path / "p.png"
    Image.fromarray(_photo(20, 24)).save(png)
    assert EncodedJpeg.read(png) is None
    # Bytes held in memory (a shard's member) decode the same as the file.
    assert torch.equal(load_rgb_bytes(gray.read_bytes(), "shard:g.jpg"), load_rgb(gray))
    assert torch.equal(load_rgb_bytes(png.read_bytes(), "shard:p.png"), load_rgb(png))


def test_truncated_jpeg_is_an_image_load_error_naming_the_file(tmp_path):
    path = _jpeg(tmp_path, "t.jpg", _photo(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="t.jpg"):
        load_rgb(path)
    jpeg = EncodedJpeg.read(path)  # the header is whole: the damage shows when decoding
    with pytest.raises(ImageLoadError, match="t.jpg"):
        jpeg.decode(2)


def test_denominator_is_the_smallest_scale_that_covers():
    jpeg = EncodedJpeg(Path("x.jpg"), b"", (3000, 4000), 1)
    assert jpeg.denom_for(375, 500) == 8 and jpeg.denom_for(376, 500) == 4
    assert jpeg.denom_for(1500, 2000) == 2 and jpeg.denom_for(1501, 2001) == 1
    with pytest.raises(ValueError, match="denom"):
        jpeg.decode(3)


def test_scaled_crop_equals_opencv_resize_then_crop():
    rng = np.random.default_rng(1)
    worst = 0.0
    for trial in range(60):
        h, w = (int(v) for v in rng.integers(20, 120, 2))
        src = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if trial % 2:
            src = cv2.GaussianBlur(src, (0, 0), 1.5)
        hs, ws = int(rng.integers(h // 2 + 1, h + 1)), int(rng.integers(w // 2 + 1, w + 1))
        size = int(rng.integers(1, min(hs, ws) + 1))
        top, left = int(rng.integers(0, hs - size + 1)), int(rng.integers(0, ws - size + 1))
        flip = bool(trial % 3 == 0)
        chw = np.ascontiguousarray(src.transpose(2, 0, 1)).astype(np.float32) / np.float32(255.0)
        expected = kernels.crop_clip(resize_array(chw, hs, ws, clip=False), top, left, size, flip)
        got = kernels.scaled_crop(src, 1.0 / (hs / h), 1.0 / (ws / w), top, left, size, flip)
        worst = max(worst, float(np.abs(got - expected).max()))
    # OpenCV's SIMD sums round differently in the last bits; a wrong tap or weight is off by far more.
    assert worst < 1e-4


def _maker(**kwargs) -> ExampleMaker:
    settings = dict(crop_size=32, palette_sizes=FixedPaletteSize(8), p_patch=0.5, p_superpixel=1.0,
                    segmenters=("felzenszwalb", "slic"))
    return ExampleMaker(**{**settings, **kwargs})


def test_encoded_examples_match_the_full_decode():
    # The same draws (scale, crop, flip, gray, saturation, palette size, mode); the pixels: when the example shrinks
    # the photo by at most 2x, the same bicubic taps on the same decode (last bits); when more, area averaging after
    # a DCT-scaled decode. Stated tolerance at the default dct_margin=2, over the 10 held-out photos: every example
    # within a mean |difference| of 6/255, their mean within 1.5/255, and the T cue's texture pixels within 3%.
    maker = _maker(segment_source="crop", p_patch=0.0, p_gray=0.0, p_saturation=0.0)
    diffs, density, denoms = [], [], set()
    for path in sorted((ASSETS / "heldout_photos").glob("*.jpg")):
        jpeg, full = EncodedJpeg.read(path), load_rgb(path)
        for seed in range(20):
            a = maker(jpeg, np.random.default_rng(seed))
            b = maker(full, np.random.default_rng(seed))
            for key in ("short_side", "scaled_size", "crop", "flip"):
                assert a["meta"][key] == b["meta"][key], key
            assert (a["n_colors"], a["patch"], a["keep_texture"]) == (b["n_colors"], b["patch"], b["keep_texture"])
            d = (a["target"] - b["target"]).abs()
            if a["meta"]["short_side"] * 2 >= min(full.shape[1:]):
                assert a["meta"]["dct_denom"] == 1 and float(d.max()) < 1e-4  # the same pixels, the same taps
                continue
            denoms.add(a["meta"]["dct_denom"])
            assert float(d.mean()) < 6 / 255, (path.name, a["meta"])
            diffs.append(float(d.mean()))
            if a["keep_texture"]:
                density.append((float(a["hint"][3:5].mean()), float(b["hint"][3:5].mean())))
    assert {1, 2} <= denoms and float(np.mean(diffs)) < 1.5 / 255
    lazy, whole = np.mean(density, axis=0)
    assert abs(lazy / whole - 1) < 0.03


def test_dct_margin_trades_speed_for_fidelity():
    path = ASSETS / "heldout_photos" / "kivy_city_towers.jpg"
    jpeg, full = EncodedJpeg.read(path), load_rgb(path)
    err = {}
    for margin in (1.0, 2.0, 0.0):
        maker = _maker(p_patch=0.0, p_gray=0.0, p_saturation=0.0, dct_margin=margin)
        err[margin] = np.mean([float((maker(jpeg, np.random.default_rng(s))["target"]
                                      - maker(full, np.random.default_rng(s))["target"]).abs().mean())
                               for s in range(30)])
    assert err[0.0] < 1e-5 < err[2.0] < err[1.0]  # 0: always the full decode, as the cached path
    with pytest.raises(ValueError, match="dct_margin"):
        _maker(dct_margin=0.5)


def test_scale_and_crop_distributions_are_the_authors(tmp_path):
    # Over many draws the lazily decoded photo gives exactly the full decode's scale / crop / flip choices.
    path = _jpeg(tmp_path, "p.jpg", _photo(100, 150, seed=5))
    jpeg, full = EncodedJpeg.read(path), load_rgb(path)
    maker = _maker(p_patch=0.0)
    for seed in range(200):
        rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
        _, meta_a = maker.augment(jpeg, rng_a)
        _, meta_b = maker.augment(full, rng_b)
        assert {k: meta_a[k] for k in meta_b} == meta_b
        assert rng_a.random() == rng_b.random()  # the same stream consumed


def test_small_and_capped_encoded_photos(tmp_path):
    small = EncodedJpeg.read(_jpeg(tmp_path, "s.jpg", _photo(20, 28)))
    example = _maker()(small, np.random.default_rng(0))  # smaller than the crop: decoded whole, upscaled
    assert example["meta"]["small"] and example["target"].shape == (3, 32, 32)
    capped = _maker(max_short_side=40)
    big = EncodedJpeg.read(_jpeg(tmp_path, "b.jpg", _photo(200, 300)))
    full = load_rgb(tmp_path / "b.jpg")
    a, b = capped(big, np.random.default_rng(2)), capped(full, np.random.default_rng(2))
    assert a["meta"]["scaled_size"] == b["meta"]["scaled_size"] and a["meta"]["crop"] == b["meta"]["crop"]
    assert float((a["target"] - b["target"]).abs().mean()) < 3 / 255  # one resampling instead of two


def test_area_crop_equals_opencv_area_resize_then_crop():
    rng = np.random.default_rng(2)
    for trial in range(60):
        h, w = (int(v) for v in rng.integers(30, 200, 2))
        src = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        hs, ws = int(rng.integers(max(2, h // 20), h // 2)), int(rng.integers(max(2, w // 20), w // 2))
        size = int(rng.integers(1, min(hs, ws) + 1))
        top, left = int(rng.integers(0, hs - size + 1)), int(rng.integers(0, ws - size + 1))
        flip = bool(trial % 2)
        chw = np.ascontiguousarray(src.transpose(2, 0, 1)).astype(np.float32) / np.float32(255.0)
        expected = kernels.crop_clip(resize_array(chw, hs, ws, clip=False), top, left, size, flip)
        got = kernels.area_crop(src, 1.0 / (hs / h), 1.0 / (ws / w), top, left, size, flip)
        assert np.abs(got - expected).max() < 1e-5


def test_jpeg_bytes_in_memory(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(_photo(30, 40)).save(buffer, "JPEG")
    jpeg = EncodedJpeg.read("shard-000001.tar:photo.jpg", data=buffer.getvalue())
    assert (jpeg.height, jpeg.width) == (30, 40) and jpeg.tensor().shape == (3, 30, 40)
    assert EncodedJpeg.read("x.png", data=b"\x89PNG....") is None
