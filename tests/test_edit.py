"""dequant-edit end to end on downsized shipped photos with the tiny checkpoint, and every bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dequant.data.io import load_rgb, save_rgb
from dequant.edit import DEFAULT_RESOLUTION, hint_path, main, native_size, palette_path, processing_size

ROOT = Path(__file__).resolve().parents[1]


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_processing_size_keeps_aspect_and_divisibility() -> None:
    assert processing_size(300, 451, 32, 2) == (32, 48)
    assert processing_size(451, 300, 32, 2) == (48, 32)
    assert processing_size(100, 100, 64, 8) == (64, 64)
    h, w = processing_size(333, 1000, 64, 8)
    assert h == 64 and w % 8 == 0 and abs(w / h - 1000 / 333) < 8 / 64
    assert processing_size(10, 5000, 16, 4)[0] == 16


def test_native_size_caps_the_long_side() -> None:
    assert native_size(48, 72, 1024) == (48, 72)
    assert native_size(3000, 4000, 1000) == (750, 1000)
    assert native_size(4000, 30, 400) == (400, 3)


def test_resolution_policies(tiny_ckpt, tiny_photos, tmp_path, capsys) -> None:
    photo = load_rgb(tiny_photos[0])  # 48 x 72; the tiny model: 32 px crops, downsampling factor 2
    common = ["transfer", tiny_photos[0], "--ckpt", tiny_ckpt, "--palette", "#264653,#e9c46a,#e76f51", "-n", "3",
              "--sampler", "ddim", "--steps", "2"]
    cases = {"default": [], "native": ["--resolution", "native"], "train": ["--resolution", "train"],
             "tiled": ["--tile", "16"], "tiled_again": ["--tile", "16"], "capped": ["--max-side", "36"]}
    outs = {}
    for name, extra in cases.items():
        code, _, err = run(capsys, *common, *extra, "-o", tmp_path / f"{name}.png")
        assert code == 0, (name, err)
        outs[name] = load_rgb(tmp_path / f"{name}.png")
        assert outs[name].shape == photo.shape, name
    assert DEFAULT_RESOLUTION in ("native", "train")
    assert torch.equal(outs["default"], outs[DEFAULT_RESOLUTION])
    # 48 x 72 < the default tile (64 x 64 = 4096 px) so native is one pass; 16 px tiles, a cap and the training size
    # each give another rendering; tiles are seeded per tile, so a tiled rendering repeats exactly.
    for other in ("train", "tiled", "capped"):
        assert not torch.equal(outs["native"], outs[other]), other
    assert torch.equal(outs["tiled"], outs["tiled_again"])
    # recolor at both resolutions: the region is pasted into the photo, every far pixel stays the photo's.
    mask = torch.zeros_like(photo)
    mask[:, 10:30, 20:50] = 1.0
    save_rgb(mask, tmp_path / "mask.png")
    far = torch.ones(photo.shape[-2:], dtype=torch.bool)
    far[10 - 4:30 + 4, 20 - 4:50 + 4] = False
    for resolution in ("native", "train"):
        out = tmp_path / f"r_{resolution}.png"
        tile = ["--tile", "16"] if resolution == "native" else []
        code, _, err = run(capsys, "recolor", tiny_photos[0], "--ckpt", tiny_ckpt, "--mask", tmp_path / "mask.png",
                           "--color", "#c0392b", "--sampler", "ddim", "--steps", "2", "--resolution", resolution,
                           *tile, "-o", out)
        assert code == 0, err
        result = load_rgb(out)
        assert torch.equal(result[:, far], photo[:, far])
        assert not torch.equal(result[:, 12:28, 22:48], photo[:, 12:28, 22:48])


def test_quantize_prints_the_palette_and_keeps_the_size(tiny_photos, tmp_path, capsys) -> None:
    out = tmp_path / "q.png"
    code, stdout, _ = run(capsys, "quantize", tiny_photos[0], "-n", "6", "-o", out)
    assert code == 0
    hexes = re.findall(r"^(#[0-9a-f]{6})\s+[\d.]+%$", stdout, flags=re.M)
    assert 1 <= len(hexes) <= 6 and ",".join(hexes) in stdout.splitlines()
    image = load_rgb(out)
    assert image.shape == load_rgb(tiny_photos[0]).shape
    colors = {tuple(int(round(v * 255)) for v in px) for px in image.reshape(3, -1).t().tolist()}
    assert colors == {tuple(int(h[i:i + 2], 16) for i in (1, 3, 5)) for h in hexes}
    assert palette_path(out).is_file()


@pytest.mark.parametrize("target", [
    ["--palette", "#264653,#2a9d8f,#e9c46a,#f4a261,#e76f51"],
    ["--palette-from", "OTHER"],
    ["--colormap", "viridis", "--score", "neg"],
])
def test_transfer_end_to_end(tiny_ckpt, tiny_photos, tmp_path, capsys, target) -> None:
    target = [str(tiny_photos[1]) if t == "OTHER" else t for t in target]
    out = tmp_path / "t.png"
    code, stdout, err = run(capsys, "transfer", tiny_photos[0], "--ckpt", tiny_ckpt, *target, "-n", "8", "-o", out)
    assert code == 0, err
    assert load_rgb(out).shape == load_rgb(tiny_photos[0]).shape
    assert load_rgb(palette_path(out)).shape[0] == 3 and f"wrote {out}" in stdout


def test_transfer_is_seeded(tiny_ckpt, tiny_photos, tmp_path, capsys) -> None:
    outs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        out = tmp_path / f"{name}.png"
        assert run(capsys, "transfer", tiny_photos[2], "--ckpt", tiny_ckpt, "--colormap", "magma", "--seed", seed,
                   "--cue", "T", "-o", out)[0] == 0
        outs.append(load_rgb(out))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_recolor_with_a_mask_and_with_a_point(tiny_ckpt, tiny_photos, tmp_path, capsys) -> None:
    photo = load_rgb(tiny_photos[0])
    mask = torch.zeros_like(photo)
    mask[:, 10:30, 20:50] = 1.0
    save_rgb(mask, tmp_path / "mask.png")
    out = tmp_path / "m.jpg"
    code, _, err = run(capsys, "recolor", tiny_photos[0], "--ckpt", tiny_ckpt, "--mask", tmp_path / "mask.png",
                       "--color", "#c0392b", "--keep-texture", "-o", out)
    assert code == 0, err
    assert load_rgb(out).shape == photo.shape
    swatch = load_rgb(palette_path(out))
    # The requested color is drawn on the right of the swatch figure.
    target = torch.tensor([0xC0, 0x39, 0x2B]) / 255
    assert ((swatch - target[:, None, None]).abs().amax(0) < 1e-6).any()
    # Pasted back: far from the region every pixel is the photo's (PNG keeps them exact); inside, the rendering.
    code, _, err = run(capsys, "recolor", tiny_photos[0], "--ckpt", tiny_ckpt, "--mask", tmp_path / "mask.png",
                       "--color", "#c0392b", "-o", tmp_path / "m.png")
    assert code == 0, err
    result = load_rgb(tmp_path / "m.png")
    far = torch.ones(photo.shape[-2:], dtype=torch.bool)
    far[10 - 4:30 + 4, 20 - 4:50 + 4] = False
    assert torch.equal(result[:, far], photo[:, far])
    assert not torch.equal(result[:, 12:28, 22:48], photo[:, 12:28, 22:48])
    code, _, err = run(capsys, "recolor", tiny_photos[0], "--ckpt", tiny_ckpt, "--mask", tmp_path / "mask.png",
                       "--color", "#c0392b", "--whole-image", "-o", tmp_path / "w.png")
    assert code == 0, err
    assert not torch.equal(load_rgb(tmp_path / "w.png")[:, far], photo[:, far])
    code, _, err = run(capsys, "recolor", tiny_photos[0], "--ckpt", tiny_ckpt, "--point", "35,20",
                       "--color", "#2e86c1", "--sampler", "ddim", "--steps", "3", "-o", tmp_path / "p.png")
    assert code == 0, err
    point = load_rgb(tmp_path / "p.png")
    assert point.shape == photo.shape
    changed = (point != photo).any(0)
    assert changed.any() and not changed.all(), "only the superpixel under the point (and its edge) changes"


def test_save_hint_and_sampling_options(tiny_ckpt, tiny_photos, tmp_path, capsys) -> None:
    photo = load_rgb(tiny_photos[0])
    common = ["transfer", tiny_photos[0], "--ckpt", tiny_ckpt, "--palette", "#264653,#e9c46a,#e76f51", "-n", "3",
              "--sampler", "ddim", "--steps", "4"]
    code, stdout, err = run(capsys, *common, "--save-hint", "-o", tmp_path / "a.png")
    assert code == 0, err
    hint = load_rgb(hint_path(tmp_path / "a.png"))
    # The model's color input: the photo quantized to 3 colors and moved onto exactly the requested ones.
    assert hint.shape == photo.shape and f"wrote {hint_path(tmp_path / 'a.png')}" in stdout
    colors = {tuple(round(float(v) * 255) for v in c) for c in hint.reshape(3, -1).t()}
    assert colors <= {(0x26, 0x46, 0x53), (0xE9, 0xC4, 0x6A), (0xE7, 0x6F, 0x51)} and len(colors) >= 2
    # SDEdit start and guidance reach the sampler: each changes the result; without --save-hint no hint file.
    outs = {}
    for name, extra in (("base", []), ("start", ["--start-step", "2"]), ("guided", ["--guidance", "3"])):
        assert run(capsys, *common, *extra, "-o", tmp_path / f"{name}.png")[0] == 0
        outs[name] = load_rgb(tmp_path / f"{name}.png")
    assert not hint_path(tmp_path / "base.png").exists()
    assert not torch.equal(outs["base"], outs["start"]) and not torch.equal(outs["base"], outs["guided"])
    code, _, err = run(capsys, "recolor", tiny_photos[0], "--ckpt", tiny_ckpt, "--point", "35,20", "--color",
                       "#c0392b", "--sampler", "ddim", "--steps", "2", "--save-hint", "-o", tmp_path / "r.png")
    assert code == 0, err
    assert ((load_rgb(hint_path(tmp_path / "r.png")) - torch.tensor([0xC0, 0x39, 0x2B]).view(3, 1, 1) / 255)
            .abs().amax(0) < 1e-6).any(), "the filled region carries the requested color"


def test_post_l_takes_the_photos_lightness(tiny_ckpt, tiny_photos, tmp_path, capsys) -> None:
    from dequant.color.colorspace import rgb_to_lab
    from dequant.color.edits import post_l

    photo = load_rgb(tiny_photos[0])
    # At the training size: at the photo's own size the untrained tiny model's colors leave the sRGB gamut more
    # often, so more pixels clip after the L swap and the "most pixels keep L" medians below stop holding.
    common = ["--ckpt", tiny_ckpt, "--sampler", "ddim", "--steps", "2", "--resolution", "train"]
    transfer = ["transfer", tiny_photos[0], "--palette", "#264653,#e9c46a,#e76f51", "-n", "3", *common]
    for name, extra in (("plain", []), ("post", ["--post-L"])):
        assert run(capsys, *transfer, *extra, "-o", tmp_path / f"t_{name}.png")[0] == 0
    plain, post = load_rgb(tmp_path / "t_plain.png"), load_rgb(tmp_path / "t_post.png")
    # The same sample (no resampling), its L replaced by the photo's at the photo's size; 8-bit PNG rounding aside.
    assert (post - post_l(plain, photo)).abs().max() < 3 / 255
    # Out-of-gamut colors of the untrained model clip on the way back to sRGB: most pixels, not all, keep L exactly.
    assert (rgb_to_lab(post)[0] - rgb_to_lab(photo)[0]).abs().median() < 0.5
    assert (rgb_to_lab(plain)[0] - rgb_to_lab(photo)[0]).abs().median() > 2
    # Recolor: only inside the region, with or without --whole-image.
    mask = torch.zeros_like(photo)
    mask[:, 10:30, 20:50] = 1.0
    save_rgb(mask, tmp_path / "mask.png")
    recolor = ["recolor", tiny_photos[0], "--mask", tmp_path / "mask.png", "--color", "#c0392b", *common]
    for name, extra in (("plain", ["--whole-image"]), ("post", ["--whole-image", "--post-L"]), ("paste", ["--post-L"])):
        assert run(capsys, *recolor, *extra, "-o", tmp_path / f"r_{name}.png")[0] == 0
    plain, post, paste = (load_rgb(tmp_path / f"r_{n}.png") for n in ("plain", "post", "paste"))
    far = torch.ones(photo.shape[-2:], dtype=torch.bool)
    far[10 - 4:30 + 4, 20 - 4:50 + 4] = False
    assert torch.equal(post[:, far], plain[:, far]) and torch.equal(paste[:, far], photo[:, far])
    inside = (slice(None), slice(12, 28), slice(22, 48))
    for image in (post, paste):
        assert (rgb_to_lab(image)[inside][0] - rgb_to_lab(photo)[inside][0]).abs().median() < 0.5
    assert (rgb_to_lab(plain)[inside][0] - rgb_to_lab(photo)[inside][0]).abs().median() > 2


def test_demo_figure_from_a_trained_run(tiny_run, tiny_photos, tmp_path, capsys) -> None:
    import json
    import shutil

    from dequant.demo import main as demo_main

    # The tiny run with a split of the downsized photos: the model renders at the photo's own size, and the shipped
    # photos (up to 512 px) made this the slowest test; the pictures are 160 px high whatever the photo's size.
    run = tmp_path / "run"
    for folder in ("checkpoints", "samples"):
        shutil.copytree(tiny_run / folder, run / folder)
    held_out, train_only = [str(p) for p in tiny_photos[:2]], [str(tiny_photos[2])]
    (run / "split.json").write_text(json.dumps({"train": train_only, "val": held_out[:1], "test": held_out[1:]}))
    docs = tmp_path / "docs"
    with torch.enable_grad():  # demo's main turns autograd off for the rest of its process; the tests go on after it
        assert demo_main(["--run", str(run), "--out", str(tmp_path), "-n", "4", "--docs", str(docs)]) == 0
    source = load_rgb(tiny_photos[0])  # the first held-out photo is the source of both pictures
    column = round(source.shape[-1] * 160 / source.shape[-2])  # each picture is 160 px high
    figure = load_rgb(tmp_path / "palette_transfer.png")
    assert figure.shape[-2] > 160 and 4 * column < figure.shape[-1] < 5 * column  # four labelled columns
    row = load_rgb(tmp_path / "dequantization.png")
    # N=4, 16, 64 inputs and outputs, and the photo
    assert row.shape[-2] > 160 and 7 * column < row.shape[-1] < 8 * column
    for name in ("palette_transfer_output.png", "palette_transfer_output.hint.png", "validation_grid.png",
                 "dequantization_N16.png", "dequantization_N16.hint.png"):
        assert (tmp_path / name).is_file(), name
    # The README's copies: the same pictures, 120 pixels high.
    for name, full in (("palette_transfer.png", figure), ("dequantization.png", row)):
        small = load_rgb(docs / name)
        assert small.shape[-2] == 120 and abs(small.shape[-1] - full.shape[-1] * 120 / full.shape[-2]) <= 1


def test_edit_from_an_exported_folder(tiny_export, tiny_photos, tmp_path, capsys) -> None:
    code, _, err = run(capsys, "transfer", tiny_photos[1], "--ckpt", tiny_export, "--colormap", "plasma",
                       "-o", tmp_path / "e.png")
    assert code == 0, err


def exit_code(argv: list) -> int:
    """main()'s return value, or the code of the SystemExit argparse raises for malformed arguments."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code)


