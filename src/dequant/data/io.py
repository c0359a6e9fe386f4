"""Image files: find them, decode them to RGB float tensors, write them atomically, split them reproducibly (SPEC 1.1).

Decoding rules of `load_rgb` (every result is `(3, H, W)` float32 in [0, 1], EXIF orientation applied):
- 8-bit color and grayscale (RGB, L, 1, YCbCr, CMYK, LAB, ...): Pillow's conversion to RGB, divided by 255.
- 16-bit images keep their precision: grayscale `I;16*` and 16-bit RGB(A) PNGs (which Pillow would truncate to 8
  bits, so OpenCV decodes them) are divided by 65535; mode `I` (32-bit int, how Pillow used to open 16-bit
  grayscale PNGs) is read on the 16-bit scale too. Mode `F` (float) is taken as [0, 1] when its maximum is at most
  1, else on the 8-bit scale if its maximum is at most 255, else on the 16-bit scale; then clipped.
- Transparency (RGBA, LA, PA, palettes with a transparent entry) is composited on white: transparent pixels
  often hold arbitrary colors (frequently black) that no viewer shows, and white is what a viewer shows.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dequant.atomic import atomic_path, write_text
from dequant.color._checks import check_image

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
_GLOB_CHARS = frozenset("*?[")
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_EXIF_ORIENTATION = 0x0112


class ImageLoadError(ValueError):
    """An image file that cannot be decoded; `path` names the file and `reason` says why."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot load image {self.path}: {reason}")

    def __reduce__(self):  # keeps the two-argument constructor picklable across DataLoader workers
        return (type(self), (self.path, self.reason))


# ----------------------------------------------------------------------------------------------------- listing


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _is_image(path: Path) -> bool:
    return _is_image_name(path.name) and path.is_file()


def _walk_folder(folder: str) -> list[str]:
    """Image files below `folder`, recursively (as strings: a million `Path`s cost far more); hidden files and
    folders (e.g. macOS `._x.jpg`) are skipped."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if not f.startswith(".") and _is_image_name(f):
                full = os.path.join(root, f)
                if os.path.isfile(full):
                    found.append(full)
    return found


def _glob_root(pattern: str) -> str:
    """The folder part of a glob pattern before its first wildcard: what the matches' relative paths start from."""
    parts = Path(pattern).parts
    static = []
    for part in parts:
        if any(c in _GLOB_CHARS for c in part):
            break
        static.append(part)
    return os.path.join(*static) if static else "."


def _expand(entry: str | os.PathLike) -> list[tuple[str, str]]:
    """(root, file) of each image file one `paths` entry names: a glob pattern, a folder (recursive) or a single
    file; `root` is the folder the file's relative path starts from (the folder, the glob's fixed prefix, the
    file's own folder)."""
    text = os.fspath(entry)
    if not text:
        raise ValueError("paths contains an empty entry")
    expanded = os.path.expanduser(text)
    if any(c in _GLOB_CHARS for c in expanded):
        root = _glob_root(expanded)
        found: list[tuple[str, str]] = []
        for match in sorted(glob.glob(expanded, recursive=True)):
            if os.path.isdir(match):
                found.extend((root, f) for f in _walk_folder(match))
            elif _is_image(Path(match)):
                found.append((root, match))
        if not found:
            raise ValueError(f"paths entry {text!r}: the glob pattern matches no image files")
        return found
    if os.path.isdir(expanded):
        files = _walk_folder(expanded)
        if not files:
            raise ValueError(f"paths entry {text!r}: the folder holds no image files ({sorted(IMAGE_SUFFIXES)})")
        return [(expanded, f) for f in files]
    if os.path.isfile(expanded):
        # An explicitly named file is kept whatever its suffix: the caller asked for it.
        return [(os.path.dirname(expanded) or ".", expanded)]
    raise ValueError(f"paths entry {text!r}: no such file or folder")


def _normalized(path: str) -> str:
    # normpath (not resolve) so that symlinked files keep their own names and the order is by name.
    return os.path.normpath(os.path.abspath(path))


