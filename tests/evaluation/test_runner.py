"""evaluate.py end to end on the tiny checkpoint: tables, grids, splits, batching, DDP, loggers, bad input."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from dequant.config import conf_dir
from dequant.evaluation import report
from dequant.evaluation import tests as T
from dequant.evaluation.runner import evaluate, held_out_paths, log_to, prepare_image

ROOT = Path(__file__).resolve().parents[2]
# OT on 1024-pixel images with POT's default sample count dominates the run time; 128 samples suffice here.
FAST = ["progress=false", "baselines.ot.fn.n_samples=128", "data.batch_size=2"]


def eval_cfg(run_dir: Path, ckpt: Path, *overrides: str):
    """The evaluation config as evaluate.py composes it, with the run folder pinned."""
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return compose("evaluate", overrides=[f"ckpt_path={ckpt}", f"paths.run_dir={run_dir}", *overrides])


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open() as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _assert_same_tables(a: str | Path, b: str | Path) -> None:
    """Same rows and keys; numbers equal up to float noise.

    Convolutions round differently per batch size (~1e-6), and the 8-bit rounding inside the texture metric can
    turn that into ~1e-5 on the untrained tiny model's noisy outputs; a seeding bug would move values by ~0.1.
    """
    rows_a, rows_b = report.read_csv(a), report.read_csv(b)
    assert [list(r) for r in rows_a] == [list(r) for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        for key, value in ra.items():
            assert value == (rb[key] if isinstance(value, str) else pytest.approx(rb[key], rel=1e-3, abs=1e-3)), key


@pytest.fixture(scope="module")
def full_run(tiny_ckpt: Path, tiny_photos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """All five tests on 2 tiny images with every baseline."""
    run_dir = tmp_path_factory.mktemp("eval_full")
    paths = "[" + ",".join(str(p) for p in tiny_photos[:2]) + "]"
    return evaluate(eval_cfg(run_dir, tiny_ckpt, *FAST, f"data.paths={paths}", "tests=rhtpm"))


def test_every_test_letter_writes_its_rows(full_run: dict) -> None:
    run_dir = Path(full_run["run_dir"])
    columns, rows = _read(run_dir / "metrics.csv")
    metric_cols = [c for c in columns[3:]]
    assert columns[:3] == ["test", "setting", "method"]
    assert len(metric_cols) % 2 == 0
    for mean, sem in zip(metric_cols[::2], metric_cols[1::2]):
        assert mean.endswith("_mean") and sem == mean[:-5] + "_sem"
    assert {f"{m}_mean" for m in ("l1", "psnr", "ssim", "smape", "palette_de2000", "texture_corr", "speckle")} \
        <= set(columns)
    baselines = {"input": "rhtpm", "bilateral": "rhtpm", "luminance_swap": "rhtpm", "reinhard": "htm", "ot": "tm"}
    expected = []
    for letter in "rhtpm":
        for keep in (False, True):
            for setting in T.settings(letter):
                methods = ["model", "model+post_L"] + [b for b, tests in baselines.items() if letter in tests]
                expected += [(T.variant_name(letter, keep), setting.label, m) for m in methods]
    assert sorted((r["test"], r["setting"], r["method"]) for r in rows) == sorted(expected)
    for row in rows:
        gt = row["test"][0] in "rh" or row["setting"] == "fill=mean"
        assert (row["psnr_mean"] != "") == gt, row
        assert math.isfinite(float(row["palette_de2000_mean"])) and math.isfinite(float(row["texture_corr_sem"]))
    # Baselines see no texture: the same numbers in r and r_tex.
    by_key = {(r["test"], r["setting"], r["method"]): r for r in rows}
    assert by_key[("h", "s=0.2 N=16", "reinhard")] == {**by_key[("h_tex", "s=0.2 N=16", "reinhard")], "test": "h"}
    # The input baseline is exactly the requested palette.
    assert float(by_key[("r", "N=4", "input")]["palette_de2000_mean"]) < 1e-3
    assert len(full_run["per_image"]) == 2 * len(rows)


def test_markdown_and_grids(full_run: dict) -> None:
    run_dir = Path(full_run["run_dir"])
    text = (run_dir / "metrics.md").read_text()
    for letter in "rhtpm":
        assert f"### {report.TEST_TITLES[letter]}" in text
    assert "| model, texture given |" in text and "| model, texture dropped |" in text and "**" in text
    assert "#### m cmap=twilight N=4" in text
    grids = sorted(p.stem for p in (run_dir / "grids").glob("*.png"))
    assert grids == sorted(s.slug for letter in "rhtpm" for s in T.settings(letter))


def test_markdown_shows_every_setting_beside_the_input(full_run: dict) -> None:
    text = (Path(full_run["run_dir"]) / "metrics.md").read_text()
    key = text.split("## Per setting: key metrics")[1].split("## At a glance")[0]
    r_table = key.split(f"### {report.TEST_TITLES['r']}")[1].split("###")[0]
    header = r_table.strip().splitlines()[0]
    assert header.startswith("| metric | setting | model, texture given | model, texture dropped | "
                             "model+post_L, texture given | model+post_L, texture dropped | input |")
    for name in ("PSNR ↑", "SSIM ↑", "palette ΔE00 ↓", "texture corr ↑", "speckle (x source) →1"):
        assert f"| {name} | N=64 |" in r_table
    assert all(f"|  | N={n} |" in r_table for n in (16, 4))
    assert "| palette ΔE00 ↓ | score=color N=8 |" in key  # t has no ground truth: no PSNR rows
    assert "| PSNR ↑ | score=color N=8 |" not in key


def test_post_l_rows_can_be_turned_off(tiny_ckpt: Path, tiny_photos: list[Path], tmp_path: Path) -> None:
    paths = "[" + ",".join(str(p) for p in tiny_photos[:2]) + "]"
    common = ["progress=false", "baselines=none", "tests=r", "grid_images=0", f"data.paths={paths}"]
    out = evaluate(eval_cfg(tmp_path / "off", tiny_ckpt, *common, "post_L=false"))
    assert {r["method"] for r in report.read_csv(out["metrics_csv"])} == {"model"}
    assert "post_L" not in Path(out["metrics_md"]).read_text().split("## Per setting: key metrics")[1]
    with pytest.raises(ValueError, match="post_L must be true or false"):
        evaluate(eval_cfg(tmp_path / "bad", tiny_ckpt, *common, "post_L=sometimes"))


def test_results_do_not_depend_on_the_batch_size(tiny_ckpt: Path, tiny_photos: list[Path], tmp_path: Path) -> None:
    paths = "[" + ",".join(str(p) for p in tiny_photos[:2]) + "]"
    common = ["progress=false", "baselines=none", "tests=p", "grid_images=0", f"data.paths={paths}"]
    one = evaluate(eval_cfg(tmp_path / "b1", tiny_ckpt, *common, "data.batch_size=1"))
    two = evaluate(eval_cfg(tmp_path / "b2", tiny_ckpt, *common, "data.batch_size=2"))
    _assert_same_tables(one["metrics_csv"], two["metrics_csv"])
    assert not (tmp_path / "b1" / "grids").exists()


def test_default_images_are_the_checkpoints_test_split(tiny_ckpt: Path, tiny_run: Path, tmp_path: Path) -> None:
    split = json.loads((tiny_run / "split.json").read_text())
    files, ids, origin = held_out_paths(str(tiny_ckpt), {})
    assert [str(f) for f in files] == split["test"] and "test" in origin
    everything = sorted(p for part in split.values() for p in part)
    assert ids == [everything.index(p) for p in split["test"]]
    # An empty test split falls back to validation.
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "split.json").write_text(json.dumps({**split, "test": []}))
    files, _, origin = held_out_paths(str(run / "checkpoints" / "x.ckpt"), {})
    assert [str(f) for f in files] == split["val"] and "val" in origin
    (run / "split.json").write_text(json.dumps({**split, "test": [], "val": []}))
    with pytest.raises(ValueError, match="data.paths"):
        held_out_paths(str(run / "checkpoints" / "x.ckpt"), {})
    result = evaluate(eval_cfg(tmp_path / "ev", tiny_ckpt, "progress=false", "baselines=none", "tests=r"))
    assert "1 at 32x32" in Path(result["metrics_md"]).read_text()


def test_prepare_image_center_crops() -> None:
    image = torch.zeros(3, 20, 40)
    image[:, :, 10:30] = 1.0
    out = prepare_image(image, 10)
    assert out.shape == (3, 10, 10) and torch.allclose(out, torch.ones_like(out), atol=1e-5)
    assert prepare_image(torch.rand(3, 5, 7), 16).shape == (3, 16, 16)


def test_report_aggregates_mean_and_sem() -> None:
    rows = [{"test": "r", "setting": "N=4", "method": "model", "image_id": i, "l1": v, "psnr": 10 * v}
            for i, v in enumerate([1.0, 2.0, 4.0])]
    rows.append({"test": "r", "setting": "N=4", "method": "input", "image_id": 0, "l1": 0.5, "psnr": 3.0})
    agg = report.aggregate(rows)
    assert agg[0]["l1_mean"] == pytest.approx(7 / 3)
    assert agg[0]["l1_sem"] == pytest.approx(torch.tensor([1.0, 2.0, 4.0]).std().item() / math.sqrt(3))
    assert report.csv_columns(agg) == ["test", "setting", "method", "l1_mean", "l1_sem", "psnr_mean", "psnr_sem"]
    md = report.markdown(agg)
    assert "| input | **0.5000 ± 0.0000** | 3.00 ± 0.00 |" in md and "| model, texture dropped |" in md
    # The key-metric table opens the report: one row per setting, the input beside the model.
    assert "| metric | setting | model, texture dropped | input |\n|---|---|---:|---:|\n" \
           "| PSNR ↑ | N=4 | **23.33** | 3.00 |" in md
    with pytest.raises(ValueError, match="rows"):
        report.aggregate([{"test": "r", "l1": 1.0}])


def test_compare_runs(full_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert report.main([full_run["run_dir"], full_run["metrics_csv"]]) == 0
    out = capsys.readouterr().out
    assert out.count("| model, texture given |") == 2 * 5 and "| baseline | ot |" in out
    assert report.main([str(tmp_path)]) == 2


def test_loggers_get_the_table_and_grids(full_run: dict) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.tables, self.images = [], []

        def log_table(self, key, columns, data):
            self.tables.append((key, columns, data))

        def log_image(self, key, images):
            self.images.append(key)

    rec = Recorder()
    log_to(rec, full_run["rows"], {"r_N4": torch.rand(3, 8, 8)})
    (key, columns, data), = rec.tables
    assert key == "eval/metrics" and columns[:3] == ["test", "setting", "method"] and len(data) == len(full_run["rows"])
    assert rec.images == ["eval/r_N4"]


def test_every_result_is_one_summary_number(full_run: dict) -> None:
    """eval/<test>/<setting>/<metric> for the model with its _sem, _input and signed _gain, every other method's key
    metrics, the mean over settings; the same numbers as metrics.csv."""
    numbers = full_run["summary"]
    rows = {(r["test"], r["setting"], r["method"]): r for r in report.read_csv(full_run["metrics_csv"])}
    model, given = rows[("r_tex", "N=4", "model")], rows[("r_tex", "N=4", "input")]
    assert numbers["eval/r_tex/N4/psnr"] == pytest.approx(model["psnr_mean"], rel=1e-12)
    assert numbers["eval/r_tex/N4/psnr_sem"] == pytest.approx(model["psnr_sem"], rel=1e-12)
    assert numbers["eval/r_tex/N4/psnr_input"] == pytest.approx(given["psnr_mean"], rel=1e-12)
    assert numbers["eval/r_tex/N4/psnr_gain"] == pytest.approx(model["psnr_mean"] - given["psnr_mean"])
    # Lower is better for the palette error: a positive gain means the model's error is below the input's.
    assert numbers["eval/r_tex/N4/palette_de2000_gain"] == pytest.approx(
        given["palette_de2000_mean"] - model["palette_de2000_mean"])
    assert "eval/r_tex/N4/speckle" in numbers and "eval/r_tex/N4/speckle_gain" not in numbers  # best at 1
    assert numbers["eval/h/s0p3_N16/bilateral/psnr"] == pytest.approx(
        rows[("h", "s=0.3 N=16", "bilateral")]["psnr_mean"])
    assert numbers["eval/t/neg_N8/model+post_L/palette_de2000"] == pytest.approx(
        rows[("t", "score=neg N=8", "model+post_L")]["palette_de2000_mean"])
    assert numbers["eval/p_tex/mean/palette_de2000"] == pytest.approx(rows[("p_tex", "fill=mean", "model")][
        "palette_de2000_mean"])
    assert numbers["eval/m/viridis_N64/texture_corr"] == pytest.approx(rows[("m", "cmap=viridis N=64", "model")][
        "texture_corr_mean"])
    r_psnr = [r["psnr_mean"] for (t, _, m), r in rows.items() if t == "r" and m == "model"]
    assert numbers["eval/r/psnr"] == pytest.approx(sum(r_psnr) / 3)
    assert not any("." in k for k in numbers)  # W&B reads dots as nesting
    # The table (torchmetrics accumulators, summed over ranks) is the aggregate of the per-image rows.
    per_image = report.aggregate([{k: v for k, v in r.items() if k not in ("_order", "image_id")}
                                  for r in full_run["per_image"]])
    assert [(r["test"], r["setting"], r["method"]) for r in per_image] == \
        [(r["test"], r["setting"], r["method"]) for r in full_run["rows"]]
    for a, b in zip(per_image, full_run["rows"]):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12) for k in a
                                            if k not in report.KEYS)


def test_a_wandb_run_gets_the_summary_numbers(full_run: dict) -> None:
    class Run:
        def __init__(self) -> None:
            self.summary: dict = {}

    class WandbLogger:  # what log_to recognizes (by name: wandb is optional)
        def __init__(self) -> None:
            self.experiment = Run()

    logger = WandbLogger()
    log_to(logger, full_run["rows"], {}, full_run["summary"])
    assert logger.experiment.summary == full_run["summary"]


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path, run_script) -> None:
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"paths.run_dir={tmp_path}"])
    with pytest.raises(ValueError, match="ckpt_path is required"):
        evaluate(cfg)
    with pytest.raises(ValueError, match=re.escape(f"ckpt_path '{tmp_path / 'nope.ckpt'}' names no file or folder")):
        evaluate(eval_cfg(tmp_path, tmp_path / "nope.ckpt"))
    # evaluate.py as `python evaluate.py` runs it, in this process (the installed dequant-evaluate gives the same
    # answer in a process of its own in test_packaging.py).
    code, _, err = run_script("evaluate.py", f"hydra.run.dir={tmp_path}/cli")
    assert code == 2, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("evaluate.py: error: ckpt_path is required")


def test_bad_test_letter(tiny_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tests"):
        evaluate(eval_cfg(tmp_path, tiny_ckpt, "tests=rq"))


@pytest.mark.slow
def test_ddp_two_processes_match_one(tiny_ckpt: Path, tiny_photos: list[Path], tmp_path: Path) -> None:
    paths = "[" + ",".join(str(p) for p in tiny_photos) + "]"
    common = [f"ckpt_path={tiny_ckpt}", "tests=p", "baselines=restoration", "grid_images=0", "progress=false",
              f"data.paths={paths}", "fabric.accelerator=cpu"]
    single = evaluate(eval_cfg(tmp_path / "one", tiny_ckpt, *common[1:]))
    cmd = [sys.executable, "evaluate.py", *common, "fabric.devices=2", "fabric.strategy=ddp",
           f"hydra.run.dir={tmp_path / 'ddp'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "processes: 2" in (tmp_path / "ddp" / "metrics.md").read_text()
    _assert_same_tables(tmp_path / "ddp" / "metrics.csv", single["metrics_csv"])


def test_evaluate_an_exported_folder(tiny_export: Path, tiny_ckpt: Path, tmp_path: Path) -> None:
    common = ["progress=false", "baselines=none", "tests=r", "grid_images=0"]
    from_folder = evaluate(eval_cfg(tmp_path / "a", tiny_export, *common))
    from_ckpt = evaluate(eval_cfg(tmp_path / "b", tiny_ckpt, *common))
    _assert_same_tables(from_folder["metrics_csv"], from_ckpt["metrics_csv"])


def test_run_case_rows_per_variant_and_method(tiny_images: torch.Tensor) -> None:
    from contextlib import nullcontext

    from dequant.color.cues import TextureCue
    from dequant.color.edits import post_l
    from dequant.color.quantize import Quantizer
    from dequant.evaluation.baselines import bilateral_smooth
    from dequant.evaluation.runner import Baseline, run_case

    class Echo:  # a "model" that returns its color input: zero palette error by construction
        def sample(self, hint, **kwargs):
            return hint[:, :3]

    class CpuFabric:
        device = "cpu"

        def autocast(self):
            return nullcontext()

    setting = T.settings("r")[2]
    case = T.build_case(setting, tiny_images, quantizer=Quantizer(), cue=TextureCue(),
                        rngs=T.image_rngs(0, setting, [4, 9]))
    smooth = Baseline("bilateral", bilateral_smooth, ("requested",), "r")
    kwargs = dict(baselines=[smooth], sampler=None, seed=0, image_ids=[4, 9], fabric=CpuFabric(), order=(0, 2))
    rows, outputs = run_case(case, Echo(), variants=(False,), **kwargs)  # a cue-"none" checkpoint
    assert [(r["test"], r["method"], r["image_id"]) for r in rows] == [
        ("r", "model", 4), ("r", "model", 9), ("r", "bilateral", 4), ("r", "bilateral", 9)]
    assert all(r["palette_de2000"] < 1e-3 for r in rows if r["method"] == "model")
    assert set(outputs) == {"model", "bilateral"}
    rows, outputs = run_case(case, Echo(), variants=(False, True), **kwargs)
    assert sorted({r["test"] for r in rows}) == ["r", "r_tex"] and len(rows) == 8
    bil = [r for r in rows if r["method"] == "bilateral"]
    assert [r["l1"] for r in bil if r["test"] == "r"] == [r["l1"] for r in bil if r["test"] == "r_tex"]
    assert all("speckle" in r for r in rows)
    # post_L: the same samples with the source's L, rows right after the model's, no extra sampling.
    rows, outputs = run_case(case, Echo(), variants=(False, True), post_l_rows=True, **kwargs)
    assert [(r["test"], r["method"]) for r in rows[:4]] == [("r", "model")] * 2 + [("r", "model+post_L")] * 2
    assert len(rows) == 12 and set(outputs) == {"model", "post_L", "model + texture", "post_L + texture", "bilateral"}
    assert torch.allclose(outputs["post_L"], post_l(outputs["model"], case.source))
    swapped = {r["image_id"]: r["psnr"] for r in rows if r["method"] == "model+post_L" and r["test"] == "r"}
    plain = {r["image_id"]: r["psnr"] for r in rows if r["method"] == "model" and r["test"] == "r"}
    assert all(swapped[i] > plain[i] for i in plain)  # the source's L brings the quantized input closer to it


def test_configured_matching_score_drives_the_transfer_test(tiny_ckpt: Path, tiny_photos: list[Path],
                                                            tmp_path: Path) -> None:
    paths = "[" + ",".join(str(p) for p in tiny_photos[:2]) + "]"
    common = ["progress=false", "baselines=none", "tests=t", "grid_images=0", f"data.paths={paths}"]
    rows = {}
    for score in ("color", "neg"):
        out = evaluate(eval_cfg(tmp_path / score, tiny_ckpt, *common, f"matching={score}"))
        rows[score] = report.read_csv(out["metrics_csv"])
        assert {r["setting"] for r in rows[score]} == {f"score={score} N={n}" for n in (8, 32)}
    assert [r["palette_de2000_mean"] for r in rows["color"]] != [r["palette_de2000_mean"] for r in rows["neg"]]
