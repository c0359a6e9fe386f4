"""`dequant-edit` (also `python -m dequant.edit`): quantize, palette-transfer or recolor a photo of any size.

Subcommands (SPEC 3, 4):
- `quantize PHOTO -n 16 -o out.png`: the photo quantized at its own size (no model); prints the palette as hex.
- `transfer PHOTO [--ckpt CKPT] (--palette HEX,... | --palette-from OTHER | --colormap NAME) -o out.png`: quantize,
  match the palette to the target colors by weighted bipartite matching, let the model render the recolored image.
- `recolor PHOTO [--ckpt CKPT] (--mask MASK.png | --point X,Y) --color HEX -o out.png`: fill a region with a flat
  color and let the model render it with the photo's texture.

The model (`--ckpt`) is a Lightning checkpoint from train.py, a dequant-export folder, or, by default, `pretrained`:
the model shipped in the package (`dequant.models.pretrained`), its files checked against their SHA256SUMS first.

Resolution (`--resolution`, default `DEFAULT_RESOLUTION`):
- `native`: the model runs at the photo's own size (the concat UNet is convolutional): the whole photo in one
  network call when it has at most `--tile`**2 pixels, else in overlapping `--tile` x `--tile` tiles blended with
  a smooth window (`dequant.render.render_tiled`; each tile's noise is seeded by (--seed, tile number)), the sides
  reflect-padded to a multiple of the UNet's downsampling factor and cropped back. A photo whose long side exceeds
  `--max-side` is first shrunk to it (area averaging) and the result resized back (bicubic).
- `train`: the model runs at its training resolution. The photo is resized (bicubic; area averaging when
  shrinking by more than 2x) so that its short side equals the training crop size, aspect ratio kept, both sides
  rounded to a multiple of the UNet's downsampling factor; the model's output is resized back to the photo's size
  with bicubic interpolation, so detail finer than the model's resolution is not restored.

Besides `-o out.png`, transfer and recolor (and quantize) write `out.palette.png`: the source colors on the left,
the requested colors on the right, a line for every source color to the color it was matched to. Every argument is
checked before anything is written; both files are written under temporary names and renamed at the end, so an
error leaves no output. Errors are one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from dequant.data.resize import resize
from dequant.models.pretrained import PRETRAINED

PROG = "dequant-edit"
OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
SCORE_CHOICES = ("color", "neg", "freq", "int", "cmap")
CUE_CHOICES = ("T", "G", "L", "none")
RESOLUTION_CHOICES = ("native", "train")
REGION_CHOICES = ("superpixel", "color")
# recolor --region color: the palette size the region is found in, and the CIELab distance within which palette
# colors join it (an object's highlight and shadow colors are usually closer than that; its background is not).
REGION_COLORS = 8
REGION_TOLERANCE = 10.0
# The default of --resolution: flip to "train" if experiments/bench_render_size.py favours render-small-then-upscale.
DEFAULT_RESOLUTION = "native"
# --resolution native: the longest side the model works at (larger photos are shrunk to it, the result resized back).
DEFAULT_MAX_SIDE = 1024
# --resolution native: the default tile side, in training crops (2: a 128 px tile for a model trained on 64 px crops).
TILE_CROPS = 2

CKPT_HELP = ("Lightning checkpoint (.ckpt) from train.py, a dequant-export folder, or 'pretrained' (default: "
             "pretrained, the model shipped in the package (src/dequant/assets/pretrained/MODEL_CARD.md))")

RESOLUTION_NOTE = (
    f"Resolution (--resolution, default {DEFAULT_RESOLUTION}): native runs the model at the photo's own size (long "
    f"side capped at --max-side, default {DEFAULT_MAX_SIDE}), in one pass when it has at most --tile x --tile "
    "pixels, else in overlapping tiles blended without seams; train resizes the photo so that its short side "
    "equals the training crop size (sides rounded to a multiple of the UNet's downsampling factor) and resizes the "
    "output back to the photo's size with bicubic interpolation, so detail finer than the model's resolution is "
    "not restored. Also writes OUT.palette.png (source and requested colors, matching drawn as lines)."
)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        """Print `prog: error: message` on one line and exit with code 2."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


