"""Palette-size distributions and the on-the-fly example maker (SPEC 1.2-1.7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dequant.color.cues import TextureCue
from dequant.color.hint import COLOR, COLOR_IND, CUE, TEX_IND
from dequant.color.quantize import Quantizer
from dequant.data.examples import _CHECKED, GRAY_METHODS, STAGES, ExampleMaker
from dequant.data.io import load_rgb
from dequant.data.palette_sizes import FixedPaletteSize, UniformPaletteSize, WeightedPowerOfTwo

ASSETS = Path(__file__).resolve().parents[2] / "src" / "dequant" / "assets" / "images"


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    # A downscaled real photo: real segments and colors, but cheap to rescale every time.
    import cv2

    x = load_rgb(ASSETS / "chelsea.jpg").permute(1, 2, 0).numpy()
    small = cv2.resize(x, (68, 45), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(small).permute(2, 0, 1).clamp(0, 1).contiguous()


def _maker(**kwargs) -> ExampleMaker:
    kwargs.setdefault("crop_size", 32)
    return ExampleMaker(**kwargs)


# ---------------------------------------------------------------------------------------------- palette sizes


def test_weighted_power_of_two_authors_weights():
    probs = WeightedPowerOfTwo().probabilities()
    weights = np.array([1.5 - k / 7 for k in range(8)])
    assert list(probs) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert np.allclose(list(probs.values()), weights / weights.sum())
    assert sum(probs.values()) == pytest.approx(1.0)
    assert list(WeightedPowerOfTwo(k_min=2, k_max=8).probabilities()) == [4, 8, 16, 32, 64, 128, 256]


@pytest.mark.parametrize("dist", [WeightedPowerOfTwo(), FixedPaletteSize(12), UniformPaletteSize(3, 9)])
def test_sampling_frequencies_match_probabilities(dist):
    rng = np.random.default_rng(0)
    draws = np.array([dist.sample(rng) for _ in range(20000)])
    probs = dist.probabilities()
    assert sum(probs.values()) == pytest.approx(1.0)
    assert set(np.unique(draws)) <= set(probs)
    for size, p in probs.items():
        assert abs((draws == size).mean() - p) < 4 * np.sqrt(p * (1 - p) / draws.size) + 1e-9
    again = np.random.default_rng(0)
    assert [dist.sample(again) for _ in range(50)] == draws[:50].tolist()


def test_palette_size_validation():
    for bad, name in [
        (lambda: FixedPaletteSize(0), "n"),
        (lambda: FixedPaletteSize(257), "n"),
        (lambda: FixedPaletteSize(2.5), "n"),
        (lambda: UniformPaletteSize(10, 3), "high"),
        (lambda: UniformPaletteSize(0, 3), "low"),
        (lambda: WeightedPowerOfTwo(k_max=9), "k_max"),
        (lambda: WeightedPowerOfTwo(k_min=3, k_max=2), "k_max"),
        (lambda: WeightedPowerOfTwo(offset=1.0), "offset"),
        (lambda: FixedPaletteSize(4).sample(3), "rng"),
    ]:
        with pytest.raises(ValueError, match=name):
            bad()


# ---------------------------------------------------------------------------------------------- examples


def test_example_shapes_ranges(photo):
    ex = _maker()(photo, np.random.default_rng(0))
    assert ex["hint"].shape == (7, 32, 32) and ex["hint"].dtype == torch.float32
    assert ex["target"].shape == (3, 32, 32) and ex["target"].dtype == torch.float32
    assert ex["mask"].shape == (32, 32) and ex["mask"].dtype == torch.bool
    for key in ("hint", "target"):
        assert 0.0 <= float(ex[key].min()) and float(ex[key].max()) <= 1.0
    assert isinstance(ex["n_colors"], int) and isinstance(ex["patch"], bool)


@pytest.mark.parametrize("seed", range(4))
def test_palette_mode_channels(photo, seed):
    quantizer = Quantizer()
    maker = _maker(p_patch=0.0, quantizer=quantizer)
    ex = maker(photo, np.random.default_rng(seed))
    h = ex["hint"]
    assert not ex["patch"] and not ex["mask"].any()
    assert torch.equal(h[COLOR], quantizer(ex["target"], ex["n_colors"]).image)
    assert torch.all(h[COLOR_IND] == ex["n_colors"] / 256)
    assert torch.all(h[TEX_IND] == float(ex["keep_texture"]))
    if ex["keep_texture"]:
        assert torch.equal(h[CUE], maker.cue(ex["target"]))
    else:
        assert torch.all(h[CUE] == 0)


def test_palette_mode_texture_drop_rate(photo):
    maker = _maker(p_patch=0.0, cue=TextureCue(p_drop=0.65), palette_sizes=FixedPaletteSize(2))
    kept = [maker(photo, np.random.default_rng(i))["keep_texture"] for i in range(120)]
    assert 0.2 < np.mean(kept) < 0.5


@pytest.mark.parametrize("seed", range(4))
def test_patch_mode_channels(photo, seed):
    maker = _maker(p_patch=1.0)
    ex = maker(photo, np.random.default_rng(seed))
    h, m, target = ex["hint"], ex["mask"], ex["target"]
    assert ex["patch"] and m.any() and not m.all()
    assert torch.all(h[COLOR_IND][m] == 1 / 256) and torch.all(h[COLOR_IND][~m] == 1)
    assert torch.equal(h[COLOR][:, ~m], target[:, ~m])
    mean = target[:, m].mean(dim=1, keepdim=True)
    assert torch.allclose(h[COLOR][:, m], mean.expand(3, int(m.sum())), atol=1e-6)
    assert torch.all(h[TEX_IND][~m] == 1)
    assert torch.equal(h[CUE][:, ~m], maker.cue(target)[:, ~m])
    assert torch.all(h[TEX_IND][m] == float(ex["keep_texture"]))


def test_eval_mode_fills_a_random_color(photo):
    maker = _maker(p_patch=1.0)
    train = maker(photo, np.random.default_rng(5))
    ev = maker(photo, np.random.default_rng(5), eval_mode=True)
    m = ev["mask"]
    assert torch.equal(m, train["mask"]) and torch.equal(ev["target"], train["target"])
    fill = ev["hint"][COLOR][:, m]
    assert torch.all(fill == fill[:, :1])  # one flat color
    assert not torch.allclose(fill[:, 0], train["hint"][COLOR][:, m][:, 0], atol=1e-3)
    assert torch.equal(maker(photo, np.random.default_rng(5), eval_mode=True)["hint"], ev["hint"])


def test_determinism_and_variety(photo):
    maker = _maker()
    a, b = maker(photo, np.random.default_rng(7)), maker(photo, np.random.default_rng(7))
    for key in ("hint", "target", "mask"):
        assert torch.equal(a[key], b[key])
    assert (a["n_colors"], a["patch"], a["meta"]) == (b["n_colors"], b["patch"], b["meta"])
    targets = [maker(photo, np.random.default_rng(s))["target"] for s in range(6)]
    assert all(not torch.equal(targets[0], t) for t in targets[1:])


def test_source_not_modified(photo):
    before = photo.clone()
    _maker(p_gray=1.0, p_saturation=1.0)(photo, np.random.default_rng(0))
    assert torch.equal(photo, before)


def test_rescale_range_and_crop(photo):
    maker = _maker(crop_size=16)
    shorts = [maker(photo, np.random.default_rng(s))["meta"]["short_side"] for s in range(40)]
    assert min(shorts) >= 16 and max(shorts) <= 45 and len(set(shorts)) > 10


@pytest.mark.parametrize("shape", [(1, 1), (10, 200), (200, 10), (31, 40)])
@pytest.mark.parametrize("small_image", ["upscale", "pad"])
def test_images_smaller_than_the_crop(shape, small_image):
    image = torch.rand(3, *shape, generator=torch.Generator().manual_seed(0))
    ex = _maker(small_image=small_image)(image, np.random.default_rng(1))
    assert ex["hint"].shape == (7, 32, 32) and ex["target"].shape == (3, 32, 32)
    assert ex["meta"]["short_side"] == 32


def test_pad_mode_reflects_the_source():
    image = torch.rand(3, 10, 200, generator=torch.Generator().manual_seed(0))
    ex = _maker(small_image="pad", p_gray=0.0, p_saturation=0.0)(image, np.random.default_rng(2))
    left = ex["meta"]["crop"][1]
    rows = image[:, :, left:left + 32]
    rows = rows.flip(-1) if ex["meta"]["flip"] else rows  # the flip follows the crop
    # Every target row is one of the 10 source rows (reflection copies rows, never resamples them).
    for r in range(32):
        assert any(torch.equal(ex["target"][:, r], rows[:, i]) for i in range(10))


def test_gray_and_saturation_augmentations(photo):
    seen = set()
    for s in range(30):
        ex = _maker(p_gray=1.0, p_saturation=0.0)(photo, np.random.default_rng(s))
        t = ex["target"]
        assert torch.equal(t[0], t[1]) and torch.equal(t[1], t[2])
        seen.add(ex["meta"]["gray"])
    assert seen == set(GRAY_METHODS)
    ex = _maker(p_gray=0.0, p_saturation=1.0)(photo, np.random.default_rng(0))
    assert 0.0 <= ex["meta"]["saturation"] < 2.0


def test_max_short_side(photo):
    maker = _maker(crop_size=16, max_short_side=20)
    assert all(maker(photo, np.random.default_rng(s))["meta"]["short_side"] <= 20 for s in range(10))


def test_cue_mode_none_drops_texture_everywhere(photo):
    for patch in (0.0, 1.0):
        ex = _maker(p_patch=patch, cue=TextureCue(mode="none"))(photo, np.random.default_rng(0))
        assert torch.all(ex["hint"][TEX_IND] == 0) and torch.all(ex["hint"][CUE] == 0)


def test_profile_timings(photo):
    maker = _maker(profile=True)
    assert maker.timings() == {}
    for s in range(3):
        maker(photo, np.random.default_rng(s))
    t = maker.timings()
    assert set(t) == set(STAGES) and t["augment"] > 0 and all(v >= 0 for v in t.values())
    maker.reset_timings()
    assert maker.timings() == {}


def test_argument_validation(photo):
    for kwargs, name in [
        ({"crop_size": 0}, "crop_size"),
        ({"p_patch": 1.5}, "p_patch"),
        ({"p_gray": -0.1}, "p_gray"),
        ({"small_image": "crop"}, "small_image"),
        ({"segmenters": ["kmeans"]}, "segmenters"),
        ({"mask_frac": (0.2, 0.1)}, "mask_frac"),
        ({"max_short_side": 8}, "max_short_side"),
        ({"palette_sizes": 8}, "palette_sizes"),
    ]:
        with pytest.raises(ValueError, match=name):
            _maker(**kwargs)
    maker = _maker()
    with pytest.raises(ValueError, match="rng"):
        maker(photo, 0)
    with pytest.raises(ValueError, match="image"):
        maker(photo[:2], np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        maker(photo * 2, np.random.default_rng(0))


# ------------------------------------------------------------------------------------ cached image segmentation


@pytest.mark.parametrize("small_image", ["upscale", "pad"])
def test_image_segmentation_same_with_warm_or_cold_cache(photo, small_image):
    settings = dict(p_patch=1.0, p_superpixel=1.0, segment_max_side=None, small_image=small_image,
                    segmenters=("felzenszwalb", "slic", "watershed"))
    maker = _maker(segment_source="image", **settings)
    crop_maker = _maker(segment_source="crop", **settings)
    cache: dict = {}
    tiny = photo[:, :20, :28].contiguous()  # smaller than the crop: the upscale / pad path
    differs = 0
    for seed in range(6):
        for image in (photo, tiny):
            cold = maker(image, np.random.default_rng(seed), segment_cache={})
            filled = maker(image, np.random.default_rng(seed), segment_cache=cache)
            warm = maker(image, np.random.default_rng(seed), segment_cache=cache)
            for key in ("hint", "target", "mask"):
                assert torch.equal(cold[key], filled[key]) and torch.equal(cold[key], warm[key])
            mask = cold["mask"]
            assert mask.any() and not mask.all()
            # No cache (a photo nothing keeps): its crop is segmented, as segment_source=crop does.
            uncached, cropped = maker(image, np.random.default_rng(seed)), crop_maker(image, np.random.default_rng(seed))
            for key in ("hint", "target", "mask"):
                assert torch.equal(uncached[key], cropped[key])
            differs += not torch.equal(uncached["mask"], mask)
    assert differs >= 6
    segments = {key: value for key, value in cache.items() if key != _CHECKED}
    # Label maps are cached as uint16 (half of int32's memory; tests/color/test_masks.py cuts both alike).
    assert segments and all(labels.dtype == np.uint16 for labels, _ in segments.values())


def test_a_cached_image_is_range_checked_once(photo, monkeypatch):
    from dequant.data import examples

    calls = []
    check = examples._kernels().in_unit_range
    monkeypatch.setattr(examples._kernels(), "in_unit_range", lambda chw: calls.append(1) or check(chw))
    maker = _maker()
    cache: dict = {}
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        maker(photo * 2, np.random.default_rng(0), segment_cache=cache)
    assert cache == {}  # a failed check notes nothing
    examples_ = [maker(photo, np.random.default_rng(seed), segment_cache=cache) for seed in range(3)]
    assert len(calls) == 2 and cache[_CHECKED] is True
    for seed, example in enumerate(examples_):  # the note changes nothing in the example
        uncached = maker(photo, np.random.default_rng(seed))
        assert all(torch.equal(example[key], uncached[key]) for key in ("hint", "target", "mask"))
    assert len(calls) == 5  # without a cache, every example checks


def test_image_segmentation_buckets_cover_the_scales(photo):
    maker = _maker(segment_source="image")
    step = maker.segment_scale_step
    for short in range(32, 46):
        b = maker.bucket(short, 45)
        assert 32 <= b <= 45
        assert abs(np.log(short / b)) <= np.log(step) / 2 + 0.03 or b == 45
    with pytest.raises(ValueError, match="segment_source"):
        _maker(segment_source="tile")
    with pytest.raises(ValueError, match="segment_scale_step"):
        _maker(segment_scale_step=1.0)


def test_image_segmentation_mask_follows_crop_and_flip(photo):
    # The mask's labels are cut from the source's segmentation at the crop's place: the same crop flipped gives
    # the mirrored labels.
    maker = _maker(segment_source="image")
    source = photo.numpy()
    meta = {"small": False, "short_side": 45, "scaled_size": (45, 68), "crop": (5, 20), "flip": False,
            "source_size": source.shape[1:]}
    cache: dict = {}
    rgb = np.zeros((3, 32, 32), np.float32)  # the crop: only segmented when the source is missing
    plain = maker._labels("slic", meta, rgb, source, cache)
    flipped = maker._labels("slic", {**meta, "flip": True}, rgb, source, cache)
    assert plain.shape == (32, 32) and len(cache) == 1
    # Same partition mirrored (numbering may differ).
    a, b = plain[:, ::-1].ravel(), flipped.ravel()
    assert len(set(zip(a.tolist(), b.tolist()))) == len(np.unique(a)) == len(np.unique(b))


# ------------------------------------------------------------------------------------ the same examples as before


def _gray(chw: np.ndarray, method: str) -> np.ndarray:
    """The three gray conversions as SPEC 1.3 defines them: BT.601 luma (OpenCV's weights), CIELab L / 100, mean."""
    from dequant.color.colorspace import rgb_to_lab

    if method == "opencv":
        gray = np.tensordot(np.array([0.299, 0.587, 0.114], dtype=np.float32), chw, axes=1)
    elif method == "lab_l":
        gray = (rgb_to_lab(torch.from_numpy(chw))[0] / 100.0).numpy()
    else:
        assert method == "mean", method
        gray = chw.mean(axis=0)
    return np.repeat(np.clip(gray, 0.0, 1.0).astype(np.float32)[None], 3, axis=0)


def _saturation(chw: np.ndarray, factor: float) -> np.ndarray:
    """HSV saturation times `factor`, clipped (OpenCV's HSV)."""
    import cv2

    hsv = cv2.cvtColor(np.ascontiguousarray(chw.transpose(1, 2, 0)), cv2.COLOR_RGB2HSV)
    hsv[..., 1] = np.clip(hsv[..., 1] * factor, 0.0, 1.0)
    return np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0.0, 1.0).transpose(2, 0, 1)


