"""What the t test's texture correlation can reach while the output obeys the palette: oracles, no model.

The t test (palette transfer) scores an output by its palette ΔE00 against the recolored index map and by the
Pearson correlation of its gray gradient magnitudes with the source photo's. This builds, from the photo itself,
outputs no model can beat at keeping texture, and prints both scores:

- the recolored quantized image (the model's input);
- "photo + palette shift": the photo with each region moved by its palette color's change, so every pixel keeps
  its own deviation from its palette color (all of the photo's texture, the new colors on average);
- the same with its CIELab L pulled toward the photo's by a fraction a;
- the input with the photo's CIELab L (the authors' post_L);
- the photo itself.

    python experiments/transfer_texture_oracle.py [--images 'src/dequant/assets/heldout_photos/*.jpg' ...] [--size 64]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import Tensor

from dequant.color.colorspace import lab_to_rgb, rgb_to_lab
from dequant.color.cues import TextureCue
from dequant.color.quantize import Quantizer
from dequant.config import assets_path
from dequant.data.io import list_images
from dequant.evaluation.runner import load_images
from dequant.evaluation.tests import Case, build_case, case_metrics, image_rngs, settings

BLENDS = (0.1, 0.3, 0.5, 0.7, 0.9)


def _per_pixel(palettes: Tensor, index: Tensor) -> Tensor:
    """Each pixel's palette color `(B, 3, H, W)` from palettes `(B, N, 3)` and index maps `(B, H, W)`."""
    flat = index.long().flatten(1)[..., None].expand(-1, -1, 3)
    return torch.gather(palettes, 1, flat).transpose(1, 2).reshape(index.shape[0], 3, *index.shape[1:])


def palette_shift(case: Case) -> Tensor:
    """The source photo with every region moved by the change of its palette color, clipped to [0, 1]."""
    old = torch.stack(case.extras["source_palettes"]).float()
    new = torch.stack(case.palettes).float()
    return (case.source + _per_pixel(new, case.index) - _per_pixel(old, case.index)).clamp(0, 1)


def with_source_lightness(image: Tensor, source: Tensor, a: float) -> Tensor:
    """`image` with its CIELab L moved a fraction `a` of the way to the source's."""
    lab, lab_src = rgb_to_lab(image), rgb_to_lab(source)
    lab = torch.cat([(1 - a) * lab[:, :1] + a * lab_src[:, :1], lab[:, 1:]], dim=1)
    return lab_to_rgb(lab).clamp(0, 1)


def outputs(case: Case) -> dict[str, Tensor]:
    """The oracle outputs of one t case, by row label."""
    shift = palette_shift(case)
    rows: dict[str, Tensor] = {"input (recolored quantized)": case.requested,
                               "photo + palette shift": shift}
    rows.update({f"photo + palette shift, L {a:.0%} the photo's": with_source_lightness(shift, case.source, a)
                 for a in BLENDS})
    rows["post_L of the input (L 100% the photo's)"] = with_source_lightness(case.requested, case.source, 1.0)
    rows["the photo itself"] = case.source
    return rows


def table(images: Tensor, quantizer: Callable, cue: TextureCue) -> list[tuple[str, float, float]]:
    """(row, mean palette ΔE00, mean texture correlation) over every t setting and image."""
    ids = list(range(images.shape[0]))
    sums: dict[str, list[Tensor]] = {}
    for setting in settings("t"):
        case = build_case(setting, images, quantizer=quantizer, cue=cue, rngs=image_rngs(0, setting, ids))
        for name, out in outputs(case).items():
            m = case_metrics(case, out)
            sums.setdefault(name, []).append(torch.stack([m["palette_de2000"], m["texture_corr"]], 1))
    return [(name, *torch.cat(v).mean(0).tolist()) for name, v in sums.items()]


def main(argv: list[str] | None = None) -> int:
    """Print the table; 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    images_dir = assets_path("images")
    parser.add_argument("--images", nargs="+", default=[assets_path("heldout_photos"), f"{images_dir}/coffee.jpg",
                                                        f"{images_dir}/flower.jpg", f"{images_dir}/china.jpg"],
                        help="photos (globs, folders or files; default: the README's 13 held-out photos)")
    parser.add_argument("--size", type=int, default=64, help="side of the center crop (default 64)")
    args = parser.parse_args(argv)
    paths = list_images(args.images)
    rows = table(load_images(paths, args.size), Quantizer(), TextureCue("T"))
    print(f"t test (every setting), {len(paths)} photos at {args.size}x{args.size}, median cut\n")
    print("| output | palette ΔE00 | texture corr |\n|---|---:|---:|")
    for name, de, corr in rows:
        print(f"| {name} | {de:.2f} | {corr:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
