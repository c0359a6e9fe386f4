"""What the palette editor page does, without the page: photos, palettes, regions and renders (no Gradio here).

Everything the page shows is computed at the photo's working size (its own size, the long side capped at
`max_side` as `dequant-edit --resolution native` does); a render is resized back to the photo's own size. Photos
live in a bounded store (`PhotoStore`): the page's per-session state holds only a key and a few numbers, so many
uploads in a row cost at most `capacity` photos of memory. Bad input raises `AppError`, whose message the page
shows as it is.

Beside the model's render the page shows the classical color transfer a user would pick instead
(`classical_transfer`: Reinhard et al.'s in CIELab by default, at the photo's own size, no model), and for both how
closely they follow the asked palette and how much of the photo's texture they keep (`scores`).
"""

from __future__ import annotations

import argparse
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dequant.color.quantize import Quantized
from dequant.edit import to_hex  # noqa: F401 - the page formats its hex codes with it

# Uploads with more pixels than this are refused from the header, before any decoding.
MAX_PIXELS = 20_000_000
N_MIN, N_MAX = 2, 64
# Label shown on the page -> (method, space) of dequant.color.quantize.
QUANTIZERS: dict[str, tuple[str, str]] = {
    "median cut": ("median_cut", "rgb"), "k-means (RGB)": ("kmeans", "rgb"), "k-means (Lab)": ("kmeans", "lab"),
}
PHOTO_SCORES = ("color", "neg", "freq", "int")
REGION_MODES = ("palette color", "superpixel")
COLORMAPS = ("viridis", "magma", "plasma", "inferno", "cividis", "twilight", "coolwarm", "Spectral", "terrain",
             "ocean", "cubehelix", "rainbow")
_RGB_FN = re.compile(r"^rgba?\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*(?:,\s*[\d.]+\s*)?\)$")


class AppError(ValueError):
    """Bad input from the page: the message is shown to the user as it is."""


class RenderTimeout(AppError):
    """A render ran past its time limit."""


# --------------------------------------------------------------------------------------------- photos

def read_photo(path: str | os.PathLike, name: str = "upload", max_pixels: int = MAX_PIXELS) -> Tensor:
    """Decode an uploaded image `(3, H, W)` in [0, 1]; AppError when unreadable or over `max_pixels` (checked from
    the header, so an oversized photo is never decoded)."""
    from dequant.data.io import ImageLoadError, load_rgb

    shown = Path(path).name
    try:
        with Image.open(path) as im:  # lazy: reads the header only
            width, height = im.size
    except Image.DecompressionBombError:
        raise AppError(f"{name} {shown}: over the limit of {max_pixels / 1e6:.0f} megapixels; not opened") from None
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for a file that is not an image
        raise AppError(f"{name} {shown}: not a readable image ({type(err).__name__})") from None
    if width * height > max_pixels:
        raise AppError(f"{name} {shown}: {width}x{height} is {width * height / 1e6:.1f} megapixels, over the limit "
                       f"of {max_pixels / 1e6:.0f}; shrink it first")
    try:
        return load_rgb(path)
    except ImageLoadError as err:
        raise AppError(f"{name} {shown}: not a readable image ({err.reason})") from None


def sample_photos() -> dict[str, Path]:
    """The shipped photos (sample images and the package photos), by file name."""
    from importlib import resources

    assets = Path(str(resources.files("dequant") / "assets"))
    out: dict[str, Path] = {}
    for folder in ("images", "heldout_photos", "train_photos"):
        for p in sorted((assets / folder).glob("*.jpg")):
            out.setdefault(p.name, p)
    return out


@dataclass
class Photo:
    """One photo: its own size as 8-bit (a 20 MP photo is 60 MB, not 240), and the working copy the page edits."""

    name: str
    full: Tensor  # (3, H, W) uint8
    work: Tensor  # (3, h, w) float32 in [0, 1]
    quantized: dict[tuple[int, str], Quantized] = field(default_factory=dict)

    @property
    def full_float(self) -> Tensor:
        """The photo at its own size, float in [0, 1]."""
        return self.full.float() / 255.0


class PhotoStore:
    """At most `capacity` photos, least recently used dropped first (thread-safe)."""

    def __init__(self, capacity: int = 8) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._photos: OrderedDict[str, Photo] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._photos)

    def add(self, photo: Photo) -> str:
        """Store `photo`; returns its key."""
        key = uuid.uuid4().hex
        with self._lock:
            self._photos[key] = photo
            while len(self._photos) > self.capacity:
                self._photos.popitem(last=False)
        return key

    def get(self, key: str | None) -> Photo:
        """The photo under `key`; AppError when none was loaded or it was dropped."""
        with self._lock:
            if key is None or key not in self._photos:
                raise AppError("no photo loaded (or it was dropped after many newer uploads): upload or pick one")
            self._photos.move_to_end(key)
            return self._photos[key]


