"""Time the mask, cue and hint stages of example making on one CPU thread; writes experiments/results/bench_masks.md.

Usage: python experiments/bench_masks.py [--sizes 64 256] [--repeats 3] [--examples 64]
Each number is the median over the bundled photos (center-cropped and resized) of the best of `repeats` calls, in
milliseconds per call for one (3, S, S) image.

The segmenter calls are what `masks.py` runs: numba ports of scikit-image's quickshift, Felzenszwalb and SLIC (same
labels) where numba imports, scikit-image's watershed.

The second part compares the two sources of superpixel masks of ExampleMaker (`segment_source`): segmenting each
crop at full resolution, and cutting the crop out of the cached full-resolution segmentation of the whole source
image at the nearest scale bucket. Both see the same crops (same seeds) and grow masks with the same draws; the
tables give the segment count per crop and the mask's pixel fraction (mean and histogram) for each segmenter, with
the training's color augmentation (a crop segmented alone is segmented in its augmented colors, the cached photo in
its own) and without it (what the cut itself changes).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import dequant
from dequant.color import masks
from dequant.color.cues import texture_cue
from dequant.color.hint import fill_mask, hint
from dequant.data.examples import ExampleMaker
from dequant.data.io import load_rgb

ASSETS = Path(dequant.__file__).parent / "assets" / "images"
RESULTS = Path(__file__).parent / "results" / "bench_masks.md"


def load_square(path: Path, size: int) -> torch.Tensor:
    """Center square crop of a photo resized to size x size, as (3, S, S) in [0, 1]."""
    img = Image.open(path).convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of `repeats` calls, in ms (best, because the machine is shared)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * min(times)


def bench(sizes: list[int], repeats: int) -> str:
    """Markdown table of ms per call for every stage and size."""
    paths = sorted(ASSETS.glob("*.jpg"))
    rows: dict[str, dict[int, float]] = {}
    segments: dict[str, dict[int, float]] = {}

    def record(name: str, size: int, values: list[float]) -> None:
        rows.setdefault(name, {})[size] = float(np.median(values))

    for size in sizes:
        images = [load_square(p, size) for p in paths]
        hwc = [masks._to_hwc(x) for x in images]
        indices = [np.asarray(Image.fromarray((x.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
                              .quantize(16)).astype(np.int64) for x in images]
        for method in masks.SEGMENTERS:
            fn = masks._SEGMENT_FNS[method]
            fn(hwc[0])  # warm up numba-free C paths and imports
            record(f"{method}: segmenter call", size, [best_ms(lambda im=im: fn(im), repeats) for im in hwc])
            raws = [fn(im) for im in hwc]
            record(f"{method}: 4-connected relabel", size,
                   [best_ms(lambda r=r: masks._connected_segments(r), repeats) for r in raws])
            labels = [masks._connected_segments(r) for r in raws]
            segments.setdefault(method, {})[size] = float(np.median([lab.max() + 1 for lab in labels]))
            record(f"{method}: adjacency", size, [best_ms(lambda lab=lab: masks.adjacency(lab), repeats)
                                                   for lab in labels])
            record(f"{method}: region growing (incl. adjacency)", size,
                   [best_ms(lambda lab=lab: masks._grow_region(lab, np.random.default_rng(0), (0.01, 0.15)),
                            repeats) for lab in labels])
            record(f"{method}: patch_mask total", size,
                   [best_ms(lambda x=x: masks.patch_mask(x, rng=0, segmenters=(method,)), repeats)
                    for x in images])
        record("index components: patch_mask total", size,
               [best_ms(lambda x=x, i=i: masks.patch_mask(x, index=i, rng=0, p_superpixel=0.0), repeats)
                for x, i in zip(images, indices)])
        record("texture_cue T", size, [best_ms(lambda x=x: texture_cue(x, "T"), repeats) for x in images])
        record("texture_cue L", size, [best_ms(lambda x=x: texture_cue(x, "L"), repeats) for x in images])
        mask = masks.patch_mask(images[0], rng=0)
        cue = texture_cue(images[0])
        record("fill_mask + hint (patch)", size,
               [best_ms(lambda x=x: hint(fill_mask(x, mask), cue, mode="patch", mask=mask, keep_texture=False),
                        repeats) for x in images])

    header = "| stage | " + " | ".join(f"{s}x{s} ms" for s in sizes) + " |"
    lines = [header, "|" + "---|" * (len(sizes) + 1)]
    lines += [f"| {name} | " + " | ".join(f"{vals[s]:.2f}" for s in sizes) + " |" for name, vals in rows.items()]
    lines += ["", "Median segment count after the 4-connected relabel:", "",
              "| segmenter | " + " | ".join(f"{s}x{s}" for s in sizes) + " |", "|" + "---|" * (len(sizes) + 1)]
    lines += [f"| {m} | " + " | ".join(f"{segments[m][s]:.0f}" for s in sizes) + " |" for m in segments]
    totals = {m: rows[f"{m}: patch_mask total"][max(sizes)] for m in masks.SEGMENTERS}
    slowest = max(totals, key=totals.get)
    lines += ["", f"Bottleneck at {max(sizes)}x{max(sizes)}: {slowest} ({totals[slowest]:.1f} ms per mask); "
              f"mean over the four segmenters {np.mean(list(totals.values())):.1f} ms."]
    return "\n".join(lines)


def mask_statistics(size: int, n_examples: int, color_augment: bool = True) -> tuple[str, dict[str, float]]:
    """Segment counts and mask fractions per crop, crop-segmented vs cut from the cached image segmentation, with
    the default gray/saturation augmentation of the crops or none."""
    paths = sorted(ASSETS.glob("*.jpg"))
    maker = ExampleMaker(crop_size=size, segment_source="image")
    if not color_augment:
        maker.p_gray = maker.p_saturation = 0.0
    images = [load_rgb(p) for p in paths]
    caches: list[dict] = [{} for _ in paths]
    stats = {m: {"crop": ([], []), "image": ([], [])} for m in masks.SEGMENTERS}
    seconds = {"crop": 0.0, "image": 0.0}
    for k in range(n_examples):
        i = k % len(paths)
        target, meta, source = maker._augment(images[i], np.random.default_rng([7, k]))
        rgb = masks._to_hwc(target)
        for m in masks.SEGMENTERS:
            start = time.perf_counter()
            crop_labels = masks._segment_np(rgb, m)
            seconds["crop"] += time.perf_counter() - start
            start = time.perf_counter()
            image_labels = maker._labels(m, meta, np.asarray(target), source, caches[i])
            seconds["image"] += time.perf_counter() - start
            for name, labels in (("crop", crop_labels), ("image", image_labels)):
                grown = masks._grow_region(labels, np.random.default_rng([8, k]), maker.mask_frac)
                stats[m][name][0].append(int(labels.max()) + 1)
                stats[m][name][1].append(float(grown.mean()))
    frac_bins = [0, 0.01, 0.02, 0.05, 0.1, 0.2, 1.0]
    augment = (f"gray p {maker.p_gray:g}, saturation p {maker.p_saturation:g}" if color_augment
               else "no color augmentation")
    lines = [f"### {size}x{size} crops, {n_examples} crops of the {len(paths)} bundled photos, every segmenter, "
             f"{augment}",
             "", "| segmenter | segments: crop | segments: image | change | mask fraction: crop | image | change |",
             "|---|---|---|---|---|---|---|"]
    summary: dict[str, float] = {}
    for m in masks.SEGMENTERS:
        (cc, cf), (ic, if_) = stats[m]["crop"], stats[m]["image"]
        dc, df = np.mean(ic) / np.mean(cc) - 1, np.mean(if_) / np.mean(cf) - 1
        summary[m] = max(abs(dc), abs(df))
        lines.append(f"| {m} | {np.mean(cc):.1f} | {np.mean(ic):.1f} | {100 * dc:+.1f}% | {np.mean(cf):.4f} | "
                     f"{np.mean(if_):.4f} | {100 * df:+.1f}% |")
    lines += ["", "Mask-fraction histogram (share of masks per bin, all segmenters together):", "",
              "| fraction bin | crop | image |", "|---|---|---|"]
    all_c = np.concatenate([stats[m]["crop"][1] for m in masks.SEGMENTERS])
    all_i = np.concatenate([stats[m]["image"][1] for m in masks.SEGMENTERS])
    hc, _ = np.histogram(all_c, frac_bins)
    hi, _ = np.histogram(all_i, frac_bins)
    for lo, hi_edge, a, b in zip(frac_bins[:-1], frac_bins[1:], hc / hc.sum(), hi / hi.sum()):
        lines.append(f"| [{lo:g}, {hi_edge:g}) | {a:.3f} | {b:.3f} |")
    count_bins = [1, 25, 50, 100, 200, 300, 500, 10**6]
    lines += ["", "Segment-count histogram (share of crops per bin, all segmenters together):", "",
              "| segments per crop | crop | image |", "|---|---|---|"]
    cnt_c = np.concatenate([stats[m]["crop"][0] for m in masks.SEGMENTERS])
    cnt_i = np.concatenate([stats[m]["image"][0] for m in masks.SEGMENTERS])
    hc, _ = np.histogram(cnt_c, count_bins)
    hi, _ = np.histogram(cnt_i, count_bins)
    for lo, hi_edge, a, b in zip(count_bins[:-1], count_bins[1:], hc / hc.sum(), hi / hi.sum()):
        lines.append(f"| [{lo}, {hi_edge if hi_edge < 10**6 else 'inf'}) | {a:.3f} | {b:.3f} |")
    per = 1000 * seconds["crop"] / (n_examples * 4), 1000 * seconds["image"] / (n_examples * 4)
    lines += ["", f"Time per mask's labels: crop {per[0]:.1f} ms, image {per[1]:.1f} ms (cache filled on first use "
              f"of each photo, scale bucket and segmenter; {sum(len(c) for c in caches)} segmentations cached)."]
    return "\n".join(lines), summary


def main() -> None:
    """Run the benchmark and write the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", type=int, default=96, help="crops per size for the mask statistics")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = bench(args.sizes, args.repeats)
    parts = ["", "## Masks cut from the cached image segmentation vs segmenting each crop", ""]
    for size in args.sizes:
        for color_augment in (True, False):
            text, _ = mask_statistics(size, args.examples, color_augment)
            parts += [text, ""]
    table += "\n" + "\n".join(parts)
    info = (f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, one thread; "
            f"{len(list(ASSETS.glob('*.jpg')))} bundled photos, best of {args.repeats} calls, median over photos; "
            f"load average {os.getloadavg()[0]:.1f} at the end (wall-clock times, inflated on a shared machine).")
    text = f"# Mask, cue and hint timings (ms per call, one image)\n\n{info}\n\n{table}\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
