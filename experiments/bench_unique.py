"""Data rates as a large data set meets them: every example from a photo the worker has not decoded before.

Run: `python experiments/bench_data.py --unique [--out experiments/results/bench_data_unique.md]` (this module).
One process, one thread (what one DataLoader worker gets), 256x256 examples, the data module's own training set
with the image cache off, each photo used once. The photos are unique JPEGs made from the package's photos (a
random 4:3 crop, flip, color and brightness jitter, resampled to the size, sensor-like noise (NOISE), JPEG
quality 95, 4:2:0 like a camera's), at ImageNet's size (500x375) and a 12-megapixel camera's (4000x3000).

Setups:
- before (default / paper_256): issue 26's starting point, rebuilt from today's code: every photo decoded whole by
  Pillow and converted to float32 before the crop; paper_256 segments the whole scaled photo for its one example
  (its cache is cold).
- default, photos kept (reference): the default config with every photo decoded once and kept (the image cache
  warm): what the data path costs without decoding, on the same photos and machine.
- default / paper_256: the data module as it is: only the crop of a JPEG resampled, shrinks beyond 2x from a
  DCT-scaled decode (`dct_margin`); a photo outside the cache segmented on its crop (paper_256: at full resolution,
  the authors' procedure; "crops at 128 px": as the default config segments crops).
- shards: the same photos through `dequant-prepare --experiment paper_256` (short side capped at 512, the default;
  also at 1024 for the camera photos), read with `data=shards`: paper_256's masks cut from the segmentations
  stored with each photo.

`--work DIR` keeps the photos and shards (made once, reused by the next run: the rates can then be measured on a
quiet machine without making them again).

Also: the memory a DataLoader worker adds for a list of 1,000,000 file paths, as the data module holds it (a
`PathList`) and as a Python list of `Path`s (what it held before), with 8 workers reading every path.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "src" / "dequant" / "assets"
SIZES = {"500x375": (500, 375), "4000x3000": (4000, 3000)}
# Sensor-like noise (std, 8-bit units) at each size: a camera's full-resolution photo is noisy (and its JPEG 3-6 MB);
# a photo downscaled to ImageNet's size averages most of it away.
NOISE = {"500x375": 1.0, "4000x3000": 4.0}
TARGETS = {("500x375", "default"): 150, ("4000x3000", "default"): 25, ("500x375", "paper_256"): 100,
           ("4000x3000", "paper_256"): 20, ("500x375", "shards"): 300, ("4000x3000", "shards"): 300}


def make_photos(folder: Path, n: int, size: tuple[int, int], seed: int, noise: float) -> float:
    """Write n unique JPEGs of `size` (width, height) with sensor-like noise of std `noise` (8-bit units) into
    `folder`; mean file size in MB."""
    from dequant.data.io import list_images

    sources = [np.asarray(Image.open(p).convert("RGB")) for p in list_images(str(ASSETS))]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    w, h = size
    for i in range(n):
        src = sources[i % len(sources)]
        sh, sw = src.shape[:2]
        ch = int(min(sh, sw * 3 / 4) * rng.uniform(0.6, 1.0))
        cw = ch * 4 // 3
        top, left = rng.integers(0, sh - ch + 1), rng.integers(0, sw - cw + 1)
        crop = src[top:top + ch, left:left + cw].astype(np.float32)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = crop * rng.uniform(0.8, 1.2, 3) + rng.uniform(-20, 20)
        big = cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=cv2.INTER_CUBIC)
        big += rng.normal(0.0, noise, big.shape).astype(np.float32)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=95)
        (folder / f"photo_{i:05d}.jpg").write_bytes(buffer.getvalue())
        total += buffer.tell()
    return total / n / 1e6


def _maker(experiment: str | None, p_patch: float | None = None, *overrides: str):
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_data import configured_maker

    maker = configured_maker(experiment, 256, 0.5, *overrides)
    maker.profile = False
    if p_patch is not None:
        maker.p_patch = p_patch
    return maker


# Setup -> (experiment, extra overrides); "before ..." rebuild issue 26's starting point, "... kept" warm the image
# cache first (the photos decoded once and reused: the rate the README quotes, on the same photos and machine).
SETUPS = {
    "before (default)": (None, []), "before (paper_256)": ("paper_256", []),
    "default": (None, []), "default, photos kept (reference)": (None, []),
    "paper_256": ("paper_256", []), "paper_256, crops at 128 px": ("paper_256", ["data.example.segment_max_side=128"]),
    "shards": ("paper_256", []),
}


def rate(setup: str, folder: Path, n: int, p_patch: float | None = None, url: Path | None = None) -> float:
    """Examples per CPU second of one setup over the first n photos of `folder`, each used once."""
    from dequant.data.datamodule import DequantDataModule
    from dequant.data.io import _load_with_pillow

    experiment, overrides = SETUPS[setup]
    maker = _maker(experiment, p_patch, *overrides)
    kept = setup.endswith("(reference)")
    common = dict(num_workers=0, n_val=0, n_test=0, cache_images=kept, cache_max_gb=64.0, split="shuffle")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if setup == "shards":
            dm = DequantDataModule(None, maker, url=str(url), **common)
        else:
            dm = DequantDataModule(str(folder), maker, **common)
        dm.setup()
    dataset = dm._train
    source = dataset.source
    n = min(n, len(dataset))
    if kept:
        for k in range(n):  # decodes and keeps every photo
            dataset[(k, 0, k)]
    gc.collect()
    start = time.process_time()
    for k in range(n):
        if setup.startswith("before"):
            path = Path(source.catalog.name(int(source.positions[k])))
            image = _load_with_pillow(path)
            cache = {} if maker.segment_source == "image" else None
            maker(image, np.random.default_rng([0, 0, k]), segment_cache=cache)
        else:
            dataset[(k, 1, k)]
    return n / (time.process_time() - start)


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (dequant-prepare's pool)."""
    import resource

    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def _rss_child(kind: str, n_paths: int, workers: int, out: Path) -> None:
    """In a fresh process: hold n_paths paths as `kind`, start `workers` DataLoader workers that each read every path,
    and write each worker's unique memory before and after (MB) to `out`."""
    code = f"""
import os, sys, numpy as np, torch
from pathlib import Path
from torch.utils.data import DataLoader, Dataset
sys.path.insert(0, {str(ROOT / 'src')!r})
from dequant.data.catalog import PathList
names = [f"/data/photos/{{i // 1000:04d}}/img_{{i:07d}}_some_typical_name.jpg" for i in range({n_paths})]
held = PathList.from_strings(names, [13] * len(names)) if {kind!r} == "PathList" else [Path(p) for p in names]
del names

def uss():
    total = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean", "Private_Dirty")):
                total += int(line.split()[1])
    return total / 1024

class Reader(Dataset):
    def __len__(self):
        return {workers}
    def __getitem__(self, i):
        before = uss()
        total = sum(len(str(held[j])) for j in range(len(held)))
        return torch.tensor([before, uss(), total])

rows = list(DataLoader(Reader(), batch_size=1, num_workers={workers}))
np.savetxt({str(out)!r}, torch.cat(rows).numpy())
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def memory_rows(n_paths: int = 1_000_000, workers: int = 8) -> list[str]:
    """Markdown rows: per-worker unique memory before / after reading every path, for both ways of holding them."""
    rows = []
    for kind in ("PathList", "list of Path"):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rss.txt"
            _rss_child(kind, n_paths, workers, out)
            values = np.loadtxt(out).reshape(-1, 3)
        grown = values[:, 1] - values[:, 0]
        rows.append(f"| {kind} | {n_paths:,} | {workers} | {values[:, 0].mean():.0f} | {values[:, 1].mean():.0f} | "
                    f"{grown.mean():.0f} (max {grown.max():.0f}) |")
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    """Make the photos, time every setup, print the tables and write them to --out."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unique", action="store_true", help="(the flag bench_data.py hands over)")
    parser.add_argument("--n-small", type=int, default=200, help="500x375 photos per setup")
    parser.add_argument("--n-large", type=int, default=16, help="4000x3000 photos per setup")
    parser.add_argument("--skip-memory", action="store_true", help="leave out the 1,000,000-path memory rows")
    parser.add_argument("--work", default=None, help="folder that keeps the photos and shards between runs")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_data_unique.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from dequant.prepare import main as prepare_main

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_unique_"))
    rows, notes = [], []
    try:
        # Compile numba's kernels and load the segmenters once, outside every timing.
        warm = work / "warm"
        if not warm.is_dir():
            make_photos(warm, 4, (640, 480), seed=99, noise=0.0)
        for setup in ("default", "paper_256"):
            rate(setup, warm, 4, p_patch=1.0)
        for label, size in SIZES.items():
            n = args.n_small if label == "500x375" else args.n_large
            folder = work / label
            if len(list(folder.glob("*.jpg"))) != n:
                shutil.rmtree(folder, ignore_errors=True)
                make_photos(folder, n, size, seed=len(label), noise=NOISE[label])
            mb = sum(f.stat().st_size for f in folder.glob("*.jpg")) / n / 1e6
            notes.append(f"{label}: {n} photos, {mb:.2f} MB each on average")
            caps = (512, 1024) if label == "4000x3000" else (512,)
            shard_dirs = {}
            for cap in caps:
                shard_dir = shard_dirs[cap] = work / f"shards_{label}_{cap}"
                if not (shard_dir / "dataset.json").is_file():
                    start = time.monotonic()
                    cpu = _cpu_seconds()
                    # Shards small enough that every core has some (a real data set has thousands).
                    per = max(1, n // (4 * (os.cpu_count() or 1)))
                    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                        prepare_main([str(folder), "--out", str(shard_dir), "--experiment", "paper_256",
                                      "--max-short-side", str(cap), "--workers", str(os.cpu_count() or 1),
                                      "--shard-photos", str(per)])
                    wall, cpu = time.monotonic() - start, _cpu_seconds() - cpu
                    (shard_dir / "bench_note.txt").write_text(
                        f"{label}: dequant-prepare --max-short-side {cap}: {cpu / n:.1f} CPU-s per photo ({wall:.0f} s "
                        f"wall on {os.cpu_count()} shared cores for {n} photos)")
                notes.append((shard_dir / "bench_note.txt").read_text())
                shard_mb = sum(f.stat().st_size for f in shard_dir.glob("shard-*.tar")) / n / 1e6
                notes.append(f"{label}: {shard_mb:.2f} MB per photo in the shards at cap {cap} (the capped photo "
                             "and its segmentations)")
            setups = [*(k for k in SETUPS if k != "shards"), *(f"shards (cap {cap})" for cap in caps)]
            for setup in setups:
                slow = setup.startswith("before") and label == "4000x3000"
                count = max(n // 4, 6) if slow else n
                cap = int(setup.split("cap ")[1].rstrip(")")) if setup.startswith("shards") else None
                kind = "shards" if cap else setup
                per_mode = {}
                for mode, p_patch in (("mix", None), ("palette", 0.0), ("patch", 1.0)):
                    if slow and mode != "mix":
                        continue
                    per_mode[mode] = rate(kind, folder, count, p_patch, url=shard_dirs.get(cap))
                target = None if "reference" in setup else TARGETS.get((label, kind.split(",")[0]))
                met = "" if target is None else (" (met)" if per_mode["mix"] >= target else " (not met)")
                cell = lambda m: f"{per_mode[m]:.3g}" if m in per_mode else "-"  # noqa: E731
                rows.append(f"| {label} | {setup} | {cell('mix')} | {cell('palette')} | {cell('patch')} | "
                            f"{'' if target is None else f'at least {target}'}{met} |")
                print(rows[-1], flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    memory = [] if args.skip_memory else memory_rows()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Data rates with every photo used once (one core, 256x256 examples)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} at "
        "the end (rates are per second of this process's CPU time: what one core makes); torch and OpenCV on one "
        "thread; the image cache off; median cut, T cue, weighted 2^k palettes, p_superpixel 0.9, all four "
        "segmenters; `mix` is each config's own 50/50 draw of palette and patch examples. Made by "
        "`python experiments/bench_data.py --unique`.",
        "",
        *[f"- {note}" for note in notes],
        "",
        "| photos | setup | mix, examples/s | palette mode | patch mode | target (issue 26) |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    if memory:
        lines += [
            "## A million paths in 8 DataLoader workers",
            "",
            "Each worker reads every path once; unique memory (private pages, MB) of each worker before and after.",
            "",
            "| held as | paths | workers | before, MB | after, MB | added per worker, MB |",
            "|---|---|---|---|---|---|",
            *memory,
            "",
        ]
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
