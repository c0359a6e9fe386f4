"""The five evaluation tests: grids exactly as SPEC 5, inputs, ground truth, seeding, metrics on crafted cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dequant.color.colorspace import rgb_to_lab
from dequant.color.cues import TextureCue, neutral_value
from dequant.color.edits import apply_hsv_shift
from dequant.color.hint import COLOR, COLOR_IND, CUE, TEX_IND
from dequant.color.matching import colormap_palette
from dequant.color.quantize import Quantizer
from dequant.evaluation import tests as T
from dequant.metrics import ciede2000

QUANTIZER = Quantizer()


def _case(letter: str, images: torch.Tensor, index: int = 0, cue: TextureCue | None = None, ids=(0, 1), **kw):
    setting = T.settings(letter)[index]
    return T.build_case(setting, images, quantizer=QUANTIZER, cue=cue or TextureCue(),
                        rngs=T.image_rngs(7, setting, ids), seed=7, **kw)


def test_grids_are_exactly_the_papers() -> None:
    labels = {letter: [s.label for s in T.settings(letter)] for letter in T.TEST_LETTERS}
    assert labels["r"] == ["N=64", "N=16", "N=4"]
    assert len(labels["h"]) == 15 and labels["h"][0] == "s=0.1 N=4" and labels["h"][-1] == "s=0.5 N=64"
    assert {s.strength for s in T.settings("h")} == {0.1, 0.2, 0.3, 0.4, 0.5}
    assert labels["t"] == ["score=color N=8", "score=color N=32", "score=neg N=8", "score=neg N=32"]
    assert labels["p"] == ["fill=mean", "fill=random"]
    m = T.settings("m")
    assert len(m) == 24 and {s.colormap for s in m} == set(T.M_COLORMAPS) and {s.n_colors for s in m} == {64, 16, 4}
    assert set(T.M_COLORMAPS) == {"viridis", "plasma", "inferno", "cividis", "bone", "magma", "hsv", "twilight"}
    slugs = [s.slug for letter in T.TEST_LETTERS for s in T.settings(letter)]
    assert len(set(slugs)) == len(slugs) and "h_s0.3_N16" in slugs and "t_neg_N8" in slugs
    assert T.variant_name("r", True) == "r_tex" and T.variant_name("r", False) == "r"


def test_parse_tests() -> None:
    assert T.parse_tests("rhtpm") == list("rhtpm")
    assert T.parse_tests("mrm") == ["m", "r"]
    with pytest.raises(ValueError, match="tests"):
        T.parse_tests("rx")
    with pytest.raises(ValueError, match="tests"):
        T.parse_tests("")


@pytest.mark.parametrize("keep", [True, False])
def test_reconstruction_case(tiny_images: torch.Tensor, keep: bool) -> None:
    case = _case("r", tiny_images, index=2)  # N = 4
    q = [QUANTIZER(img, 4, seed=7) for img in tiny_images]
    torch.testing.assert_close(case.requested, torch.stack([x.image for x in q]))
    assert case.target is tiny_images or torch.equal(case.target, tiny_images)
    h = case.hints[keep]
    assert h.shape == (2, 7, 32, 32)
    torch.testing.assert_close(h[:, COLOR], case.requested)
    assert torch.all(h[:, COLOR_IND] == 4 / 256)
    assert torch.all(h[:, TEX_IND] == float(keep))
    cue = TextureCue()(tiny_images)
    expected_cue = cue if keep else torch.full_like(cue, neutral_value("T"))
    torch.testing.assert_close(h[:, CUE], expected_cue)
    assert case.index.shape == (2, 32, 32) and all(p.shape[0] <= 4 for p in case.palettes)


def test_g_cue_drops_to_its_neutral_value(tiny_images: torch.Tensor) -> None:
    case = _case("r", tiny_images, cue=TextureCue(mode="G", g_neutral=0.5))
    assert torch.all(case.hints[False][:, CUE] == 0.5)
    assert not torch.all(case.hints[True][:, CUE] == 0.5)


def test_hsv_case_ground_truth_is_the_same_shift_of_the_source(tiny_images: torch.Tensor) -> None:
    settings = T.settings("h")
    by_n = {}
    for setting in [s for s in settings if s.strength == 0.3]:
        case = T.build_case(setting, tiny_images, quantizer=QUANTIZER, cue=TextureCue(),
                            rngs=T.image_rngs(0, setting, [0, 1]))
        shifts = case.extras["shifts"]
        for i, shift in enumerate(shifts):
            assert abs(shift.hue) <= 0.3 and 0.7 <= shift.sat <= 1.3 and 0.7 <= shift.val <= 1.3
            torch.testing.assert_close(case.target[i], apply_hsv_shift(tiny_images[i], shift))
            q = QUANTIZER(tiny_images[i], setting.n_colors, seed=0)
            torch.testing.assert_close(case.palettes[i], apply_hsv_shift(q.palette, shift))
            torch.testing.assert_close(case.requested[i], case.palettes[i][case.index[i]].permute(2, 0, 1))
        by_n[setting.n_colors] = shifts
        assert shifts[0] != shifts[1]  # every image draws its own edit
    # One edit per image and strength, shared by the three palette sizes.
    assert by_n[4] == by_n[16] == by_n[64]


def test_transfer_case_uses_the_next_images_palette(tiny_images: torch.Tensor) -> None:
    case = _case("t", tiny_images, index=0)  # color, N = 8
    torch.testing.assert_close(case.reference, tiny_images.roll(-1, 0))
    assert case.target is None
    for i in range(2):
        target = QUANTIZER(tiny_images[1 - i], 8, seed=7).palette
        assert torch.equal(case.extras["target_palettes"][i], target)
        # Every requested color is one of the other image's colors, in the source's layout.
        used = case.palettes[i][case.index[i].unique()]
        assert all(bool((target == c).all(1).any()) for c in used)
    neg = _case("t", tiny_images, index=2)
    assert neg.setting.score == "neg" and not torch.equal(neg.requested, case.requested)


def test_colormap_case_only_uses_colormap_colors(tiny_images: torch.Tensor) -> None:
    case = _case("m", tiny_images, index=0)
    cmap = colormap_palette(case.setting.colormap, case.setting.n_colors)
    for i in range(2):
        used = case.palettes[i][case.index[i].unique()]
        assert all(bool((cmap == c).all(1).any()) for c in used)


def test_patch_cases_share_the_mask_and_fill_it(tiny_images: torch.Tensor) -> None:
    mean_case, random_case = (_case("p", tiny_images, index=i) for i in range(2))
    assert torch.equal(mean_case.mask, random_case.mask)
    assert mean_case.target is not None and random_case.target is None
    for case in (mean_case, random_case):
        for i in range(2):
            m = case.mask[i]
            assert m.any() and not m.all()
            torch.testing.assert_close(case.requested[i][:, ~m], tiny_images[i][:, ~m])
            inside = case.requested[i][:, m]
            torch.testing.assert_close(inside, case.fill[i][:, None].expand_as(inside))
        h = case.hints[False]
        assert torch.all(h[:, COLOR_IND][case.mask] == 1 / 256) and torch.all(h[:, COLOR_IND][~case.mask] == 1)
        assert torch.all(h[:, TEX_IND][case.mask] == 0) and torch.all(h[:, TEX_IND][~case.mask] == 1)
        assert torch.all(case.hints[True][:, TEX_IND] == 1)
    torch.testing.assert_close(mean_case.fill[0], tiny_images[0][:, mean_case.mask[0]].mean(1))
    assert not torch.allclose(random_case.fill, mean_case.fill)


@pytest.mark.parametrize("letter", ["h", "p"])
def test_draws_do_not_depend_on_the_batch(tiny_images: torch.Tensor, letter: str) -> None:
    setting = T.settings(letter)[1]
    both = T.build_case(setting, tiny_images, quantizer=QUANTIZER, cue=TextureCue(),
                        rngs=T.image_rngs(3, setting, [10, 11]))
    for i, image_id in enumerate([10, 11]):
        one = T.build_case(setting, tiny_images[i:i + 1], quantizer=QUANTIZER, cue=TextureCue(),
                           rngs=T.image_rngs(3, setting, [image_id]))
        torch.testing.assert_close(one.hints[True][0], both.hints[True][i])
        torch.testing.assert_close(one.hints[False][0], both.hints[False][i])


def test_cases_cover_the_grid_and_check_ids(tiny_images: torch.Tensor) -> None:
    got = [c.setting for c in T.cases("r", tiny_images, [0, 1], quantizer=QUANTIZER, cue=TextureCue())]
    assert got == T.settings("r")
    with pytest.raises(ValueError, match="image_ids"):
        next(T.cases("r", tiny_images, [0], quantizer=QUANTIZER, cue=TextureCue()))
    with pytest.raises(ValueError, match="rngs"):
        T.build_case(T.settings("h")[0], tiny_images, quantizer=QUANTIZER, cue=TextureCue(),
                     rngs=[np.random.default_rng(0)])


def test_requested_image_scores_zero_palette_error(tiny_images: torch.Tensor) -> None:
    for letter in "rhtm":
        case = _case(letter, tiny_images)
        metrics = T.case_metrics(case, case.requested)
        assert torch.all(metrics["palette_de2000"] < 1e-3), letter
        assert torch.all(metrics["palette_err_requant"] < 1e-6), letter
        assert ("psnr" in metrics) == (letter in "rh")
    metrics = T.case_metrics(_case("r", tiny_images), tiny_images)
    assert torch.all(metrics["texture_corr"] > 0.999) and torch.all(metrics["psnr"] >= 99)


def test_patch_color_error_matches_a_hand_computed_value() -> None:
    out = torch.zeros(1, 3, 4, 4)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :2] = True
    out[0, :, :2, :2] = torch.tensor([0.2, 0.4, 0.6])[:, None, None]
    out[0, :, 2:, 2:] = 1.0  # outside the mask: must not count
    fill = torch.tensor([[0.8, 0.1, 0.1]])
    expected = ciede2000(rgb_to_lab(torch.tensor([[0.2, 0.4, 0.6]])), rgb_to_lab(fill))
    torch.testing.assert_close(T.patch_color_error(out, mask, fill), expected)
    assert float(T.patch_color_error(out, mask, torch.tensor([[0.2, 0.4, 0.6]]))) < 1e-3