def list_image_files(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[tuple[str, int]]:
    """(file, start of its relative part) of every image file `paths` names (glob patterns, folders searched
    recursively, files): normalized absolute paths, sorted, de-duplicated (the first entry naming a file gives its
    relative part)."""
    entries = [paths] if isinstance(paths, (str, os.PathLike)) else paths
    if not isinstance(entries, Sequence) or isinstance(entries, bytes):
        raise ValueError(f"paths must be a path, a glob pattern or a list of them, got {type(paths).__name__}")
    if len(entries) == 0:
        raise ValueError("paths is empty: give a glob pattern, a folder or image files")
    unique: dict[str, int] = {}
    for entry in entries:
        if not isinstance(entry, (str, os.PathLike)):
            raise ValueError(f"paths entries must be strings or paths, got {type(entry).__name__}: {entry!r}")
        for root, f in _expand(entry):
            key = _normalized(f)
            base = _normalized(root).rstrip(os.sep) + os.sep
            unique.setdefault(key, len(base) if key.startswith(base) else key.rfind(os.sep) + 1)
    return sorted(unique.items())


def check_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> None:
    """The errors `list_image_files` would raise for an entry that names nothing (a glob without a match, a missing
    file or folder), found without listing everything (the first match of each entry is enough)."""
    entries = [paths] if isinstance(paths, (str, os.PathLike)) else paths
    if not isinstance(entries, Sequence) or isinstance(entries, bytes) or len(entries) == 0:
        list_image_files(paths)  # words the error
        return
    for entry in entries:
        text = os.fspath(entry) if isinstance(entry, (str, os.PathLike)) else entry
        if not isinstance(text, str) or not text:
            list_image_files([entry])  # words the error
            continue
        expanded = os.path.expanduser(text)
        if any(c in _GLOB_CHARS for c in expanded):
            if next(glob.iglob(expanded, recursive=True), None) is None:
                raise ValueError(f"paths entry {text!r}: the glob pattern matches no image files")
        elif not os.path.exists(expanded):
            raise ValueError(f"paths entry {text!r}: no such file or folder")


def list_images(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Image files named by `paths` (glob patterns, folders searched recursively, files): sorted, de-duplicated."""
    return [Path(f) for f, _ in list_image_files(paths)]


# ----------------------------------------------------------------------------------------------------- reading


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation 1..8 to an (H, W, C) array, as Pillow's `ImageOps.exif_transpose` does."""
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:
        return array.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(array, k=-1)
    if orientation == 7:
        return np.rot90(array, k=-1)[::-1]
    if orientation == 8:
        return np.rot90(array, k=1)
    return array


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) float in [0, 1] -> (H, W, 3) over a white background."""
    alpha = rgba[..., 3:4]
    return rgba[..., :3] * alpha + (1.0 - alpha)


def _is_16bit_color_png(im: Image.Image) -> bool:
    """Pillow decodes 48/64-bit PNGs to 8-bit RGB(A); the raw mode of its tiles (before `load`) tells the depth."""
    return im.format == "PNG" and im.mode in ("RGB", "RGBA") and any(
        str(getattr(t, "args", "")).endswith(";16B") for t in im.tile)


def _decode_16bit_png(path: Path | io.BytesIO) -> np.ndarray:
    """A 16-bit RGB(A) PNG (a file, or its bytes) as (H, W, 3|4) float32 in [0, 1], via OpenCV (imdecode handles any
    path name)."""
    data = np.frombuffer(path.getvalue(), np.uint8) if isinstance(path, io.BytesIO) else np.fromfile(path, np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None or bgr.dtype != np.uint16 or bgr.ndim != 3 or bgr.shape[2] not in (3, 4):
        raise ValueError("OpenCV could not decode the 16-bit PNG")
    code = cv2.COLOR_BGRA2RGBA if bgr.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(bgr, code).astype(np.float32) / 65535.0


def _float_gray(values: np.ndarray) -> np.ndarray:
    """Mode F pixels on their guessed scale (see the module docstring), as float32 in [0, 1]."""
    finite = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(finite.max()) if finite.size else 0.0
    scale = 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else 65535.0
    return finite / scale


def _decode(im: Image.Image, path: Path | io.BytesIO, deep_png: bool) -> np.ndarray:
    """A loaded Pillow image as (H, W, 3) float32 in [0, 1], before orientation."""
    mode = im.mode
    if deep_png:
        arr = _decode_16bit_png(path)
        if arr.shape[:2] != (im.height, im.width):
            raise ValueError("OpenCV and Pillow disagree on the image size")
        return _composite_on_white(arr) if arr.shape[2] == 4 else arr
    if mode.startswith("I;16"):
        gray = np.asarray(im).astype(np.float32) / 65535.0
    elif mode == "I":
        gray = np.clip(np.asarray(im).astype(np.float32), 0, 65535) / 65535.0
    elif mode == "F":
        gray = _float_gray(np.asarray(im))
    elif mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA")).astype(np.float32) / 255.0
        return _composite_on_white(rgba)
    else:
        return np.asarray(im.convert("RGB")).astype(np.float32) / 255.0
    return np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=2)


def _check_file(p: Path) -> None:
    """Raise ImageLoadError unless `p` is a non-empty regular file."""
    if not p.is_file():
        raise ImageLoadError(p, "no such file" if not p.exists() else "not a regular file")
    if p.stat().st_size == 0:
        raise ImageLoadError(p, "the file is empty (0 bytes)")


def load_rgb(path: str | os.PathLike) -> Tensor:
    """Decode an image file to `(3, H, W)` float32 RGB in [0, 1]; raises ImageLoadError naming the file and why."""
    p = Path(path)
    _check_file(p)
    jpeg = EncodedJpeg.read(p)
    if jpeg is not None:
        return jpeg.tensor()
    return _load_with_pillow(p)


def load_rgb_bytes(data: bytes, name: str | os.PathLike) -> Tensor:
    """`load_rgb` of an image file's bytes (`name`: what errors call it, e.g. a shard member)."""
    jpeg = EncodedJpeg.read(name, data=data)
    if jpeg is not None:
        return jpeg.tensor()
    return _load_with_pillow(Path(name), io.BytesIO(data))


def _load_with_pillow(p: Path, data: io.BytesIO | None = None) -> Tensor:
    """`load_rgb` through Pillow: every format, and the JPEGs that `EncodedJpeg` leaves to it (`data`: the file's
    bytes, when not read from `p`)."""
    try:
        with Image.open(p if data is None else data) as im:
            deep_png = _is_16bit_color_png(im)
            im.load()  # decodes now, so that truncated or corrupt data fails here and not later
            orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
            array = _decode(im, p if data is None else data, deep_png)
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...: all mean unreadable
        reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        if data is not None:  # Pillow names an in-memory file by its object's repr
            reason = reason.replace(repr(data), "its bytes")
        raise ImageLoadError(p, reason) from err
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageLoadError(p, f"the image has no pixels (size {array.shape[1]}x{array.shape[0]})")
    array = np.clip(_orient(array, orientation), 0.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32))


