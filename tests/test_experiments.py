"""The measuring scripts behind experiments/results: they run on a tiny checkpoint and print what they promise."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    """Import experiments/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def run_with_steps(tiny_ckpt: Path, tmp_path: Path) -> Path:
    """A run folder holding the tiny checkpoint as step 2 and step 4."""
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    for step in (2, 4):
        shutil.copy(tiny_ckpt, tmp_path / "run" / "checkpoints" / f"step{step:07d}.ckpt")
    return tmp_path / "run"


def test_learning_curve_has_a_row_per_step_setting_and_texture(run_with_steps, tiny_photos, tmp_path, capsys):
    lc = _script("learning_curve")
    out = tmp_path / "curve.md"
    images = str(tiny_photos[0].parent / "*")
    assert lc.main([str(run_with_steps), "--images", images, "--size", "32", "-o", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| 2 |") or line.startswith("| 4 |")]
    assert len(rows) == 2 * 3 * 2  # steps x N x texture
    # The input's PSNR is the same at every step; the gain column is model - input.
    first = rows[0].split("|")
    assert abs(float(first[4]) - float(first[5]) - float(first[6])) < 0.011
    assert lc.main([str(tmp_path / "nowhere")]) == 2


def test_bench_sampling_counts_network_evaluations(capsys):
    bench = _script("bench_sampling")
    assert bench.main(["--model", "tiny", "--size", "16", "--batch", "1", "--repeats", "1"]) == 0
    table = capsys.readouterr().out
    assert "| bridge | bridge | 1 | 1 |" in table and "| residual | ddim | 3 | 4 |" in table
    assert "| noise | ddpm_super27 | 27 | 27 |" in table


def test_bench_render_size_compares_native_with_upscaled(tiny_ckpt, tiny_photos, tmp_path):
    bench = _script("bench_render_size")
    out = tmp_path / "render.md"
    images = str(tiny_photos[0].parent / "*")
    assert bench.main([str(tiny_ckpt), "--images", images, "--scales", "1,2", "--colors", "4", "--max-images", "2",
                       "-o", str(out)]) == 0
    text = out.read_text()
    assert "native" in text and "train+bicubic" in text and "input" in text


def test_transfer_texture_oracle_scores_the_photo_and_the_input(tiny_photos, capsys):
    oracle = _script("transfer_texture_oracle")
    images = str(tiny_photos[0].parent / "*")
    assert oracle.main(["--images", images, "--size", "32"]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[1].replace(".", "").isdigit():
            rows[cells[0]] = (float(cells[1]), float(cells[2]))
    assert len(rows) == 4 + len(oracle.BLENDS)
    assert rows["the photo itself"][1] == 1.0
    assert rows["input (recolored quantized)"][0] == 0.0
    # Pulling lightness toward the photo's costs palette obedience at every step.
    shifts = [rows["photo + palette shift"][0]] + [rows[f"photo + palette shift, L {a:.0%} the photo's"][0]
                                                   for a in oracle.BLENDS]
    assert shifts == sorted(shifts) and shifts[0] < rows["the photo itself"][0]


def test_bench_data_builds_each_setup_from_the_project_configs():
    bench = _script("bench_data")
    before, default = bench.maker_for("before", 32, 1.0), bench.maker_for("default", 32, 1.0)
    authors, paper = bench.maker_for("authors", 32, 1.0), bench.maker_for("paper_256", 32, 1.0)
    assert isinstance(before.quantizer, bench.PillowMedianCut) and before.segment_source == "crop"
    assert type(default.quantizer) is not bench.PillowMedianCut
    assert (default.segment_source, default.segment_max_side) == ("crop", 128)
    assert (authors.segment_source, authors.segment_max_side) == ("crop", None)
    assert paper.segment_source == "image" and paper.crop_size == 32 and paper.p_patch == 1.0
    # "before" rows segment with scikit-image's quickshift, Felzenszwalb and SLIC; the compiled ones come back after
    from dequant.color import masks

    modules = {"_QS_JIT": "dequant.color._quickshift_jit", "_FELZ_JIT": "dequant.color._felzenszwalb_jit",
               "_SLIC_JIT": "dequant.color._slic_jit"}
    compiled = {slot: masks.optional_kernels(getattr(masks, slot), m) for slot, m in modules.items()}
    with bench.reference_segmenters(True):
        assert all(masks.optional_kernels(getattr(masks, slot), m) is None for slot, m in modules.items())
    assert all(masks.optional_kernels(getattr(masks, s), m) is compiled[s] is not None for s, m in modules.items())


def test_bench_data_reuse_counts_the_segmentations_a_cold_cache_pays(tiny_photos):
    bench = _script("bench_data")
    ms_cold, cold = bench.bench_reuse(tiny_photos, 16, 1, 6)
    ms_reused, reused = bench.bench_reuse(tiny_photos, 16, 40, 120)
    # p_superpixel 0.9: most cold patch examples segment once. 40 uses of an image need more segmentations than
    # its (scale bucket, segmenter) pairs (at most 7 x 4 here), so later examples find theirs cached.
    assert 0 < cold <= 1 and reused < cold and ms_cold > 0 and ms_reused > 0


def test_bench_edit_12mp_times_dequant_edit_in_a_fresh_process(tiny_ckpt, tmp_path, capsys):
    """The 12 MP benchmark, end to end at a small size: dequant-edit transfer runs once as a pinned one-thread
    child; the table has the setting, the measurements and the targets, and names no machine folder."""
    bench = _script("bench_edit_12mp")
    out = tmp_path / "bench.md"
    assert bench.main(["--ckpt", str(tiny_ckpt), "--size", "96x64", "--repeats", "1", "-n", "4",
                       "-o", str(out)]) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out
    for row in ("| photo size | 96x64 |", "| megapixels | 0.0 |", "| palette size N | 4 |", "| repeats | 1 |",
                "| checkpoint | last.ckpt |", "| threads | 1 (", "| wall < 60 s (max) | ",
                "| peak RSS < 3 GB (max) | "):
        assert row in text, row
    wall, peak = (line.split("|")[2] for line in text.splitlines() if line.startswith(("| wall s", "| peak RSS GB")))
    assert float(wall.split("/")[1]) > 0 and 0.05 < float(peak.split("/")[1]) < 50
    assert "/tmp" not in text and str(tmp_path) not in text and str(bench.ROOT) not in text
    assert bench.main(["--photo", "no_such_photo.jpg", "--repeats", "1"]) == 1