# --------------------------------------------------------------------------------------------- palettes

def parse_n(value: object) -> int:
    """The palette size N from the page, an integer in [N_MIN, N_MAX]."""
    try:
        n = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise AppError(f"N must be a whole number from {N_MIN} to {N_MAX}, got {value!r}") from None
    if not n.is_integer() or not N_MIN <= n <= N_MAX:
        raise AppError(f"N must be a whole number from {N_MIN} to {N_MAX}, got {value!r}")
    return int(n)


def parse_color(text: object, name: str = "color") -> Tensor:
    """A color `(3,)` from '#rrggbb', '#rgb' or a color picker's 'rgb(r, g, b)' / 'rgba(...)'."""
    from dequant.color.matching import palette_from_hex

    s = str(text or "").strip()
    m = _RGB_FN.match(s)
    if m:
        values = [float(v) for v in m.groups()]
        if all(0 <= v <= 255 for v in values):
            return torch.tensor(values, dtype=torch.float32) / 255.0
    elif "," not in s:
        try:
            return palette_from_hex(s)[0]
        except ValueError:
            pass
    raise AppError(f"{name}: {s!r} is not a color (expected a hex code like #c0392b)")


def quantize_photo(photo: Photo, n: int, quantizer: str) -> Quantized:
    """The working image quantized to `n` colors (cached per photo)."""
    from dequant.color.quantize import quantize

    if quantizer not in QUANTIZERS:
        raise AppError(f"quantizer must be one of {list(QUANTIZERS)}, got {quantizer!r}")
    key = (n, quantizer)
    if key not in photo.quantized:
        method, space = QUANTIZERS[quantizer]
        photo.quantized.clear()  # one palette per photo at a time keeps the store's memory bound
        photo.quantized[key] = quantize(photo.work, n, method=method, space=space)
    return photo.quantized[key]


def recolored(q: Quantized, target: Tensor) -> Tensor:
    """The quantized image with source color i shown as `target[i]`: the model's color input."""
    from dequant.color.matching import transfer

    return transfer(q, target, torch.arange(q.n_colors)).image


# The classical color transfers the page can show beside the model (dequant.evaluation.baselines): name -> label.
CLASSICAL: dict[str, str] = {"reinhard": "Reinhard, Lab", "ot": "optimal transport, RGB"}


def classical_transfer(photo: Photo, q: Quantized, target: Tensor, method: str = "reinhard") -> Tensor:
    """The classical answer to the same request, at the photo's own size and without the model: the photo's colors
    moved to the statistics of the requested image (the quantized image recolored to `target`, the model's color
    input), called as the evaluation calls the baseline (conf/baselines/all.yaml: `inputs: [source, requested]`).

    `reinhard` (default): Reinhard et al.'s mean/std matching per CIELab channel, about 10 s on a 12 MP photo.
    `ot`: optimal-transport transfer (POT EMD on 2000 pixel samples, every pixel moved like its nearest sample; the
    nearest-sample search grows with the photo's pixels, so it is slower on large photos).
    """
    from dequant.evaluation.baselines import ot_transfer, reinhard_transfer

    if method not in CLASSICAL:
        raise AppError(f"classical transfer must be one of {list(CLASSICAL)}, got {method!r}")
    requested = recolored(q, target).float()
    if method == "ot":
        return ot_transfer(photo.full_float, requested, n_samples=2000, seed=0, method="emd",
                           max_iter=10_000_000)
    return reinhard_transfer(photo.full_float, requested, space="lab")


def scores(photo: Photo, q: Quantized, target: Tensor, image: Tensor) -> dict[str, float]:
    """How a result `(3, H, W)` at the photo's own size answers the request, both measured at the working size
    (the result shrunk to it by area averaging), where the palette was asked for:

    - `palette_de2000`: palette obedience, the evaluation's metric (`dequant.metrics.palette_error_ciede`):
      CIEDE2000 between each asked color `target[i]` and the result's mean color over the pixels of palette color
      i, weighted by area. Lower follows the asked palette more closely.
    - `texture_corr`: texture kept (`dequant.metrics.texture_fidelity`): correlation of the result's gray gradient
      magnitudes with the photo's. 1 keeps every edge and grain of the photo.
    """
    from dequant.edit import resize
    from dequant.metrics import palette_error_ciede, texture_fidelity

    small = resize(image.float(), *photo.work.shape[-2:])
    return {"palette_de2000": float(palette_error_ciede(small, q.index, target.float())[0]),
            "texture_corr": float(texture_fidelity(small, photo.work)[0])}


