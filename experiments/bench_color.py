"""Benchmark the color quantizers on the shipped photos (256x256), one thread: ms per image and MSE vs cv2.kmeans.

Run: .venv/bin/python experiments/bench_color.py [--size 256] [--repeats 5]
Prints a markdown table and writes it to experiments/results/bench_color.md.
"""

from __future__ import annotations

import os

# One thread everywhere, set before numpy/torch/cv2 load their thread pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import PIL  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

import dequant  # noqa: E402
from dequant.color.colorspace import rgb_to_lab  # noqa: E402
from dequant.color.quantize import quantize  # noqa: E402

torch.set_num_threads(1)
cv2.setNumThreads(1)

ASSETS = Path(dequant.__file__).parent / "assets" / "images"
RESULTS = Path(__file__).parent / "results" / "bench_color.md"
SIZES = (4, 16, 64)


def load(path: Path, size: int) -> np.ndarray:
    """Center-crop and resize (bicubic) to size x size; (H,W,3) uint8."""
    return np.array(ImageOps.fit(Image.open(path).convert("RGB"), (size, size), Image.Resampling.BICUBIC))


def ours(method: str, space: str):
    def run(u8: np.ndarray, n: int, seed: int) -> np.ndarray:
        image = torch.from_numpy(u8).permute(2, 0, 1).float().div_(255.0)
        q = quantize(image, n, method=method, space=space, seed=seed)
        return q.image.permute(1, 2, 0).numpy() * 255.0

    return run


def pillow_median_cut(u8: np.ndarray, n: int, seed: int) -> np.ndarray:
    im = Image.fromarray(u8).quantize(colors=n, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    return np.asarray(im.convert("RGB"), dtype=np.float32)


def cv2_kmeans(u8: np.ndarray, n: int, seed: int) -> np.ndarray:
    cv2.setRNGSeed(seed)
    data = u8.reshape(-1, 3).astype(np.float32)
    criteria = (cv2.TERM_CRITERIA_MAX_ITER, 20, 0)
    _, labels, centers = cv2.kmeans(data, n, None, criteria, 1, cv2.KMEANS_PP_CENTERS)
    return centers[labels.ravel()].reshape(u8.shape)


METHODS = {
    "median_cut (ours)": ours("median_cut", "rgb"),
    "kmeans rgb (ours)": ours("kmeans", "rgb"),
    "kmeans lab (ours)": ours("kmeans", "lab"),
    "Pillow median cut": pillow_median_cut,
    "cv2.kmeans k-means++": cv2_kmeans,
}
REFERENCE = "cv2.kmeans k-means++"


def lab_de76(u8: np.ndarray, out: np.ndarray) -> float:
    """Mean CIE76 color difference (Euclidean in Lab) between two (H,W,3) images on the 0-255 scale."""
    a = rgb_to_lab(torch.from_numpy(u8.astype(np.float32) / 255.0).permute(2, 0, 1))
    b = rgb_to_lab(torch.from_numpy(np.asarray(out, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return float(((a - b) ** 2).sum(0).sqrt().mean())


def main() -> None:
    """Time and score every method on every photo and palette size; print and save a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="runs per image (seeds 0..repeats-1)")
    args = parser.parse_args()

    photos = [(p.stem, load(p, args.size)) for p in sorted(ASSETS.glob("*.jpg"))]
    # Warm-up so that lazy imports and first-call allocations are not timed.
    for fn in METHODS.values():
        fn(photos[0][1], 4, 0)

    # stats[method, n] = list over photos of (median seconds, mean MSE, mean dE76)
    stats: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    for n in SIZES:
        for _, u8 in photos:
            ref = u8.astype(np.float64)
            per: dict[str, list[tuple[float, float, float]]] = {m: [] for m in METHODS}
            for seed in range(args.repeats):
                # Methods interleaved per repeat so that machine noise hits them alike.
                for name, fn in METHODS.items():
                    t0 = time.perf_counter()
                    out = fn(u8, n, seed)
                    dt = time.perf_counter() - t0
                    per[name].append((dt, float(((out - ref) ** 2).mean()), lab_de76(u8, out)))
            for name, runs in per.items():
                arr = np.array(runs)
                stats.setdefault((name, n), []).append((np.median(arr[:, 0]), arr[:, 1].mean(), arr[:, 2].mean()))

    lines = [
        f"Quantizers on {len(photos)} shipped photos, center-cropped to {args.size}x{args.size}, one thread, "
        f"{args.repeats} runs (seeds) per image. ms: mean over photos of the median run; MSE: 0-255 units, mean "
        "over pixels, channels, runs and photos; dE76: mean Lab distance; ratios vs cv2.kmeans (k-means++, 20 "
        "iterations, 1 attempt): time = mean ms / cv2 mean ms, MSE = mean over photos of per-photo MSE ratio.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible; numpy "
        f"{np.__version__}, torch {torch.__version__}, opencv {cv2.__version__}, Pillow {PIL.__version__}.",
        "",
        "| method | N | ms / image | MSE | dE76 | time / cv2 | MSE / cv2 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n in SIZES:
        ref = np.array(stats[REFERENCE, n])
        for name in METHODS:
            arr = np.array(stats[name, n])
            lines.append(
                f"| {name} | {n} | {arr[:, 0].mean() * 1e3:.1f} | {arr[:, 1].mean():.1f} | {arr[:, 2].mean():.2f} "
                f"| {arr[:, 0].mean() / ref[:, 0].mean():.3f} | {(arr[:, 1] / ref[:, 1]).mean():.3f} |"
            )
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("# bench_color\n\n" + table)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
