"""Render at the photo's size or at the training size? The r test at 1x, 2x and 4x a checkpoint's training size.

`dequant-edit --resolution native` runs the model at the photo's own size (tiled when large); `--resolution train`
renders at the training crop size and resizes the result up (bicubic). This measures both on held-out photos with
the r test (median cut at N = 64, 16, 4; texture given), at S = k x the checkpoint's training crop size:

- input: the photo quantized at S (what the model is given);
- native: the model at S (`dequant.render.render_tiled`: whole up to --tile x --tile pixels, else blended tiles);
- train+bicubic: the photo resized to the training size (as `dequant-edit --resolution train` does), quantized and
  rendered there, the output resized to S with bicubic interpolation.

PSNR and SSIM against the photo at S, `speckle` (1 = as grainy as the photo), and ms per image (the model calls,
plus the resizes for train+bicubic; one image per call, on this machine's torch threads). At 1x both policies are
the same rendering (same hint, same noise), a check of the script.

    python experiments/bench_render_size.py CKPT [--images 'src/dequant/assets/heldout_photos/*.jpg']
        [--scales 1,2,4] [--colors 64,16,4] [--tile PX] [--max-images K] [--seed 0] [-o results.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from dequant.config import assets_path
from dequant.data.io import list_images
from dequant.edit import TILE_CROPS, downsampling_factor, resize
from dequant.evaluation.runner import build_quantizer, checkpoint_crop_size, checkpoint_cue, load_images
from dequant.evaluation.tests import build_case, image_rngs, settings
from dequant.export import read_dequant_config
from dequant.metrics import compute_metrics
from dequant.models.formulations import describe
from dequant.models.module import load_model
from dequant.render import render_tiled, round_up

METRICS = ("psnr", "ssim", "speckle")
METHODS = ("input", "native", "train+bicubic")
TILE_ID_STRIDE = 100_000  # noise id of image i's tile t: i + TILE_ID_STRIDE * t (tile 0 = the whole image: id i)

ROOT = Path(__file__).resolve().parents[1]


def default_images() -> str:
    """The held-out photos, or the shipped ones where that folder does not exist."""
    held = Path(assets_path("heldout_photos"))
    return str((held if held.is_dir() else Path(assets_path("images"))) / "*.jpg")


def shown(value: object) -> str:
    """A path or glob as the table names it: relative to the checkout, never a machine's folders."""
    return str(value).replace(str(ROOT) + "/", "")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def render_native(module, hints: torch.Tensor, *, tile: int, factor: int, seed: int) -> tuple[torch.Tensor, float]:
    """(outputs (B,3,S,S), seconds) at the hints' own size, one image at a time."""
    outs, seconds = [], 0.0
    for i, h in enumerate(hints):
        def sample_fn(batch, ids, i=i):
            ids = [i + TILE_ID_STRIDE * t for t in ids]
            return module.sample(batch, seed=seed, image_ids=ids).float().cpu()

        start = time.perf_counter()
        outs.append(render_tiled(sample_fn, h, tile=tile, overlap=tile // 4, max_pixels=tile * tile,
                                 multiple=factor).clamp(0, 1))
        seconds += time.perf_counter() - start
    return torch.stack(outs), seconds


def render_small(module, images: torch.Tensor, setting, *, crop: int, quantizer, cue, seed: int,
                 ) -> tuple[torch.Tensor, float]:
    """(outputs (B,3,S,S), seconds): the photo resized to the training size, the r case built and rendered there,
    the output resized back up (bicubic), one image at a time."""
    b, size = images.shape[0], images.shape[-1]
    ids = list(range(b))
    start = time.perf_counter()
    small = torch.stack([resize(img, crop, crop) for img in images])
    seconds = time.perf_counter() - start
    case = build_case(setting, small, quantizer=quantizer, cue=cue, rngs=image_rngs(seed, setting, ids), seed=seed)
    outs = []
    for i in ids:
        start = time.perf_counter()
        out = module.sample(case.hints[True][i:i + 1], seed=seed, image_ids=[i]).float().cpu().clamp(0, 1)[0]
        outs.append(resize(out, size, size))
        seconds += time.perf_counter() - start
    return torch.stack(outs), seconds