def palette_from_photo(q: Quantized, other: Tensor, quantizer: str, score: str) -> Tensor:
    """Target colors (K, 3) for the source palette: `other` quantized alike, matched by `score`."""
    from dequant.color.matching import match_palettes
    from dequant.color.quantize import quantize

    if score not in PHOTO_SCORES:
        raise AppError(f"score must be one of {list(PHOTO_SCORES)}, got {score!r}")
    method, space = QUANTIZERS[quantizer]
    oq = quantize(other, q.n_colors, method=method, space=space)
    mapping = match_palettes(q.palette, oq.palette, score=score, source_fractions=q.fractions,
                             target_fractions=oq.fractions)
    return oq.palette[mapping]


def palette_from_colormap(q: Quantized, name: str) -> Tensor:
    """Target colors (K, 3): K colors of a matplotlib colormap matched with the `cmap` score."""
    from dequant.color.matching import colormap_palette, match_palettes

    try:
        cmap = colormap_palette(name, q.n_colors)
    except ValueError:
        raise AppError(f"colormap {name!r} is not a matplotlib colormap") from None
    mapping = match_palettes(q.palette, cmap, score="cmap", source_fractions=q.fractions)
    return cmap[mapping]


def shift_palette(target: Tensor, hue: float, sat: float, val: float) -> Tensor:
    """Hue turned by `hue` of the circle, saturation and value scaled by `sat`, `val`."""
    from dequant.color.edits import HSVShift, apply_hsv_shift

    try:
        return apply_hsv_shift(target, HSVShift(float(hue), float(sat), float(val)))
    except (TypeError, ValueError) as err:
        raise AppError(f"HSV shift: {err}") from None


# --------------------------------------------------------------------------------------------- regions

def region_mask(photo: Photo, q: Quantized, x: int, y: int, mode: str, grow: int, tolerance: float) -> Tensor:
    """The region `(h, w)` bool a click at working-image pixel (x, y) selects."""
    from dequant.color.masks import mask_from_point
    from dequant.color.regions import color_region

    if mode not in REGION_MODES:
        raise AppError(f"region must be one of {list(REGION_MODES)}, got {mode!r}")
    try:
        if mode == "superpixel":
            return mask_from_point(photo.work, int(x), int(y))
        return color_region(q.index, int(x), int(y), palette=q.palette, tolerance=float(tolerance), grow=int(grow))
    except ValueError as err:
        raise AppError(f"region: {err}") from None


