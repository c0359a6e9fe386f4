"""The last step of `make demo`: a palette-transfer picture, a dequantization row and the final validation grid
from a trained run; with `--docs`, small copies of the two pictures for the README (docs/images).

python -m dequant.demo --run outputs/demo/train --out outputs/demo [--docs docs/images]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from dequant.data.io import load_rgb
from dequant.edit import main as edit_main
from dequant.edit import hint_path, resize
from dequant.viz import labelled_grid, save_png


def _pick_pair(split: dict[str, list[str]]) -> tuple[str, str]:
    """A held-out source photo and another photo whose palette it takes (held-out first, then any)."""
    held_out = split.get("val", []) + split.get("test", [])
    pool = held_out + [p for p in split.get("train", []) if p not in held_out]
    if len(pool) < 2:
        raise ValueError(f"the run's split names {len(pool)} image(s); a palette transfer needs two")
    return pool[0], pool[1]


def palette_transfer_figure(ckpt: Path, source: str, target: str, out_dir: Path, n_colors: int = 8,
                            seed: int = 0) -> Path:
    """Render `source` in `target`'s palette with the model; save the output and a labelled side-by-side picture."""
    output = out_dir / "palette_transfer_output.png"
    code = edit_main(["transfer", source, "--ckpt", str(ckpt), "--palette-from", target, "-n", str(n_colors),
                      "--seed", str(seed), "--save-hint", "-o", str(output)])
    if code != 0:
        raise RuntimeError(f"dequant-edit transfer failed with exit code {code}")
    src, tgt, res = load_rgb(source), load_rgb(target), load_rgb(output)
    h = 160
    w = round(src.shape[-1] * h / src.shape[-2])
    columns = {
        f"source: {Path(source).stem}": resize(src, h, w)[None],
        f"palette from: {Path(target).stem}": resize(tgt, h, w)[None],
        "model input (recolored)": resize(load_rgb(hint_path(output)), h, w)[None],
        f"model, {n_colors} colors": resize(res, h, w)[None],
    }
    figure = out_dir / "palette_transfer.png"
    save_png(labelled_grid(columns), figure)
    return figure


def dequantization_figure(ckpt: Path, source: str, out_dir: Path, sizes: tuple[int, ...] = (4, 16, 64),
                          seed: int = 0) -> Path:
    """`source` quantized to each of `sizes` colors and the model's rendering of each, beside the photo."""
    h = 160
    photo = load_rgb(source)
    w = round(photo.shape[-1] * h / photo.shape[-2])
    columns = {}
    for n in sizes:
        output = out_dir / f"dequantization_N{n}.png"
        # A transfer onto the photo's own palette: the model's input is the photo quantized to n colors.
        code = edit_main(["transfer", source, "--ckpt", str(ckpt), "--palette-from", source, "-n", str(n),
                          "--seed", str(seed), "--save-hint", "-o", str(output)])
        if code != 0:
            raise RuntimeError(f"dequant-edit transfer failed with exit code {code}")
        columns[f"{n} colors"] = resize(load_rgb(hint_path(output)), h, w)[None]
        columns[f"model, from {n}"] = resize(load_rgb(output), h, w)[None]
    columns[f"photo: {Path(source).stem}"] = resize(photo, h, w)[None]
    figure = out_dir / "dequantization.png"
    save_png(labelled_grid(columns), figure)
    return figure


def readme_copy(figure: Path, docs: Path, height: int = 120) -> Path:
    """A smaller copy of `figure` in `docs` (the README's pictures stay small in the repository)."""
    image = load_rgb(figure)
    width = round(image.shape[-1] * height / image.shape[-2])
    return save_png(resize(image, height, width), docs / figure.name)


def main(argv: list[str] | None = None) -> int:
    """Write outputs/demo/palette_transfer.png and validation_grid.png from a finished training run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the training run folder (holds checkpoints/ and split.json)")
    parser.add_argument("--out", required=True, help="where to write the pictures")
    parser.add_argument("-n", "--colors", type=int, default=8, help="palette size of the transfer (default 8)")
    parser.add_argument("--docs", default=None, help="also write small copies of the two pictures here (the "
                                                     "README's docs/images)")
    args = parser.parse_args(argv)
    run, out = Path(args.run), Path(args.out)
    ckpt = run / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        print(f"dequant.demo: no checkpoint at {ckpt}: run training first", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    split = json.loads((run / "split.json").read_text())
    source, target = _pick_pair(split)
    # no_grad, not set_grad_enabled(False): a caller's autograd state (main() runs in-process in tests) stays.
    with torch.no_grad():
        figure = palette_transfer_figure(ckpt, source, target, out, n_colors=args.colors)
        print(f"palette transfer: {figure}")
        row = dequantization_figure(ckpt, source, out)
    print(f"dequantization: {row}")
    if args.docs:
        for picture in (figure, row):
            print(f"README picture: {readme_copy(picture, Path(args.docs))}")
    grids = sorted((run / "samples").glob("val_step*.png"))
    if grids:
        shutil.copyfile(grids[-1], out / "validation_grid.png")
        print(f"validation grid ({grids[-1].name}): {out / 'validation_grid.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