def _reference_example(maker: ExampleMaker, image: torch.Tensor, rng: np.random.Generator, eval_mode: bool,
                       cache: dict) -> dict:
    """The example as the maker made it before it worked on its own numpy arrays (issue 10): every stage through
    the validated torch functions (quantize, patch_mask, fill_mask, texture cue, hint) and the tested resize
    (`dequant.data.resize`), the rescale clipped whole; the cap, the small-image path, gray and saturation written
    out here, not taken from the maker. Only the cut from a cached whole-image segmentation is the maker's own
    (`maker._labels`, checked against its own segmentation by the two image-segmentation tests above)."""
    from dequant.color.hint import fill_mask, hint
    from dequant.color.masks import patch_mask
    from dequant.data.examples import GRAY_METHODS
    from dequant.data.resize import resize_array, short_side_size

    chw = image.numpy().astype(np.float32)
    s = maker.crop_size
    h, w = chw.shape[1:]
    if maker.max_short_side is not None and min(h, w) > maker.max_short_side:
        chw = resize_array(chw, *short_side_size(h, w, maker.max_short_side))
    source = chw
    h, w = chw.shape[1:]
    meta: dict = {"source_size": tuple(image.shape[1:])}
    if min(h, w) < s:
        if maker.small_image == "upscale":
            chw = resize_array(chw, *short_side_size(h, w, s))
        else:
            ph, pw = max(s - h, 0), max(s - w, 0)
            chw = np.pad(chw, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="reflect")
        meta["short_side"], meta["small"] = s, True
    else:
        short = int(rng.integers(s, min(h, w) + 1))
        chw, meta["short_side"], meta["small"] = resize_array(chw, *short_side_size(h, w, short)), short, False
    h, w = chw.shape[1:]
    meta["scaled_size"] = (h, w)
    top, left = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
    chw = chw[:, top:top + s, left:left + s]
    meta["crop"] = (top, left)
    meta["flip"] = bool(rng.random() < 0.5)
    if meta["flip"]:
        chw = chw[:, :, ::-1]
    chw = np.clip(chw, 0.0, 1.0).astype(np.float32, copy=False)
    meta["gray"] = None
    if rng.random() < maker.p_gray:
        meta["gray"] = GRAY_METHODS[int(rng.integers(len(GRAY_METHODS)))]
        chw = _gray(chw, meta["gray"])
    meta["saturation"] = None
    if rng.random() < maker.p_saturation:
        meta["saturation"] = float(rng.uniform(0.0, 2.0))
        chw = _saturation(chw, meta["saturation"])
    target = torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float32))

    n_colors = int(maker.palette_sizes.sample(rng))
    patch = bool(rng.random() < maker.p_patch)
    q_seed = int(rng.integers(2**31))
    keep = bool(maker.cue.keep_texture(rng))
    if patch:
        superpixel = bool(rng.random() < maker.p_superpixel)
        index = None if superpixel else maker.quantizer(target, n_colors, seed=q_seed).index
        labels = None
        if maker.segment_source == "image":
            labels = lambda method: maker._labels(method, meta, chw, source, cache)  # noqa: E731
        mask = patch_mask(target, index, rng, p_superpixel=1.0 if superpixel else 0.0, segmenters=maker.segmenters,
                          frac_range=maker.mask_frac, segment_max_side=maker.segment_max_side, labels=labels)
        fill = torch.from_numpy(rng.random(3).astype(np.float32)) if eval_mode else None
        color = fill_mask(target, mask, fill)
        meta["superpixel"] = superpixel
    else:
        color = maker.quantizer(target, n_colors, seed=q_seed).image
        mask = torch.zeros((s, s), dtype=torch.bool)
    cue = maker.cue(target) if keep or patch else torch.zeros((2, s, s))
    h = hint(color, cue, mode="patch" if patch else "palette", n_colors=None if patch else n_colors,
             mask=mask if patch else None, keep_texture=keep, cue_mode=maker.cue.mode, g_neutral=maker.cue.g_neutral)
    return {"hint": h, "target": target, "mask": mask, "n_colors": n_colors, "patch": patch, "keep_texture": keep,
            "meta": meta}


