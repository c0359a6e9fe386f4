"""render_tiled: whole or tiled rendering at the image's own size (pure tensors, no model)."""

from __future__ import annotations

import pytest
import torch

from dequant.render import axis_weights, pad_to_multiple, render_tiled, tile_starts


def identity(calls: list | None = None):
    """A sample_fn returning the hint's color channels (and recording the batch shapes and ids it was given)."""

    def fn(h: torch.Tensor, ids):
        if calls is not None:
            calls.append((tuple(h.shape), list(ids)))
        return h[:, :3].clone()

    return fn


def hint_of(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(7, h, w, generator=g)


@pytest.mark.parametrize("size", [(64, 64), (61, 97), (5, 3), (1, 1)])
def test_identity_whole_image_is_exact_and_padded_to_the_multiple(size) -> None:
    calls: list = []
    x = hint_of(*size)
    out = render_tiled(identity(calls), x, tile=64, overlap=16, max_pixels=128 * 128, multiple=8)
    assert out.shape == (3, *size) and torch.equal(out, x[:3])
    (shape, ids), = calls
    assert shape[-2] % 8 == 0 and shape[-1] % 8 == 0 and shape[-2] >= size[0] and ids == [0]


@pytest.mark.parametrize("size,tile,overlap", [((96, 160), 32, 8), ((101, 157), 32, 8), ((37, 300), 16, 4),
                                               ((50, 50), 24, 0), ((70, 33), 40, 39)])
def test_identity_tiled_is_exact(size, tile, overlap) -> None:
    calls: list = []
    x = hint_of(*size, seed=1)
    out = render_tiled(identity(calls), x, tile=tile, overlap=overlap, max_pixels=tile * tile, multiple=8
                       if tile % 8 == 0 else 4)
    assert torch.equal(out, x[:3])
    assert len(calls) > 1 and all(s[-2] <= tile and s[-1] <= tile for s, _ in calls)
    assert [i for _, ids in calls for i in ids] == list(range(len(calls)))  # raster order, one id per tile


def test_batched_input_and_dtype_round_trip() -> None:
    x = hint_of(40, 72)[None].double()
    out = render_tiled(identity(), x, tile=16, overlap=4, max_pixels=16 * 16 * 3, multiple=8)
    assert out.shape == (1, 3, 40, 72) and out.dtype == torch.float64
    assert torch.allclose(out, x[:, :3], rtol=0, atol=1e-12)  # float32 comes back bit for bit, float64 nearly


def offset_per_tile(h: torch.Tensor, ids):
    """Identity plus a different constant per tile: what differs between tiles must fade in, not jump."""
    return torch.stack([hh[:3] + 0.3 * ((i * 7) % 5) / 4 for hh, i in zip(h, ids)])


def test_tiles_blend_without_seams() -> None:
    x = torch.zeros(7, 96, 160)
    blended = render_tiled(offset_per_tile, x, tile=32, overlap=16, max_pixels=32 * 32)
    hard = render_tiled(offset_per_tile, x, tile=32, overlap=0, max_pixels=32 * 32)
    step = lambda y: max(y.diff(dim=-1).abs().max(), y.diff(dim=-2).abs().max())  # noqa: E731
    assert step(hard) >= 0.3 / 4 - 1e-6  # butt-joined tiles show their offsets as seams
    # Blended: the offset changes by at most about pi/2 * (its jump) / overlap between neighbouring pixels.
    assert step(blended) < 0.3 * 1.6 / 16
    assert float(blended.min()) >= 0 and float(blended.max()) <= 0.3 + 1e-6


def noisy_per_tile(h: torch.Tensor, ids):
    """Seeded noise per tile id, like a sampler drawing from (seed, id)."""
    return torch.stack([torch.rand(3, *hh.shape[-2:], generator=torch.Generator().manual_seed(1000 + i))
                        for hh, i in zip(h, ids)])


def test_noise_is_deterministic_per_tile_whatever_the_batching() -> None:
    x = hint_of(72, 100)
    one = render_tiled(noisy_per_tile, x, tile=32, overlap=8, max_pixels=32 * 32)
    many = render_tiled(noisy_per_tile, x, tile=32, overlap=8, max_pixels=32 * 32 * 5)
    assert torch.equal(one, many) and torch.equal(one, render_tiled(noisy_per_tile, x, tile=32, overlap=8,
                                                                    max_pixels=32 * 32))


def test_tiling_helpers() -> None:
    assert tile_starts(100, 128, 16) == [0]
    starts = tile_starts(300, 64, 16)
    assert starts[0] == 0 and starts[-1] == 300 - 64
    assert all(b - a <= 64 - 16 for a, b in zip(starts, starts[1:]))
    weights = axis_weights(starts, 64)
    total = torch.zeros(300, dtype=torch.float64)
    for s, w in zip(starts, weights):
        total[s:s + 64] += w
    assert bool((total > 0.99).all())  # matching ramps: a partition of unity (up to products in triple overlaps)
    assert weights[0][0] == 1 and weights[-1][-1] == 1  # no fade at the image's own border
    padded = pad_to_multiple(torch.arange(10.0).view(1, 1, 2, 5), 4)
    assert padded.shape == (1, 1, 4, 8) and torch.equal(padded[..., :2, :5], torch.arange(10.0).view(1, 1, 2, 5))
    assert torch.equal(padded[0, 0, 0, 5:], torch.tensor([3.0, 2.0, 1.0]))  # reflected


@pytest.mark.parametrize("kwargs,name", [
    ({"tile": 0}, "tile"), ({"tile": 30, "multiple": 8}, "tile"), ({"tile": 2.5}, "tile"),
    ({"overlap": -1}, "overlap"), ({"overlap": 32, "tile": 32}, "overlap"),
    ({"max_pixels": 0}, "max_pixels"), ({"tile": 64, "max_pixels": 64 * 63}, "max_pixels"),
    ({"multiple": 0}, "multiple"), ({"multiple": True}, "multiple"),
])
def test_bad_arguments_raise_naming_the_argument(kwargs, name) -> None:
    args = {"tile": 32, "overlap": 8, "max_pixels": 32 * 32, "multiple": 1, **kwargs}
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        render_tiled(identity(), hint_of(40, 40), **args)


def test_bad_hint_and_bad_sample_fn_raise() -> None:
    with pytest.raises(ValueError, match="hint"):
        render_tiled(identity(), torch.rand(2, 7, 8, 8))
    with pytest.raises(ValueError, match="hint"):
        render_tiled(identity(), torch.rand(8, 8))
    with pytest.raises(ValueError, match="sample_fn"):
        render_tiled(None, hint_of(8, 8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sample_fn"):
        render_tiled(lambda h, ids: h, hint_of(8, 8))  # 7 channels back instead of 3
