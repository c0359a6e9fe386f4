"""Progress: log lines off a terminal (SLURM logs), a correct epoch display, and progress in evaluation and editing."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dequant.progress import (EpochRichProgressBar, LogProgressBar, Progress, epoch_text, is_terminal, progress_bar,
                              progress_line)
from dequant.render import render_calls, render_tiled


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_line_says_done_total_elapsed_and_time_left() -> None:
    assert progress_line("evaluate", 10, 40, "images", 30.0, "r N=4") == (
        "evaluate: 10/40 images (25%), 0:00:30 elapsed, about 0:01:30 left, r N=4")
    assert progress_line("render", 8, 8, "network steps", 3661.0) == "render: 8/8 network steps (100%), 1:01:01 elapsed"


def test_progress_off_a_terminal_logs_a_line_per_interval_and_one_at_the_end() -> None:
    clock, lines = Clock(), []
    with Progress("evaluate", 4, "images", mode="log", interval_s=10, emit=lines.append, clock=clock) as bar:
        for _ in range(3):
            clock.now += 6
            bar.advance(1, "r N=4")
        clock.now += 6
        bar.advance(1)
    # 6 s: nothing yet; 12 s: a line (2 done); 18 s: 6 s since the last line; 24 s: done, the closing line.
    assert lines == ["evaluate: 2/4 images (50%), 0:00:12 elapsed, about 0:00:12 left, r N=4",
                     "evaluate: 4/4 images (100%), 0:00:24 elapsed"]


def test_progress_disabled_or_failed_says_nothing() -> None:
    lines: list[str] = []
    with Progress("x", 2, enabled=False, emit=lines.append) as bar:
        bar.advance(2)
    with pytest.raises(RuntimeError), Progress("x", 2, mode="log", emit=lines.append) as bar:
        raise RuntimeError("boom")
    assert lines == [] and bar.done == 0


def test_auto_mode_is_live_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert not is_terminal(io.StringIO()) and is_terminal(Tty())
    assert not Progress("x", 1, stream=io.StringIO()).live and Progress("x", 1, stream=Tty()).live
    assert Progress("x", 1, mode="live", stream=io.StringIO()).live
    with pytest.raises(ValueError, match="progress mode must be one of auto, live, log, got 'bar'"):
        Progress("x", 1, mode="bar")
    with pytest.raises(ValueError, match="total must be >= 0"):
        Progress("x", -1)


def test_epoch_display_has_no_negative_epoch_count() -> None:
    by_steps = SimpleNamespace(max_epochs=-1, max_steps=600, current_epoch=1)
    by_epochs = SimpleNamespace(max_epochs=10, max_steps=-1, current_epoch=3)
    assert epoch_text(by_steps) == "epoch 1" and epoch_text(by_epochs) == "epoch 3/9"
    bar = EpochRichProgressBar()
    bar._trainer = by_steps  # what Lightning's setup() sets
    assert bar._get_train_description(1).strip() == "Epoch 1"


def test_training_callback_is_a_bar_on_a_terminal_and_log_lines_elsewhere() -> None:
    assert isinstance(progress_bar("live"), EpochRichProgressBar)
    assert isinstance(progress_bar("log", interval_s=5), LogProgressBar)
    # pytest captures stderr: not a terminal.
    assert isinstance(progress_bar("auto"), LogProgressBar)


def test_log_progress_bar_writes_step_epoch_and_loss_lines(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    class Logged(BoringModel):
        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            self.log("loss", out["loss"], prog_bar=True)
            return out

    trainer = L.Trainer(max_steps=3, callbacks=[LogProgressBar(interval_s=0)], logger=False,
                        enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path,
                        limit_val_batches=0, accelerator="cpu")
    with caplog.at_level(logging.INFO, logger="dequant.progress"):
        trainer.fit(Logged())
    lines = [r.getMessage() for r in caplog.records if r.name == "dequant.progress"]
    assert re.fullmatch(r"train: step 1/3 \(33%\), epoch 0, \d:\d\d:\d\d elapsed, about \d:\d\d:\d\d left, "
                        r"loss=[-\d.e]+", lines[0]), lines
    assert lines[-1].startswith("train: step 3/3 (100%), epoch 0,") and "left" not in lines[-1]


@pytest.mark.parametrize(("height", "width", "tile", "multiple"), [(20, 30, 16, 8), (64, 64, 32, 8), (17, 90, 16, 4),
                                                                  (8, 8, 64, 8)])
def test_render_calls_counts_the_calls_render_tiled_makes(height: int, width: int, tile: int, multiple: int) -> None:
    calls = []

    def sample_fn(hints: torch.Tensor, ids: list[int]) -> torch.Tensor:
        calls.append(len(ids))
        return hints[:, :3]

    layout = {"tile": tile, "overlap": tile // 4, "max_pixels": tile * tile, "multiple": multiple}
    render_tiled(sample_fn, torch.rand(7, height, width), **layout)
    assert render_calls(height, width, **layout) == len(calls)


def test_evaluation_logs_images_done(tiny_ckpt: Path, tiny_photos: list[Path], tmp_path: Path,
                                     caplog: pytest.LogCaptureFixture) -> None:
    from hydra import compose, initialize_config_dir

    from dequant.config import conf_dir
    from dequant.evaluation.runner import evaluate
    from dequant.evaluation.tests import T_SCORES, settings

    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"ckpt_path={tiny_ckpt}", f"paths.run_dir={tmp_path}",
                                             f"data.paths=[{tiny_photos[0]},{tiny_photos[1]}]", "baselines=none",
                                             "tests=r", "grid_images=0", "progress=true", "data.batch_size=1"])
    with caplog.at_level(logging.INFO):
        evaluate(cfg)
    assert any(re.fullmatch(rf"loaded {re.escape(str(tiny_ckpt))} on cpu in [\d.]+ s", r.getMessage())
               for r in caplog.records if r.name == "dequant.evaluation.runner")
    lines = [r.getMessage() for r in caplog.records if r.name == "dequant.progress"]
    # Every r setting x 2 images, one line at the end (the interval is 30 s).
    n = 2 * len(settings("r", T_SCORES))
    assert len(lines) == 1 and re.fullmatch(rf"evaluate: {n}/{n} images \(100%\), \d:\d\d:\d\d elapsed", lines[0]), lines


def test_edit_reports_loading_and_network_steps(tiny_ckpt: Path, tiny_photos: list[Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    from dequant.edit import main

    code = main(["transfer", str(tiny_photos[0]), "--ckpt", str(tiny_ckpt), "--colormap", "viridis", "-n", "4",
                 "-o", str(tmp_path / "out.png")])
    out, err = capsys.readouterr()
    assert code == 0 and err == "", err
    assert f"loading {tiny_ckpt} on cpu" in out and re.search(r"^loaded in [\d.]+ s$", out, re.M)
    # The tiny model samples with 2 DDIM steps; the 48x72 photo fits one network call.
    assert re.search(r"^render: 2/2 network steps \(100%\), \d:\d\d:\d\d elapsed$", out, re.M), out
