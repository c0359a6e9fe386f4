"""`dequant-prepare`: photos (folders, globs, files) -> a shard set that `data=shards data.url=OUT` trains from.

    dequant-prepare /data/photos --out /data/shards --experiment paper_256
    dequant-prepare '/data/photos/**/*.jpg' --out /data/shards --max-short-side 1024 --workers 32

What it writes and why: `dequant.data.shards`. In short: photos with the short side capped at `--max-short-side`
(a JPEG within the cap keeps its bytes; others are re-encoded, JPEG quality `--quality` without chroma subsampling,
16-bit photos as 16-bit PNG), and, when the composed training config uses `segment_source: image` (as
`--experiment paper_256` does), every segmentation its examples can ask for, computed once here at full resolution.

The work is split into shards of `--shard-photos` photos, made by `--workers` processes; each shard is written under a
temporary name and renamed when whole, so a killed run resumes where it stopped when started again with the same
arguments (`--part K/N` makes every N-th shard from the K-th, for N jobs on N machines; the last one to finish writes
the index). Unreadable photos are skipped with a warning and counted in `dataset.json`.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import os
import sys
import tarfile
import time
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dequant.atomic import atomic_path, write_text
from dequant.data import shards as fmt
from dequant.data.catalog import PathList, list_photos, load_listing, save_listing, spec_text
from dequant.data.io import EncodedJpeg, ImageLoadError, load_rgb
from dequant.data.resize import interpolation, short_side_size

SOURCES = "sources.npz"  # the photos being prepared (absolute paths), listed once
SETTINGS = "prepare.json"  # the arguments that decide the output: a resume must use the same


def _example_maker(experiment: str | None, overrides: list[str]) -> Any:
    """The training config's ExampleMaker (composed as train.py would), whose settings decide the segmentations."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from dequant.config import conf_dir

    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("train", overrides=([f"experiment={experiment}"] if experiment else []) + overrides)
    return instantiate(cfg.data.example)


def capped_photo(path: str, max_short_side: int | None, quality: int) -> tuple[bytes, bool, np.ndarray]:
    """(file bytes to store, whether they are PNG, the decoded stored photo `(3, H, W)` float32) of one photo with
    its short side capped; ImageLoadError if it cannot be read."""
    jpeg = EncodedJpeg.read(path)
    if jpeg is not None and (max_short_side is None or min(jpeg.height, jpeg.width) <= max_short_side):
        image = jpeg.tensor().numpy()
        return jpeg.data, False, image
    if jpeg is not None:
        target = short_side_size(jpeg.height, jpeg.width, max_short_side)
        u8 = jpeg.decode(jpeg.denom_for(*target))
        deep = False
    else:
        decoded = load_rgb(path).numpy()
        deep = not np.array_equal(np.rint(decoded * 255.0) / 255.0, decoded.astype(np.float64))
        scale = 65535.0 if deep else 255.0
        u8 = np.rint(decoded.transpose(1, 2, 0) * scale).astype(np.uint16 if deep else np.uint8)
        h, w = u8.shape[:2]
        target = (h, w) if max_short_side is None or min(h, w) <= max_short_side else short_side_size(
            h, w, max_short_side)
    h, w = u8.shape[:2]
    if (h, w) != target:
        u8 = cv2.resize(u8, (target[1], target[0]), interpolation=interpolation(min(target[0] / h, target[1] / w)))
    if deep:
        ok, png = cv2.imencode(".png", cv2.cvtColor(u8, cv2.COLOR_RGB2BGR))
        data = png.tobytes()
        image = u8.transpose(2, 0, 1).astype(np.float32) / np.float32(65535.0)
        return data, True, image
    import simplejpeg

    data = simplejpeg.encode_jpeg(np.ascontiguousarray(u8), quality=quality, colorspace="RGB",
                                  colorsubsampling="444")
    return data, False, EncodedJpeg.read(path, data=data).tensor().numpy()


def segmentations(maker: Any, image: np.ndarray) -> bytes:
    """Every (segmenter, bucket) segmentation an example of this stored photo may ask for, as npz bytes."""
    source = maker._fit(image)
    arrays = {}
    for key in maker.segment_keys(*image.shape[1:]):
        labels, _ = maker.segmentation(source, key)
        arrays[fmt.StoredSegments.member(key)] = labels.astype(np.uint16) if labels.max() < 2**16 else labels
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


# One process's state for make_shard (set by _init_worker: the maker is built once per process).
_STATE: dict[str, Any] = {}


