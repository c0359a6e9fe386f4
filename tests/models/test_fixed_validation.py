"""Validation on the fixed set through train(): per-setting val/ keys that recompute from the checkpoint, the input
logged once, signed gains, best-so-far values that survive a resume."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from dequant import metrics as M
from dequant.config import conf_dir
from dequant.models.module import load_model
from dequant.training import train

TINY = ["experiment=tiny", "sampler=ddim", "sampler.steps=2", "trainer.val_check_interval=2",
        "callbacks.model_checkpoint.every_n_train_steps=2", "data.n_val=2", "data.val_fixed.images=2",
        "data.val_fixed.sizes=[4,64]"]


def _cfg(run_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return compose("train", overrides=[*TINY, f"paths.run_dir={run_dir}", *overrides])


def _validations(run_dir: Path) -> list[dict[str, float]]:
    """The CSV logger's validation rows (those with val/loss), by step, every part of a resumed run."""
    rows = []
    for path in sorted((run_dir / "csv").glob("metrics*.csv")):
        with path.open() as f:
            rows += [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
    return sorted((r for r in rows if "val/loss" in r), key=lambda r: r["step"])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("fixed_val")
    train(_cfg(run_dir, "trainer.max_steps=4"))
    return run_dir


def test_per_setting_keys_input_once_and_gains(run: Path) -> None:
    first, second = _validations(run)
    names = ["r_tex/N4", "r_tex/N64", "p_tex/mean", "r/N4", "r/N64", "p/mean"]
    for row in (first, second):
        for name in names:
            for metric in ("psnr", "ssim", "palette_de2000", "texture_corr", "speckle"):
                assert f"val/{name}/{metric}" in row, (name, metric)
    # The input does not change: logged at the first validation only, beside each setting.
    assert "val/r/N4/psnr_input" in first and "val/r/N4/psnr_input" not in second
    assert first["val/r/N4/psnr_input"] == first["val/r_tex/N4/psnr_input"]  # the same requested image
    for row in (first, second):
        for name in names:
            given = first[f"val/{name}/psnr_input"]
            assert row[f"val/{name}/psnr_gain"] == pytest.approx(row[f"val/{name}/psnr"] - given, abs=1e-4)
            bad = first[f"val/{name}/palette_de2000_input"]
            assert row[f"val/{name}/palette_de2000_gain"] == pytest.approx(bad - row[f"val/{name}/palette_de2000"],
                                                                           abs=1e-4)
    # Best so far: the max PSNR / min palette error / min loss over the validations up to each one.
    for key, better in (("val/r_tex/N4/psnr", max), ("val/p/mean/palette_de2000", min), ("val/loss", min)):
        assert first[f"{key}_best"] == pytest.approx(first[key])
        assert second[f"{key}_best"] == pytest.approx(better(first[key], second[key]))
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["val_best"]["val/r_tex/N4/psnr"] == pytest.approx(second["val/r_tex/N4/psnr_best"])


def test_logged_numbers_recompute_from_the_checkpoint(run: Path) -> None:
    """val/<setting>/psnr at the last step is the mean PSNR of the checkpoint's (EMA) samples of the fixed set."""
    cfg = _cfg(run, "trainer.max_steps=4")
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    module = load_model(run / "checkpoints" / "last.ckpt")
    names = [s.name for s in datamodule.val_fixed_settings]
    by_setting: dict[str, list[float]] = {}
    for example in datamodule.val_fixed_examples:
        out = module.sample(example["hint"][None], seed=0, image_ids=[int(example["image_id"])])
        by_setting.setdefault(names[int(example["setting"])], []).append(float(M.psnr(out, example["target"][None])))
    logged = _validations(run)[-1]
    for name, values in by_setting.items():
        assert logged[f"val/{name}/psnr"] == pytest.approx(sum(values) / len(values), abs=1e-3), name
    assert logged["val/psnr"] == pytest.approx(sum(sum(v) for v in by_setting.values())
                                               / sum(len(v) for v in by_setting.values()), abs=1e-3)


def test_a_resumed_run_continues_the_best_values(run: Path, tmp_path: Path) -> None:
    import shutil

    resumed = tmp_path / "run"
    shutil.copytree(run, resumed, ignore=shutil.ignore_patterns(".dequant.lock"))
    before = _validations(resumed)
    # A best value no validation of this tiny model reaches: the resumed run must carry it on, not forget it.
    last = resumed / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    state["val_best"]["val/r_tex/N4/psnr"] = 99.0
    torch.save(state, last)
    train(_cfg(resumed, "trainer.max_steps=6", "ckpt_path=last"))
    after = _validations(resumed)
    assert [r["step"] for r in after][-1] > before[-1]["step"]
    third = after[-1]
    assert third["val/r_tex/N4/psnr_best"] == 99.0 and third["val/r_tex/N4/psnr"] < 99.0
    key = "val/r/N64/psnr"
    assert third[f"{key}_best"] == pytest.approx(max(r[key] for r in after))
    # A new run segment logs the input again (once).
    assert "val/r/N4/psnr_input" in third