# ----------------------------------------------------------------------------------------------------- JPEG

_JPEG_MAGIC = b"\xff\xd8\xff"
# DCT scales a JPEG is decoded at: libjpeg-turbo has SIMD code for 1/1, 1/2, 1/4 and 1/8 only (its 3/8 to 7/8
# IDCTs were slower than the whole decode here: 81 ms at 7/8 against 42 ms for a 12-megapixel photo).
DCT_DENOMS = (8, 4, 2, 1)


def _simplejpeg():
    import simplejpeg  # imported on first use: the color core and the scripts that never decode JPEGs skip it

    return simplejpeg


class EncodedJpeg:
    """A JPEG file read into memory but not decoded: its size (EXIF orientation applied) and, on demand, its pixels
    at a DCT scale of 1/1, 1/2, 1/4 or 1/8 (libjpeg-turbo through simplejpeg, the same decoder Pillow bundles: the
    full decode equals Pillow's bit for bit, tests/data/test_jpeg.py).

    A training example needs only its crop at its random scale: decoding at the smallest DCT scale that still covers
    that scale skips most of the inverse DCT, color conversion and upsampling of a large photo."""

    def __init__(self, path: Path, data: bytes, coded: tuple[int, int], orientation: int) -> None:
        self.path = path
        self.data = data
        self.coded = coded  # (height, width) as stored, before orientation
        self.orientation = orientation
        transposed = orientation in (5, 6, 7, 8)
        self.height, self.width = (coded[1], coded[0]) if transposed else coded

    @classmethod
    def read(cls, path: str | os.PathLike, data: bytes | None = None) -> EncodedJpeg | None:
        """The JPEG at `path` (or its bytes `data`), or None when it is no JPEG that libjpeg-turbo turns into RGB
        (CMYK, 12-bit, a corrupt header, no simplejpeg): those take Pillow's path, which words any error."""
        p = Path(path)
        if data is None:
            with open(p, "rb") as f:
                if f.read(3) != _JPEG_MAGIC:
                    return None
                data = _JPEG_MAGIC + f.read()
        elif data[:3] != _JPEG_MAGIC:
            return None
        try:
            sj = _simplejpeg()
            height, width, colorspace, _ = sj.decode_jpeg_header(data)
            if colorspace not in ("YCbCr", "Gray", "RGB"):
                return None
            with Image.open(io.BytesIO(data)) as im:  # reads the header only: EXIF orientation
                orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        except Exception:  # noqa: BLE001 - anything odd goes to Pillow's path, which reports it
            return None
        if height < 1 or width < 1:
            return None
        return cls(p, data, (int(height), int(width)), orientation)

    def denom_for(self, height: int, width: int, margin: float = 1.0) -> int:
        """The largest DCT denominator whose decode is at least `margin` times `height` x `width` (oriented)."""
        for d in DCT_DENOMS:
            if -(-self.height // d) >= margin * height and -(-self.width // d) >= margin * width:
                return d
        return 1

    def decode(self, denom: int = 1) -> np.ndarray:
        """The photo at DCT scale 1/denom as `(H, W, 3)` uint8 RGB, oriented; ImageLoadError if the data is bad."""
        if denom not in DCT_DENOMS:
            raise ValueError(f"denom must be one of {DCT_DENOMS}, got {denom!r}")
        h, w = self.coded
        try:
            rgb = _simplejpeg().decode_jpeg(self.data, colorspace="RGB", min_height=-(-h // denom),
                                            min_width=-(-w // denom))
        except Exception as err:  # noqa: BLE001 - libjpeg's messages, e.g. a truncated file
            # Pillow decodes what libjpeg-turbo calls recoverable (strict mode refuses it), else words the error.
            if denom == 1:
                return _hwc_u8(_load_with_pillow(self.path))
            raise ImageLoadError(self.path, f"{type(err).__name__}: {err}") from err
        return np.ascontiguousarray(_orient(rgb, self.orientation))

    def tensor(self) -> Tensor:
        """The whole photo as `load_rgb` returns it: `(3, H, W)` float32 in [0, 1]."""
        rgb = self.decode(1)
        return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)).astype(np.float32) / np.float32(255.0))


def _hwc_u8(image: Tensor) -> np.ndarray:
    """A `load_rgb` result of an 8-bit file back as `(H, W, 3)` uint8."""
    return np.ascontiguousarray(np.rint(image.numpy().transpose(1, 2, 0) * 255.0).astype(np.uint8))


# ----------------------------------------------------------------------------------------------------- writing


def writable_folder(folder: str | os.PathLike, name: str, create: bool = True) -> Path:
    """Check that `folder` can hold new files (made now if `create`, else only proven makeable); else a ValueError
    naming `name`, the option that set it."""
    p = Path(folder)
    existing = next(a for a in (p.absolute(), *p.absolute().parents) if a.exists())
    if not existing.is_dir():
        raise ValueError(f"{name} '{p}' cannot be made: '{existing}' is a file")
    try:
        if create:
            p.mkdir(parents=True, exist_ok=True)
            existing = p
        # A probe file, because os.access says yes to root on a read-only mount.
        fd, probe = tempfile.mkstemp(prefix=".write_probe.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"{name} '{p}' cannot be made or written ({err.strerror or err})") from err
    return p


_SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP", ".tif": "TIFF",
                 ".tiff": "TIFF"}


def save_rgb(image: Tensor, path: str | os.PathLike, quality: int = 95) -> Path:
    """Write `(3, H, W)` in [0, 1] as an 8-bit file (format from the suffix: PNG, JPEG, ...), atomically."""
    x, _ = check_image(image, "image", allow_batch=False)
    p = Path(path)
    fmt = _SAVE_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise ValueError(f"path must end in one of {sorted(_SAVE_FORMATS)}, got {str(p)!r}")
    u8 = (x[0].detach().cpu().float() * 255.0).round().clamp(0, 255).to(torch.uint8)
    pil = Image.fromarray(u8.permute(1, 2, 0).contiguous().numpy(), mode="RGB")
    options = {"quality": int(quality)} if fmt in ("JPEG", "WEBP") else {}
    with atomic_path(p) as tmp:
        pil.save(tmp, format=fmt, **options)
    return p


# ----------------------------------------------------------------------------------------------------- splits

SPLITS = ("train", "val", "test")


def _check_count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def split_sizes(n_images: int, n_val: int, n_test: int) -> tuple[int, int, int]:
    """(train, val, test) counts. Too few images: val shrinks first to n_images - 1, then test to what is left,
    so train keeps at least one image (e.g. 8 images, n_val=100, n_test=1000 -> 1 train, 7 val, 0 test)."""
    n_val = min(n_val, max(n_images - 1, 0))
    n_test = min(n_test, max(n_images - 1 - n_val, 0))
    return n_images - n_val - n_test, n_val, n_test


def split_paths(
    paths: Sequence[str | os.PathLike], seed: int = 42, n_val: int = 100, n_test: int = 1000
) -> dict[str, list[Path]]:
    """Deterministic split: sort, shuffle with `default_rng(seed).permutation`, first n_val = val, next n_test = test,
    rest = train (see `split_sizes` for small sets; shrinking warns). Each split stays in shuffled order."""
    n_val = _check_count(n_val, "n_val")
    n_test = _check_count(n_test, "n_test")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if isinstance(paths, (str, os.PathLike)):
        raise ValueError("paths must be a list of files (use list_images to expand a glob or folder)")
    ordered = sorted({Path(p) for p in paths})
    if not ordered:
        raise ValueError("paths is empty: there is nothing to split")
    n_train, v, t = split_sizes(len(ordered), n_val, n_test)
    if (v, t) != (n_val, n_test):
        warnings.warn(
            f"only {len(ordered)} images: validation/test shrink from {n_val}/{n_test} to {v}/{t} so that "
            f"{n_train} remain for training", stacklevel=2)
    perm = np.random.default_rng(int(seed)).permutation(len(ordered))
    shuffled = [ordered[i] for i in perm]
    return {"train": shuffled[v + t:], "val": shuffled[:v], "test": shuffled[v:v + t]}


def save_split(split: dict[str, Sequence[str | os.PathLike]], path: str | os.PathLike) -> Path:
    """Write a split `{"train", "val", "test"}` (and any other non-empty list, e.g. the hash split's "unused") as
    JSON lists of path strings, atomically."""
    missing = [k for k in SPLITS if k not in split]
    if missing:
        raise ValueError(f"split must have the keys {list(SPLITS)}, missing {missing}")
    data = {k: [str(p) for p in v] for k, v in split.items() if k in SPLITS or v}
    p = Path(path)
    write_text(p, json.dumps(data, indent=1) + "\n")
    return p


def load_split(path: str | os.PathLike) -> dict[str, list[Path]]:
    """Read a split written by `save_split`; relative entries are relative to the split file's folder (so a split
    shipped inside the package, such as the pretrained model's, names the package's photos wherever it is installed)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"path {str(p)!r} is not a readable split file: {err}") from err
    if not isinstance(data, dict) or any(not isinstance(data.get(k), list) for k in SPLITS):
        raise ValueError(f"path {str(p)!r}: a split file must hold lists under {list(SPLITS)}")
    return {k: [Path(x) if Path(x).is_absolute() else p.parent / x for x in data[k]] for k in SPLITS}
