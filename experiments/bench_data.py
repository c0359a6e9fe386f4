"""Data-pipeline throughput on one core: examples/s at 64x64 and 256x256, palette and patch mode, per stage.

Run: `python experiments/bench_data.py [--n 60] [--images DIR] [--out experiments/results/bench_data.md]`.
One process, torch and OpenCV limited to one thread (what one DataLoader worker gets). Every example decodes its
image again (no cache), as a worker does on a large data set; `load` is that decode. The remaining stages are
`ExampleMaker`'s own timings. Patch mode's `mask` stage is dominated by the segmenters, so each segmenter is also
timed alone on the same crops.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from dequant.color.masks import SEGMENTERS, segment
from dequant.data.examples import STAGES, ExampleMaker
from dequant.data.io import list_images, load_rgb

ASSETS = Path(__file__).resolve().parents[1] / "src" / "dequant" / "assets" / "images"
ALL_STAGES = ("load", *STAGES)
TARGET_PER_S = 150  # examples/s per core at 256x256, averaged over the two modes (the goal)


def bench(paths: list[Path], crop: int, p_patch: float, n: int, seg_side: int | None) -> dict[str, float]:
    """Mean seconds per example of each stage, plus total and examples/s."""
    maker = ExampleMaker(crop_size=crop, p_patch=p_patch, segment_max_side=seg_side, profile=True)
    maker(load_rgb(paths[0]), np.random.default_rng(12345))  # warm-up: imports, first-call allocations
    maker.reset_timings()
    load = 0.0
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        image = load_rgb(paths[i % len(paths)])
        load += time.perf_counter() - t0
        maker(image, np.random.default_rng([0, i]))
    total = (time.perf_counter() - start) / n
    stages = {"load": load / n, **maker.timings()}
    stages["other"] = max(total - sum(stages.values()), 0.0)
    return {**stages, "total": total, "per_s": 1.0 / total}


def bench_segmenters(paths: list[Path], crop: int, n: int) -> dict[str, float]:
    """Mean seconds of each segmenter on `n` augmented crops."""
    maker = ExampleMaker(crop_size=crop)
    crops = [maker.augment(load_rgb(paths[i % len(paths)]), np.random.default_rng([1, i]))[0] for i in range(n)]
    out = {}
    for method in SEGMENTERS:
        segment(crops[0], method)
        start = time.perf_counter()
        for c in crops:
            segment(c, method)
        out[method] = (time.perf_counter() - start) / n
    return out


def main() -> None:
    """Run the benchmark, print a markdown table and write it to --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60, help="examples per configuration")
    parser.add_argument("--images", default=str(ASSETS), help="folder/glob of source images")
    parser.add_argument("--segment-max-side", type=int, default=128,
                        help="segment a copy downscaled to this side (conf/data default 128; 0 = full resolution)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_data.md"))
    args = parser.parse_args()
    seg_side = args.segment_max_side or None
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    paths = list_images(args.images)
    sizes = [tuple(load_rgb(p).shape[1:]) for p in paths]

    rows, summary, seg_rows, verdict = [], [], [], []
    for crop in (64, 256):
        per_mode = {}
        for mode, p_patch in (("palette", 0.0), ("patch", 1.0)):
            r = bench(paths, crop, p_patch, args.n, seg_side)
            per_mode[mode] = r
            slowest = max(ALL_STAGES, key=lambda s: r[s])
            rows.append(f"| {crop} | {mode} | {r['per_s']:.1f} | {r['total'] * 1e3:.1f} | "
                        + " | ".join(f"{r[s] * 1e3:.1f}" for s in (*ALL_STAGES, "other")) + f" | {slowest} |")
        # A 50/50 mix of the two modes: its rate is the harmonic mean of the two rates.
        mixed = 2.0 / (per_mode["palette"]["total"] + per_mode["patch"]["total"])
        summary.append((crop, mixed))
        segs = bench_segmenters(paths, crop, max(args.n // 3, 5))
        slowest_seg = max(segs, key=segs.get)
        seg_rows.append(f"| {crop} | " + " | ".join(f"{segs[m] * 1e3:.1f}" for m in SEGMENTERS)
                        + f" | {slowest_seg} |")
        pal, pat = per_mode["palette"], per_mode["patch"]
        mix_time = (pal["total"] + pat["total"]) / 2
        shares = {s: (pal[s] + pat[s]) / 2 / mix_time for s in ALL_STAGES}
        top = sorted(shares, key=shares.get, reverse=True)[:2]
        verdict.append(
            f"- {crop}x{crop}: {mixed:.1f} examples/s for the 50/50 mix"
            + (f" ({mixed / TARGET_PER_S:.0%} of the {TARGET_PER_S}/s target)" if crop == 256 else "")
            + f". Time goes to {top[0]} ({shares[top[0]]:.0%}) and {top[1]} "
            f"({shares[top[1]]:.0%}); {slowest_seg} is the slowest segmenter "
            f"({segs[slowest_seg] * 1e3:.0f} ms, {segs[slowest_seg] / sum(segs.values()):.0%} of the four together).")

    lines = [
        "# Data pipeline throughput (one core)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {platform.system()}; torch and OpenCV on one "
        f"thread; {len(paths)} source images ({min(min(s) for s in sizes)}-{max(max(s) for s in sizes)} px), "
        f"decoded for every example; {args.n} examples per row; default ExampleMaker (median cut, T cue, "
        "weighted 2^k palettes, p_superpixel 0.9, all four segmenters, "
        f"segment_max_side {seg_side}).",
        "",
        "| crop | mode | examples/s | ms/example | " + " | ".join(f"{s} ms" for s in (*ALL_STAGES, "other"))
        + " | slowest |",
        "|---" * (6 + len(ALL_STAGES)) + "|",
        *rows,
        "",
        "50/50 mix of the two modes (what training draws): "
        + ", ".join(f"{crop}x{crop}: {rate:.1f} examples/s" for crop, rate in summary) + ".",
        "",
        "Where the time goes:",
        "",
        *verdict,
        "",
        "Segmenters alone on the augmented crops (ms per crop; patch mode picks one uniformly, 90% of the time):",
        "",
        "| crop | " + " | ".join(SEGMENTERS) + " | slowest |",
        "|---" * (len(SEGMENTERS) + 2) + "|",
        *seg_rows,
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