# --------------------------------------------------------------------------------------------- argument types

def _point(text: str) -> tuple[int, int]:
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return int(parts[0]), int(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y in integer pixels, got {text!r}") from None


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected a {what} integer, got {value}")
    return value


def _positive(text: str) -> int:
    return _int_at_least(text, 1, "positive")


def _non_negative(text: str) -> int:
    return _int_at_least(text, 0, "non-negative")


def build_parser() -> argparse.ArgumentParser:
    """The `dequant-edit` argument parser with its three subcommands."""
    parser = _Parser(prog=PROG, description=__doc__.split("\n\n")[0] + "\n\n" + RESOLUTION_NOTE,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{quantize,transfer,recolor}")

    q = sub.add_parser("quantize", help="quantize a photo to N colors (no model) and print its palette as hex",
                       description="Quantize PHOTO to N colors at its own size; print the palette (hex, area).")
    q.add_argument("photo", metavar="PHOTO")
    q.add_argument("-n", "--colors", type=_positive, default=16, help="palette size N (1-256, default 16)")
    q.add_argument("--method", choices=("median_cut", "kmeans"), default="median_cut",
                   help="quantizer (default median_cut, the authors')")
    q.add_argument("--space", choices=("rgb", "lab"), default="rgb", help="k-means color space (default rgb)")
    q.add_argument("-o", "--output", required=True, metavar="OUT", help="output image (png, jpg, ...)")

    def model_args(p: argparse.ArgumentParser) -> None:
        """Options shared by the subcommands that run the model."""
        p.add_argument("--ckpt", default=PRETRAINED, help=CKPT_HELP)
        p.add_argument("--cue", choices=CUE_CHOICES, default=None,
                       help="texture cue; must be the one the checkpoint was trained with (default: it)")
        p.add_argument("--steps", type=_positive, default=None,
                       help="sampling steps (default: the checkpoint's sampler, e.g. 27 super27 DDPM steps)")
        p.add_argument("--sampler", choices=("ddpm_super27", "ddpm", "ddim", "dpmsolver", "predictor", "bridge"),
                       default=None, help="sampler (default: the checkpoint's; predictor: a residual model's "
                                          "predictor alone; bridge: a bridge model's walk)")
        p.add_argument("--start-step", type=_non_negative, default=None, metavar="K",
                       help="SDEdit start: skip the first K sampling steps and start from the color input noised "
                            "to that level (keeps more of the input; default: the checkpoint's, usually 0)")
        p.add_argument("--guidance", type=float, default=None,
                       help="hint guidance scale (needs a model trained with hint dropout; default: the "
                            "checkpoint's, usually 1 = none)")
        p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
        p.add_argument("--resolution", choices=RESOLUTION_CHOICES, default=DEFAULT_RESOLUTION,
                       help=f"where the model runs (default {DEFAULT_RESOLUTION}): native = at the photo's own size, "
                            "tiled as needed; train = at the training size, the result resized back (bicubic)")
        p.add_argument("--max-side", type=_positive, default=None, metavar="PX",
                       help=f"--resolution native: shrink a photo whose long side exceeds PX to PX for the model "
                            f"and resize the result back (default {DEFAULT_MAX_SIDE})")
        p.add_argument("--tile", type=_positive, default=None, metavar="PX",
                       help=f"--resolution native: tile side, a multiple of the UNet's downsampling factor; photos "
                            f"of at most PX x PX pixels run in one pass, larger ones in PX x PX tiles overlapping by "
                            f"at least PX/4 (default {TILE_CROPS}x the training crop size)")
        p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
        p.add_argument("-o", "--output", required=True, metavar="OUT", help="output image (png, jpg, ...)")
        p.add_argument("--post-L", dest="post_l", action="store_true",
                       help="replace the output's CIELab L with the photo's, at the photo's size (the authors' "
                            "post_L for L mode: the photo's shading and detail, the model's colors; recolor: "
                            "inside the region only)")
        p.add_argument("--save-hint", action="store_true",
                       help="also write OUT.hint.png: the color input the model was given (the recolored "
                            "quantized photo, or the photo with the region filled), at the photo's size")

    t = sub.add_parser("transfer", help="recolor a photo with another palette (model)",
                       description="Quantize PHOTO to N colors, match its palette to the target colors and render "
                                   "the result with the model. " + RESOLUTION_NOTE)
    t.add_argument("photo", metavar="PHOTO")
    target = t.add_mutually_exclusive_group(required=True)
    target.add_argument("--palette", help='target colors as hex, e.g. "#264653,#2a9d8f,#e9c46a"')
    target.add_argument("--palette-from", metavar="OTHER", help="take the target palette from another image")
    target.add_argument("--colormap", help="sample N target colors from a matplotlib colormap, e.g. viridis")
    t.add_argument("-n", "--colors", type=_positive, default=16, help="palette size N (1-256, default 16)")
    t.add_argument("--score", choices=SCORE_CHOICES, default=None,
                   help="matching score (default: cmap for --colormap, else color)")
    model_args(t)

    r = sub.add_parser("recolor", help="recolor one region of a photo with a flat color (model)",
                       description="Fill a region of PHOTO with a color and render it with the model, keeping the "
                                   "rest of the photo. " + RESOLUTION_NOTE)
    r.add_argument("photo", metavar="PHOTO")
    region = r.add_mutually_exclusive_group(required=True)
    region.add_argument("--mask", help="mask image of the photo's size (white = recolor)")
    region.add_argument("--point", type=_point, metavar="X,Y",
                        help="recolor the region under pixel X,Y (column, row of the photo); --region says which")
    r.add_argument("--region", choices=REGION_CHOICES, default=None,
                   help="with --point: superpixel (default) = the SLIC segment under the point, a blob a few "
                        "pixels wide; color = the connected region of the point's palette color (the photo "
                        "quantized to --region-colors colors, colors within --tolerance joined, holes filled), "
                        "grown or shrunk by --grow: follows the object clicked")
    r.add_argument("--region-colors", type=_positive, default=None, metavar="N",
                   help=f"--region color: palette size the region is found in (default {REGION_COLORS})")
    r.add_argument("--tolerance", type=float, default=None,
                   help=f"--region color: palette colors within this CIELab distance of the point's color join "
                        f"the region (default {REGION_TOLERANCE:g})")
    r.add_argument("--grow", type=int, default=None, metavar="PX",
                   help="--region color: grow (positive) or shrink (negative) the region by PX photo pixels "
                        "(default 0)")
    r.add_argument("--color", required=True, help='the new color as hex, e.g. "#c0392b"')
    r.add_argument("--keep-texture", action="store_true",
                   help="give the model the texture cue inside the region too (default: dropped there)")
    r.add_argument("--whole-image", action="store_true",
                   help="write the model's whole rendering (default: only the region is pasted into the photo, "
                        "with an edge feathered over half a model pixel, so the rest keeps every original pixel)")
    model_args(r)
    return parser


# ------------------------------------------------------------------------------------------------ helpers

def palette_path(output: str | os.PathLike) -> Path:
    """`out.png` -> `out.palette.png` (always PNG)."""
    p = Path(output)
    return p.with_name(f"{p.stem}.palette.png")


def hint_path(output: str | os.PathLike) -> Path:
    """`out.png` -> `out.hint.png` (always PNG): the color input the model was given (`--save-hint`)."""
    p = Path(output)
    return p.with_name(f"{p.stem}.hint.png")


def _hint_image(color: Tensor, height: int, width: int) -> Tensor:
    """The model's color input at the photo's size; nearest-neighbour, so its flat palette colors stay exact."""
    hwc = np.ascontiguousarray(color.float().permute(1, 2, 0).cpu().numpy())
    out = cv2.resize(hwc, (width, height), interpolation=cv2.INTER_NEAREST).reshape(height, width, 3)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def _check_output(output: str) -> Path:
    from dequant.data.io import writable_folder

    p = Path(output)
    if p.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"-o must end in one of {list(OUTPUT_SUFFIXES)}, got {output!r}")
    if p.exists() and p.is_dir():
        raise ValueError(f"-o {output!r} is a folder")
    # Checked before the model runs, so a bad -o costs nothing; the folder itself is made only when writing.
    writable_folder(p.parent, f"-o {output!r}: folder", create=False)
    return p


def to_hex(color: Tensor | Sequence[float]) -> str:
    """`(3,)` RGB in [0, 1] -> `#rrggbb`."""
    values = [int(round(float(c) * 255)) for c in color]
    return "#" + "".join(f"{min(255, max(0, v)):02x}" for v in values)


def paste_region(photo: Tensor, rendered: Tensor, mask: Tensor, feather: float) -> Tensor:
    """`rendered` inside `mask` (H, W) bool, `photo` elsewhere, blended over a Gaussian edge of std `feather` px.

    Pixels farther than about 3 `feather` from the region are the photo's, bit for bit."""
    alpha = mask.float().numpy()
    if feather > 0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigmaX=float(feather), borderType=cv2.BORDER_REPLICATE)
    a = torch.from_numpy(np.ascontiguousarray(alpha))[None]
    return torch.where(a > 0, a * rendered + (1 - a) * photo, photo).clamp(0, 1)


