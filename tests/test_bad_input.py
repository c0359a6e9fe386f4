"""Bad-input audit (issue 6 item 4): every bad input through train, evaluate, dequant-edit and the library.

One parametrized test per case; each parameter is an entry point and asserts the exact kind of error (type and a
message fragment naming the input) or the documented recovery. Cases that other test files already assert the same
way are not repeated here (the table in docs/robustness.md names the test that backs them). Every row of
that table ("Bad input") is backed by a parameter below or by that named test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException

from dequant.config import conf_dir
from dequant.data.io import ImageLoadError, load_rgb
from dequant.edit import main as edit_main
from dequant.edit import palette_path
from dequant.evaluation.runner import evaluate
from dequant.training import train

ROOT = Path(__file__).resolve().parents[1]
BAD_FILES = ("corrupt_jpeg", "truncated_png", "zero_byte")
ODD_FILES = ("grayscale", "rgba", "png16", "one_pixel", "smaller_than_crop")
# The reason load_rgb gives for each unreadable file (it is in every message the user sees).
BAD_REASONS = {"corrupt_jpeg": "cannot identify image file", "truncated_png": "truncated",
               "zero_byte": "the file is empty (0 bytes)"}
FILE_NAMES = {"corrupt_jpeg": "corrupt.jpg", "truncated_png": "truncated.png", "zero_byte": "zero.png",
              "grayscale": "gray.png", "rgba": "rgba.png", "png16": "deep16.png", "one_pixel": "one.png",
              "smaller_than_crop": "small.png"}


# ------------------------------------------------------------------------------------------------- helpers


def compose_cfg(name: str, *overrides: str):
    """Compose `conf/<name>.yaml` with overrides, as the entry point would."""
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def train_cfg(run_dir: Path, data_paths: str | Path, *overrides: str):
    """The tiny experiment for one fast_dev_run step on `data_paths`, no logger."""
    return compose_cfg("train", "experiment=tiny", f"paths.run_dir={run_dir}", f"data.paths={data_paths}",
                       "sampler=ddim", "sampler.steps=2", "+trainer.fast_dev_run=true", "logger=none",
                       "trainer.enable_progress_bar=false", *overrides)


def eval_cfg(run_dir: Path, ckpt: Path, paths: list[Path] | str, *overrides: str):
    """evaluate.py's config on explicit images, test r only, no baselines or grids."""
    listed = paths if isinstance(paths, str) else "[" + ",".join(str(p) for p in paths) + "]"
    return compose_cfg("evaluate", f"ckpt_path={ckpt}", f"paths.run_dir={run_dir}", f"data.paths={listed}",
                       "progress=false", "baselines=none", "tests=r", "grid_images=0", *overrides)


