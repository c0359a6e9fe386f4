"""dequant-export: diffusers folders with the EMA weights that load back into the same model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dequant.export import export, is_exported, load_exported, main, read_dequant_config
from dequant.models.module import load_model
from dequant.models.module import DequantModule, load_model


def _hint(seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.rand(2, 7, size, size, generator=torch.Generator().manual_seed(seed))


def test_export_writes_ema_weights_that_sample_identically(tiny_ckpt: Path, tiny_run: Path, tmp_path: Path) -> None:
    out = export(tiny_ckpt, tmp_path / "model")
    assert is_exported(out)
    assert sorted(p.name for p in out.iterdir()) == ["dequant_config.json", "split.json", "unet"]
    assert (out / "unet" / "config.json").is_file()
    original = torch.load(tiny_ckpt, map_location="cpu", weights_only=False)["dequant_config"]
    assert json.loads((out / "dequant_config.json").read_text()) == original == read_dequant_config(out)
    assert (out / "split.json").read_text() == (tiny_run / "split.json").read_text()

    trained, exported = load_model(tiny_ckpt), load_exported(out)
    assert exported.ema is None and not exported.training
    h = _hint()
    ema_out = trained.sample(h, seed=5)
    torch.testing.assert_close(exported.sample(h, seed=5), ema_out, rtol=0, atol=0)
    # The EMA weights, not the training weights, were exported.
    assert not torch.allclose(trained.sample(h, seed=5, use_ema=False), ema_out)
    assert isinstance(load_model(out), DequantModule) and isinstance(load_model(tiny_ckpt), DequantModule)


def test_cli_refuses_to_overwrite_and_reports_bad_input(tiny_ckpt: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m"
    assert main([str(tiny_ckpt), str(out)]) == 0
    before = (out / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main([str(tiny_ckpt), str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == before
    assert main([str(tiny_ckpt), str(out), "--overwrite"]) == 0
    for bad in (tmp_path / "missing.ckpt", out):
        assert main([str(bad), str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("dequant-export: error:")
        assert not (tmp_path / "x").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folders left


def test_load_exported_rejects_foreign_folders(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dequant_config.json"):
        load_exported(tmp_path)
    (tmp_path / "dequant_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        load_exported(tmp_path)


def test_controlnet_export_round_trip(tmp_path: Path, save_tiny_pretrained_unet) -> None:
    from dequant.models.nets import ControlNetUNet

    net = ControlNetUNet(save_tiny_pretrained_unet(tmp_path / "pretrained", sample_size=16),
                         conditioning_channels=(8, 16), null_embedding_path="zeros")
    module = DequantModule(net, sampler={"name": "ddim", "steps": 2})
    torch.manual_seed(0)
    with torch.no_grad():  # stand-in for training: the ControlNet leaves its zero initialisation
        for p in net.controlnet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    module.ema.update(net.trainable_module())
    ckpt = tmp_path / "cn.ckpt"
    torch.save({"state_dict": module.state_dict(), "dequant_config": module.dequant_config()}, ckpt)

    out = export(ckpt, tmp_path / "export")
    assert {"unet", "controlnet", "null_embedding.pt", "dequant_config.json"} <= {p.name for p in out.iterdir()}
    shutil.rmtree(tmp_path / "pretrained")  # the export must not need the original pretrained folder
    h = _hint(1, 16)
    expected = module.sample(h, seed=3)
    torch.testing.assert_close(load_exported(out).sample(h, seed=3), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(module.sample(h, seed=3, use_ema=False), expected)
