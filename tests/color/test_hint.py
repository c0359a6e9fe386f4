"""The 7-channel hint: layout, indicators, texture dropping, fill_mask."""

import numpy as np
import pytest
import torch

from dequant.color.cues import CUE_MODES, neutral_value, texture_cue
from dequant.color.hint import (
    COLOR,
    COLOR_IND,
    CUE,
    HINT_CHANNELS,
    TEX_IND,
    fill_mask,
    hint,
    split_hint,
)

H, W = 12, 10


def image(seed: int = 0) -> torch.Tensor:
    return torch.rand(3, H, W, generator=torch.Generator().manual_seed(seed))


def box_mask() -> torch.Tensor:
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[3:8, 2:6] = True
    return mask


def test_layout_constants():
    assert HINT_CHANNELS == 7
    assert (COLOR, CUE, COLOR_IND, TEX_IND) == (slice(0, 3), slice(3, 5), 5, 6)


@pytest.mark.parametrize("n_colors", [1, 16, 128, 256])
def test_palette_mode_keep(n_colors):
    color, cue = image(0), texture_cue(image(1), "G")
    h = hint(color, cue, mode="palette", n_colors=n_colors)
    assert h.shape == (7, H, W) and h.dtype == torch.float32
    torch.testing.assert_close(h[COLOR], color)
    torch.testing.assert_close(h[CUE], cue)
    assert torch.all(h[COLOR_IND] == n_colors / 256)
    assert torch.all(h[TEX_IND] == 1)


@pytest.mark.parametrize("cue_mode", ["T", "G", "L"])
def test_palette_mode_dropped_texture_is_neutral(cue_mode):
    cue = texture_cue(image(1), cue_mode)
    h = hint(image(0), cue, mode="palette", n_colors=4, keep_texture=False, cue_mode=cue_mode)
    expected = 0.5 if cue_mode == "G" else 0.0
    assert torch.all(h[CUE] == expected)
    assert torch.all(h[TEX_IND] == 0)


def test_g_neutral_option_reproduces_authors_zero():
    cue = texture_cue(image(1), "G")
    h = hint(image(0), cue, n_colors=4, keep_texture=False, cue_mode="G", g_neutral=0.0)
    assert torch.all(h[CUE] == 0.0)


def test_cue_mode_none_drops_everywhere():
    cue = texture_cue(image(1), "none")
    for mode, kwargs in [("palette", {"n_colors": 8}), ("patch", {"mask": box_mask()})]:
        h = hint(image(0), cue, mode=mode, keep_texture=True, cue_mode="none", **kwargs)
        assert torch.all(h[TEX_IND] == 0) and torch.all(h[CUE] == 0)


@pytest.mark.parametrize("cue_mode", ["T", "G", "L"])
def test_patch_mode_indicators_and_texture(cue_mode):
    mask = box_mask()
    color = fill_mask(image(0), mask)
    cue = texture_cue(image(0), cue_mode)
    neutral = neutral_value(cue_mode)
    dropped = hint(color, cue, mode="patch", mask=mask, keep_texture=False, cue_mode=cue_mode)
    assert torch.all(dropped[COLOR_IND][mask] == 1 / 256) and torch.all(dropped[COLOR_IND][~mask] == 1)
    assert torch.all(dropped[TEX_IND][mask] == 0) and torch.all(dropped[TEX_IND][~mask] == 1)
    assert torch.all(dropped[CUE][:, mask] == neutral)
    torch.testing.assert_close(dropped[CUE][:, ~mask], cue[:, ~mask])
    torch.testing.assert_close(dropped[COLOR], color)
    kept = hint(color, cue, mode="patch", mask=mask, keep_texture=True, cue_mode=cue_mode)
    torch.testing.assert_close(kept[CUE], cue)
    assert torch.all(kept[TEX_IND] == 1)
    torch.testing.assert_close(kept[COLOR_IND], dropped[COLOR_IND])


