"""Learning curve on held-out photos: the r test (N = 64, 16, 4; texture given and dropped) for every checkpoint.

A run's training loss keeps falling while the model learns its few photos by heart; what matters is whether the
output beats the quantized input on photos the run never saw. For each `step*.ckpt` of a run (and `last.ckpt`),
this samples the r test with the checkpoint's own sampler on held-out photos and prints, per setting, the model's
PSNR / SSIM / speckle beside the input's.

    python experiments/learning_curve.py RUN_DIR [--images 'src/dequant/assets/heldout_photos/*.jpg' MORE ...] [--size 64]
        [--sampler predictor|bridge|ddim|... --steps K] [--every k] [-o RUN_DIR/learning_curve.md]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

from dequant.config import assets_path
from dequant.data.io import list_images
from dequant.evaluation.runner import build_quantizer, checkpoint_cue, load_images
from dequant.evaluation.tests import build_case, image_rngs, settings
from dequant.export import read_dequant_config
from dequant.metrics import compute_metrics
from dequant.models.formulations import describe
from dequant.models.module import load_model
from dequant.models.sampling import DEFAULT_STEPS, SamplerSpec

METRICS = ("psnr", "ssim", "speckle")


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the run's step checkpoints in step order (last.ckpt when there are none)."""
    found = []
    for path in (run_dir / "checkpoints").glob("step*.ckpt"):
        match = re.search(r"step(\d+)", path.stem)
        if match:
            found.append((int(match.group(1)), path))
    if not found and (run_dir / "checkpoints" / "last.ckpt").is_file():
        found.append((-1, run_dir / "checkpoints" / "last.ckpt"))
    return sorted(found)


def r_rows(ckpt: Path, images: torch.Tensor, seed: int = 0, sampler: SamplerSpec | None = None) -> list[dict]:
    """One row per (N, texture) with the model's and the input's mean metrics, and the sampling cost."""
    module = load_model(ckpt)
    spec = module.sampler_spec if sampler is None else sampler
    dq = read_dequant_config(ckpt)
    cue, quantizer = checkpoint_cue(dq), build_quantizer(None, dq)
    ids = list(range(images.shape[0]))
    rows = []
    for setting in settings("r"):
        case = build_case(setting, images, quantizer=quantizer, cue=cue, rngs=image_rngs(seed, setting, ids),
                          seed=seed)
        given = compute_metrics(case.requested, case.target, source=case.source)
        for keep in (True, False):
            start = time.perf_counter()
            out = module.sample(case.hints[keep], sampler=spec, seed=seed, image_ids=ids).float().clamp(0, 1)
            ms = 1000 * (time.perf_counter() - start) / len(ids)
            got = compute_metrics(out, case.target, source=case.source)
            row = {"N": setting.n_colors, "texture": "given" if keep else "dropped", "ms_per_image": ms}
            for m in METRICS:
                row[m] = float(got[m].mean())
                row[f"{m}_input"] = float(given[m].mean())
            rows.append(row)
    rows.append(describe(module.formulation, spec))
    return rows


def table(curve: list[tuple[int, list[dict]]]) -> str:
    """Markdown: one line per (step, N, texture), model beside input, and the PSNR gain."""
    lines = ["| step | N | texture | PSNR model | PSNR input | gain dB | SSIM model | SSIM input | speckle model "
             "| speckle input |", "|---|---|---|---|---|---|---|---|---|---|"]
    for step, rows in curve:
        for r in rows:
            if "N" not in r:
                continue
            lines.append(f"| {step} | {r['N']} | {r['texture']} | {r['psnr']:.2f} | {r['psnr_input']:.2f} | "
                         f"{r['psnr'] - r['psnr_input']:+.2f} | {r['ssim']:.3f} | {r['ssim_input']:.3f} | "
                         f"{r['speckle']:.2f} | {r['speckle_input']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print (and optionally write) the learning curve of a run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--images", nargs="+", default=[str(Path(assets_path("heldout_photos")) / "*.jpg")],
                        help="held-out photos: globs, files or folders (default: the package's heldout_photos)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--every", type=int, default=1, help="use every k-th checkpoint (default 1)")
    parser.add_argument("--sampler", default=None, help="sampler name (default: each checkpoint's own)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the sampler's)")
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    found = checkpoints(args.run_dir)
    if not found:
        print(f"error: no checkpoints under {args.run_dir / 'checkpoints'}", file=sys.stderr)
        return 2
    files = list_images(args.images)
    images = load_images(files, args.size)
    spec = None
    if args.sampler:
        spec = SamplerSpec(name=args.sampler, steps=args.steps or DEFAULT_STEPS[args.sampler])
    curve = []
    for step, path in found[:: args.every]:
        curve.append((step, r_rows(path, images, sampler=spec)))
        print(f"step {step}: done", file=sys.stderr, flush=True)
    cost = curve[-1][1][-1]
    text = (f"Learning curve of {args.run_dir} on {len(files)} held-out photos at {args.size} px "
            f"(r test, median cut; {cost['formulation']}, sampler {cost['sampler']}, "
            f"{cost['network_evaluations']} network evaluations per image)\n\n" + table(curve) + "\n")
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
