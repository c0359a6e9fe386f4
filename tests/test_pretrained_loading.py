"""The model shipped in the package (`dequant.models.pretrained`): used when no checkpoint is given, checked against
its SHA256SUMS first, and every way it or a `--ckpt` can be wrong is one line naming the file and the way out.

The shipped folder is stood in for by a tiny dequant-export with its SHA256SUMS, `pretrained_dir` pointed at it."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dequant.models import pretrained as pt

ADVICE = "reinstall dequant from a checkout with 'make install', or pass --ckpt <a checkpoint from train.py>"
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def _exactly(text: str) -> str:
    """A `pytest.raises(match=...)` pattern for the whole message, word for word."""
    return "^" + re.escape(text) + "$"


def _missing(path: Path, kind: str = "file", advice: str = ADVICE) -> str:
    return (f"the shipped model {kind} {path} is missing (a dequant wheel built without "
            f"src/dequant/assets/pretrained): {advice}")


def _nothing(value: str, what: str = "--ckpt") -> str:
    return (f"{what} {value!r} names no file or folder and is not 'pretrained' (the shipped model): pass a "
            "checkpoint from train.py, a dequant-export folder, or leave it out")


@pytest.fixture
def shipped(tiny_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the tiny export laid out as the shipped model (MODEL_CARD.md, SHA256SUMS); `pretrained_dir()`
    names it."""
    folder = tmp_path / "pretrained"
    shutil.copytree(tiny_export, folder)
    (folder / pt.MODEL_CARD).write_text("# a tiny test model\n")
    pt.write_sha256sums(folder)
    monkeypatch.setattr(pt, "pretrained_dir", lambda: folder)
    return folder


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_sha256sums_list_every_file_and_an_intact_folder_passes(shipped: Path) -> None:
    lines = (shipped / pt.SUMS_FILE).read_text().splitlines()
    listed = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in lines}
    files = {p.relative_to(shipped).as_posix() for p in shipped.rglob("*") if p.is_file()} - {pt.SUMS_FILE}
    assert set(listed) == files and {WEIGHTS, "unet/config.json", "dequant_config.json", pt.MODEL_CARD} <= files
    assert listed[WEIGHTS] == hashlib.sha256((shipped / WEIGHTS).read_bytes()).hexdigest()
    assert pt.verify_pretrained(shipped) == shipped == pt.verify_pretrained()
    assert pt.resolve_model(None) == pt.resolve_model("pretrained") == str(shipped)
    if shutil.which("sha256sum"):  # the file is what `sha256sum -c` reads
        check = subprocess.run(["sha256sum", "--quiet", "-c", pt.SUMS_FILE], cwd=shipped, capture_output=True,
                               text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr


def test_a_missing_shipped_file_names_it_and_the_way_out(shipped: Path) -> None:
    (shipped / WEIGHTS).unlink()
    with pytest.raises(ValueError, match=_exactly(_missing(shipped / WEIGHTS))):
        pt.verify_pretrained()
    (shipped / pt.SUMS_FILE).unlink()
    with pytest.raises(ValueError, match=_exactly(_missing(shipped / pt.SUMS_FILE))):
        pt.resolve_model(None)
    shutil.rmtree(shipped)
    with pytest.raises(ValueError, match=_exactly(_missing(shipped, "folder"))):
        pt.resolve_model("pretrained")
    # evaluate.py's key takes its value after `=`; a Python caller just passes another path.
    with pytest.raises(ValueError, match=_exactly(_missing(shipped, "folder", ADVICE.replace(
            "--ckpt ", "ckpt_path=")))):
        pt.resolve_model("pretrained", what="ckpt_path")


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_a_damaged_shipped_file_names_it_and_both_hashes(shipped: Path, damage: str) -> None:
    weights = shipped / WEIGHTS
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        _flip_a_byte(weights)
    actual = hashlib.sha256(weights.read_bytes()).hexdigest()
    message = (f"the shipped model file {weights} is damaged (sha256 {actual[:16]}…, expected {expected[:16]}…): "
               f"{ADVICE}")
    with pytest.raises(ValueError, match=_exactly(message)):
        pt.verify_pretrained()


def test_a_malformed_sums_file_is_damaged(shipped: Path) -> None:
    sums = shipped / pt.SUMS_FILE
    sums.write_text(sums.read_text() + "0" * 64 + "  ../outside.txt\n")
    with pytest.raises(ValueError, match=re.escape(f"the shipped model file {sums} is damaged (line ")):
        pt.verify_pretrained()
    sums.write_text("".join(line + "\n" for line in sums.read_text().splitlines() if WEIGHTS not in line
                            and "outside" not in line))
    with pytest.raises(ValueError, match=re.escape(f"is damaged (it does not list {WEIGHTS})")):
        pt.verify_pretrained()


def test_a_path_that_names_nothing_is_refused_word_for_word(tmp_path: Path) -> None:
    missing = str(tmp_path / "none.ckpt")
    with pytest.raises(ValueError, match=_exactly(_nothing(missing))):
        pt.resolve_model(missing)
    with pytest.raises(ValueError, match=_exactly(
            f"ckpt_path {missing!r} names no file or folder and is not 'pretrained' (the shipped model): pass a "
            "checkpoint from train.py or a dequant-export folder")):
        pt.resolve_model(missing, what="ckpt_path")
    assert pt.resolve_model(str(tmp_path)) == str(tmp_path)  # an existing path is passed on unchanged


def test_load_model_and_load_exported_take_pretrained(shipped: Path, tiny_export: Path) -> None:
    from dequant.export import load_exported
    from dequant.models import load_model

    reference = load_model(tiny_export).state_dict()
    for module in (load_model("pretrained"), load_exported("pretrained")):
        assert all(torch.equal(v, reference[k]) for k, v in module.state_dict().items())
    _flip_a_byte(shipped / WEIGHTS)
    with pytest.raises(ValueError, match=re.escape(f"the shipped model file {shipped / WEIGHTS} is damaged")):
        load_model("pretrained")


def test_dequant_edit_with_a_ckpt_that_names_nothing_exits_2_in_one_line(tiny_photos: list[Path],
                                                                        tmp_path: Path) -> None:
    missing, out = tmp_path / "none.ckpt", tmp_path / "out.png"
    proc = subprocess.run([sys.executable, "-m", "dequant.edit", "transfer", str(tiny_photos[0]), "--ckpt",
                           str(missing), "--colormap", "viridis", "-o", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr == f"dequant-edit transfer: error: {_nothing(str(missing))}\n"
    assert not out.exists()


def test_dequant_edit_without_ckpt_runs_the_shipped_model_and_refuses_a_damaged_one(
        shipped: Path, tiny_photos: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from dequant.edit import main

    out = tmp_path / "out.png"
    argv = ["transfer", str(tiny_photos[2]), "--colormap", "viridis", "-n", "4", "-o", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    assert out.is_file() and f"loading {shipped} on" in capsys.readouterr().out
    out.unlink()
    _flip_a_byte(shipped / WEIGHTS)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"dequant-edit transfer: error: the shipped model file "
                                                   f"{shipped / WEIGHTS} is damaged (sha256 ")
    assert err.endswith(f"): {ADVICE}\n") and not out.exists()


@pytest.mark.parametrize("problem", ["ckpt names nothing", "shipped model damaged", "shipped model missing"])
def test_dequant_app_refuses_to_start_in_one_line(problem: str, shipped: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("gradio")
    from dequant.app import cli

    served = []
    monkeypatch.setattr(cli, "serve", lambda *args, **kwargs: served.append(args))
    argv = []
    if problem == "ckpt names nothing":
        argv = ["--ckpt", str(tmp_path / "none.ckpt")]
        expected = _nothing(str(tmp_path / "none.ckpt"))
    elif problem == "shipped model damaged":
        _flip_a_byte(shipped / WEIGHTS)
        expected = f"the shipped model file {shipped / WEIGHTS} is damaged (sha256 "
    else:
        shutil.rmtree(shipped)
        expected = _missing(shipped, "folder")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"dequant-app: error: {expected}"), err
    assert served == []


def test_evaluate_takes_ckpt_path_pretrained(shipped: Path, tmp_path: Path) -> None:
    from dequant.evaluation.runner import check_ckpt_path

    assert check_ckpt_path(OmegaConf.create({"ckpt_path": "pretrained"})) == str(shipped)
    missing = str(tmp_path / "none.ckpt")
    with pytest.raises(ValueError, match=re.escape(f"ckpt_path {missing!r} names no file or folder")):
        check_ckpt_path(OmegaConf.create({"ckpt_path": missing}))
    with pytest.raises(ValueError, match=re.escape("or ckpt_path=pretrained (the model shipped in the package)")):
        check_ckpt_path(OmegaConf.create({"ckpt_path": "???"}))
