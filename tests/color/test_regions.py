"""color_region: the connected region of the clicked palette color, holes filled, grown or shrunk."""

from __future__ import annotations

import pytest
import torch

from dequant.color.regions import color_region

# Palette: 0 background gray, 1 orange, 2 a slightly darker orange (shadow), 3 white (highlight), 4 blue.
PALETTE = torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.55, 0.0], [0.93, 0.5, 0.0], [1.0, 1.0, 1.0], [0.1, 0.2, 0.9]])


def _orange_scene() -> torch.Tensor:
    """A 40x40 index map: an orange disk (radius 12) with a shadow crescent and a highlight, a second orange disk
    not touching it, on gray."""
    yy, xx = torch.meshgrid(torch.arange(40), torch.arange(40), indexing="ij")
    index = torch.zeros(40, 40, dtype=torch.int64)
    disk = (yy - 15) ** 2 + (xx - 15) ** 2 <= 144
    index[disk] = 1
    index[disk & (xx > 22)] = 2  # shadow on the right
    index[(yy - 12) ** 2 + (xx - 12) ** 2 <= 4] = 3  # highlight inside
    index[(yy - 34) ** 2 + (xx - 34) ** 2 <= 9] = 1  # another orange elsewhere
    return index


def test_region_is_the_connected_component_with_holes_filled() -> None:
    index = _orange_scene()
    region = color_region(index, 15, 15)
    assert region[15, 15] and region[12, 12], "the highlight hole belongs to the object"
    assert not region[34, 34], "a separate blob of the same color is another object"
    assert not region[15, 25], "the shadow is another palette color and no tolerance was given"
    no_fill = color_region(index, 15, 15, fill_holes=False)
    assert not no_fill[12, 12] and int(no_fill.sum()) < int(region.sum())


def test_tolerance_joins_close_colors_only() -> None:
    index = _orange_scene()
    region = color_region(index, 15, 15, palette=PALETTE, tolerance=15.0)
    assert region[15, 25], "the shadow orange is within 15 CIELab units"
    assert not region[0, 0] and not region[34, 34]
    with pytest.raises(ValueError, match="needs the palette"):
        color_region(index, 15, 15, tolerance=5.0)


def test_grow_and_shrink_move_the_boundary() -> None:
    index = _orange_scene()
    base = color_region(index, 15, 15, palette=PALETTE, tolerance=15.0)
    grown = color_region(index, 15, 15, palette=PALETTE, tolerance=15.0, grow=2)
    shrunk = color_region(index, 15, 15, palette=PALETTE, tolerance=15.0, grow=-2)
    assert bool((base <= grown).all()) and bool((shrunk <= base).all())
    assert int(grown.sum()) > int(base.sum()) > int(shrunk.sum()) > 0
    assert grown[15, 29] and not base[15, 29]  # 2 px right of the disk's edge at x=27
    with pytest.raises(ValueError, match="leaves nothing"):
        color_region(index, 15, 15, grow=-30)


@pytest.mark.parametrize("bad, match", [
    (dict(index=torch.zeros(4, 4), x=0, y=0), "integers"),
    (dict(index=torch.zeros(1, 4, 4, dtype=torch.int64), x=0, y=0), r"\(H, W\)"),
    (dict(index=torch.zeros(4, 4, dtype=torch.int64), x=4, y=0), "outside"),
    (dict(index=torch.zeros(4, 4, dtype=torch.int64), x=1.5, y=0), "integer pixel"),
    (dict(index=torch.zeros(4, 4, dtype=torch.int64), x=0, y=0, tolerance=-1.0), "tolerance"),
    (dict(index=torch.zeros(4, 4, dtype=torch.int64), x=0, y=0, grow=1.5), "grow"),
])
def test_bad_input_is_a_clear_error(bad: dict, match: str) -> None:
    index, x, y = bad.pop("index"), bad.pop("x"), bad.pop("y")
    with pytest.raises(ValueError, match=match):
        color_region(index, x, y, **bad)
