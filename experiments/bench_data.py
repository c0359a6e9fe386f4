"""Data-pipeline throughput on one core, before and after issue 10: examples per CPU second at 64 and 256, per stage.

Run: `python experiments/bench_data.py [--n 40] [--images DIR] [--out experiments/results/bench_data.md]`.
One process, torch and OpenCV limited to one thread (what one DataLoader worker gets).

- before: the configuration before issue 10, run through today's `ExampleMaker`: Pillow's median cut
  (`Image.quantize`), superpixels segmented on each crop downscaled to 128 px (the old default,
  `segment_max_side: 128`), the image decoded for every example.
- after: our median cut (numba-compiled; identical output), superpixels cut out of the full-resolution segmentation of the
  whole source image, cached per image and scale bucket (`segment_source: image`, `segment_max_side: null`, the
  authors' resolution), the decoded image cached: a worker's steady state once its caches are warm. Filling the
  cache is a one-time cost per image, reported separately.

`--previous FILE --previous-label NAME`: a results file this script wrote at another commit (run it there with
`--out FILE`); its "after" rows join every table as rows named NAME, for a comparison under the same machine load.

Also times the median cut alone against Pillow's at 256x256 for every palette size of the training distribution.
The data wait of a GPU training step with 8 or 16 workers needs a machine with that many cores; this one has
os.cpu_count() cores, so the file says what was and was not measured.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from dequant.color.median_cut import median_cut
from dequant.color.quantize import Quantized, Quantizer
from dequant.data.examples import STAGES, ExampleMaker
from dequant.data.io import list_images, load_rgb
from dequant.data.palette_sizes import WeightedPowerOfTwo
from dequant.data.resize import short_side_size

ASSETS = Path(__file__).resolve().parents[1] / "src" / "dequant" / "assets" / "images"
ALL_STAGES = ("load", *STAGES)
TARGET_PER_S = 150  # examples/s per core at 256x256 for the 50/50 mix (the goal)


class PillowMedianCut(Quantizer):
    """The quantizer before issue 10: Pillow's median cut, for the 'before' rows."""

    def __call__(self, image: torch.Tensor, n_colors: int, seed: int = 0) -> Quantized:
        u8 = (image.permute(1, 2, 0) * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
        q = Image.fromarray(u8, mode="RGB").quantize(colors=n_colors, method=Image.Quantize.MEDIANCUT,
                                                     dither=Image.Dither.NONE)
        palette = np.asarray(q.getpalette("RGB"), dtype=np.float32).reshape(-1, 3) / 255.0
        return Quantized.from_assignment(torch.from_numpy(palette), torch.from_numpy(np.asarray(q, dtype=np.int64)))


def maker_for(setup: str, crop: int, p_patch: float) -> ExampleMaker:
    if setup == "before":
        return ExampleMaker(crop_size=crop, p_patch=p_patch, quantizer=PillowMedianCut(), segment_max_side=128,
                            profile=True)
    return ExampleMaker(crop_size=crop, p_patch=p_patch, segment_source="image", segment_max_side=None,
                        profile=True)


def fill_cache(maker: ExampleMaker, image: torch.Tensor, cache: dict) -> None:
    """Segment one source at every scale bucket with every segmenter (what a worker's cache converges to)."""
    source = maker._fit(image.numpy())
    h, w = source.shape[1:]
    s = maker.crop_size
    if min(h, w) < s:
        return
    buckets = sorted({maker.bucket(short, min(h, w)) for short in range(s, min(h, w) + 1)})
    for b in buckets:
        meta = {"small": False, "short_side": b, "scaled_size": short_side_size(h, w, b), "crop": (0, 0),
                "flip": False}
        for method in maker.segmenters:
            maker._labels(method, meta, source, cache)


def bench(setup: str, paths: list[Path], crop: int, p_patch: float, n: int,
          caches: list[dict] | None = None) -> dict[str, float]:
    """Mean seconds per example of each stage, plus total and examples/s ('after': with the warm `caches`)."""
    maker = maker_for(setup, crop, p_patch)
    images = [load_rgb(p) for p in paths]
    if caches is None:
        caches = [None] * len(paths)
    maker(images[0], np.random.default_rng(12345), segment_cache=caches[0])  # first-call allocations
    maker.reset_timings()
    load = 0.0
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(n):
        j = i % len(paths)
        t0 = time.perf_counter()
        image = load_rgb(paths[j]) if setup == "before" else images[j]
        load += time.perf_counter() - t0
        maker(image, np.random.default_rng([0, i]), segment_cache=caches[j])
    wall = (time.perf_counter() - start) / n
    # The process's CPU time is what one core spends: on a shared machine wall time also counts the waits for a
    # core. Stage times (wall clock) are scaled to it, keeping their shares.
    total = (time.process_time() - cpu_start) / n
    scale = total / wall
    stages = {"load": load / n * scale, **{k: v * scale for k, v in maker.timings().items()}}
    stages["other"] = max(total - sum(stages.values()), 0.0)
    return {**stages, "total": total, "per_s": 1.0 / total, "wall_per_s": 1.0 / wall}


def filled_caches(paths: list[Path], crop: int) -> tuple[list[dict], float, int]:
    """Every image's full segmentation cache; mean seconds to fill one image's, and segmentations in all."""
    maker = maker_for("after", crop, 1.0)
    caches, total = [], 0.0
    for p in paths:
        cache: dict = {}
        image = load_rgb(p)
        start = time.process_time()
        fill_cache(maker, image, cache)
        total += time.process_time() - start
        caches.append(cache)
    return caches, total / len(paths), sum(len(c) for c in caches)


def bench_median_cut(paths: list[Path], repeats: int) -> tuple[list[str], dict[str, float]]:
    """Rows of ms per call at 256x256, ours (numba, numpy) vs Pillow's, per palette size; and each backend's
    ratio to Pillow over the training draws."""
    crops = []
    for p in paths:
        u8 = np.asarray(Image.open(p).convert("RGB"))
        crops.append(np.ascontiguousarray(u8[:256, :256]))
    median_cut(crops[0], 2, backend="numba")  # compiles, or loads numba's cache: not part of a call's cost
    dist = WeightedPowerOfTwo()
    rows, weighted = [], {"numba": 0.0, "numpy": 0.0, "pillow": 0.0}
    for n, prob in zip(list(dist.sizes) + [256], list(dist.probs) + [0.0]):
        times: dict[str, list[float]] = {k: [] for k in weighted}
        for u8 in crops:
            for _ in range(repeats):
                for backend in ("numba", "numpy"):
                    t0 = time.process_time()
                    median_cut(u8, int(n), backend=backend)
                    times[backend].append(time.process_time() - t0)
                t0 = time.process_time()
                Image.fromarray(u8).quantize(colors=int(n), method=Image.Quantize.MEDIANCUT,
                                             dither=Image.Dither.NONE)
                times["pillow"].append(time.process_time() - t0)
        ms = {k: 1e3 * float(np.mean(v)) for k, v in times.items()}
        for k in weighted:
            weighted[k] += prob * ms[k]
        rows.append(f"| {n} | {prob:.3f} | {ms['numba']:.2f} | {ms['numpy']:.2f} | {ms['pillow']:.2f} | "
                    f"{ms['numba'] / ms['pillow']:.3f} | {ms['numpy'] / ms['pillow']:.3f} |")
    return rows, {k: weighted[k] / weighted["pillow"] for k in ("numba", "numpy")}


def previous_rows(path: str, label: str) -> dict[str, list[str]]:
    """The "after" rows of an earlier results file, relabelled, per table ("summary", "stages", "median_cut")."""
    rows: dict[str, list[str]] = {"summary": [], "stages": [], "median_cut": [], "median_cut_header": []}
    section = None
    for line in Path(path).read_text().splitlines():
        if line.startswith("At "):  # that file's own comparison table: not its rows
            section = None
            continue
        if line.startswith("## "):
            section = ("summary" if "50/50" in line else "stages" if "Per stage" in line
                       else "median_cut" if "Median cut" in line else None)
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if section == "median_cut" and cells[0] == "N" and not rows["median_cut_header"]:
            rows["median_cut_header"] = [line, "|---" * len(cells) + "|"]
        if section in ("summary", "stages") and len(cells) > 2 and cells[1] == "after":
            rows[section].append("| " + " | ".join([cells[0], label, *cells[2:]]) + " |")
        elif section == "median_cut" and len(cells) >= 5 and cells[0].isdigit():
            rows[section].append("| " + " | ".join(cells) + " |")
    return rows


def merged(new_rows: list[str], old_rows: list[str]) -> list[str]:
    """Rows of one table per crop: this run's "before", the earlier commit's rows, this run's "after"."""
    out = []
    for crop in ("64", "256"):
        out += [r for r in new_rows if r.startswith(f"| {crop} | before |")]
        out += [r for r in old_rows if r.startswith(f"| {crop} |")]
        out += [r for r in new_rows if r.startswith(f"| {crop} | after |")]
    return out


def main() -> None:
    """Run the benchmark, print a markdown report and write it to --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="examples per configuration")
    parser.add_argument("--repeats", type=int, default=2, help="median-cut calls per crop and palette size")
    parser.add_argument("--images", default=str(ASSETS), help="folder/glob of source images")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_data.md"))
    parser.add_argument("--previous", default=None, help="results file of an earlier commit (its 'after' rows)")
    parser.add_argument("--previous-label", default="previous", help="setup name of those rows")
    args = parser.parse_args()
    prev = previous_rows(args.previous, args.previous_label) if args.previous else None
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    paths = list_images(args.images)
    sizes = [tuple(load_rgb(p).shape[1:]) for p in paths]

    mc_rows, mc_ratio = bench_median_cut(paths, args.repeats)
    rows, summary, fills = [], [], {}
    for crop in (64, 256):
        caches, fill_s, fill_n = filled_caches(paths, crop)
        fills[crop] = (fill_s, fill_n)
        for setup in ("before", "after"):
            per_mode = {}
            for mode, p_patch in (("palette", 0.0), ("patch", 1.0)):
                r = bench(setup, paths, crop, p_patch, args.n, caches if setup == "after" else None)
                per_mode[mode] = r
                slowest = max(ALL_STAGES, key=lambda s: r[s])
                rows.append(f"| {crop} | {setup} | {mode} | {r['per_s']:.1f} | {r['total'] * 1e3:.1f} | "
                            + " | ".join(f"{r[s] * 1e3:.1f}" for s in (*ALL_STAGES, "other")) + f" | {slowest} |")
            # A 50/50 mix of the two modes: its rate is the harmonic mean of the two rates.
            mixed = 2.0 / (per_mode["palette"]["total"] + per_mode["patch"]["total"])
            wall_mixed = 2.0 / (1 / per_mode["palette"]["wall_per_s"] + 1 / per_mode["patch"]["wall_per_s"])
            summary.append(f"| {crop} | {setup} | {per_mode['palette']['per_s']:.1f} | "
                           f"{per_mode['patch']['per_s']:.1f} | {mixed:.1f} | {wall_mixed:.1f} |")
            print(summary[-1], flush=True)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Data pipeline throughput (one core), before and after issue 10",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {platform.system()}, {os.cpu_count()} cores "
        f"(load average {load:.1f} at the end: shared with other jobs, so rates are per second of this process's "
        "CPU time, i.e. what one core makes; the wall-clock column shows how much the sharing cost); torch and "
        f"OpenCV on one thread; {len(paths)} source images "
        f"({min(min(s) for s in sizes)}-{max(max(s) for s in sizes)} px); {args.n} examples per row; "
        "median cut, T cue, weighted 2^k palettes, p_superpixel 0.9, all four segmenters.",
        "",
        "## 50/50 mix (what training draws) and each mode, examples/s",
        "",
        "| crop | setup | palette mode | patch mode | 50/50 mix | 50/50 mix, wall clock (shared machine) |",
        "|---|---|---|---|---|---|",
        *(merged(summary, prev["summary"]) if prev else summary),
        "",
        "## Per stage (CPU ms per example)",
        "",
        "| crop | setup | mode | examples/s | ms/example | " + " | ".join(f"{s} ms" for s in (*ALL_STAGES, "other"))
        + " | slowest |",
        "|---" * (7 + len(ALL_STAGES)) + "|",
        *(merged(rows, prev["stages"]) if prev else rows),
        "",
        "Filling the segmentation cache (once per image and worker; all scale buckets, all four segmenters, full "
        "resolution): " + ", ".join(f"{crop}x{crop} crops: {sec:.1f} s per image ({cnt / len(paths):.0f} "
        f"segmentations)" for crop, (sec, cnt) in fills.items()) + ".",
        "",
        "## Median cut alone, 256x256, CPU ms per call (mean over the photos' top-left crops)",
        "",
        "| N | training probability | numba (ours, default) | numpy (ours, fallback) | Pillow | ratio numba | "
        "ratio numpy |",
        "|---|---|---|---|---|---|---|",
        *mc_rows,
        "",
        f"Over the training distribution of N (weighted by probability): {mc_ratio['numba']:.3f}x Pillow's time "
        f"with numba ({mc_ratio['numpy']:.3f}x with the numpy fallback); the output is identical "
        "(tests/color/test_median_cut.py).",
        *(["", f"At {args.previous_label} (same table, its run):", "",
           *prev["median_cut_header"], *prev["median_cut"]] if prev else []),
        "",
        "## Data wait with 8 and 16 workers",
        "",
        f"Not measured: this machine has {os.cpu_count()} cores, so 8 or 16 workers would share them and say nothing "
        "about a GPU node. What one core makes is above; with W workers on W free cores a loader makes about W "
        "times the 50/50-mix rate (workers share nothing but the sampler's keys).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
