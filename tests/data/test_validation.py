"""The fixed validation set (dequant.data.validation): the same problems for every job of a sweep, whatever its
palette sizes, quantizer, cue dropout or mask settings; the evaluation's own test cases; bad recipes refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dequant.color.cues import TextureCue
from dequant.color.quantize import Quantizer, quantize
from dequant.data.datamodule import DequantDataModule
from dequant.data.examples import ExampleMaker
from dequant.data.palette_sizes import FixedPaletteSize, WeightedPowerOfTwo
from dequant.data.validation import FixedValidation, center_crop, requested_palette

CROP = 32


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:40, :52]
    for i in range(6):
        img = np.zeros((40, 52, 3))
        for _ in range(4):
            cy, cx, r = rng.uniform(0, 40), rng.uniform(0, 52), rng.uniform(5, 12)
            img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)[..., None] * rng.uniform(0, 1, 3)
        img += rng.uniform(0, 0.05, img.shape)  # some texture for the cue
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / f"p{i}.png")
    return root


def _dm(folder: Path, example: ExampleMaker, **fixed) -> DequantDataModule:
    dm = DequantDataModule(str(folder), example, batch_size=4, num_workers=0, n_val=3, n_test=1,
                           val_fixed=FixedValidation(**{"images": 2, **fixed}))
    dm.setup("fit")
    return dm


def test_the_set_does_not_depend_on_the_jobs_palette_sizes_quantizer_or_dropout(folder: Path) -> None:
    a = _dm(folder, ExampleMaker(crop_size=CROP, palette_sizes=WeightedPowerOfTwo(), quantizer=Quantizer("median_cut"),
                                 cue=TextureCue("T", p_drop=0.65), p_patch=0.5))
    b = _dm(folder, ExampleMaker(crop_size=CROP, palette_sizes=FixedPaletteSize(4), quantizer=Quantizer("kmeans"),
                                 cue=TextureCue("T", p_drop=0.0), p_patch=0.0, mask_frac=(0.2, 0.3)))
    assert [s.name for s in a.val_fixed_settings] == ["r_tex/N4", "r_tex/N16", "r_tex/N64", "p_tex/mean",
                                                      "r/N4", "r/N16", "r/N64", "p/mean"]
    assert len(a.val_fixed_examples) == 2 * 8 == len(b.val_fixed_examples)
    for ea, eb in zip(a.val_fixed_examples, b.val_fixed_examples):
        assert ea.keys() == eb.keys()
        for key in ea:
            assert torch.equal(ea[key], eb[key]), key
    # The job's own examples do differ (its palette sizes), and they stay the first loader.
    own, fixed = a.val_dataloader()
    assert not torch.equal(a.val_examples[0]["hint"], b.val_examples[0]["hint"])
    assert len(fixed.dataset) == 16 and len(own.dataset) == len(a.val_examples)


def test_examples_are_the_evaluations_cases(folder: Path) -> None:
    dm = _dm(folder, ExampleMaker(crop_size=CROP, cue=TextureCue("G")))
    names = [s.name for s in dm.val_fixed_settings]
    val_ids = [int(p) for p in dm.positions["val"]]
    first = [e for e in dm.val_fixed_examples if int(e["image_id"]) == val_ids[0]]
    assert [names[int(e["setting"])] for e in first] == names  # photo-major, every setting once
    assert [int(e["index"]) for e in dm.val_fixed_examples] == list(range(16))
    photo = center_crop(dm._source("val").get(0)[1], CROP)
    for e in first:
        name = names[int(e["setting"])]
        assert torch.equal(e["target"], photo)
        if name.startswith("r"):
            n = int(name.split("/N")[1])
            assert torch.allclose(e["requested"], quantize(photo, n).image)  # median cut, whatever the job's
            palette, _ = requested_palette(e["requested"])
            assert len(palette) <= n and not e["mask"].any()
            assert float(e["hint"][5].mean()) == pytest.approx(n / 256)  # the color indicator: N / 256
        else:
            assert e["mask"].any() and torch.allclose(e["requested"][:, e["mask"]].mean(1), e["fill"], atol=1e-6)
        given = name.split("/")[0].endswith("_tex")
        # Texture given: the job's cue (G) in the hint; dropped: the neutral value with indicator 0.
        inside = e["mask"] if name.startswith("p") else torch.ones_like(e["mask"])
        assert bool((e["hint"][6][inside] == 1).all()) == given
    # The same photo, seed and test always draw the same mask; another seed another one.
    again = _dm(folder, ExampleMaker(crop_size=CROP, cue=TextureCue("G")))
    other = _dm(folder, ExampleMaker(crop_size=CROP, cue=TextureCue("G")), seed=1)
    patch = names.index("p/mean")
    assert torch.equal(again.val_fixed_examples[patch]["mask"], dm.val_fixed_examples[patch]["mask"])
    assert not torch.equal(other.val_fixed_examples[patch]["mask"], dm.val_fixed_examples[patch]["mask"])


def test_a_job_without_cue_gets_the_dropped_variants_only(folder: Path) -> None:
    dm = _dm(folder, ExampleMaker(crop_size=CROP, cue=TextureCue("none")), sizes=[4], patch=False)
    assert [s.name for s in dm.val_fixed_settings] == ["r/N4"]
    assert len(dm.val_fixed_examples) == 2


@pytest.mark.parametrize("kwargs, key", [({"images": 0}, "images"), ({"sizes": [4, 300]}, "sizes"),
                                         ({"sizes": [4, 4]}, "sizes"), ({"sizes": [], "patch": False}, "sizes"),
                                         ({"seed": -1}, "seed"), ({"images": True}, "images")])
def test_bad_recipes_are_refused_naming_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        FixedValidation(**kwargs)
