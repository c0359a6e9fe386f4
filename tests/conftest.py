"""Shared fixtures. Evaluation / edit / export fixtures are named `tiny_*` and are self-contained."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import settings

# `make test` draws the same property-test examples for the same commit, so a random draw never decides whether a
# change lands; `pytest --hypothesis-profile=explore tests/color` searches many fresh random examples instead.
settings.register_profile("ci", max_examples=15, deadline=None, derandomize=True)
settings.register_profile("explore", max_examples=1500, deadline=None)
settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]
ASSET_IMAGES = ROOT / "src" / "dequant" / "assets" / "images"
# (shipped photo, downsized (height, width)): two landscapes of different aspect ratios and a square.
TINY_PHOTOS = (("chelsea.jpg", (48, 72)), ("coffee.jpg", (40, 60)), ("astronaut.jpg", (40, 40)))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained for 2 steps once per session (train.py's experiment=tiny); returns its run folder.

    Its sampler is DDIM with 2 steps, so every sample the tests draw is cheap.
    """
    from hydra import compose, initialize_config_dir

    from dequant.config import conf_dir
    from dequant.training import train

    run_dir = tmp_path_factory.mktemp("tiny_run")
    overrides = ["experiment=tiny", f"paths.run_dir={run_dir}", "sampler=ddim", "sampler.steps=2",
                 "trainer.max_steps=2", "trainer.val_check_interval=2",
                 "callbacks.model_checkpoint.every_n_train_steps=2"]
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    train(cfg)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    return run_dir


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_run: Path) -> Path:
    """The tiny run's last.ckpt."""
    return tiny_run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def tiny_export(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint exported with dequant-export."""
    from dequant.export import export

    return export(tiny_ckpt, tmp_path_factory.mktemp("tiny_export") / "model")


@pytest.fixture(scope="session")
def tiny_photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Downsized PNG copies of three shipped photos (sizes in TINY_PHOTOS), in one folder."""
    from dequant.data.io import load_rgb, save_rgb

    folder = tmp_path_factory.mktemp("tiny_photos")
    out = []
    for name, size in TINY_PHOTOS:
        image = F.interpolate(load_rgb(ASSET_IMAGES / name)[None], size=size, mode="area")[0]
        out.append(save_rgb(image.clamp(0, 1), folder / f"{Path(name).stem}.png"))
    return out


@pytest.fixture(scope="session")
def tiny_images() -> torch.Tensor:
    """Two 32x32 held-out-like images (the first two shipped photos, area-downsized)."""
    from dequant.data.io import load_rgb

    names = [name for name, _ in TINY_PHOTOS[:2]]
    return torch.stack([F.interpolate(load_rgb(ASSET_IMAGES / n)[None], size=(32, 32), mode="area")[0]
                        for n in names]).clamp(0, 1)


@pytest.fixture
def save_tiny_pretrained_unet():
    """A function that writes a tiny seeded diffusers UNet2DConditionModel (the frozen base of model=controlnet)
    to a folder and returns the folder."""
    from diffusers import UNet2DConditionModel

    def save(folder: Path, sample_size: int) -> Path:
        torch.manual_seed(0)
        UNet2DConditionModel(
            sample_size=sample_size, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4,
        ).save_pretrained(folder)
        return folder

    return save


@pytest.fixture
def run_script(capsys: pytest.CaptureFixture,
               monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[int, str, str]]:
    """A function that runs a script of the checkout (`train.py`, `evaluate.py`) in this process exactly as
    `python <script> <args>` runs it from the checkout (runpy as `__main__`, same argv and folder) and returns its
    exit code, stdout and stderr.

    For checks of what a script answers (exit code, its one-line error) without paying a new interpreter and the
    torch/Lightning imports per case; tests of the process itself (signals, DDP, installed commands) start one.
    """
    import logging
    import runpy

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    def run(script: str, *args: object) -> tuple[int, str, str]:
        capsys.readouterr()
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level  # Hydra configures the root logger for its job
        monkeypatch.setattr(sys, "argv", [script, *(str(a) for a in args)])
        monkeypatch.chdir(ROOT)
        try:
            runpy.run_path(str(ROOT / script), run_name="__main__")
            code = 0
        except SystemExit as exc:  # what the process would exit with (sys.exit(None) is 0, a message is 1)
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        finally:
            GlobalHydra.instance().clear()
            HydraConfig.instance().cfg = None
            for handler in root.handlers:
                if handler not in handlers:
                    handler.close()
            root.handlers[:] = handlers
            root.setLevel(level)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """W&B in offline mode, writing under the test's tmp folder; yields the wandb module. Afterwards every run the
    test left open is finished, also when the test failed half-way: an open run would take the logging of the tests
    that follow it."""
    wandb = pytest.importorskip("wandb")
    for var, value in (("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"), ("WANDB_DIR", str(tmp_path)),
                       ("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config")),
                       ("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))):
        monkeypatch.setenv(var, value)
    try:
        yield wandb
    finally:
        if wandb.run is not None:
            wandb.finish(exit_code=1)
        wandb.teardown()