@pytest.mark.parametrize("cue_mode", CUE_MODES)
@pytest.mark.parametrize("keep", [True, False])
def test_all_values_in_unit_range(cue_mode, keep):
    cue = texture_cue(image(2), cue_mode)
    for mode, kwargs in [("palette", {"n_colors": 256}), ("patch", {"mask": box_mask()})]:
        h = hint(image(0), cue, mode=mode, keep_texture=keep, cue_mode=cue_mode, **kwargs)
        assert float(h.min()) >= 0.0 and float(h.max()) <= 1.0


def test_batched_equals_per_image():
    colors = torch.stack([image(s) for s in range(3)])
    cues = texture_cue(colors, "G")
    keep = torch.tensor([True, False, True])
    n = [2, 64, 7]
    batched = hint(colors, cues, n_colors=n, keep_texture=keep, cue_mode="G")
    assert batched.shape == (3, 7, H, W)
    for i in range(3):
        single = hint(colors[i], cues[i], n_colors=n[i], keep_texture=bool(keep[i]), cue_mode="G")
        torch.testing.assert_close(batched[i], single)
    masks = torch.stack([box_mask(), ~box_mask(), box_mask().flip(0)])
    patch = hint(colors, cues, mode="patch", mask=masks, keep_texture=keep, cue_mode="G")
    for i in range(3):
        single = hint(colors[i], cues[i], mode="patch", mask=masks[i], keep_texture=bool(keep[i]), cue_mode="G")
        torch.testing.assert_close(patch[i], single)
    shared = hint(colors, cues, mode="patch", mask=box_mask(), keep_texture=False, cue_mode="G")
    assert torch.all(shared[:, TEX_IND][:, box_mask()] == 0)


def test_split_hint_round_trip():
    h = hint(image(0), texture_cue(image(0)), n_colors=3)
    parts = split_hint(h)
    assert parts["color"].shape == (3, H, W) and parts["cue"].shape == (2, H, W)
    assert parts["color_indicator"].shape == (1, H, W) and parts["texture_indicator"].shape == (1, H, W)
    torch.testing.assert_close(torch.cat(list(parts.values())), h)
    batch = split_hint(h.unsqueeze(0).repeat(2, 1, 1, 1))
    assert batch["cue"].shape == (2, 2, H, W)


def test_fill_mask_mean_and_given_color():
    img, mask = image(0), box_mask()
    filled = fill_mask(img, mask)
    mean = img[:, mask].mean(dim=1)
    torch.testing.assert_close(filled[:, mask], mean[:, None].expand(3, int(mask.sum())))
    torch.testing.assert_close(filled[:, ~mask], img[:, ~mask])
    red = fill_mask(img, mask, color=(1.0, 0.0, 0.0))
    assert torch.all(red[0, mask] == 1) and torch.all(red[1:, mask] == 0)
    torch.testing.assert_close(red[:, ~mask], img[:, ~mask])
    torch.testing.assert_close(fill_mask(img, mask, torch.tensor([0.2, 0.4, 0.6]))[:, mask][:, 0],
                               torch.tensor([0.2, 0.4, 0.6]))
    assert torch.equal(fill_mask(img, torch.zeros(H, W, dtype=torch.bool)), img)
    assert torch.equal(img, image(0))  # input untouched


