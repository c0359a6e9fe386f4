"""Superpixel segmentations and patch masks on small real photos."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import dequant
from dequant.color import masks
from dequant.color.masks import SEGMENTERS, adjacency, mask_from_point, patch_mask, segment

ASSETS = Path(dequant.__file__).parent / "assets" / "images"


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    img = Image.open(ASSETS / "astronaut.jpg").convert("RGB").resize((32, 32), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0


@pytest.fixture(scope="module")
def labels(photo) -> dict[str, np.ndarray]:
    return {m: segment(photo, m).numpy() for m in SEGMENTERS}


def is_connected(mask: np.ndarray) -> bool:
    return ndimage.label(mask)[1] == 1


@pytest.mark.parametrize("method", SEGMENTERS)
def test_segmenters_give_connected_consecutive_labels(labels, method):
    lab = labels[method]
    assert lab.shape == (32, 32) and lab.dtype == np.int64
    k = int(lab.max()) + 1
    assert k > 1 and set(np.unique(lab)) == set(range(k))
    assert all(is_connected(lab == s) for s in range(k))


def test_segment_returns_tensor(photo):
    out = segment(photo, "slic")
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64


def test_fragments_join_a_touching_segment():
    # A checkerboard: each raw label is four diagonal-only pixels.
    raw = np.indices((4, 4)).sum(0) % 2
    merged = masks._connected_segments(raw)
    k = int(merged.max()) + 1
    assert set(np.unique(merged)) == set(range(k)) and k < 16
    assert all(is_connected(merged == s) for s in range(k))
    intact = np.array([[0, 0, 1], [2, 2, 1]])
    np.testing.assert_array_equal(masks._connected_segments(intact), masks._pieces(intact))


def test_adjacency_matches_brute_force(labels):
    lab = labels["felzenszwalb"]
    indptr, neighbours = adjacency(lab)
    expected = {s: set() for s in range(int(lab.max()) + 1)}
    h, w = lab.shape
    for i in range(h):
        for j in range(w):
            for di, dj in ((0, 1), (1, 0)):
                if i + di < h and j + dj < w and lab[i, j] != lab[i + di, j + dj]:
                    expected[lab[i, j]].add(lab[i + di, j + dj])
                    expected[lab[i + di, j + dj]].add(lab[i, j])
    for s, nbrs in expected.items():
        assert set(neighbours[indptr[s] : indptr[s + 1]].tolist()) == nbrs


@pytest.mark.parametrize("method", SEGMENTERS)
def test_superpixel_masks_connected_nonempty_sized(photo, labels, method):
    lab = labels[method]
    k = int(lab.max()) + 1
    lo, hi = max(1, round(0.01 * k)), min(k - 1, max(1, round(0.15 * k)))
    for seed in range(6):
        mask = patch_mask(photo, rng=np.random.default_rng(seed), segmenters=(method,)).numpy()
        assert mask.shape == (32, 32) and mask.dtype == bool
        assert mask.any() and not mask.all()
        assert is_connected(mask)
        inside = np.unique(lab[mask])
        assert np.array_equal(np.isin(lab, inside), mask)  # a union of whole segments
        assert lo <= inside.size <= hi


def test_large_fraction_still_proper(photo):
    mask = patch_mask(photo, rng=np.random.default_rng(0), segmenters=("slic",), frac_range=(1.0, 1.0)).numpy()
    assert mask.any() and not mask.all() and is_connected(mask)


def test_deterministic_for_a_seed(photo):
    a = [patch_mask(photo, rng=np.random.default_rng(s)) for s in range(4)]
    b = [patch_mask(photo, rng=s) for s in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert len({tuple(x.flatten().tolist()) for x in a}) > 1


def index_map() -> np.ndarray:
    rng = np.random.default_rng(1)
    coarse = rng.integers(0, 3, (8, 8))
    return np.kron(coarse, np.ones((4, 4), dtype=np.int64))


def test_component_masks_are_unions_of_components(photo):
    index = index_map()
    components = [ndimage.label(index == c)[0] for c in np.unique(index)]
    for seed in range(8):
        mask = patch_mask(photo, index=torch.from_numpy(index), rng=seed, p_superpixel=0.0).numpy()
        assert mask.any() and not mask.all()
        for comp in components:
            for c in range(1, comp.max() + 1):
                region = comp == c
                assert mask[region].all() or not mask[region].any()


def test_two_components_give_exactly_one(photo):
    index = np.zeros((32, 32), dtype=np.int64)
    index[:, 16:] = 1
    for seed in range(10):
        mask = patch_mask(photo, index=index, rng=seed, p_superpixel=0.0).numpy()
        assert mask.sum() == 32 * 16 and (mask[:, :16].all() or mask[:, 16:].all())


def test_single_component_index_gives_whole_image(photo):
    mask = patch_mask(photo, index=np.zeros((32, 32), dtype=np.int64), rng=0, p_superpixel=0.0)
    assert bool(mask.all())


def test_without_index_always_superpixels(photo, labels):
    mask = patch_mask(photo, rng=0, p_superpixel=0.0, segmenters=("watershed",)).numpy()
    lab = labels["watershed"]
    assert is_connected(mask) and np.array_equal(np.isin(lab, np.unique(lab[mask])), mask)


def test_mask_from_point(photo, labels):
    mask = mask_from_point(photo, x=20, y=5, segmenter="slic").numpy()
    lab = labels["slic"]
    assert mask[5, 20]
    np.testing.assert_array_equal(mask, lab == lab[5, 20])
    with pytest.raises(ValueError, match=r"point \(x=32, y=0\)"):
        mask_from_point(photo, 32, 0)
    with pytest.raises(ValueError, match=r"point \(x=0, y=-1\)"):
        mask_from_point(photo, 0, -1)
    with pytest.raises(ValueError, match="point"):
        mask_from_point(photo, 1.5, 0)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda p: segment(p, "sam"), "method"),
        (lambda p: segment(p.unsqueeze(0), "slic"), "image"),
        (lambda p: segment(p[:2], "slic"), "image"),
        (lambda p: patch_mask(p, rng=None), "rng"),
        (lambda p: patch_mask(p, rng=0, segmenters=("slic", "grabcut")), "segmenters"),
        (lambda p: patch_mask(p, rng=0, segmenters=()), "segmenters"),
        (lambda p: patch_mask(p, rng=0, segmenters="slic"), "segmenters"),
        (lambda p: patch_mask(p, index=np.zeros((31, 32), dtype=np.int64), rng=0), "index"),
        (lambda p: patch_mask(p, index=np.zeros((32, 32)), rng=0), "index"),
        (lambda p: patch_mask(p, rng=0, p_superpixel=1.5), "p_superpixel"),
        (lambda p: patch_mask(p, rng=0, frac_range=(0.0, 0.1)), "frac_range"),
        (lambda p: patch_mask(p, rng=0, frac_range=(0.2, 0.1)), "frac_range"),
        (lambda p: mask_from_point(p, 0, 0, segmenter="x"), "segmenter"),
    ],
)
def test_bad_arguments_name_the_argument(photo, call, name):
    with pytest.raises(ValueError, match=name):
        call(photo)


@pytest.mark.parametrize("method", SEGMENTERS)
def test_downscaled_segmentation_stays_connected_and_full_size(method):
    image = torch.rand(3, 48, 40, generator=torch.Generator().manual_seed(3))
    labels = segment(image, method, max_side=16).numpy()
    assert labels.shape == (48, 40)
    for value in np.unique(labels):
        _, n = ndimage.label(labels == value)
        assert n == 1
    mask = patch_mask(image, rng=np.random.default_rng(0), segmenters=(method,), segment_max_side=16)
    assert mask.shape == (48, 40) and mask.any()
    with pytest.raises(ValueError, match="max_side"):
        segment(image, method, max_side=2)


def test_cut_labels_keeps_segments_at_least_half_inside():
    labels = np.zeros((8, 12), dtype=np.int32)
    labels[:, 4:8] = 1
    labels[:, 8:] = 2
    rows, cols = np.arange(8), np.arange(3, 10)  # column 3 of segment 0 (1/4 of it), all of 1, half of 2
    areas = np.bincount(labels.ravel()).astype(float)
    cut = masks.cut_labels(labels, rows, cols, areas)
    assert cut.shape == (8, 7)
    # Segment 0's sliver joins segment 1; segments 1 and 2 stay apart.
    assert len(np.unique(cut)) == 2 and cut[0, 0] == cut[0, 1] and cut[0, 1] != cut[0, 6]
    # Without areas every part is a segment.
    assert len(np.unique(masks.cut_labels(labels, rows, cols))) == 3
    # A region inside one segment is one segment.
    assert np.unique(masks.cut_labels(labels, rows, np.arange(5, 7), areas)).tolist() == [0]


@pytest.mark.parametrize("method", SEGMENTERS)
def test_cut_labels_is_the_same_for_uint16_label_maps(method):
    # The example maker caches label maps as uint16 (half the memory): every cut must come out as from int32.
    image = np.asarray(Image.open(ASSETS / "chelsea.jpg").convert("RGB").resize((90, 60)), dtype=np.float64) / 255
    labels = masks.segment_image(image, method, 24 * 24)
    areas = np.bincount(labels.ravel()) * 1.3
    rng = np.random.default_rng(1)
    for _ in range(12):
        top, left = int(rng.integers(0, 60 - 24)), int(rng.integers(0, 90 - 24))
        rows, cols = np.arange(top, top + 24), np.arange(left, left + 24)[:: int(rng.choice([-1, 1]))]
        for a in (areas, None):
            wide = masks.cut_labels(labels, rows, cols, a)
            narrow = masks.cut_labels(labels.astype(np.uint16), rows, cols, a)
            assert np.array_equal(wide, narrow) and wide.dtype == narrow.dtype


def test_segment_image_density_matches_region():
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(0.5, 0.2, size=(64, 64, 3)), 0, 1)
    whole = masks.segment_image(image, "slic", 32 * 32)
    # Four crop-sized regions: about 4 x 250 requested, far more than segmenting at the whole image's density.
    once = masks.segment_image(image, "slic", 64 * 64)
    assert whole.dtype == np.int32 and int(whole.max()) + 1 > 2 * (int(once.max()) + 1)
    with pytest.raises(ValueError, match="region_area"):
        masks.segment_image(image, "slic", 0)


def test_boundary_pairs_and_components_match_the_plain_definitions():
    # The fast boundary pairs (flat compares) and components (min-label propagation) against the obvious code and
    # scipy's connected_components, whose numbering the segment numbers (and so the random draws) depend on.
    from scipy import sparse
    from scipy.sparse import csgraph

    rng = np.random.default_rng(0)
    for trial in range(200):
        h, w = (int(v) for v in rng.integers(1, 20, 2))
        lab = rng.integers(0, int(rng.integers(1, 6)), (h, w))
        a = np.concatenate([lab[:, :-1].ravel(), lab[:-1, :].ravel()])
        b = np.concatenate([lab[:, 1:].ravel(), lab[1:, :].ravel()])
        a, b = a[a != b], b[a != b]
        for got, want in zip(masks._boundary_pairs(lab), (np.concatenate([a, b]), np.concatenate([b, a]))):
            np.testing.assert_array_equal(got, want)
        n = int(rng.integers(1, 40))
        src, dst = rng.integers(0, n, (2, int(rng.integers(0, 2 * n))))
        graph = sparse.coo_matrix((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(n, n))
        np.testing.assert_array_equal(masks._components(n, src, dst),
                                      csgraph.connected_components(graph, directed=False)[1])


def test_patch_mask_array_equals_patch_mask(photo):
    index = torch.from_numpy(np.random.default_rng(1).integers(0, 3, (32, 32)))
    for seed in range(8):
        for idx in (None, index):
            want = patch_mask(photo, idx, np.random.default_rng(seed), p_superpixel=0.5, segment_max_side=16)
            got = masks.patch_mask_array(photo.numpy(), idx, np.random.default_rng(seed), p_superpixel=0.5,
                                         segment_max_side=16)
            assert got.dtype == np.bool_ and torch.equal(torch.from_numpy(got), want)


def numpy_only(fn, *args):
    """`fn(*args)` with the numba kernels switched off (the numpy / scikit-image fallback)."""
    saved = masks._JIT[:]
    masks._JIT[:] = [None]
    try:
        return fn(*args)
    finally:
        masks._JIT[:] = saved


def assert_same(got, want):
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_same(g, w)
        return
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def random_maps(n_maps: int):
    """Label maps of many shapes: noisy, blocky (like segments) and single-valued, int32 and int64."""
    rng = np.random.default_rng(0)
    for trial in range(n_maps):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        lab = rng.integers(0, int(rng.integers(1, 7)), (h, w))
        if trial % 3 == 0:
            lab = np.repeat(np.repeat(lab, 3, axis=0), 2, axis=1)
        yield rng, lab.astype(np.int32 if trial % 2 else np.int64)


def test_kernels_equal_numpy_fallback_on_random_maps():
    pytest.importorskip("numba")
    assert masks._compiled() is not None
    for rng, lab in random_maps(150):
        for fn in (masks._pieces, masks._connected_segments, masks.adjacency):
            assert_same(fn(lab), numpy_only(fn, lab))
        h, w = lab.shape
        rows = np.sort(rng.integers(0, h, int(rng.integers(1, h + 4))))
        cols = rng.integers(0, w, int(rng.integers(1, w + 4)))
        areas = rng.uniform(0, 3 * lab.size / (int(lab.max()) + 1), int(lab.max()) + 1)
        for a in (None, areas):
            assert_same(masks.cut_labels(lab, rows, cols, a), numpy_only(masks.cut_labels, lab, rows, cols, a))


@pytest.mark.parametrize("method", SEGMENTERS)
def test_kernels_equal_numpy_fallback_on_segment_crops(photo, method):
    # Crops of a whole-image segmentation, as ExampleMaker cuts them: resampled, flipped, cut by the border.
    pytest.importorskip("numba")
    image = np.asarray(Image.open(ASSETS / "chelsea.jpg").convert("RGB").resize((150, 100)), dtype=np.float64) / 255
    labels = masks.segment_image(image, method, 48 * 48)
    areas = np.bincount(labels.ravel()) * 1.7
    rng = np.random.default_rng(1)
    for trial in range(6):
        top, left = int(rng.integers(0, 40)), int(rng.integers(0, 80))
        rows = np.minimum(((top + np.arange(48) + 0.5) * 0.8).astype(np.int64), 99)
        cols = np.minimum(((left + np.arange(48) + 0.5) * 0.8).astype(np.int64), 149)[:: 1 if trial % 2 else -1]
        cut = masks.cut_labels(labels, rows, cols, areas)
        assert_same(cut, numpy_only(masks.cut_labels, labels, rows, cols, areas))
        assert_same(masks.adjacency(cut), numpy_only(masks.adjacency, cut))
        for seed in range(3):
            assert_same(masks._grow_region(cut, np.random.default_rng(seed), (0.01, 0.3)),
                        numpy_only(masks._grow_region, cut, np.random.default_rng(seed), (0.01, 0.3)))


def test_kernels_leave_out_of_range_input_to_numpy():
    # Negative indices wrap in numpy and labels beyond `areas` raise there: the kernels hand such input to numpy.
    pytest.importorskip("numba")
    lab = np.repeat(np.arange(4), 3).reshape(3, 4)
    rows, cols = np.array([0, -1, 2]), np.array([3, 0, -2])
    assert_same(masks.cut_labels(lab, rows, cols), numpy_only(masks.cut_labels, lab, rows, cols))
    areas = np.ones(2)
    with pytest.raises(IndexError):
        masks.cut_labels(lab, np.arange(3), np.arange(4), areas)
    assert_same(masks.adjacency(lab, 20), numpy_only(masks.adjacency, lab, 20))


def grow_region_reference(labels, rng, frac_range):
    """_grow_region as first written: numpy bool arrays, candidates re-listed by flatnonzero at every step."""
    n = int(labels.max()) + 1
    target = max(1, int(round(rng.uniform(*frac_range) * n)))
    if n > 1:
        target = min(target, n - 1)
    indptr, neighbours = adjacency(labels, n)
    inside, frontier = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)

    def add(segment):
        inside[segment] = True
        frontier[neighbours[indptr[segment]:indptr[segment + 1]]] = True

    add(int(rng.integers(n)))
    for _ in range(target - 1):
        candidates = np.flatnonzero(frontier & ~inside)
        if candidates.size == 0:
            break
        add(int(candidates[rng.integers(candidates.size)]))
    return inside[labels]


def test_grow_region_draws_as_the_reference(labels):
    for method, lab in labels.items():
        for seed in range(10):
            for frac in ((0.01, 0.15), (0.5, 1.0)):
                ref_rng, rng = np.random.default_rng(seed), np.random.default_rng(seed)
                assert_same(masks._grow_region(lab, rng, frac), grow_region_reference(lab, ref_rng, frac))
                assert rng.random() == ref_rng.random()  # the same number of draws
