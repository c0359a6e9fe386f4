"""End-to-end training through the Hydra config tree: composition, every cue mode, resume, DDP, bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from dequant.config import conf_dir, to_container
from dequant.training import train

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


def make_cfg(run_dir: Path, *overrides: str):
    """Compose the training config as train.py would, with the run folder pinned to `run_dir`."""
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return compose("train", overrides=["experiment=tiny", f"paths.run_dir={run_dir}", *overrides])


def fast(run_dir: Path, *overrides: str):
    """A tiny config that trains 2 steps and validates with a 4-step DDIM sampler."""
    return make_cfg(run_dir, "sampler=ddim", "sampler.steps=4", "trainer.max_steps=2",
                    "trainer.val_check_interval=2", "callbacks.model_checkpoint.every_n_train_steps=1", *overrides)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_resolves(experiment: str, tmp_path: Path) -> None:
    extra = ["model.pretrained_path=/models/unet"] if experiment == "paper_256" else []
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", f"paths.run_dir={tmp_path}", *extra])
    resolved = to_container(cfg)
    assert resolved["module"]["net"]["_target_"].startswith("dequant.models.nets.")
    assert resolved["data"]["example"]["cue"]["_target_"] == "dequant.color.cues.TextureCue"


def test_cfg_job_prints_the_whole_config() -> None:
    out = subprocess.run([sys.executable, "train.py", "--cfg", "job"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    cfg = OmegaConf.create(out)
    for key in ("data", "cond", "palette", "quantizer", "matching", "model", "sampler", "trainer", "module"):
        assert key in cfg, key


def test_override_typo_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException, match="max_stepz"):
        make_cfg(tmp_path, "trainer.max_stepz=3")
    with pytest.raises(ConfigCompositionException, match="cond"):
        make_cfg(tmp_path, "cond=Q")


@pytest.mark.parametrize("cond", ["T", "G", "L", "none"])
def test_fast_dev_run_each_cue(cond: str, tmp_path: Path) -> None:
    result = train(fast(tmp_path, f"cond={cond}", "+trainer.fast_dev_run=true"))
    assert result["global_step"] == 1
    assert (tmp_path / "split.json").exists() and (tmp_path / "config.yaml").exists()


def test_controlnet_fast_dev_run(tmp_path: Path, save_tiny_pretrained_unet) -> None:
    unet = save_tiny_pretrained_unet(tmp_path / "unet", sample_size=32)
    result = train(fast(tmp_path / "run", "model=controlnet", f"model.pretrained_path={unet}",
                        "model.null_embedding_path=zeros", "+trainer.fast_dev_run=true"))
    assert result["global_step"] == 1


def _ema_state(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if "ema" in k}


def test_resume_continues_at_the_same_step_with_the_same_weights(tmp_path: Path) -> None:
    common = ("trainer.max_steps=4", "data.samples_per_epoch=4", "data.batch_size=2", "trainer.val_check_interval=4",
              "trainer.deterministic=true")
    full = train(fast(tmp_path / "full", *common))
    first = train(fast(tmp_path / "split", *common, "trainer.max_steps=2"))
    assert first["global_step"] == 2
    resumed = train(fast(tmp_path / "split", *common, "ckpt_path=last"))
    assert full["global_step"] == resumed["global_step"] == 4
    a = _ema_state(tmp_path / "full" / "checkpoints" / "last.ckpt")
    b = _ema_state(tmp_path / "split" / "checkpoints" / "last.ckpt")
    assert a and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit for bit (docs/robustness.md)


def test_checkpoint_of_another_model_is_refused(tmp_path: Path) -> None:
    train(fast(tmp_path))
    with pytest.raises(ValueError, match="block_out_channels"):
        train(fast(tmp_path, "model.block_out_channels=[8,16]", "ckpt_path=last"))


def test_empty_glob_fails_before_training(tmp_path: Path) -> None:
    pattern = str(tmp_path / "nothing" / "*.png")
    with pytest.raises(ValueError, match=f"^paths entry '{re.escape(pattern)}': the glob pattern matches no image "
                                         "files$"):
        train(fast(tmp_path / "run", f"data.paths='{pattern}'"))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_ddp_cpu_two_processes(tmp_path: Path) -> None:
    log = tmp_path / "metric_log.jsonl"
    cmd = [sys.executable, "train.py", "experiment=tiny", "trainer=ddp_cpu", "trainer.devices=2",
           "trainer.max_steps=4", "sampler=ddim", "sampler.steps=2", "data.n_val=2", f"hydra.run.dir={tmp_path}",
           "+callbacks.metric_log._target_=dequant.callbacks.MetricLog", f"+callbacks.metric_log.path={log}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    # The ranks split the fixed validation set (2 photos x 8 settings: even examples on rank 0, odd on rank 1) and
    # torchmetrics sums their accumulators, so both log the numbers of the whole set.
    ranks = [json.loads(line) for path in (log, log.with_name(log.name + ".rank1"))
             for line in path.read_text().splitlines()]
    assert len(ranks) == 2 and ranks[0]["step"] == ranks[1]["step"] == 4
    keys = {"val/loss", "val/psnr", "val/r/N4/psnr", "val/r_tex/N64/ssim", "val/p/mean/texture_corr",
            "val/p_tex/mean/palette_de2000"}
    assert keys <= ranks[0]["metrics"].keys(), ranks[0]
    assert {k: ranks[0]["metrics"][k] for k in keys} == {k: ranks[1]["metrics"][k] for k in keys}


def test_no_logger_and_no_progress_bar(tmp_path: Path) -> None:
    result = train(fast(tmp_path, "logger=none", "trainer.enable_progress_bar=false"))
    assert result["global_step"] == 2 and (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_wandb_offline_resume_continues_the_same_run(tmp_path: Path, wandb_offline) -> None:
    wandb = ("logger=wandb", "logger.wandb.offline=true", "~callbacks.progress_bar")
    train(fast(tmp_path, *wandb))
    run_id = (tmp_path / "wandb_run_id.txt").read_text().strip()
    assert run_id and run_id != "None"
    wandb_offline.finish()  # as when the process ends: the resumed run must find its id in the run folder
    result = train(fast(tmp_path, *wandb, "trainer.max_steps=3", "ckpt_path=last"))
    assert result["global_step"] == 3
    assert wandb_offline.run is not None and wandb_offline.run.id == run_id


def test_last_checkpoint_holds_the_final_step_between_periodic_saves(tmp_path: Path) -> None:
    # max_steps 3 with saves every 2 steps (and, alike, a stop by trainer.max_time): last.ckpt must be step 3.
    result = train(fast(tmp_path, "trainer.max_steps=3", "callbacks.model_checkpoint.every_n_train_steps=2"))
    assert result["global_step"] == 3
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 3
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step*.ckpt")) == ["step0000002.ckpt"]