def _init_worker(out: str, settings: dict[str, Any], experiment: str | None, overrides: list[str]) -> None:
    cv2.setNumThreads(1)
    listing = load_listing(Path(out) / SOURCES, settings["paths"])
    maker = _example_maker(experiment, overrides) if settings["segmentations"] else None
    _STATE.update(out=Path(out), settings=settings, listing=listing, maker=maker)


def make_shard(i: int) -> tuple[int, int, list[str]]:
    """Write shard i (and its index) unless it exists; (shard, photos written, warnings)."""
    out, settings, listing, maker = _STATE["out"], _STATE["settings"], _STATE["listing"], _STATE["maker"]
    index_path = out / fmt.index_name(i)
    if index_path.is_file():
        return i, -1, []
    per = settings["shard_photos"]
    first, last = i * per, min((i + 1) * per, len(listing))
    notes, entries = [], []
    tar_path = out / fmt.shard_name(i)
    with atomic_path(tar_path) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for position in range(first, last):
                path = listing[position]
                try:
                    data, png, image = capped_photo(path, settings["max_short_side"], settings["quality"])
                    seg = segmentations(maker, image) if maker is not None else b""
                except ImageLoadError as err:
                    notes.append(f"skipped unreadable photo {path} ({err.reason})")
                    continue
                key = f"{position:09d}"
                meta = {"relpath": listing.relpath(position), "height": int(image.shape[1]),
                        "width": int(image.shape[2])}
                members = [(f"{key}.{'png' if png else 'jpg'}", data), (f"{key}.json", json.dumps(meta).encode())]
                if seg:
                    members.append((f"{key}.seg.npz", seg))
                for name, payload in members:
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(payload), 0, 0o644
                    tar.addfile(info, io.BytesIO(payload))
                entries.append({"source": position, "height": meta["height"], "width": meta["width"], "png": png})
        # Where each member's data starts, read back from the finished tar (tarfile computes the headers).
        with tarfile.open(tmp, "r") as tar:
            where = {m.name: (m.offset_data, m.size) for m in tar.getmembers()}
    for e in entries:
        key = f"{e['source']:09d}"
        e["image_offset"], e["image_size"] = where[f"{key}.{'png' if e['png'] else 'jpg'}"]
        e["seg_offset"], e["seg_size"] = where.get(f"{key}.seg.npz", (0, 0))
        e["shard"] = i
    fmt.write_index(entries, index_path, keys=("source", *fmt.INDEX_KEYS))
    return i, len(entries), notes


