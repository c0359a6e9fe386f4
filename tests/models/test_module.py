"""LightningModule: losses, EMA, a 3-step fit for both architectures, checkpoints and load_model."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

from dequant.models.ema import EMA
from dequant.models.module import DequantModule, load_model
from dequant.models.nets import ConcatUNet, ControlNetUNet
from dequant.models.ranges import to_model_range
from dequant.models.sampling import SamplerSpec

torch.set_num_threads(1)

SIZE = 16
TINY_NET = dict(sample_size=SIZE, block_out_channels=(16, 32), attention_levels=(False, False), norm_num_groups=8)


def _batches(n: int, b: int = 2, seed: int = 0) -> list[dict]:
    """Random dict batches following the data module's contract; the first image of each is in palette mode."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        palette = torch.rand(4, 3, generator=g)
        index = torch.randint(0, 4, (b, SIZE, SIZE), generator=g)
        hint = torch.rand(b, 7, SIZE, SIZE, generator=g)
        hint[:, 0:3] = palette[index].permute(0, 3, 1, 2)
        out.append({
            "hint": hint,
            "target": torch.rand(b, 3, SIZE, SIZE, generator=g),
            "image_id": torch.arange(i * b, (i + 1) * b),
            "n_colors": torch.full((b,), 4),
            "patch": torch.tensor([False] + [True] * (b - 1)),
        })
    return out


def _module(**kw) -> DequantModule:
    torch.manual_seed(0)
    kw.setdefault("sampler", SamplerSpec("ddim", steps=3))
    return DequantModule(ConcatUNet(**TINY_NET), **kw)