@pytest.mark.parametrize("config", [
    {"p_superpixel": 0.5, "p_gray": 0.3, "p_saturation": 0.3},
    {"segment_source": "image", "segment_max_side": None, "cue": TextureCue(mode="G", g_neutral=0.0)},
    {"cue": TextureCue(mode="L"), "p_superpixel": 0.0, "segmenters": ("slic",), "small_image": "pad"},
    {"cue": TextureCue(mode="none"), "quantizer": Quantizer("kmeans"), "p_superpixel": 0.3},
    {"cue": TextureCue(threshold=7.9999999), "segment_max_side": 16, "max_short_side": 40},
])
def test_examples_equal_the_validated_torch_pipeline(photo, config):
    # Bit-identical examples for the same seed, whatever path the maker takes internally.
    maker = _maker(**config)
    tiny = photo[:, :20, :28].contiguous()
    cache: dict = {}
    seen = set()
    for seed in range(10):
        for image in (photo, tiny):
            for eval_mode in (False, True):
                ex = maker(image, np.random.default_rng([seed, eval_mode]), eval_mode=eval_mode, segment_cache=cache)
                ref = _reference_example(maker, image, np.random.default_rng([seed, eval_mode]), eval_mode, cache)
                for key in ("hint", "target", "mask"):
                    assert ex[key].dtype == ref[key].dtype and torch.equal(ex[key], ref[key]), (key, seed, eval_mode)
                assert all(ex[k] == ref[k] for k in ("n_colors", "patch", "keep_texture", "meta"))
                seen.add((ex["patch"], ex["meta"].get("superpixel")))
    assert (False, None) in seen and {(True, config.get("p_superpixel", 0.9) > 0)} <= seen  # both modes compared