def finish(out: Path, settings: dict[str, Any], n_shards: int, skipped: int) -> dict[str, Any]:
    """Merge the shards' indexes, write photos.npz, index.npz and, last, dataset.json."""
    listing = load_listing(out / SOURCES, settings["paths"])
    parts = []
    for i in range(n_shards):
        with np.load(out / fmt.index_name(i)) as z:
            parts.append({k: z[k] for k in z.files})
    index = {k: np.concatenate([p[k] for p in parts]) for k in ("source", *fmt.INDEX_KEYS)}
    names = PathList.from_strings([listing.relpath(int(s)) for s in index.pop("source")])
    with atomic_path(out / fmt.PHOTOS) as tmp, open(tmp, "wb") as f:
        np.savez(f, blob=names.blob, offsets=names.offsets, rel_start=names.rel_start)
    with atomic_path(out / fmt.INDEX) as tmp, open(tmp, "wb") as f:
        np.savez(f, **index)
    manifest = {
        "format": fmt.FORMAT, "version": fmt.VERSION, "photos": len(names), "skipped": skipped,
        "max_short_side": settings["max_short_side"], "quality": settings["quality"],
        "segmentations": settings["segmentations"],
        "shards": [{"name": fmt.shard_name(i), "photos": int(p["shard"].size),
                    "bytes": (out / fmt.shard_name(i)).stat().st_size} for i, p in enumerate(parts)],
    }
    write_text(out / fmt.MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


def _part(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--part must be K/N with 0 <= K < N, got {text!r}") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"--part must be K/N with 0 <= K < N, got {text!r}")
    return k, n


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parser() -> argparse.ArgumentParser:
    """The command line of dequant-prepare."""
    p = argparse.ArgumentParser(prog="dequant-prepare", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("paths", nargs="+", help="folders (searched recursively), glob patterns or image files")
    p.add_argument("--out", required=True, help="the shard set's folder (made if needed; a resume reuses it)")
    p.add_argument("--experiment", default=None, help="the training recipe whose data.example settings decide the "
                   "segmentations (e.g. paper_256); none: conf/data/default.yaml's")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a further Hydra override of that training config, e.g. data.example.crop_size=128")
    p.add_argument("--max-short-side", type=int, default=512,
                   help="cap on the stored photos' short side (0: none, full resolution); default 512: examples "
                        "then rescale a photo's short side to U[crop, min(short side, 512)] instead of U[crop, "
                        "short side] (docs/cluster.md)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality of re-encoded photos (default 95)")
    p.add_argument("--shard-photos", type=int, default=1000, help="photos per shard (default 1000)")
    p.add_argument("--workers", type=int, default=_cores(), help="processes (default: this job's cores)")
    p.add_argument("--part", type=_part, default=(0, 1), metavar="K/N", help="make shards K, K+N, K+2N, ...")
    return p


def prepare(args: argparse.Namespace) -> dict[str, Any] | None:
    """Run dequant-prepare; the manifest when the shard set is complete, None when other parts still run."""
    out = Path(args.out)
    if args.max_short_side < 0 or args.shard_photos < 1 or args.workers < 1 or not 1 <= args.quality <= 100:
        raise ValueError("--max-short-side must be >= 0, --shard-photos and --workers >= 1, --quality in 1..100")
    if (out / fmt.MANIFEST).is_file():
        print(f"{out}: already complete ({fmt.MANIFEST}); nothing to do")
        return json.loads((out / fmt.MANIFEST).read_text())
    maker = _example_maker(args.experiment, args.set)
    segment = maker.segment_source == "image"
    settings = {"paths": spec_text(args.paths), "max_short_side": args.max_short_side or None,
                "quality": args.quality, "shard_photos": args.shard_photos,
                "segmentations": fmt.segment_settings(maker) if segment else None}
    out.mkdir(parents=True, exist_ok=True)
    if (out / SETTINGS).is_file():
        saved = json.loads((out / SETTINGS).read_text())
        if saved != settings:
            differ = sorted(k for k in settings if saved.get(k) != settings[k])
            raise ValueError(f"--out {out} holds a shard set being prepared with other arguments ({', '.join(differ)} "
                             "differ): give the same arguments to resume it, or choose another folder")
    listing = load_listing(out / SOURCES, settings["paths"])
    if listing is None:
        listing = list_photos(args.paths)
        save_listing(listing, settings["paths"], out / SOURCES)
        write_text(out / SETTINGS, json.dumps(settings, indent=1) + "\n")
    n_shards = math.ceil(len(listing) / args.shard_photos)
    k, n = args.part
    mine = [i for i in range(k, n_shards, n)]
    print(f"dequant-prepare: {len(listing)} photos -> {n_shards} shards in {out} (this part: {len(mine)}), "
          f"{args.workers} workers, short side capped at {args.max_short_side or 'none'}, segmentations: "
          + (f"{len(maker.segmenters)} segmenters per scale bucket of {maker.crop_size}px crops" if segment
             else "none (the config segments each crop)"), flush=True)
    start, done, made = time.monotonic(), 0, 0
    context = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
    init = (str(out), settings, args.experiment, args.set)
    with context.Pool(args.workers, initializer=_init_worker, initargs=init) as pool:
        for i, count, notes in pool.imap_unordered(make_shard, mine):
            done += 1
            for note in notes:
                warnings.warn(note, stacklevel=1)
            if count >= 0:
                made += count
                rate = made / max(time.monotonic() - start, 1e-9)
                print(f"shard {i}: {count} photos ({done}/{len(mine)} shards, {rate:.1f} photos/s)", flush=True)
    finished = [i for i in range(n_shards) if (out / fmt.index_name(i)).is_file()]
    if len(finished) < n_shards:
        print(f"{len(finished)}/{n_shards} shards made: the other parts are still to run", flush=True)
        return None
    skipped = len(listing) - sum(int(np.load(out / fmt.index_name(i))["source"].size)
                                 for i in range(n_shards))
    manifest = finish(out, settings, n_shards, skipped)
    print(f"done: {manifest['photos']} photos in {n_shards} shards ({skipped} skipped); train with "
          f"data=shards data.url={out}", flush=True)
    return manifest


def main(argv: list[str] | None = None) -> None:
    """Console script `dequant-prepare`: a bad argument or input is a one-line error and exit code 2."""
    from dequant.config import run_cli

    args = parser().parse_args(argv)
    run_cli("dequant-prepare", lambda: prepare(args))


if __name__ == "__main__":
    main()