class ImageLogger(CSVLogger):
    """A logger with W&B's log_image interface that records what it was given."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.images: list = []

    def log_image(self, key, images, step=None, **kwargs):
        self.images.append((key, images, step))


def _trainer(tmp_path, max_steps: int = 3, logger=False) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=logger,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0, limit_val_batches=2,
    )


# ------------------------------------------------------------------------------------------------------ losses
def test_diffusion_loss_is_finite_and_backpropagates():
    module = _module()
    loss = module.diffusion_loss(_batches(1)[0], torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in module.net.trainable_module().parameters())
    again = _module().diffusion_loss(_batches(1)[0], torch.Generator().manual_seed(0))
    assert torch.equal(loss.detach(), again.detach())


def test_epsilon_and_v_targets():
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    noise = torch.randn(2, 3, 4, 4)
    t = torch.tensor([10, 700])
    eps_module, v_module = _module(), _module(prediction_type="v_prediction")
    assert torch.equal(eps_module._targets(x0, noise, t), noise)
    a = eps_module.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(v_module._targets(x0, noise, t), a.sqrt() * noise - (1 - a).sqrt() * x0)
    sample_module = _module(prediction_type="sample")
    assert torch.equal(sample_module._targets(x0, noise, t), x0)
    with pytest.raises(ValueError, match="prediction_type"):
        _module(prediction_type="x0")


class _Oracle(nn.Module):
    """A denoiser that knows the clean image: returns the exact eps, v or x0 for any noisy input."""

    def __init__(self, x0: torch.Tensor, prediction_type: str):
        super().__init__()
        self.x0, self.prediction_type = x0, prediction_type
        self.unused = nn.Parameter(torch.zeros(1))  # the module's optimizer and EMA need a parameter
        self.alphas_cumprod: torch.Tensor | None = None

    def trainable_module(self) -> nn.Module:
        return self

    def forward(self, x, t, hint):
        a = self.alphas_cumprod[t.long().cpu()].view(-1, 1, 1, 1).to(x)
        eps = (x - a.sqrt() * self.x0) / (1 - a).sqrt()
        return {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * self.x0,
                "sample": self.x0.expand_as(x)}[self.prediction_type]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("sampler", [SamplerSpec("ddim", steps=5), SamplerSpec("dpmsolver", steps=5),
                                     SamplerSpec("ddpm", steps=5), SamplerSpec()])
def test_every_sampler_recovers_the_image_from_a_perfect_denoiser(prediction_type, sampler):
    # The schedulers must read the prediction type from the training scheduler: with the wrong one, a perfect
    # denoiser's outputs would be misread and the sample would be far from the image.
    x0 = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    oracle = _Oracle(x0, prediction_type)
    module = DequantModule(oracle, prediction_type=prediction_type, sampler=sampler)
    oracle.alphas_cumprod = module.noise_scheduler.alphas_cumprod
    out = module.sample(torch.rand(1, 7, SIZE, SIZE), use_ema=False)
    torch.testing.assert_close(out, (x0 + 1) / 2, atol=2e-3, rtol=0)


class _Recorder(nn.Module):
    """Wraps a net and remembers the hints it was given."""

    def __init__(self, net):
        super().__init__()
        self.inner = net
        self.hints: list[torch.Tensor] = []

    def forward(self, x, t, hint):
        self.hints.append(hint.detach().clone())
        return self.inner(x, t, hint)

    def trainable_module(self):
        return self.inner.trainable_module()


def test_condition_dropout_replaces_the_whole_hint_by_the_null_hint():
    batch = _batches(1, b=4)[0]
    rec = _Recorder(ConcatUNet(**TINY_NET))
    DequantModule(rec, cond_dropout=1.0).diffusion_loss(batch, torch.Generator().manual_seed(0))
    assert torch.equal(rec.hints[-1], torch.full_like(rec.hints[-1], -1.0))
    DequantModule(rec, cond_dropout=0.0).diffusion_loss(batch, torch.Generator().manual_seed(0))
    assert torch.equal(rec.hints[-1], to_model_range(batch["hint"]))
    DequantModule(rec, cond_dropout=0.5).diffusion_loss(batch, torch.Generator().manual_seed(2))
    dropped = (rec.hints[-1] == -1).flatten(1).all(1)
    assert 0 < int(dropped.sum()) < 4


# --------------------------------------------------------------------------------------------------------- EMA
def test_ema_update_math_and_scope_restores_exactly():
    toy = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    w0 = toy[0].weight.detach().clone()
    ema = EMA(toy, decay=0.5, warmup=False)
    with torch.no_grad():
        toy[0].weight.add_(1.0)
        toy[1].running_mean.fill_(3.0)
    w1 = toy[0].weight.detach().clone()
    ema.update(toy)
    shadow = 0.5 * w0 + 0.5 * w1
    with ema.ema_scope(toy):
        torch.testing.assert_close(toy[0].weight, shadow)
    assert torch.equal(toy[0].weight, w1)
    assert int(ema.num_updates) == 1
    # Warmup: the n-th update (from 0) uses min(decay, (1 + n) / (10 + n)).
    warm = EMA(toy, decay=0.999)
    assert warm.current_decay() == pytest.approx(0.1)
    warm.update(toy)
    assert warm.current_decay() == pytest.approx(2 / 11)
    with pytest.raises(ValueError, match="module"):
        ema.update(nn.Linear(3, 2))


def test_ema_lives_in_the_state_dict_but_is_not_a_buffer():
    module = _module()
    names = [n for n, _ in module.net.trainable_module().named_parameters()]
    state = module.state_dict()
    assert all(f"ema.shadow.{n}" in state for n in names)
    # DDP broadcasts registered buffers before every forward: the shadow must not be one.
    assert not any(n.startswith("ema.shadow") for n, _ in module.named_buffers())
    with torch.no_grad():
        module.ema.shadow[names[0]].add_(1.0)
    fresh = _module()
    fresh.load_state_dict(module.state_dict())
    assert torch.equal(fresh.ema.shadow[names[0]], module.ema.shadow[names[0]])
    partial = {k: v for k, v in state.items() if k != f"ema.shadow.{names[0]}"}
    result = fresh.load_state_dict({**partial, "ema.shadow.bogus": torch.zeros(1)}, strict=False)
    assert result.missing_keys == [f"ema.shadow.{names[0]}"] and result.unexpected_keys == ["ema.shadow.bogus"]
    moved = fresh.to(torch.float64)
    assert moved.ema.shadow[names[0]].dtype == torch.float64
    assert not any(k.startswith("ema.") for k in _module(use_ema=False).state_dict())


# ------------------------------------------------------------------------------------------------ fit + samples
def test_fit_concat_updates_ema_and_writes_samples(tmp_path):
    module = _module(samples_dir=str(tmp_path / "samples"), val_max_images=3, warmup_steps=2)
    logger = ImageLogger(tmp_path / "logs")
    trainer = _trainer(tmp_path, logger=logger)
    trainer.fit(module, DataLoader(_batches(3), batch_size=None), DataLoader(_batches(2, seed=1), batch_size=None))
    assert trainer.global_step == 3 and int(module.ema.num_updates) == 3
    metrics = trainer.callback_metrics
    for name in ("train/loss", "val/loss", "val/l1", "val/psnr", "val/ssim", "val/texture_corr", "val/palette_de2000"):
        assert name in metrics and torch.isfinite(metrics[name]), name
    assert (tmp_path / "samples" / "val_step000003.png").is_file()
    (key, images, step), = logger.images
    assert key == "val/samples" and step == 3 and images[0].ndim == 3 and images[0].shape[0] == 3
    lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]
    assert lrs == [pytest.approx(1e-4)]


@pytest.mark.parametrize("decay", [0, 10])
def test_learning_rate_warms_up_then_decays_to_zero_on_a_cosine(decay):
    opts = _module(lr=1e-3, warmup_steps=2, lr_decay_steps=decay).configure_optimizers()
    opt, sched = opts["optimizer"], opts["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == [pytest.approx(5e-4), pytest.approx(1e-3), pytest.approx(1e-3)]
    if decay == 0:
        assert lrs[2:] == [pytest.approx(1e-3)] * 10
    else:
        # Half-way through the decay (step 6 of 2..10) the cosine stands at half; from step 10 on, at 0.
        assert lrs[6] == pytest.approx(5e-4) and all(a > b for a, b in zip(lrs[2:10], lrs[3:11]))
        assert lrs[10:] == [0.0, 0.0]


@pytest.mark.parametrize("bad", [-1, 2, 1.5, True])
def test_lr_decay_steps_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="lr_decay_steps"):
        _module(warmup_steps=2, lr_decay_steps=bad)


def test_ema_updates_once_per_optimizer_step(tmp_path):
    module = _module()
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accumulate_grad_batches=2, default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(_batches(4), batch_size=None))
    assert trainer.global_step == 2 and int(module.ema.num_updates) == 2


def test_fit_controlnet(tmp_path, save_tiny_pretrained_unet):
    net = ControlNetUNet(save_tiny_pretrained_unet(tmp_path / "unet", sample_size=SIZE),
                         conditioning_channels=(8, 16), null_embedding_path="zeros")
    frozen = {k: v.clone() for k, v in net.unet.state_dict().items()}
    module = DequantModule(net, sampler=SamplerSpec("ddim", steps=2), val_max_images=2)
    trainer = _trainer(tmp_path)
    trainer.fit(module, DataLoader(_batches(3), batch_size=None), DataLoader(_batches(1, seed=1), batch_size=None))
    assert trainer.global_step == 3
    assert all(torch.equal(v, net.unet.state_dict()[k]) for k, v in frozen.items())
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in net.controlnet.parameters()}
    zero = net.controlnet.controlnet_mid_block.weight
    assert torch.count_nonzero(zero) > 0
    out = module.sample(_batches(1)[0]["hint"], sampler="ddim", steps=2)
    assert out.shape == (2, 3, SIZE, SIZE) and 0 <= out.min() and out.max() <= 1


def test_sample_is_per_image_and_uses_ema():
    module = _module()
    hint = _batches(1, b=3)[0]["hint"]
    out = module.sample(hint, image_ids=[5, 6, 7])
    alone = module.sample(hint[2:], image_ids=[7])
    assert out.shape == (3, 3, SIZE, SIZE) and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(alone, out[2:], atol=1e-5, rtol=0)
    with torch.no_grad():
        for p in module.net.parameters():
            p.add_(0.05)
    assert not torch.equal(module.sample(hint, use_ema=False), module.sample(hint, use_ema=True))
    assert torch.equal(module.sample(hint, use_ema=True), module.sample(hint))
    with pytest.raises(ValueError, match="hint"):
        module.sample(hint[:, :3])
    with pytest.raises(ValueError, match="steps"):
        module.sample(hint, sampler="ddpm_super27", steps=10)


# ------------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory):
    """A 2-step run's checkpoint, written with a full run config that holds other _target_ nodes."""
    tmp = tmp_path_factory.mktemp("ckpt")
    net_node = {"_target_": "dequant.models.nets.ConcatUNet", **{k: list(v) if isinstance(v, tuple) else v
                                                                  for k, v in TINY_NET.items()}}
    config = {
        "seed": 3,
        "data": {"_target_": "no.such.DataModule", "batch_size": 2},
        "module": {"_target_": "dequant.models.module.DequantModule", "net": net_node, "lr": 3e-4,
                   "sampler": {"_target_": "dequant.models.sampling.SamplerSpec", "name": "ddim", "steps": 3}},
    }
    torch.manual_seed(0)
    module = DequantModule(ConcatUNet(**TINY_NET), lr=3e-4, sampler=SamplerSpec("ddim", steps=3), config=config)
    trainer = _trainer(tmp, max_steps=2)
    trainer.fit(module, DataLoader(_batches(2), batch_size=None))
    path = tmp / "model.ckpt"
    trainer.save_checkpoint(path)
    return module, path, config


