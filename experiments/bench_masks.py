"""Time the mask, cue and hint stages of example making on one CPU thread; writes experiments/results/bench_masks.md.

Usage: python experiments/bench_masks.py [--sizes 64 256] [--repeats 3]
Each number is the median over the bundled photos (center-cropped and resized) of the best of `repeats` calls, in
milliseconds per call for one (3, S, S) image.
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
            record(f"{method}: scikit-image call", size, [best_ms(lambda im=im: fn(im), repeats) for im in hwc])
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


def main() -> None:
    """Run the benchmark and write the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = bench(args.sizes, args.repeats)
    info = (f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, one thread; "
            f"{len(list(ASSETS.glob('*.jpg')))} bundled photos, best of {args.repeats} calls, median over photos.")
    text = f"# Mask, cue and hint timings (ms per call, one image)\n\n{info}\n\n{table}\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