def bench(ckpt: Path, files: list[Path], scales: list[int], colors: list[int], tile: int | None, seed: int,
          ) -> tuple[list[dict], dict]:
    """One row per (scale, N, method) with mean PSNR / SSIM / speckle and ms per image; and a header record."""
    module = load_model(ckpt)
    dq = read_dequant_config(ckpt)
    cue, quantizer, crop = checkpoint_cue(dq), build_quantizer(None, dq), checkpoint_crop_size(dq)
    factor = downsampling_factor(module)
    tile = tile or round_up(TILE_CROPS * crop, factor)
    if tile % factor:
        raise ValueError(f"--tile {tile}: must be a multiple of the model's downsampling factor {factor}")
    rows = []
    for k in scales:
        size = k * crop
        images = load_images(files, size)
        ids = list(range(images.shape[0]))
        for setting in [s for s in settings("r") if s.n_colors in colors]:
            case = build_case(setting, images, quantizer=quantizer, cue=cue, rngs=image_rngs(seed, setting, ids),
                              seed=seed)
            native, t_native = render_native(module, case.hints[True], tile=tile, factor=factor, seed=seed)
            small, t_small = render_small(module, images, setting, crop=crop, quantizer=quantizer, cue=cue,
                                          seed=seed)
            for method, out, seconds in (("input", case.requested, None), ("native", native, t_native),
                                         ("train+bicubic", small, t_small)):
                got = compute_metrics(out.float(), case.target, source=case.source)
                row = {"scale": k, "size": size, "N": setting.n_colors, "method": method,
                       "ms_per_image": None if seconds is None else 1000 * seconds / len(ids)}
                row.update({m: float(got[m].mean()) for m in METRICS})
                rows.append(row)
            print(f"{size} px, N={setting.n_colors}: done", file=sys.stderr, flush=True)
    head = {**describe(module.formulation, module.sampler_spec), "crop": crop, "factor": factor, "tile": tile,
            "images": len(files), "threads": torch.get_num_threads()}
    return rows, head


def table(rows: list[dict]) -> str:
    """Markdown: one line per (size, N, method); the PSNR gain over the input beside PSNR."""
    lines = ["| size | N | method | PSNR | vs input dB | SSIM | speckle | ms / image |",
             "|---|---|---|---|---|---|---|---|"]
    given = {(r["size"], r["N"]): r for r in rows if r["method"] == "input"}
    for r in rows:
        base = given[(r["size"], r["N"])]
        ms = "" if r["ms_per_image"] is None else f"{r['ms_per_image']:.0f}"
        gain = "" if r["method"] == "input" else f"{r['psnr'] - base['psnr']:+.2f}"
        lines.append(f"| {r['size']} ({r['scale']}x) | {r['N']} | {r['method']} | {r['psnr']:.2f} | {gain} | "
                     f"{r['ssim']:.3f} | {r['speckle']:.2f} | {ms} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print (and optionally write) the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", type=Path, help="Lightning checkpoint (.ckpt) or a dequant-export folder")
    parser.add_argument("--images", nargs="+", default=[default_images()],
                        help="held-out photos: globs, files or folders (default: %(default)s)")
    parser.add_argument("--scales", type=_int_list, default=[1, 2, 4],
                        help="sizes in training crop sizes (default 1,2,4)")
    parser.add_argument("--colors", type=_int_list, default=[64, 16, 4], help="r test N values (default 64,16,4)")
    parser.add_argument("--tile", type=int, default=None,
                        help=f"native tile side (default {TILE_CROPS}x the training crop size, as dequant-edit)")
    parser.add_argument("--max-images", type=int, default=None, help="use the first K photos only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, default=None, help="also write the markdown here")
    args = parser.parse_args(argv)
    bad = [n for n in args.colors if n not in {s.n_colors for s in settings("r")}]
    if bad:
        parser.error(f"--colors: the r test has N in {[s.n_colors for s in settings('r')]}, got {bad}")
    files = list_images(args.images)[: args.max_images]
    if not files:
        parser.error(f"--images {' '.join(args.images)}: no images")
    try:
        rows, head = bench(args.ckpt, files, args.scales, args.colors, args.tile, args.seed)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = (f"Render size on the r test (median cut, texture given): {shown(args.ckpt)}, {head['images']} photos "
            f"({', '.join(shown(i) for i in args.images)}), training size {head['crop']} px; {head['formulation']}, "
            f"sampler {head['sampler']}, "
            f"{head['network_evaluations']} network evaluations per call; native tiles {head['tile']} px (overlap "
            f"{head['tile'] // 4}, whole image up to {head['tile']}x{head['tile']}); {head['threads']} torch "
            f"threads, seed {args.seed}.\n\n" + table(rows) + "\n")
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