def test_checkpoint_round_trip_gives_identical_samples(trained_ckpt):
    module, path, config = trained_ckpt
    ckpt = torch.load(path, weights_only=True)  # plain types only: Lightning's resume loads this way
    assert ckpt["dequant_config"] == config
    loaded = load_model(path)
    assert loaded.hparams.config == config and loaded.hparams.lr == pytest.approx(3e-4)
    assert int(loaded.ema.num_updates) == 2
    hint = _batches(1, b=2, seed=5)[0]["hint"]
    assert torch.equal(module.sample(hint, seed=4), loaded.sample(hint, seed=4))
    assert torch.equal(module.sample(hint, use_ema=False), loaded.sample(hint, use_ema=False))


def test_resume_from_checkpoint(trained_ckpt, tmp_path):
    _, path, _ = trained_ckpt
    module = load_model(path)
    trainer = _trainer(tmp_path, max_steps=3)
    trainer.fit(module, DataLoader(_batches(2), batch_size=None), ckpt_path=str(path))
    assert trainer.global_step == 3 and int(module.ema.num_updates) == 3


def test_checkpoint_without_run_config_rebuilds_from_hparams(tmp_path):
    module = _module(use_ema=False, cond_dropout=0.1)
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(module, DataLoader(_batches(1), batch_size=None))
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    loaded = load_model(tmp_path / "a.ckpt")
    assert loaded.ema is None and loaded.hparams.cond_dropout == pytest.approx(0.1)
    assert loaded.sampler_spec == SamplerSpec("ddim", steps=3)
    hint = _batches(1)[0]["hint"]
    assert torch.equal(module.sample(hint), loaded.sample(hint))


def test_load_model_errors(trained_ckpt, tmp_path):
    _, path, config = trained_ckpt
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "missing.ckpt")
    (tmp_path / "corrupt.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_model(tmp_path / "corrupt.ckpt")
    other = {"module": {**config["module"], "net": {**config["module"]["net"], "block_out_channels": [32, 64]}}}
    with pytest.raises(ValueError, match=r"module\.net\.block_out_channels: checkpoint \[16, 32\] vs expected"):
        load_model(path, expected_config=other)
    assert isinstance(load_model(path, expected_config=config), DequantModule)
