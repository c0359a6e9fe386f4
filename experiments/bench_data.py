"""Data-pipeline throughput on one core, before and after issue 10: examples per CPU second at 64 and 256, per stage.

Run: `python experiments/bench_data.py [--n 40] [--images DIR] [--out experiments/results/bench_data.md]`.
One process, torch and OpenCV limited to one thread (what one DataLoader worker gets). The example makers are the
project's own data configs, composed by Hydra as train.py composes them, at each crop size:

- before: the default data config with issue 10's changes undone: Pillow's median cut (`Image.quantize`),
  scikit-image's quickshift, Felzenszwalb and SLIC (no config selects them: the bench swaps the compiled ones out
  for these rows) and the image decoded for every example (superpixels segmented on each crop downscaled to
  128 px, as the default still does).
- default: conf/data/default.yaml (our median cut, quickshift, Felzenszwalb and SLIC, numba-compiled, identical
  output; superpixels segmented on each crop downscaled to 128 px; the decoded image cached).
- paper_256: that experiment's data config (superpixels cut out of the full-resolution segmentation of the whole
  source image, cached per image and scale bucket: `segment_source: image`, the authors' resolution), with every
  image's cache warm: a worker's steady state. Filling the cache is a one-time cost per image and worker, reported
  separately, and a table says what patch mode costs when a worker uses each image only 1, 4, 16 or 64 times
  before its cache is dropped (a dataset larger than `data.cache_max_gb`, or few examples per image).

`--previous FILE --previous-label NAME`: a results file this script wrote at another commit (run it there with
`--out FILE`); its "after" (or "paper_256") rows join every table as rows named NAME, for a comparison under the
same machine load.

Also times the median cut alone against Pillow's at 256x256 for every palette size of the training distribution.
The data wait of a GPU training step with 8 or 16 workers needs a machine with that many cores
(experiments/bench_scale.py measures it); this one has os.cpu_count() cores, so the file says what was and was not
measured.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from dequant.color import masks
from dequant.color.median_cut import median_cut
from dequant.color.quantize import Quantized, Quantizer
from dequant.config import conf_dir
from dequant.data.catalog import PathList
from dequant.data.datamodule import FolderCatalog, _compact, _ImageSource
from dequant.data.examples import STAGES, ExampleMaker
from dequant.data.io import list_images, load_rgb
from dequant.data.palette_sizes import WeightedPowerOfTwo

ASSETS = Path(__file__).resolve().parents[1] / "src" / "dequant" / "assets" / "images"
ALL_STAGES = ("load", *STAGES)
SETUPS = ("before", "default", "paper_256")
REUSES = (1, 4, 16, 64)


class PillowMedianCut(Quantizer):
    """The quantizer before issue 10: Pillow's median cut, for the 'before' rows."""

    def __call__(self, image: torch.Tensor, n_colors: int, seed: int = 0) -> Quantized:
        u8 = (image.permute(1, 2, 0) * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
        q = Image.fromarray(u8, mode="RGB").quantize(colors=n_colors, method=Image.Quantize.MEDIANCUT,
                                                     dither=Image.Dither.NONE)
        palette = np.asarray(q.getpalette("RGB"), dtype=np.float32).reshape(-1, 3) / 255.0
        return Quantized.from_assignment(torch.from_numpy(palette), torch.from_numpy(np.asarray(q, dtype=np.int64)))


# The slots of masks.py's compiled segmenters (each gives scikit-image's labels)
COMPILED_SEGMENTERS = (masks._QS_JIT, masks._FELZ_JIT, masks._SLIC_JIT)


@contextlib.contextmanager
def reference_segmenters(active: bool):
    """While active, masks come from scikit-image's quickshift, Felzenszwalb and SLIC, as before issue 10 (same
    labels)."""
    saved = [list(slot) for slot in COMPILED_SEGMENTERS]
    if active:
        for slot in COMPILED_SEGMENTERS:
            slot[:] = [None]
    try:
        yield
    finally:
        for slot, kept in zip(COMPILED_SEGMENTERS, saved):
            slot[:] = kept


def configured_maker(experiment: str | None, crop: int, p_patch: float, *overrides: str) -> ExampleMaker:
    """The example maker of the project's data config (`experiment=None`: conf/data/default.yaml; else that
    experiment's) with `overrides`, composed by Hydra as train.py would, at this crop size and patch probability,
    profiling."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    overrides = [f"data.example.crop_size={crop}", f"data.example.p_patch={p_patch}", *overrides]
    if experiment is not None:
        overrides.insert(0, f"experiment={experiment}")
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    return instantiate(cfg.data.example, profile=True)


def maker_for(setup: str, crop: int, p_patch: float) -> ExampleMaker:
    """The example maker of one setup: "before" (the default data config with issue 10's changes undone), "default"
    (conf/data/default.yaml), "authors" (the default with each crop segmented at full resolution, the authors'
    procedure) or "paper_256" (that experiment's data config; all at this crop size)."""
    if setup == "before":
        maker = configured_maker(None, crop, p_patch)
        maker.quantizer = PillowMedianCut()
        return maker
    if setup == "authors":
        return configured_maker(None, crop, p_patch, "data.example.segment_max_side=null")
    return configured_maker(None if setup == "default" else setup, crop, p_patch)


def fill_cache(maker: ExampleMaker, image: torch.Tensor, cache: dict) -> None:
    """Segment one source at every scale bucket with every segmenter (what a worker's cache converges to)."""
    source = maker._fit(image.numpy())
    if min(source.shape[1:]) < maker.crop_size:
        return
    for key in maker.segment_keys(*image.shape[1:]):
        cache[key] = maker.segmentation(source, key)


def cached_source(paths: list[Path]) -> _ImageSource:
    """The data module's image source with every image in its cache (as a worker holds them: 8-bit photos kept as
    uint8 and restored to float32 for each example)."""
    catalog = FolderCatalog(PathList.from_strings([str(p) for p in paths]))
    source = _ImageSource(catalog, np.arange(len(paths)), cache=True, cache_max_gb=64.0, split="bench")
    for j in range(len(paths)):
        source.get(j)
    return source


def bench(setup: str, paths: list[Path], crop: int, p_patch: float, n: int,
          caches: list[dict] | None = None) -> dict[str, float]:
    """Mean seconds per example of each stage, plus total and examples/s (paper_256: with the warm `caches`)."""
    maker = maker_for(setup, crop, p_patch)
    source = cached_source(paths)
    if caches is None:
        caches = [None] * len(paths)
    with reference_segmenters(setup == "before"):
        maker(source.get(0)[1], np.random.default_rng(12345), segment_cache=caches[0])  # first-call allocations
        maker.reset_timings()
        load = 0.0
        start, cpu_start = time.perf_counter(), time.process_time()
        for i in range(n):
            j = i % len(paths)
            t0 = time.perf_counter()
            image = load_rgb(paths[j]) if setup == "before" else source.get(j)[1]
            load += time.perf_counter() - t0
            maker(image, np.random.default_rng([0, i]), segment_cache=caches[j])
        wall = (time.perf_counter() - start) / n
        # The process's CPU time is what one core spends: on a shared machine wall time also counts the waits for
        # a core. Stage times (wall clock) are scaled to it, keeping their shares.
        total = (time.process_time() - cpu_start) / n
    scale = total / wall
    stages = {"load": load / n * scale, **{k: v * scale for k, v in maker.timings().items()}}
    stages["other"] = max(total - sum(stages.values()), 0.0)
    return {**stages, "total": total, "per_s": 1.0 / total, "wall_per_s": 1.0 / wall}


def filled_caches(paths: list[Path], crop: int) -> tuple[list[dict], float, int, float]:
    """Every image's full segmentation cache; mean seconds to fill one image's, segmentations in all, and mean bytes
    one image takes in a worker's cache (the photo as the data module keeps it, plus its label maps)."""
    maker = maker_for("paper_256", crop, 1.0)
    caches, total, nbytes = [], 0.0, 0
    for p in paths:
        cache: dict = {}
        image = load_rgb(p)
        start = time.process_time()
        fill_cache(maker, image, cache)
        total += time.process_time() - start
        caches.append(cache)
        nbytes += _compact(image).nbytes + sum(a.nbytes for v in cache.values() if isinstance(v, tuple) for a in v)
    return caches, total / len(paths), sum(len(c) for c in caches), nbytes / len(paths)


def bench_reuse(paths: list[Path], crop: int, uses: int, n: int) -> tuple[float, float]:
    """Patch mode with paper_256's masks when a worker uses each image `uses` times: every image's segmentation
    cache starts empty and is dropped after `uses` examples (what a dataset too large for the cache, or an epoch
    that reaches each image rarely, costs). (CPU ms per example, segmentations per example)."""
    maker = maker_for("paper_256", crop, 1.0)
    source = cached_source(paths)
    caches: list[dict] = [{} for _ in paths]
    made = [0] * len(paths)
    segmented = 0
    cpu_start = time.process_time()
    for i in range(n):
        j = i % len(paths)
        if made[j] == uses:
            segmented += sum(1 for key in caches[j] if isinstance(key, tuple))
            caches[j], made[j] = {}, 0
        maker(source.get(j)[1], np.random.default_rng([1, i]), segment_cache=caches[j])
        made[j] += 1
    segmented += sum(1 for c in caches for key in c if isinstance(key, tuple))
    return (time.process_time() - cpu_start) / n * 1e3, segmented / n


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
    """The "after" (or "paper_256") rows of an earlier results file, relabelled, per table ("summary", "stages",
    "median_cut")."""
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
        if section in ("summary", "stages") and len(cells) > 2 and cells[1] in ("after", "paper_256"):
            rows[section].append("| " + " | ".join([cells[0], label, *cells[2:]]) + " |")
        elif section == "median_cut" and len(cells) >= 5 and cells[0].isdigit():
            rows[section].append("| " + " | ".join(cells) + " |")
    return rows


def merged(new_rows: list[str], old_rows: list[str]) -> list[str]:
    """Rows of one table per crop: this run's "before", the earlier commit's rows, this run's other setups."""
    out = []
    for crop in ("64", "256"):
        out += [r for r in new_rows if r.startswith(f"| {crop} | before |")]
        out += [r for r in old_rows if r.startswith(f"| {crop} |")]
        out += [r for r in new_rows if r.startswith(f"| {crop} |") and not r.startswith(f"| {crop} | before |")]
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
    parser.add_argument("--unique", action="store_true",
                        help="every example from a photo not decoded before (experiments/bench_unique.py)")
    args, rest = parser.parse_known_args()
    if args.unique:
        import bench_unique

        bench_unique.main(["--unique", *rest] + ([] if args.out.endswith("bench_data.md") else ["--out", args.out]))
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    prev = previous_rows(args.previous, args.previous_label) if args.previous else None
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    paths = list_images(args.images)
    sizes = [tuple(load_rgb(p).shape[1:]) for p in paths]

    mc_rows, mc_ratio = bench_median_cut(paths, args.repeats)
    rows, summary, fills, patch_ms = [], [], {}, {}
    for crop in (64, 256):
        caches, fill_s, fill_n, fill_bytes = filled_caches(paths, crop)
        fills[crop] = (fill_s, fill_n, fill_bytes)
        for setup in SETUPS:
            per_mode = {}
            for mode, p_patch in (("palette", 0.0), ("patch", 1.0)):
                setup_caches = {"before": None, "default": [{} for _ in paths], "paper_256": caches}[setup]
                r = bench(setup, paths, crop, p_patch, args.n, setup_caches)
                per_mode[mode] = r
                if mode == "patch":
                    patch_ms[(crop, setup)] = r["total"] * 1e3
                slowest = max(ALL_STAGES, key=lambda s: r[s])
                rows.append(f"| {crop} | {setup} | {mode} | {r['per_s']:.1f} | {r['total'] * 1e3:.1f} | "
                            + " | ".join(f"{r[s] * 1e3:.1f}" for s in (*ALL_STAGES, "other")) + f" | {slowest} |")
            # A 50/50 mix of the two modes: its rate is the harmonic mean of the two rates.
            mixed = 2.0 / (per_mode["palette"]["total"] + per_mode["patch"]["total"])
            wall_mixed = 2.0 / (1 / per_mode["palette"]["wall_per_s"] + 1 / per_mode["patch"]["wall_per_s"])
            summary.append(f"| {crop} | {setup} | {per_mode['palette']['per_s']:.1f} | "
                           f"{per_mode['patch']['per_s']:.1f} | {mixed:.1f} | {wall_mixed:.1f} |")
            print(summary[-1], flush=True)

    reuse_rows = []
    for crop in (64, 256):
        authors = bench("authors", paths, crop, 1.0, max(args.n // 4, 2 * len(paths)), [{} for _ in paths])
        per_crop = {"default": patch_ms[(crop, "default")], "authors": authors["total"] * 1e3}
        reuse_rows.append(f"| {crop} | each crop segmented, at most 128 px (default config) | "
                          f"{per_crop['default']:.1f} | {1e3 / per_crop['default']:.1f} | 1 (of the crop) | 1.00 | "
                          f"{per_crop['default'] / per_crop['authors']:.2f} |")
        reuse_rows.append(f"| {crop} | each crop segmented at full resolution (the authors') | "
                          f"{per_crop['authors']:.1f} | {1e3 / per_crop['authors']:.1f} | 1 (of the crop) | "
                          f"{per_crop['authors'] / per_crop['default']:.2f} | 1.00 |")
        for uses in REUSES:
            ms, segs = bench_reuse(paths, crop, uses, max(len(paths) * uses, 12 * len(paths)))
            reuse_rows.append(f"| {crop} | paper_256, each image used {uses}x | {ms:.1f} | {1e3 / ms:.1f} | "
                              f"{segs:.2f} | {ms / per_crop['default']:.2f} | {ms / per_crop['authors']:.2f} |")
            print(reuse_rows[-1], flush=True)
        warm = patch_ms[(crop, "paper_256")]
        reuse_rows.append(f"| {crop} | paper_256, warm (every segmentation cached) | {warm:.1f} | {1e3 / warm:.1f} | "
                          f"0 | {warm / per_crop['default']:.2f} | {warm / per_crop['authors']:.2f} |")

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
        f"segmentations; the image then takes {nb / 2**20:.1f} MB of the worker's cache, photo and label maps)"
        for crop, (sec, cnt, nb) in fills.items()) + ".",
        "",
        "## Patch mode with paper_256's masks when each image is used only a few times",
        "",
        "A worker segments an image at a scale bucket the first time an example needs that bucket and segmenter. "
        "Here every image's cache starts empty and is dropped after `uses` examples: what a worker pays when the "
        "dataset does not fit `data.cache_max_gb` (images beyond it are never cached) or when it sees each image "
        "only that often. Against it, segmenting each crop (the default data config at 128 px, or at full "
        "resolution as the authors do) costs the same whatever the reuse; the last two columns are CPU time "
        "relative to those.",
        "",
        "| crop | masks | CPU ms per example | examples/s | segmentations per example | vs default | "
        "vs authors' |",
        "|---|---|---|---|---|---|---|",
        *reuse_rows,
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
        f"Not measured here: this machine has {os.cpu_count()} cores, so 8 or 16 workers would share them and say "
        "nothing about a GPU node (experiments/bench_scale.py measures the data wait of a training step there). "
        "What one core makes is above; with W workers on W free cores a loader makes about W times the 50/50-mix "
        "rate (workers share nothing but the sampler's keys).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
