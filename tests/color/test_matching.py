"""Palette matching and transfer: optimality against brute force, unequal sizes, colormaps, hex parsing, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from dequant.color.matching import (
    SCORES,
    colormap_palette,
    match_palettes,
    palette_from_hex,
    score_matrix,
    transfer,
)
from dequant.color.quantize import Quantized, quantize


def _random_palette(rng: np.random.Generator, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    pal = torch.from_numpy(rng.random((k, 3)).astype(np.float32))
    frac = rng.random(k) + 0.05
    return pal, torch.from_numpy(frac / frac.sum())


def _brute_force_best(scores: np.ndarray) -> float:
    """Best total score of an injective map from the smaller side into the larger one."""
    ks, kt = scores.shape
    if ks <= kt:
        return max(sum(scores[i, p[i]] for i in range(ks)) for p in itertools.permutations(range(kt), ks))
    return max(sum(scores[p[j], j] for j in range(kt)) for p in itertools.permutations(range(ks), kt))


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("space", ["rgb", "lab"])
@pytest.mark.parametrize("weight_by_area", [False, True])
def test_square_and_wide_assignment_is_optimal(score: str, space: str, weight_by_area: bool) -> None:
    rng = np.random.default_rng([SCORES.index(score), space == "lab", weight_by_area])
    for ks, kt in [(4, 4), (3, 5), (5, 5)]:
        s, a = _random_palette(rng, ks)
        t, b = _random_palette(rng, kt)
        kw = dict(source_fractions=a, target_fractions=b, space=space, weight_by_area=weight_by_area)
        scores = score_matrix(s, t, score, **kw).numpy()
        m = match_palettes(s, t, score, **kw)
        assert m.dtype == torch.int64 and m.shape == (ks,)
        assert len(set(m.tolist())) == ks  # distinct targets when Ks <= Kt
        total = scores[np.arange(ks), m.numpy()].sum()
        assert total == pytest.approx(_brute_force_best(scores), rel=1e-12)


@pytest.mark.parametrize("score", SCORES)
def test_more_source_colors_than_targets(score: str) -> None:
    rng = np.random.default_rng(7)
    s, a = _random_palette(rng, 6)
    t, b = _random_palette(rng, 3)
    scores = score_matrix(s, t, score, a, b).numpy()
    m = match_palettes(s, t, score, a, b).numpy()
    assert m.shape == (6,) and m.min() >= 0 and m.max() < 3
    assert set(m.tolist()) == {0, 1, 2}  # every target is used by the optimal part
    dist = torch.cdist(s.double(), t.double()).numpy()
    best = _brute_force_best(scores)
    # Some choice of one source per target (consistent with the mapping) reaches the optimum, and every other
    # source color sits on its nearest target.
    found = False
    for chosen in itertools.permutations(range(6), 3):
        if all(m[chosen[j]] == j for j in range(3)) and np.isclose(sum(scores[chosen[j], j] for j in range(3)), best):
            rest = [i for i in range(6) if i not in chosen]
            if all(m[i] == np.argmin(dist[i]) for i in rest):
                found = True
                break
    assert found


def test_color_score_values_and_lab_scale() -> None:
    s = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    t = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    sc = score_matrix(s, t, "color")
    assert sc[0, 0] == pytest.approx(1.0)
    assert sc[1, 0] == pytest.approx(np.exp(-np.sqrt(3)))
    assert sc[1, 1] == pytest.approx(np.exp(-np.sqrt(2)))
    assert score_matrix(s, t, "neg")[1, 0] == pytest.approx(np.exp(np.sqrt(3)))
    assert score_matrix(s, t, "int")[1, 1] == pytest.approx(np.exp(-2.0))
    # Lab distance black -> white is L 0 -> 100, i.e. 1.0 after the /100 scaling.
    assert score_matrix(s, t, "color", space="lab")[1, 0] == pytest.approx(np.exp(-1.0), rel=1e-3)
    assert torch.equal(score_matrix(s, t, "cmap"), score_matrix(s, t, "color"))
    a, b = torch.tensor([0.9, 0.1]), torch.tensor([0.3, 0.7])
    assert score_matrix(s, t, "freq", a, b)[0, 1] == pytest.approx(np.exp(-0.2))
    weighted = score_matrix(s, t, "color", a, b, weight_by_area=True)
    assert torch.allclose(weighted, score_matrix(s, t, "color") * a.double()[:, None])


def test_identity_and_neg_matches() -> None:
    pal = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    perm = torch.tensor([2, 0, 1])
    assert torch.equal(match_palettes(pal, pal[perm]), torch.tensor([1, 2, 0]))
    bw = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    assert torch.equal(match_palettes(bw, bw, "neg"), torch.tensor([1, 0]))


def test_area_weighting_gives_big_region_its_best_match() -> None:
    # One target near both sources. Unweighted, the nearer small region takes it (total exp(-d) is larger);
    # weighted by area, the big region gets it: 0.1*e^-.866 + 0.9*e^-.04 > 0.1*e^-.01 + 0.9*e^-.896.
    s = torch.tensor([[0.50, 0.5, 0.5], [0.55, 0.5, 0.5]])
    t = torch.tensor([[0.51, 0.5, 0.5], [0.0, 0.0, 0.0]])
    a = torch.tensor([0.1, 0.9])
    assert match_palettes(s, t, source_fractions=a).tolist() == [0, 1]
    assert match_palettes(s, t, source_fractions=a, weight_by_area=True).tolist() == [1, 0]


@pytest.mark.parametrize("name", ["viridis", "plasma", "inferno", "cividis", "bone", "magma", "hsv", "twilight"])
@pytest.mark.parametrize("n", [1, 4, 64])
def test_colormap_palette(name: str, n: int) -> None:
    import matplotlib

    pal = colormap_palette(name, n)
    assert pal.shape == (n, 3) and pal.dtype == torch.float32
    assert float(pal.min()) >= 0 and float(pal.max()) <= 1
    expected = np.asarray(matplotlib.colormaps[name]((np.arange(n) + 0.5) / n))[:, :3]
    assert np.allclose(pal.numpy(), expected)


def test_colormap_errors() -> None:
    with pytest.raises(ValueError, match="name"):
        colormap_palette("not_a_colormap", 4)
    with pytest.raises(ValueError, match="n must"):
        colormap_palette("viridis", 0)


def test_transfer_keeps_index_and_blends() -> None:
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.random((3, 16, 16)).astype(np.float32))
    q = quantize(img, 4)
    target = colormap_palette("viridis", 4)
    mapping = match_palettes(q.palette, target, "cmap")
    full = transfer(q, target, mapping)
    assert isinstance(full, Quantized)
    assert torch.equal(full.index, q.index) and torch.equal(full.fractions, q.fractions)
    assert torch.allclose(full.palette, target[mapping])
    half = transfer(q, target, mapping, blend=0.25)
    assert torch.allclose(half.palette, 0.25 * target[mapping] + 0.75 * q.palette, atol=1e-6)
    assert torch.allclose(transfer(q, target, mapping, blend=0.0).palette, q.palette)
    assert torch.allclose(full.image, target[mapping][q.index].permute(2, 0, 1))


def test_transfer_errors() -> None:
    q = quantize(torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)), 2)
    t = torch.rand(2, 3)
    good = torch.zeros(q.n_colors, dtype=torch.int64)
    with pytest.raises(ValueError, match="blend"):
        transfer(q, t, good, blend=1.5)
    with pytest.raises(ValueError, match="mapping"):
        transfer(q, t, torch.zeros(q.n_colors + 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="mapping"):
        transfer(q, t, torch.full((q.n_colors,), 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="target_palette"):
        transfer(q, torch.full((2, 3), float("nan")), good)
    with pytest.raises(ValueError, match="quantized"):
        transfer(q.image, t, good)


def test_palette_from_hex() -> None:
    pal = palette_from_hex("#264653,#2a9d8f, e9c46a ,#FFF")
    expected = torch.tensor([[0x26, 0x46, 0x53], [0x2A, 0x9D, 0x8F], [0xE9, 0xC4, 0x6A], [255, 255, 255]]) / 255.0
    assert pal.shape == (4, 3) and torch.allclose(pal, expected.float())
    assert torch.allclose(palette_from_hex(["#000000", "#ff0000"]), torch.tensor([[0.0, 0, 0], [1.0, 0, 0]]))
    for bad in ["#12345", "#gg0000,#000000", "#000000,,#ffffff", ""]:
        with pytest.raises(ValueError, match="colors"):
            palette_from_hex(bad)
    with pytest.raises(ValueError, match="'#12345'"):
        palette_from_hex("#000000,#12345")


def test_bad_arguments_name_themselves() -> None:
    s, t = torch.rand(3, 3), torch.rand(3, 3)
    with pytest.raises(ValueError, match="score"):
        match_palettes(s, t, "nearest")
    with pytest.raises(ValueError, match="space"):
        match_palettes(s, t, space="hsv")
    with pytest.raises(ValueError, match="source_fractions and target_fractions"):
        match_palettes(s, t, "freq", source_fractions=torch.ones(3) / 3)
    with pytest.raises(ValueError, match="source_fractions"):
        match_palettes(s, t, weight_by_area=True)
    with pytest.raises(ValueError, match="source_fractions"):
        match_palettes(s, t, "freq", torch.ones(2), torch.ones(3))
    with pytest.raises(ValueError, match="source"):
        match_palettes(torch.full((3, 3), float("nan")), t)
    with pytest.raises(ValueError, match="target"):
        match_palettes(s, torch.rand(3, 4))