def processing_size(height: int, width: int, short: int, multiple: int) -> tuple[int, int]:
    """(H', W') with the short side `short`, aspect ratio kept, both rounded to a multiple of `multiple` (>= it)."""
    scale = short / min(height, width)

    def snap(v: float) -> int:
        return max(multiple, int(round(v / multiple)) * multiple)

    return snap(height * scale), snap(width * scale)


def native_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """The photo's own size, or, when its long side exceeds `max_side`, shrunk to it (aspect ratio kept)."""
    scale = max_side / max(height, width)
    if scale >= 1:
        return height, width
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def downsampling_factor(module: Any) -> int:
    """2 ** (levels - 1) of the model's UNet: the sides the UNet needs to be divisible by."""
    unet = getattr(module.net, "unet", None)
    channels = getattr(getattr(unet, "config", None), "block_out_channels", None)
    return 2 ** (len(channels) - 1) if channels else 1


def palette_figure(source: Tensor, target: Tensor | None = None, mapping: Sequence[int] | Tensor | None = None,
                   source_fractions: Tensor | None = None) -> Tensor:
    """Swatches `(3, H, W)`: source colors left (hex, area), target colors right, lines from sources to matches."""
    source = source.float().cpu()
    target = None if target is None else target.float().cpu()
    ks, kt = source.shape[0], 0 if target is None else target.shape[0]
    rows = max(ks, kt)
    row = max(4, min(28, 1400 // rows))
    pad, sw, gap = 8, 40, 80
    text_w = 96 if row >= 12 else 0
    left_x, right_x = pad, pad + sw + text_w + gap
    width = (right_x + sw + text_w + pad) if target is not None else (left_x + sw + text_w + pad)
    img = Image.new("RGB", (width, pad * 2 + rows * row), "white")
    draw = ImageDraw.Draw(img)

    def y(i: int, k: int) -> int:
        return pad + (rows - k) * row // 2 + i * row  # the shorter column is centered

    def rgb(c: Tensor) -> tuple[int, int, int]:
        return tuple(int(round(float(v) * 255)) for v in c.clamp(0, 1))  # type: ignore[return-value]

    if target is not None and mapping is not None:
        for i, j in enumerate([int(m) for m in mapping]):
            draw.line([(left_x + sw + text_w, y(i, ks) + row // 2), (right_x - 2, y(j, kt) + row // 2)],
                      fill=(90, 90, 90), width=1 if row < 12 else 2)
    columns = [(left_x, source, source_fractions, ks)]
    if target is not None:
        columns.append((right_x, target, None, kt))
    for x0, colors, fractions, k in columns:
        for i, c in enumerate(colors):
            draw.rectangle([x0, y(i, k) + 1, x0 + sw, y(i, k) + row - 1], fill=rgb(c), outline=(0, 0, 0))
            if text_w:
                label = to_hex(c) + ("" if fractions is None else f" {100 * float(fractions[i]):.1f}%")
                draw.text((x0 + sw + 4, y(i, k) + row // 2 - 5), label, fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def write_outputs(images: dict[Path, Tensor]) -> None:
    """Write every image under a temporary name first, then rename them all: an error leaves none behind."""
    from functools import partial

    from dequant.atomic import write_all
    from dequant.data.io import save_rgb

    # save_rgb picks the format by suffix: the temporary names keep the target's.
    write_all({path: partial(save_rgb, image) for path, image in images.items()})


def _load_photo(path: str, name: str = "PHOTO") -> Tensor:
    from dequant.data.io import ImageLoadError, load_rgb

    try:
        return load_rgb(path)
    except ImageLoadError as err:
        raise ValueError(f"{name} {err.path}: cannot read the image ({err.reason})") from err


def _hex_palette(text: str, name: str) -> Tensor:
    from dequant.color.matching import palette_from_hex

    try:
        return palette_from_hex(text)
    except ValueError as err:
        raise ValueError(f"{name}: {str(err).replace('colors: ', '')}") from err


class _Model:
    """A loaded checkpoint with what the edits need from its training config."""

    def __init__(self, ckpt: str, device: str | None) -> None:
        from dequant.color.hint import HINT_CHANNELS
        from dequant.evaluation.runner import build_matcher, build_quantizer, checkpoint_crop_size, checkpoint_cue
        from dequant.models.exported import read_dequant_config
        from dequant.models.module import load_model
        from dequant.models.pretrained import resolve_model

        # Outside the try below: a path that names nothing, or a missing or damaged shipped model, is its own
        # one-line message, not "not a usable dequant model".
        ckpt = resolve_model(ckpt, "--ckpt")
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.config = read_dequant_config(ckpt)
            self.cue = checkpoint_cue(self.config)
            self.crop = checkpoint_crop_size(self.config)
            self.quantizer = build_quantizer(None, self.config)
            self.match = build_matcher(None, self.config)
            # Progress on stdout: stderr holds nothing but a bad input's one error line.
            print(f"loading {ckpt} on {dev}", flush=True)
            start = time.monotonic()
            self.module = load_model(ckpt, map_location=dev)
            print(f"loaded in {time.monotonic() - start:.1f} s", flush=True)
        except Exception as err:  # noqa: BLE001 - a foreign checkpoint fails in torch, Hydra or diffusers
            raise ValueError(f"--ckpt {ckpt}: not a usable dequant model ({one_line(str(err), 300)})") from err
        channels = getattr(self.module.net, "hint_channels", None)
        if channels != HINT_CHANNELS:
            raise ValueError(f"--ckpt {ckpt}: the model takes {channels} hint channels, dequant-edit makes "
                             f"{HINT_CHANNELS}")
        self.factor = downsampling_factor(self.module)

    def check_cue(self, cue: str | None) -> None:
        """`--cue` must name the cue the checkpoint was trained with."""
        if cue is not None and cue != self.cue.mode:
            raise ValueError(f"--cue {cue}: the checkpoint was trained with the {self.cue.mode!r} texture cue "
                             f"(pass --cue {self.cue.mode} or leave --cue out)")

    def size_for(self, height: int, width: int) -> tuple[int, int]:
        """The processing size of a photo at `--resolution train` (see RESOLUTION_NOTE)."""
        return processing_size(height, width, self.crop, self.factor)

    def default_tile(self) -> int:
        """`--tile`'s default: TILE_CROPS training crops, rounded up to the UNet's downsampling factor."""
        from dequant.render import round_up

        return round_up(TILE_CROPS * self.crop, self.factor)

    def check_resolution(self, args: argparse.Namespace) -> None:
        """`--max-side` and `--tile` belong to `--resolution native`; `--tile` must suit the UNet."""
        if args.resolution != "native":
            given = [name for name, v in (("--max-side", args.max_side), ("--tile", args.tile)) if v is not None]
            if given:
                raise ValueError(f"{' and '.join(given)} only appl{'y' if len(given) > 1 else 'ies'} to "
                                 f"--resolution native, got --resolution {args.resolution}")
            return
        if args.tile is not None and args.tile % self.factor:
            raise ValueError(f"--tile {args.tile}: must be a multiple of the model's downsampling factor "
                             f"{self.factor}")

    def working_size(self, args: argparse.Namespace, height: int, width: int) -> tuple[int, int]:
        """The size the model works at for a photo of `height` x `width` under `--resolution`."""
        if args.resolution == "train":
            return self.size_for(height, width)
        return native_size(height, width, args.max_side or DEFAULT_MAX_SIDE)

    def render(self, h: Tensor, spec: Any, args: argparse.Namespace) -> Tensor:
        """One output `(3, H, W)` for one hint `(7, H, W)`: at `--resolution native` at the hint's own size (tiled
        when it has more than `--tile`**2 pixels), else (the hint is already at the training size) in one pass."""
        if args.resolution == "train":
            with self.progress(spec, calls=1):
                return self.sample(h, spec, args.seed)
        from dequant.render import render_calls, render_tiled

        tile = args.tile or self.default_tile()
        layout = {"tile": tile, "overlap": tile // 4, "max_pixels": tile * tile, "multiple": self.factor}

        def sample_fn(hints: Tensor, ids: Sequence[int]) -> Tensor:
            return self.module.sample(hints, sampler=spec, seed=args.seed, image_ids=list(ids)).float().cpu()

        with self.progress(spec, calls=render_calls(*h.shape[-2:], **layout)):
            out = render_tiled(sample_fn, h.float(), **layout)
        return out.clamp(0, 1)

    @contextmanager
    def progress(self, spec: Any, calls: int) -> Iterator[None]:
        """Report network evaluations (steps x tiles) and the time left while the body samples: a bar on a terminal,
        a line every few seconds elsewhere."""
        from dequant.progress import Progress

        total = calls * self.module.formulation.network_evaluations(spec)
        with Progress("render", total, "network steps", interval_s=5.0, emit=lambda line: print(line, flush=True),
                      stream=sys.stdout) as bar:
            # Counted at the net itself: the sampler's loop belongs to the model code.
            hook = self.module.net.register_forward_hook(lambda *_: bar.advance())
            try:
                yield
            finally:
                hook.remove()

    def sampler_spec(self, args: argparse.Namespace) -> Any:
        """The sampler to use: the checkpoint's, with what `--sampler`, `--steps`, `--start-step` and `--guidance`
        override (checked now)."""
        import dataclasses

        from dequant.models.sampling import as_sampler_spec

        given = {"steps": args.steps, "start_step": args.start_step, "guidance": args.guidance}
        try:
            spec = as_sampler_spec(args.sampler) if args.sampler is not None else self.module.sampler_spec
            spec = dataclasses.replace(spec, **{k: v for k, v in given.items() if v is not None})
            self.module.formulation.check_sampler(spec, key="--sampler")
            return spec
        except ValueError as err:
            raise ValueError(f"--sampler/--steps/--start-step/--guidance: {err}") from err

    def sample(self, h: Tensor, spec: Any, seed: int) -> Tensor:
        """One output `(3, H, W)` for one hint `(7, H, W)`."""
        return self.module.sample(h[None], sampler=spec, seed=seed)[0].float().cpu().clamp(0, 1)


# --------------------------------------------------------------------------------------------- subcommands

def run_quantize(args: argparse.Namespace) -> dict[Path, Tensor]:
    """Quantize the photo at its own size; print the palette; return the images to write."""
    from dequant.color.quantize import quantize

    out = _check_output(args.output)
    if int(args.colors) > 256:
        raise ValueError(f"-n must be at most 256, got {args.colors}")
    photo = _load_photo(args.photo)
    if args.method == "median_cut" and args.space != "rgb":
        raise ValueError("--space lab needs --method kmeans (median cut works in RGB)")
    q = quantize(photo, int(args.colors), method=args.method, space=args.space)
    for color, frac in zip(q.palette, q.fractions):
        print(f"{to_hex(color)}  {100 * float(frac):5.1f}%")
    print(",".join(to_hex(c) for c in q.palette))
    return {out: q.image.float(), palette_path(out): palette_figure(q.palette, source_fractions=q.fractions)}


def _target_palette(args: argparse.Namespace, n: int, quantizer: Any, size: tuple[int, int],
                    other: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """(target palette, its area fractions or None) from --palette, --colormap or --palette-from."""
    from dequant.color.matching import colormap_palette

    if args.palette is not None:
        return _hex_palette(args.palette, "--palette"), None
    if args.colormap is not None:
        return colormap_palette(args.colormap, n), None
    q = quantizer(resize(other, *size), n)
    return q.palette.float(), q.fractions


def run_transfer(args: argparse.Namespace) -> dict[Path, Tensor]:
    """Palette transfer with the model; return the images to write."""
    from dequant.color.edits import post_l
    from dequant.color.hint import hint
    from dequant.color.matching import transfer

    out = _check_output(args.output)
    n = int(args.colors)
    if n > 256:
        raise ValueError(f"-n must be at most 256, got {n}")
    if args.palette is not None:
        _hex_palette(args.palette, "--palette")  # malformed hex fails before the model loads
    if args.colormap is not None:
        from dequant.color.matching import colormap_palette

        try:
            colormap_palette(args.colormap, 1)
        except ValueError as err:
            raise ValueError(f"--colormap {args.colormap!r}: not a matplotlib colormap") from err
    photo = _load_photo(args.photo)
    other = None if args.palette_from is None else _load_photo(args.palette_from, "--palette-from")
    model = _Model(args.ckpt, args.device)
    model.check_cue(args.cue)
    spec = model.sampler_spec(args)
    model.check_resolution(args)
    size = model.working_size(args, *photo.shape[-2:])
    x = resize(photo, *size)
    q = model.quantizer(x, n)
    target, target_fractions = _target_palette(args, n, model.quantizer, size, other)
    score = args.score or ("cmap" if args.colormap is not None else "color")
    if score == "freq" and target_fractions is None:
        # Hex and colormap palettes carry no areas: every target color counts equally.
        target_fractions = torch.full((target.shape[0],), 1.0 / target.shape[0])
    mapping = model.match(q.palette, target, score=score, source_fractions=q.fractions,
                          target_fractions=target_fractions)
    moved = transfer(q, target, mapping)
    h = hint(moved.image.float(), model.cue(x), mode="palette", n_colors=n, keep_texture=True,
             cue_mode=model.cue.mode, g_neutral=model.cue.g_neutral)
    result = model.render(h, spec, args)
    full = resize(result, *photo.shape[-2:])
    if args.post_l:
        full = post_l(full, photo)
    images = {out: full, palette_path(out): palette_figure(q.palette, target, mapping, q.fractions)}
    if args.save_hint:
        images[hint_path(out)] = _hint_image(moved.image, *photo.shape[-2:])
    return images


def _read_mask(path: str, height: int, width: int) -> Tensor:
    mask_rgb = _load_photo(path, "--mask")
    if tuple(mask_rgb.shape[-2:]) != (height, width):
        raise ValueError(f"--mask {path}: size {mask_rgb.shape[-1]}x{mask_rgb.shape[-2]} differs from the photo's "
                         f"{width}x{height}")
    mask = mask_rgb.mean(dim=0) > 0.5
    if not bool(mask.any()):
        raise ValueError(f"--mask {path}: the mask is empty (no pixel brighter than 50% gray)")
    return mask


def _check_region_args(args: argparse.Namespace) -> None:
    """--region and its options: --region color needs --point; its options need --region color."""
    color_opts = [f"--{name.replace('_', '-')}" for name in ("region_colors", "tolerance", "grow")
                  if getattr(args, name) is not None]
    if args.region is not None and args.point is None:
        raise ValueError(f"--region {args.region} applies to --point, not to --mask")
    if color_opts and args.region != "color":
        raise ValueError(f"{', '.join(color_opts)} only appl{'y' if len(color_opts) > 1 else 'ies'} to --region "
                         "color")
    if args.region_colors is not None and args.region_colors > 256:
        raise ValueError(f"--region-colors must be at most 256, got {args.region_colors}")
    if args.tolerance is not None and not 0 <= args.tolerance < float("inf"):
        raise ValueError(f"--tolerance must be a finite number >= 0, got {args.tolerance}")


def _point_region(args: argparse.Namespace, model: _Model, x: Tensor, col: int, row: int, height: int) -> Tensor:
    """The region under (col, row) of the working image `x`, as --region asks."""
    from dequant.color.masks import mask_from_point
    from dequant.color.regions import color_region

    if args.region != "color":
        return mask_from_point(x, col, row)
    rq = model.quantizer(x, args.region_colors or REGION_COLORS)
    grow = int(round((args.grow or 0) * x.shape[-2] / height))
    tolerance = REGION_TOLERANCE if args.tolerance is None else float(args.tolerance)
    try:
        return color_region(rq.index, col, row, palette=rq.palette, tolerance=tolerance, grow=grow)
    except ValueError as err:
        raise ValueError(f"--grow {args.grow}: {err}") from err


def run_recolor(args: argparse.Namespace) -> dict[Path, Tensor]:
    """Patch recoloring with the model; return the images to write."""
    from dequant.color.edits import post_l
    from dequant.color.hint import fill_mask, hint

    out = _check_output(args.output)
    _check_region_args(args)
    color = _hex_palette(args.color, "--color")
    if color.shape[0] != 1:
        raise ValueError(f"--color must be one hex color, got {color.shape[0]}: {args.color!r}")
    photo = _load_photo(args.photo)
    height, width = photo.shape[-2:]
    full_mask = None
    if args.mask is not None:
        full_mask = _read_mask(args.mask, height, width)
    else:
        px, py = args.point
        if not (0 <= px < width and 0 <= py < height):
            raise ValueError(f"--point {px},{py} lies outside the photo ({width}x{height}: X in [0, {width - 1}], "
                             f"Y in [0, {height - 1}])")
    model = _Model(args.ckpt, args.device)
    model.check_cue(args.cue)
    spec = model.sampler_spec(args)
    model.check_resolution(args)
    size = model.working_size(args, height, width)
    x = resize(photo, *size)
    if full_mask is not None:
        small = cv2.resize(full_mask.float().numpy(), (size[1], size[0]), interpolation=cv2.INTER_AREA)
        mask = torch.from_numpy(small >= 0.5)
        if not bool(mask.any()):
            raise ValueError(f"--mask {args.mask}: the region vanishes at the model's resolution "
                             f"{size[1]}x{size[0]}; draw a larger region")
    else:
        col = min(size[1] - 1, int(px * size[1] / width))
        row = min(size[0] - 1, int(py * size[0] / height))
        mask = _point_region(args, model, x, col, row, height)
    filled = fill_mask(x, mask, color[0])
    h = hint(filled, model.cue(x), mode="patch", mask=mask, keep_texture=bool(args.keep_texture),
             cue_mode=model.cue.mode, g_neutral=model.cue.g_neutral)
    result = model.render(h, spec, args)
    full = resize(result, height, width)
    if full_mask is None:
        full_mask = torch.from_numpy(cv2.resize(mask.numpy().astype(np.uint8), (width, height),
                                                interpolation=cv2.INTER_NEAREST) > 0)
    feather = 0.5 * height / size[0]
    if args.post_l:
        # Inside the region only: outside it the photo is pasted back anyway, and --whole-image asks for the
        # model's own rendering there.
        full = paste_region(full, post_l(full, photo), full_mask, feather=feather)
    if not args.whole_image:
        full = paste_region(photo, full, full_mask, feather=feather)
    region_mean = x[:, mask].mean(dim=1)[None]
    images = {out: full, palette_path(out): palette_figure(region_mean, color, [0])}
    if args.save_hint:
        images[hint_path(out)] = _hint_image(filled, height, width)
    return images


COMMANDS = {"quantize": run_quantize, "transfer": run_transfer, "recolor": run_recolor}


def one_line(message: str, limit: int = 400) -> str:
    """An error message on one line, cut to `limit` characters (state-dict mismatches run to pages)."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `dequant-edit`; returns the exit code (2 on any bad input)."""
    args = build_parser().parse_args(argv)
    try:
        images = COMMANDS[args.command](args)
        write_outputs(images)
    except (ValueError, OSError) as err:
        print(f"{PROG} {args.command}: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    for path in images:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