def edit(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    """dequant-edit's exit code (main's return or argparse's SystemExit), stdout and stderr."""
    try:
        code = edit_main([str(a) for a in argv])
    except SystemExit as exc:
        code = int(exc.code)
    out, err = capsys.readouterr()
    return code, out, err


def assert_edit_error(result: tuple[int, str, str], *fragments: str, outputs: tuple[Path, ...] = ()) -> None:
    """Exit 2, exactly one `dequant-edit ...: error: ...` line on stderr holding every fragment, nothing written."""
    code, _, err = result
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("dequant-edit") and "error:" in lines[0], err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    for out in outputs:
        assert not out.exists() and not palette_path(out).exists(), out


def writable_by_us(folder: Path) -> bool:
    """Whether permission bits stop this process (they do not stop root)."""
    return os.access(folder, os.W_OK)


# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def files(tiny_photos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every bad and odd image file of the audit, made from a downsized shipped photo (48x72)."""
    folder = tmp_path_factory.mktemp("bad_input_files")
    photo = load_rgb(tiny_photos[0])
    rgb8 = (photo.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    good_png = tiny_photos[0].read_bytes()
    out = {k: folder / v for k, v in FILE_NAMES.items()}
    out["corrupt_jpeg"].write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)  # JPEG magic, garbage after it
    out["truncated_png"].write_bytes(good_png[: len(good_png) // 2])
    out["zero_byte"].write_bytes(b"")
    Image.fromarray(rgb8[..., 1]).save(out["grayscale"])
    alpha = np.full(rgb8.shape[:2] + (1,), 128, np.uint8)
    Image.fromarray(np.concatenate([rgb8, alpha], axis=2)).save(out["rgba"])
    cv2.imwrite(str(out["png16"]), (rgb8.astype(np.uint16) * 257)[..., ::-1])  # 48-bit PNG (OpenCV is BGR)
    Image.fromarray(rgb8[:1, :1]).save(out["one_pixel"])
    Image.fromarray(rgb8[:12, :20]).save(out["smaller_than_crop"])  # the tiny experiment crops 32x32
    return out


@pytest.fixture(scope="module")
def mixed_training(files: dict[str, Path], tiny_photos: list[Path],
                   tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[str], Path]:
    """One training step whose single batch draws every image of a folder holding good, odd and unreadable files.

    All images are training images (n_val = n_test = 0) and the batch is the whole epoch, so every file is loaded.
    """
    base = tmp_path_factory.mktemp("mixed_training")
    folder = base / "images"
    folder.mkdir()
    for p in [*tiny_photos, *files.values()]:
        (folder / p.name).write_bytes(p.read_bytes())
    n = len(list(folder.iterdir()))
    cfg = train_cfg(base / "run", folder, "data.n_val=0", "data.n_test=0", f"data.batch_size={n}",
                    f"data.samples_per_epoch={n}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(cfg)
    return result, [str(w.message) for w in caught], folder


@pytest.fixture(scope="module")
def odd_evaluation(files: dict[str, Path], tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """evaluate() (test r) on the odd-format images; image ids are positions in the sorted file list."""
    paths = sorted(files[k] for k in ODD_FILES)
    result = evaluate(eval_cfg(tmp_path_factory.mktemp("odd_eval"), tiny_ckpt, paths))
    result["ids"] = {p: i for i, p in enumerate(paths)}
    return result


@pytest.fixture
def under_a_file(tmp_path: Path) -> Path:
    """A regular file; `<it>/out` is unwritable for every user, root included."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    return blocker


# ------------------------------------------------------------------------------------------------- image files


@pytest.mark.parametrize("kind", BAD_FILES)
@pytest.mark.parametrize("where", ["train_mixed", "train_only_bad", "evaluate", "edit"])
def test_unreadable_image_file(where: str, kind: str, files, mixed_training, tiny_ckpt, tmp_path, capsys) -> None:
    bad = files[kind]
    if where == "train_mixed":  # recovery: warned once by name, another training image is used, training goes on
        result, messages, folder = mixed_training
        about = [m for m in messages if bad.name in m]
        assert len(about) == 1 and "skipping unreadable train image" in about[0], messages
        assert BAD_REASONS[kind] in about[0] and result["global_step"] == 1
    elif where == "train_only_bad":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(ValueError, match=rf"none of the 1 train images can be loaded \(first: .*{bad.name}: ") \
                    as info:
                train(train_cfg(tmp_path / "run", bad))
        assert BAD_REASONS[kind] in str(info.value)
        assert not (tmp_path / "run" / "checkpoints").exists()
    elif where == "evaluate":  # ImageLoadError is a ValueError: evaluate.py prints it on one line, exit 2
        with pytest.raises(ImageLoadError, match=re.escape(str(bad))) as info:
            evaluate(eval_cfg(tmp_path / "ev", tiny_ckpt, [files["grayscale"], bad]))
        assert BAD_REASONS[kind] in str(info.value)
        assert not (tmp_path / "ev" / "metrics.csv").exists()
    else:
        out = tmp_path / "q.png"
        assert_edit_error(edit(capsys, "quantize", bad, "-o", out), f"PHOTO {bad}", "cannot read the image",
                          BAD_REASONS[kind], outputs=(out,))


@pytest.mark.parametrize("where, kind", [
    *((w, k) for w in ("train", "evaluate", "edit_quantize") for k in ODD_FILES),
    # The model path only differs for sizes (formats are decoded before it, as edit_quantize shows).
    ("edit_transfer", "one_pixel"), ("edit_transfer", "smaller_than_crop"),
])
def test_odd_image_is_converted(where: str, kind: str, files, mixed_training, odd_evaluation, tiny_ckpt, tmp_path,
                                capsys) -> None:
    path = files[kind]
    height, width = load_rgb(path).shape[-2:]
    if where == "train":  # loaded without a warning (so it was used: the batch is the whole training set)
        result, messages, _ = mixed_training
        assert result["global_step"] == 1 and not [m for m in messages if path.name in m]
        assert path.name in (Path(result["run_dir"]) / "split.json").read_text()
    elif where == "evaluate":
        image_id = odd_evaluation["ids"][path]
        rows = [r for r in odd_evaluation["per_image"] if r["image_id"] == image_id]
        assert rows and all(np.isfinite(v) for r in rows for k, v in r.items() if isinstance(v, float))
    elif where == "edit_quantize":
        out = tmp_path / "q.png"
        code, _, err = edit(capsys, "quantize", path, "-n", "8", "-o", out)
        assert code == 0, err
        assert load_rgb(out).shape == (3, height, width)
    else:
        out = tmp_path / "t.png"
        code, _, err = edit(capsys, "transfer", path, "--ckpt", tiny_ckpt, "--colormap", "viridis", "-o", out)
        assert code == 0, err
        assert load_rgb(out).shape == (3, height, width)


# ------------------------------------------------------------------------------------------------- paths


@pytest.mark.parametrize("where, entry", [
    ("train", "missing_folder"),  # the empty glob through train() is tests/test_train.py::test_empty_glob_...
    ("evaluate", "empty_glob"),
    ("evaluate", "missing_folder"),
    ("edit", "empty_glob"),
])
def test_empty_glob_or_missing_folder(where: str, entry: str, tiny_ckpt, tmp_path, capsys) -> None:
    target = str(tmp_path / "nothing" / "*.png") if entry == "empty_glob" else str(tmp_path / "nowhere")
    expected = "the glob pattern matches no image files" if entry == "empty_glob" else "no such file or folder"
    if where == "train":
        with pytest.raises(ValueError, match=f"paths entry '{re.escape(target)}': {expected}"):
            train(train_cfg(tmp_path / "run", target))
        assert not (tmp_path / "run" / "checkpoints").exists()
    elif where == "evaluate":
        with pytest.raises(ValueError, match=f"paths entry '{re.escape(target)}': {expected}"):
            evaluate(eval_cfg(tmp_path / "ev", tiny_ckpt, f"'{target}'"))
        assert not (tmp_path / "ev").exists()
    else:  # PHOTO is one file: a glob is not expanded
        out = tmp_path / "q.png"
        assert_edit_error(edit(capsys, "quantize", target, "-o", out), f"PHOTO {target}", "no such file",
                          outputs=(out,))


# ------------------------------------------------------------------------------------------------- n_colors


@pytest.mark.parametrize("where, n", [
    ("library", 0), ("library", "more_than_pixels"), ("train", 0), ("train", 300), ("edit", 0),
    ("edit", "more_than_pixels"),
])
def test_n_colors(where: str, n, files, tmp_path, capsys) -> None:
    from dequant.color.quantize import quantize

    if where == "library":
        image = torch.rand(3, 2, 2, generator=torch.Generator().manual_seed(0))
        if n == 0:
            with pytest.raises(ValueError, match="n_colors"):
                quantize(image, 0)
        else:  # documented: fewer distinct colors than n_colors -> fewer colors
            q = quantize(image, 16)
            assert 1 <= q.palette.shape[0] <= 4 and q.image.shape == image.shape
    elif where == "train":
        with pytest.raises(InstantiationException, match=rf"n must be an int in \[1, 256\], got {n}") as info:
            train(train_cfg(tmp_path / "run", files["grayscale"], "palette=fixed_4", f"palette.n={n}"))
        assert "data.example.palette_sizes" in str(info.value) and isinstance(info.value.__cause__, ValueError)
    elif n == 0:
        out = tmp_path / "q.png"
        assert_edit_error(edit(capsys, "quantize", files["grayscale"], "-n", "0", "-o", out), "-n/--colors",
                          "got 0", outputs=(out,))
    else:  # a 1x1 photo asked for 200 colors: one color, exit 0
        out = tmp_path / "q.png"
        code, stdout, err = edit(capsys, "quantize", files["one_pixel"], "-n", "200", "-o", out)
        assert code == 0, err
        assert len(re.findall(r"^#[0-9a-f]{6}\s+[\d.]+%$", stdout, flags=re.M)) == 1
        assert load_rgb(out).shape == (3, 1, 1)


# ------------------------------------------------------------------------------------------------- choices


@pytest.mark.parametrize("where, what", [
    ("library", "cue"), ("library", "score"), ("library", "colormap"),
    ("train", "cue"), ("train", "quantizer"), ("evaluate", "score"),
    ("edit", "cue"), ("edit", "score"), ("edit", "colormap"),
])
def test_unknown_choice(where: str, what: str, files, tiny_ckpt, tmp_path, capsys) -> None:
    from dequant.color.cues import texture_cue
    from dequant.color.matching import colormap_palette, match_palettes

    if where == "library":
        palette = torch.rand(3, 3, generator=torch.Generator().manual_seed(0))
        call = {"cue": lambda: texture_cue(torch.rand(3, 8, 8), mode="Q"),
                "score": lambda: match_palettes(palette, palette, score="bogus"),
                "colormap": lambda: colormap_palette("no_such_map", 4)}[what]
        fragment = {"cue": "mode must be one of", "score": "score must be one of", "colormap": "no_such_map"}[what]
        with pytest.raises(ValueError, match=fragment):
            call()
    elif where == "train":
        override, target, fragment = {
            "cue": ("cond.mode=Q", "data.example.cue", "mode must be one of ['T', 'G', 'L', 'none'], got 'Q'"),
            "quantizer": ("quantizer.method=bogus", "data.example.quantizer", "method must be one of"),
        }[what]
        with pytest.raises(InstantiationException, match=re.escape(fragment)) as info:
            train(train_cfg(tmp_path / "run", files["grayscale"], override))
        assert target in str(info.value)
    elif where == "evaluate":  # the cue and the colormaps of evaluate.py come from the checkpoint / the test grid
        with pytest.raises(ValueError, match=re.escape("score must be one of ['color', 'neg', 'freq', 'int', "
                                                       "'cmap'], got 'bogus'")):
            evaluate(eval_cfg(tmp_path / "ev", tiny_ckpt, [files["grayscale"], files["rgba"]], "matching=color",
                              "matching.score=bogus", "tests=t"))
        assert not (tmp_path / "ev" / "metrics.csv").exists()
    else:
        out = tmp_path / "t.png"
        argv = {"cue": ["--colormap", "viridis", "--cue", "Q"], "score": ["--colormap", "viridis", "--score", "x"],
                "colormap": ["--colormap", "no_such_map"]}[what]
        fragments = {"cue": ("argument --cue: invalid choice: 'Q'",), "score": ("argument --score: invalid choice",),
                     "colormap": ("--colormap 'no_such_map'", "not a matplotlib colormap")}[what]
        assert_edit_error(edit(capsys, "transfer", files["grayscale"], "--ckpt", tiny_ckpt, *argv, "-o", out),
                          *fragments, outputs=(out,))


@pytest.mark.parametrize("where, flag, value", [
    ("library", None, "#12345g"), ("edit", "--palette", "#264653,#12345g"), ("edit", "--color", "#12"),
])
def test_malformed_hex_color(where: str, flag, value: str, files, tiny_ckpt, tmp_path, capsys) -> None:
    from dequant.color.matching import palette_from_hex

    bad = value.split(",")[-1]
    if where == "library":
        with pytest.raises(ValueError, match=f"malformed hex color '{bad}'"):
            palette_from_hex(value)
        return
    out = tmp_path / "e.png"
    photo = files["grayscale"]
    command = ["transfer", photo] if flag == "--palette" else ["recolor", photo, "--point", "1,1"]
    assert_edit_error(edit(capsys, *command, "--ckpt", tiny_ckpt, flag, value, "-o", out),
                      f"{flag}: malformed hex color '{bad}'", outputs=(out,))


# ------------------------------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def other_arch_ckpt(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with its config claiming another UNet width (the weights no longer fit)."""
    state = torch.load(tiny_ckpt, map_location="cpu", weights_only=False)
    state["dequant_config"]["module"]["net"]["block_out_channels"] = [8, 16]
    path = tmp_path_factory.mktemp("other_arch") / "other_arch.ckpt"
    torch.save(state, path)
    return path


def test_checkpoint_of_another_architecture_in_evaluate(other_arch_ckpt, files, tmp_path) -> None:
    # train() and dequant-edit refuse it too: tests/test_train.py::test_checkpoint_of_another_model_is_refused and
    # tests/test_edit.py::test_every_bad_input_is_one_line_exit_2_and_writes_nothing ("another architecture").
    with pytest.raises(ValueError, match=re.escape(f"checkpoint '{other_arch_ckpt}' weights do not fit the rebuilt")):
        evaluate(eval_cfg(tmp_path / "ev", other_arch_ckpt, [files["grayscale"]]))
    assert not (tmp_path / "ev" / "metrics.csv").exists()


def test_missing_pretrained_unet_path(files, tmp_path) -> None:
    with pytest.raises(InstantiationException, match="pretrained_path '/nonexistent' must be a local diffusers") \
            as info:
        train(train_cfg(tmp_path / "run", files["grayscale"], "model=controlnet", "model.pretrained_path=/nonexistent"))
    assert "nothing is downloaded" in str(info.value) and isinstance(info.value.__cause__, ValueError)
    assert not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("where", ["train", "evaluate", "edit"])
def test_unwritable_output_folder(where: str, under_a_file: Path, files, tiny_ckpt, tmp_path, capsys) -> None:
    target = under_a_file / "out"
    expected = f"'{target}' cannot be made: '{under_a_file}' is a file"
    if where == "train":  # fails at once, before any data is read
        with pytest.raises(ValueError, match=re.escape(f"paths.run_dir {expected}")):
            train(train_cfg(target, files["grayscale"]))
    elif where == "evaluate":  # before the model is loaded
        with pytest.raises(ValueError, match=re.escape(f"paths.run_dir {expected}")):
            evaluate(eval_cfg(target, tiny_ckpt, [files["grayscale"]], "data.image_size=16"))
    else:
        out = target / "q.png"
        assert_edit_error(edit(capsys, "quantize", files["grayscale"], "-o", out), "error: -o ", expected,
                          outputs=(out,))


@pytest.mark.parametrize("command", ["transfer", "recolor"])
def test_unwritable_output_is_refused_before_the_model_runs(command: str, under_a_file: Path, files, tmp_path,
                                                            capsys) -> None:
    # --ckpt points nowhere: had the model been loaded first, the error would be about the checkpoint instead.
    out = under_a_file / "out" / "t.png"
    extra = ["--palette", "#264653,#2a9d8f"] if command == "transfer" else ["--point", "1,1", "--color", "#c0392b"]
    assert_edit_error(edit(capsys, command, files["grayscale"], "--ckpt", tmp_path / "missing.ckpt", *extra,
                           "-o", out), "error: -o ", "is a file", outputs=(out,))


def test_read_only_folder_when_permissions_apply(tmp_path, files, capsys) -> None:
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if writable_by_us(folder):
            pytest.skip("running as root: permission bits do not stop writes (the under-a-file cases cover it)")
        out = folder / "q.png"
        assert_edit_error(edit(capsys, "quantize", files["grayscale"], "-o", out), str(folder), outputs=(out,))
    finally:
        folder.chmod(0o700)


def test_missing_output_folder_is_created(files, tmp_path, capsys) -> None:
    out = tmp_path / "new" / "deeper" / "q.png"
    code, _, err = edit(capsys, "quantize", files["grayscale"], "-n", "4", "-o", out)
    assert code == 0, err
    assert out.is_file() and palette_path(out).is_file()


# ------------------------------------------------------------------------------------------------- entry points


@pytest.mark.parametrize("case", ["target_value_error", "missing_folder", "unwritable_run_dir"])
def test_train_py_bad_input_is_one_line_exit_2(case: str, under_a_file: Path, tmp_path: Path, run_script) -> None:
    """train.py as `python train.py` runs it, in this process (run_script): the errors come from inside train();
    a separate train.py process answering bad input with exit 2 is tested in test_cluster.py."""
    run_dir = under_a_file / "out" if case == "unwritable_run_dir" else tmp_path / "run"
    extra = {"target_value_error": ["palette=fixed_4", "palette.n=0"],
             "missing_folder": [f"data.paths={tmp_path / 'nowhere'}"],
             "unwritable_run_dir": [f"paths.run_dir={run_dir}"]}[case]
    expected = {"target_value_error": "train.py: error: data.example.palette_sizes: n must be an int in [1, 256], "
                                      "got 0",
                "missing_folder": f"train.py: error: paths entry '{tmp_path / 'nowhere'}': no such file or folder",
                "unwritable_run_dir": f"train.py: error: paths.run_dir '{run_dir}' cannot be made: "
                                      f"'{under_a_file}' is a file"}[case]
    code, _, err = run_script("train.py", "experiment=tiny", f"hydra.run.dir={tmp_path / 'hydra'}", *extra)
    assert code == 2, err[-2000:]
    assert err.strip().splitlines()[-1] == expected
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_bug_keeps_its_traceback() -> None:
    from dequant.config import bad_input_message

    assert bad_input_message(RuntimeError("a bug")) is None
    assert bad_input_message(FloatingPointError("diverged")) is None
    wrapped = InstantiationException("Error in call to target 'x.Y':\nValueError('n bad')\nfull_key: data.n")
    wrapped.__cause__ = ValueError("n bad")
    assert bad_input_message(wrapped) == "data.n: n bad"
    other = InstantiationException("Error in call to target 'x.Y':\nKeyError('k')\nfull_key: data.n")
    other.__cause__ = KeyError("k")
    assert bad_input_message(other) is None


# ------------------------------------------------------------------------------------------------- CLI typos


@pytest.mark.parametrize("where", ["train.py", "evaluate.py", "dequant-edit"])
def test_override_typo(where: str, files, tiny_ckpt, tmp_path, capsys) -> None:
    if where == "dequant-edit":
        out = tmp_path / "q.png"
        assert_edit_error(edit(capsys, "quantize", files["grayscale"], "--colours", "4", "-o", out),
                          "unrecognized arguments: --colours", outputs=(out,))
        return
    # The command line itself matters here (Hydra's own error handling and exit status), hence a subprocess.
    typo = "trainer.max_stepz=3" if where == "train.py" else "data.max_imagez=1"
    extra = ["experiment=tiny"] if where == "train.py" else [f"ckpt_path={tiny_ckpt}"]
    proc = subprocess.run([sys.executable, where, *extra, typo, f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    key = typo.split("=")[0]
    assert f"Could not override '{key}'" in proc.stderr and f"+{key}" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_unknown_choice_message_names_the_group_and_its_choices() -> None:
    from dequant.config import unknown_choice_message

    conf = ROOT / "conf"
    assert unknown_choice_message(conf, ["formulation=foo"]) == (
        "formulation: 'foo' is not an option; choices: bridge, bridge_one_step, noise, residual")
    # A sweep names its bad value; known values, null, plain keys, deletions and Hydra's own groups pass.
    assert "'bad'" in unknown_choice_message(conf, ["-m", "formulation=noise,bad", "--cfg", "job"])
    assert unknown_choice_message(conf, ["formulation=bridge", "sampler=null", "module.lr=1", "~logger",
                                         "hydra/launcher=submitit_slurm", "+palette=authors"]) is None


@pytest.mark.parametrize(("where", "choice"), [("train.py", "formulation=diffusion"), ("evaluate.py", "sampler=euler")])
def test_unknown_choice_is_one_line_exit_2(where: str, choice: str, tiny_ckpt, tmp_path) -> None:
    extra = ["experiment=tiny"] if where == "train.py" else [f"ckpt_path={tiny_ckpt}"]
    proc = subprocess.run([sys.executable, where, *extra, choice, f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    group, value = choice.split("=")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"{where}: error: {group}: '{value}' is not an option; "
        f"choices: {', '.join(sorted(p.stem for p in (ROOT / 'conf' / group).glob('*.yaml')))}"]
    assert not (tmp_path / "run").exists()