def _foreign_checkpoints(tiny_ckpt: Path, tmp_path: Path) -> list[Path]:
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, plain)
    state = torch.load(tiny_ckpt, map_location="cpu", weights_only=False)
    state["dequant_config"]["module"]["net"]["block_out_channels"] = [8, 16]
    other = tmp_path / "other_arch.ckpt"
    torch.save(state, other)
    text = tmp_path / "text.ckpt"
    text.write_text("not a checkpoint")
    return [plain, other, text]


# Every bad input of dequant-edit: the arguments and the one line it prints on stderr, word for word ({tmp}: the test's
# folder, {photo}: a 72x48 photo, {ckpt}: the tiny checkpoint). A compiled pattern instead of a line: the line must
# match it whole (only where the line quotes a message of torch's that names the model's sizes). docs/robustness.md
# quotes these lines; test_the_documented_edit_errors_are_these names any it quotes that are not here.
_CK = ["--ckpt", "{ckpt}"]
EDIT_ERRORS: dict[str, tuple[list[str], str | re.Pattern]] = {
    "unreadable photo": (["transfer", "{tmp}/broken.jpg", *_CK, "--colormap", "viridis"],
                         "dequant-edit transfer: error: PHOTO {tmp}/broken.jpg: cannot read the image "
                         "(UnidentifiedImageError: cannot identify image file '{tmp}/broken.jpg')"),
    "missing photo": (["recolor", "{tmp}/nope.png", *_CK, "--point", "1,1", "--color", "#fff"],
                      "dequant-edit recolor: error: PHOTO {tmp}/nope.png: cannot read the image (no such file)"),
    "malformed hex palette": (["transfer", "{photo}", *_CK, "--palette", "#264653,#12345g"],
                              "dequant-edit transfer: error: --palette: malformed hex color '#12345g' (expected "
                              "#RRGGBB or #RGB)"),
    "malformed hex color": (["recolor", "{photo}", *_CK, "--point", "1,1", "--color", "red"],
                            "dequant-edit recolor: error: --color: malformed hex color 'red' (expected #RRGGBB or "
                            "#RGB)"),
    "two colors": (["recolor", "{photo}", *_CK, "--point", "1,1", "--color", "#fff,#000"],
                   "dequant-edit recolor: error: --color must be one hex color, got 2: '#fff,#000'"),
    "unknown cue": (["transfer", "{photo}", *_CK, "--colormap", "viridis", "--cue", "Q"],
                    "dequant-edit transfer: error: argument --cue: invalid choice: 'Q' (choose from 'T', 'G', 'L', "
                    "'none')"),
    "unknown score": (["transfer", "{photo}", *_CK, "--colormap", "viridis", "--score", "x"],
                      "dequant-edit transfer: error: argument --score: invalid choice: 'x' (choose from 'color', "
                      "'neg', 'freq', 'int', 'cmap')"),
    "unknown colormap": (["transfer", "{photo}", *_CK, "--colormap", "no_such_map"],
                         "dequant-edit transfer: error: --colormap 'no_such_map': not a matplotlib colormap"),
    "unreadable palette image": (["transfer", "{photo}", *_CK, "--palette-from", "{tmp}/broken.jpg"],
                                 "dequant-edit transfer: error: --palette-from {tmp}/broken.jpg: cannot read the "
                                 "image (UnidentifiedImageError: cannot identify image file '{tmp}/broken.jpg')"),
    "mask of another size": (["recolor", "{photo}", *_CK, "--mask", "{tmp}/small_mask.png", "--color", "#fff"],
                             "dequant-edit recolor: error: --mask {tmp}/small_mask.png: size 8x8 differs from the "
                             "photo's 72x48"),
    "empty mask": (["recolor", "{photo}", *_CK, "--mask", "{tmp}/black_mask.png", "--color", "#fff"],
                   "dequant-edit recolor: error: --mask {tmp}/black_mask.png: the mask is empty (no pixel brighter "
                   "than 50% gray)"),
    "point outside": (["recolor", "{photo}", *_CK, "--point", "72,3", "--color", "#fff"],
                      "dequant-edit recolor: error: --point 72,3 lies outside the photo (72x48: X in [0, 71], Y in "
                      "[0, 47])"),
    "negative point": (["recolor", "{photo}", *_CK, "--point=-1,3", "--color", "#fff"],
                       "dequant-edit recolor: error: --point -1,3 lies outside the photo (72x48: X in [0, 71], Y in "
                       "[0, 47])"),
    "malformed point": (["recolor", "{photo}", *_CK, "--point", "3", "--color", "#fff"],
                        "dequant-edit recolor: error: argument --point: expected X,Y in integer pixels, got '3'"),
    "foreign checkpoint": (["transfer", "{photo}", "--ckpt", "{tmp}/plain.ckpt", "--colormap", "viridis"],
                           "dequant-edit transfer: error: --ckpt {tmp}/plain.ckpt: not a usable dequant model (path "
                           "'{tmp}/plain.ckpt' carries no dequant config: it was not written by dequant)"),
    "another architecture": (["transfer", "{photo}", "--ckpt", "{tmp}/other_arch.ckpt", "--colormap", "viridis"],
                             re.compile(re.escape(
                                 "dequant-edit transfer: error: --ckpt {tmp}/other_arch.ckpt: not a usable dequant "
                                 "model (checkpoint '{tmp}/other_arch.ckpt' weights do not fit the rebuilt module: "
                                 "Error(s) in loading state_dict for DequantModule: size mismatch for "
                                 "net.unet.conv_in.weight: copying a param with shape torch.Size(") + r".*")),
    "not a checkpoint": (["transfer", "{photo}", "--ckpt", "{tmp}/text.ckpt", "--colormap", "viridis"],
                         "dequant-edit transfer: error: --ckpt {tmp}/text.ckpt: not a usable dequant model (path "
                         "'{tmp}/text.ckpt' is not a readable checkpoint (RuntimeError))"),
    "missing checkpoint": (["transfer", "{photo}", "--ckpt", "{tmp}/none.ckpt", "--colormap", "viridis"],
                           "dequant-edit transfer: error: --ckpt '{tmp}/none.ckpt' names no file or folder and is "
                           "not 'pretrained' (the shipped model): pass a checkpoint from train.py, a dequant-export "
                           "folder, or leave it out"),
    "cue of another checkpoint": (["transfer", "{photo}", *_CK, "--cue", "L", "--colormap", "viridis"],
                                  "dequant-edit transfer: error: --cue L: the checkpoint was trained with the 'T' "
                                  "texture cue (pass --cue T or leave --cue out)"),
    "steps the sampler refuses": (["transfer", "{photo}", *_CK, "--colormap", "viridis", "--sampler", "ddpm_super27",
                                   "--steps", "5"],
                                  "dequant-edit transfer: error: --sampler/--steps/--start-step/--guidance: steps "
                                  "must be 27 for the ddpm_super27 sampler, got 5"),
    "start step past the steps": (["transfer", "{photo}", *_CK, "--colormap", "viridis", "--sampler", "ddim",
                                   "--steps", "4", "--start-step", "4"],
                                  "dequant-edit transfer: error: --sampler/--steps/--start-step/--guidance: "
                                  "start_step must lie in [0, steps=4), got 4"),
    "negative start step": (["transfer", "{photo}", *_CK, "--colormap", "viridis", "--start-step=-1"],
                            "dequant-edit transfer: error: argument --start-step: expected a non-negative integer, "
                            "got -1"),
    "negative guidance": (["recolor", "{photo}", *_CK, "--point", "1,1", "--color", "#fff", "--guidance=-1"],
                          "dequant-edit recolor: error: --sampler/--steps/--start-step/--guidance: guidance must be "
                          ">= 0, got -1.0"),
    "too many colors": (["quantize", "{photo}", "-n", "300"],
                        "dequant-edit quantize: error: -n must be at most 256, got 300"),
    "zero colors": (["quantize", "{photo}", "-n", "0"],
                    "dequant-edit quantize: error: argument -n/--colors: expected a positive integer, got 0"),
    "two targets": (["transfer", "{photo}", *_CK, "--colormap", "viridis", "--palette", "#fff"],
                    "dequant-edit transfer: error: argument --palette: not allowed with argument --colormap"),
    "no target": (["transfer", "{photo}", *_CK],
                  "dequant-edit transfer: error: one of the arguments --palette --palette-from --colormap is "
                  "required"),
    "unknown resolution": (["transfer", "{photo}", *_CK, "--colormap", "viridis", "--resolution", "full"],
                           "dequant-edit transfer: error: argument --resolution: invalid choice: 'full' (choose "
                           "from 'native', 'train')"),
    "tile off the unet's multiple": (["transfer", "{photo}", *_CK, "--colormap", "viridis", "--tile", "15"],
                                     "dequant-edit transfer: error: --tile 15: must be a multiple of the model's "
                                     "downsampling factor 2"),
    "zero tile": (["recolor", "{photo}", *_CK, "--point", "1,1", "--color", "#fff", "--tile", "0"],
                  "dequant-edit recolor: error: argument --tile: expected a positive integer, got 0"),
    "max side at train resolution": (["transfer", "{photo}", *_CK, "--colormap", "viridis", "--resolution",
                                      "train", "--max-side", "512"],
                                     "dequant-edit transfer: error: --max-side only applies to --resolution native, "
                                     "got --resolution train"),
    "zero max side": (["transfer", "{photo}", *_CK, "--colormap", "viridis", "--max-side", "0"],
                      "dequant-edit transfer: error: argument --max-side: expected a positive integer, got 0"),
    "typo in an option": (["quantize", "{photo}", "--colours", "4"],
                          "dequant-edit: error: unrecognized arguments: --colours 4"),
    "output folder under a file": (["quantize", "{photo}", "-o", "{tmp}/blocker/out/q.png"],
                                   "dequant-edit quantize: error: -o '{tmp}/blocker/out/q.png': folder "
                                   "'{tmp}/blocker/out' cannot be made: '{tmp}/blocker' is a file"),
    "output format": (["quantize", "{photo}", "-o", "{tmp}/out/q.gif"],
                      "dequant-edit quantize: error: -o must end in one of ['.png', '.jpg', '.jpeg', '.bmp', '.webp', "
                      "'.tif', '.tiff'], got '{tmp}/out/q.gif'"),
}