def mask_overlay(image: Tensor, mask: Tensor, color: Tensor | None = None) -> Tensor:
    """`image` with the outside of `mask` dimmed and its outline drawn, to show a region before rendering."""
    out = torch.where(mask[None], image, 0.35 * image + 0.65 * 0.5)
    edge = mask.numpy().astype(np.uint8)
    outline = torch.from_numpy(cv2.morphologyEx(edge, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0)
    line = torch.tensor([1.0, 0.1, 0.6]) if color is None else color
    return torch.where(outline[None], line[:, None, None], out)


# --------------------------------------------------------------------------------------------- rendering

@dataclass
class RenderOptions:
    """The render controls of the page; None keeps the checkpoint's own setting."""

    cue: bool = True
    sampler: str | None = None
    steps: int | None = None
    seed: int = 0
    start_step: int | None = None
    guidance: float | None = None
    post_l: bool = False

    def namespace(self) -> argparse.Namespace:
        """The options as the `dequant-edit` arguments the shared model code reads."""
        return argparse.Namespace(sampler=self.sampler, steps=self.steps, start_step=self.start_step,
                                  guidance=self.guidance, seed=self.seed, resolution="native", tile=None,
                                  max_side=None)


class Renderer:
    """A loaded checkpoint (`dequant-edit`'s model loading) that renders one request at a time, each under a time
    limit, reporting progress per network evaluation."""

    def __init__(self, ckpt: str | os.PathLike, time_limit: float = 300.0, device: str | None = None) -> None:
        from dequant.edit import _Model

        self.model = _Model(str(ckpt), device)  # ValueError with a one-line reason when it cannot load
        self.time_limit = float(time_limit)
        self._lock = threading.Lock()

    @property
    def cue_mode(self) -> str:
        """The texture cue the checkpoint was trained with (T, G, L or none)."""
        return str(self.model.cue.mode)

    @property
    def default_sampler(self) -> str:
        """The checkpoint's sampler name and step count, for the page's labels."""
        spec = self.model.module.sampler_spec
        return f"{spec.name}, {spec.steps} steps"

    def _expected_calls(self, spec: object, height: int, width: int) -> int:
        from dequant.render import round_up, tile_starts

        tile = self.model.default_tile()
        hp, wp = round_up(height, self.model.factor), round_up(width, self.model.factor)
        tiles = 1 if hp * wp <= tile * tile else (
            len(tile_starts(hp, min(tile, hp), tile // 4)) * len(tile_starts(wp, min(tile, wp), tile // 4)))
        steps = max(1, int(getattr(spec, "steps", 1)) - int(getattr(spec, "start_step", 0) or 0))
        return tiles * steps

    def run(self, h: Tensor, opts: RenderOptions, progress: Callable[[float], None] | None = None) -> Tensor:
        """The model's output `(3, h, w)` for a hint `(7, h, w)`, under the time limit."""
        args = opts.namespace()
        try:
            spec = self.model.sampler_spec(args)
        except ValueError as err:
            raise AppError(str(err).replace("--sampler/--steps/--start-step/--guidance", "sampler settings")) \
                from None
        expected = self._expected_calls(spec, *h.shape[-2:])
        calls = [0]
        deadline = [0.0]

        def check(_module: object, _inputs: object) -> None:
            if time.monotonic() > deadline[0]:
                raise RenderTimeout(f"the render ran past its time limit of {self.time_limit:.0f} s; use fewer "
                                    "steps or a smaller photo")
            calls[0] += 1
            if progress is not None:
                progress(min(0.99, calls[0] / expected))

        with self._lock:
            deadline[0] = time.monotonic() + self.time_limit
            hook = self.model.module.net.register_forward_pre_hook(check)
            try:
                return self.model.render(h, spec, args)
            finally:
                hook.remove()

    def cue(self, image: Tensor) -> Tensor:
        """The checkpoint's texture cue of `image`."""
        return self.model.cue(image)

    def transfer(self, photo: Photo, q: Quantized, target: Tensor, n: int, opts: RenderOptions,
                 progress: Callable[[float], None] | None = None) -> Tensor:
        """The photo rendered in the `target` palette, at the photo's own size (`dequant-edit transfer`)."""
        from dequant.color.edits import post_l
        from dequant.color.hint import hint
        from dequant.edit import resize

        cue = self.model.cue
        h = hint(recolored(q, target).float(), cue(photo.work), mode="palette", n_colors=n, keep_texture=opts.cue,
                 cue_mode=cue.mode, g_neutral=cue.g_neutral)
        full_photo = photo.full_float
        out = resize(self.run(h, opts, progress), *full_photo.shape[-2:])
        return post_l(out, full_photo) if opts.post_l else out

    def recolor(self, photo: Photo, mask: Tensor, color: Tensor, opts: RenderOptions,
                progress: Callable[[float], None] | None = None) -> Tensor:
        """The region filled with `color`, rendered and pasted back into the photo (`dequant-edit recolor`)."""
        from dequant.color.edits import post_l
        from dequant.color.hint import fill_mask, hint
        from dequant.edit import paste_region, resize

        cue = self.model.cue
        filled = fill_mask(photo.work, mask, color)
        h = hint(filled, cue(photo.work), mode="patch", mask=mask, keep_texture=opts.cue, cue_mode=cue.mode,
                 g_neutral=cue.g_neutral)
        full_photo = photo.full_float
        height, width = full_photo.shape[-2:]
        out = resize(self.run(h, opts, progress), height, width)
        full_mask = torch.from_numpy(cv2.resize(mask.numpy().astype(np.uint8), (width, height),
                                                interpolation=cv2.INTER_NEAREST) > 0)
        feather = 0.5 * height / mask.shape[0]
        if opts.post_l:
            out = paste_region(out, post_l(out, full_photo), full_mask, feather=feather)
        return paste_region(full_photo, out, full_mask, feather=feather)


def load_photo(path: str | os.PathLike, name: str, max_side: int, max_pixels: int = MAX_PIXELS) -> Photo:
    """Read an upload into a Photo with its working copy (long side at most `max_side`)."""
    from dequant.edit import native_size, resize

    image = read_photo(path, name, max_pixels)
    work = resize(image, *native_size(*image.shape[-2:], max_side)).float()
    full = (image * 255).round().clamp(0, 255).to(torch.uint8)
    return Photo(name=Path(path).name, full=full, work=work)