def test_fill_mask_batched_per_image_means():
    imgs = torch.stack([image(1), image(2)])
    masks = torch.stack([box_mask(), torch.zeros(H, W, dtype=torch.bool)])
    out = fill_mask(imgs, masks)
    torch.testing.assert_close(out[0], fill_mask(imgs[0], masks[0]))
    assert torch.equal(out[1], imgs[1])
    mask_np = np.asarray(box_mask())
    torch.testing.assert_close(fill_mask(imgs[0], mask_np), out[0])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"mode": "palettes", "n_colors": 4}, "mode"),
        ({"n_colors": 0}, "n_colors"),
        ({"n_colors": 257}, "n_colors"),
        ({"n_colors": None}, "n_colors"),
        ({"n_colors": 4.0}, "n_colors"),
        ({"n_colors": 4, "mask": box_mask()}, "mask"),
        ({"mode": "patch"}, "mask"),
        ({"mode": "patch", "mask": torch.zeros(H, W + 1, dtype=torch.bool)}, "mask"),
        ({"mode": "patch", "mask": torch.zeros(H, W)}, "mask"),
        ({"mode": "patch", "mask": box_mask(), "n_colors": 4}, "n_colors"),
        ({"n_colors": 4, "cue_mode": "Q"}, "cue_mode"),
        ({"n_colors": 4, "keep_texture": torch.tensor([True, False])}, "keep_texture"),
        ({"n_colors": 4, "keep_texture": 1}, "keep_texture"),
        ({"n_colors": 4, "cue_mode": "G", "g_neutral": 2.0}, "g_neutral"),
    ],
)
def test_hint_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        hint(image(0), texture_cue(image(0)), **kwargs)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="cue"):
        hint(image(0), torch.zeros(2, H, W + 1), n_colors=4)
    with pytest.raises(ValueError, match="cue"):
        hint(image(0), torch.full((2, H, W), 2.0), n_colors=4)
    with pytest.raises(ValueError, match="color"):
        hint(torch.rand(4, H, W), torch.zeros(2, H, W), n_colors=4)
    with pytest.raises(ValueError, match="n_colors"):
        hint(torch.rand(2, 3, H, W), torch.zeros(2, 2, H, W), n_colors=[4, 4, 4])
    with pytest.raises(ValueError, match="mask"):
        fill_mask(image(0), torch.zeros(H + 1, W, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        fill_mask(image(0), torch.zeros(1, H, W, dtype=torch.bool))
    with pytest.raises(ValueError, match="color"):
        fill_mask(image(0), box_mask(), color=(1.0, 0.0))
    with pytest.raises(ValueError, match="color"):
        fill_mask(image(0), box_mask(), color=(1.0, 0.0, 255.0))
    with pytest.raises(ValueError, match="h must"):
        split_hint(torch.zeros(6, H, W))


@pytest.mark.parametrize("cue_mode", CUE_MODES)
def test_hint_array_equals_hint(cue_mode):
    # The example maker's numpy hint: the same values as hint() for every mode, texture choice and mask.
    from dequant.color.hint import fill_mask_array, hint_array

    rng = np.random.default_rng(3)
    for trial in range(12):
        x = image(trial)
        cue = texture_cue(x, "G" if cue_mode == "G" else "T")
        mask = torch.from_numpy(rng.random((H, W)) < rng.random())
        keep = bool(trial % 2)
        fill = None if trial % 3 else rng.random(3).astype(np.float32)
        filled = fill_mask(x, mask, None if fill is None else torch.from_numpy(fill))
        filled_np = fill_mask_array(x.numpy(), mask.numpy(), fill)
        assert filled_np.dtype == np.float32 and torch.equal(torch.from_numpy(filled_np), filled)
        n = int(rng.integers(1, 257))
        for mode, kwargs in (("palette", {"n_colors": n}), ("patch", {"mask": mask})):
            ref = hint(filled, cue, mode=mode, keep_texture=keep, cue_mode=cue_mode, g_neutral=0.25, **kwargs)
            np_kwargs = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            got = hint_array(filled.numpy(), cue.numpy(), mode=mode, keep_texture=keep, cue_mode=cue_mode,
                             g_neutral=0.25, **np_kwargs)
            assert got.dtype == np.float32 and torch.equal(torch.from_numpy(got), ref), (mode, keep)
    dropped = hint_array(image().numpy(), None, mode="palette", n_colors=4, keep_texture=False, cue_mode=cue_mode)
    assert (dropped[CUE] == neutral_value(cue_mode)).all() and (dropped[TEX_IND] == 0).all()