@pytest.fixture(scope="module")
def bad_inputs(tiny_ckpt: Path, tiny_photos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The files the bad-input cases name: a 72x48 photo, a broken JPEG, masks, foreign checkpoints."""
    tmp = tmp_path_factory.mktemp("edit_bad_input")
    photo = tiny_photos[0]
    (tmp / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (tmp / "blocker").write_text("a file, not a folder")
    save_rgb(torch.ones(3, 8, 8), tmp / "small_mask.png")
    save_rgb(torch.zeros_like(load_rgb(photo)), tmp / "black_mask.png")
    for path in _foreign_checkpoints(tiny_ckpt, tmp):
        assert path.parent == tmp
    return {"tmp": tmp, "photo": photo, "ckpt": tiny_ckpt}


@pytest.mark.parametrize("case", list(EDIT_ERRORS))
def test_every_bad_input_is_its_one_line_exit_2_and_writes_nothing(case: str, bad_inputs: dict[str, Path],
                                                                   capsys) -> None:
    argv, expected = EDIT_ERRORS[case]
    argv = [a.format(**bad_inputs) for a in argv]
    out = bad_inputs["tmp"] / "out" / f"{case.replace(' ', '_')}.png"
    if "-o" not in argv:
        argv += ["-o", str(out)]
    code = exit_code(argv)
    _, err = capsys.readouterr()
    assert code == 2
    line = err.strip()
    if isinstance(expected, re.Pattern):
        pattern = re.compile(expected.pattern.replace(re.escape("{tmp}"), re.escape(str(bad_inputs["tmp"]))))
        assert pattern.fullmatch(line), line
    else:
        assert line == expected.format(**bad_inputs)
    written = bad_inputs["tmp"] / "out"
    assert not written.exists() or not any(written.iterdir()), sorted(written.iterdir())
    assert not (bad_inputs["tmp"] / "blocker").is_dir()


def _documented_edit_errors() -> list[str]:
    """The `error: ...` lines that docs/robustness.md quotes for dequant-edit (its Bad input table, `edit` rows)."""
    found = []
    for row in (ROOT / "docs" / "robustness.md").read_text().splitlines():
        cells = [c.strip() for c in row.split("|")]
        if len(cells) > 3 and "edit" in cells[2].split(" / "):
            found += [m for m in re.findall(r"`([^`]*)`", cells[3]) if re.match(r"(dequant-edit[^:]*: )?error: ", m)]
    return found


def _doc_pattern(message: str) -> re.Pattern:
    """A documented line as a pattern: `<...>` stands for a value, `...` for elided words; a line quoted from
    `error:` on stands for any `dequant-edit <command>: error: ...`."""
    parts = re.split(r"(<[^>]+>|\.\.\.)", message)
    body = "".join(".+?" if p.startswith("<") else ".*" if p == "..." else re.escape(p) for p in parts)
    return re.compile(body if message.startswith("dequant-edit") else r"dequant-edit \w+: " + body)


def test_the_documented_edit_errors_are_these(bad_inputs: dict[str, Path]) -> None:
    """Every dequant-edit error line docs/robustness.md quotes is one that the test above asserts."""
    documented = _documented_edit_errors()
    assert len(documented) >= 12, documented  # the table was read
    tested = [e.format(**bad_inputs) if isinstance(e, str) else e.pattern for _, e in EDIT_ERRORS.values()]
    orphans = [m for m in documented if not any(_doc_pattern(m).fullmatch(line) for line in tested)]
    assert orphans == [], f"docs/robustness.md quotes dequant-edit errors no test asserts: {orphans}"


def test_console_script_and_module_entry_points(tiny_photos, tmp_path, capsys) -> None:
    out = tmp_path / "s.png"
    proc = subprocess.run([sys.executable, "-m", "dequant.edit", "quantize", str(tiny_photos[2]), "-n", "4",
                           "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and np.asarray(load_rgb(out)).shape == (3, 40, 40)
    # The help text comes from the same parser whichever way dequant-edit starts: no second process for it.
    with pytest.raises(SystemExit) as done:
        main(["transfer", "--help"])
    help_text = capsys.readouterr().out
    assert done.value.code == 0 and "bicubic" in " ".join(help_text.split()) and "--palette-from" in help_text
