"""Formulations (noise, residual, bridge): untrained zero-init models, perfect-predictor oracles, sampler checks,
checkpoints that remember their formulation, and checkpoints from before formulations existed."""

from __future__ import annotations

import re

import lightning as L
import pytest
import torch
from torch import nn

from dequant.models.formulations import (
    BridgeFormulation,
    NoiseFormulation,
    ResidualFormulation,
    as_formulation,
    regression_loss,
)
from dequant.models.module import DequantModule, load_model
from dequant.models.nets import ConcatUNet
from dequant.models.ranges import to_model_range
from dequant.models.sampling import SamplerSpec

torch.set_num_threads(1)

SIZE = 16
TINY_NET = dict(sample_size=SIZE, block_out_channels=(16, 32), attention_levels=(False, False), norm_num_groups=8)


def _hint(seed: int = 0, b: int = 2) -> torch.Tensor:
    return torch.rand(b, 7, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _module(formulation, sampler, **kw) -> DequantModule:
    torch.manual_seed(0)
    return DequantModule(ConcatUNet(**TINY_NET), formulation=formulation, sampler=sampler, **kw)


# --------------------------------------------------------------------------------- untrained zero-init models
@pytest.mark.parametrize("sampler", [SamplerSpec("predictor", steps=1), SamplerSpec("ddim", steps=3)])
def test_untrained_residual_returns_its_input_exactly(sampler):
    # x0 prediction: a zero net predicts a zero residual, so even the refined sample is the input itself.
    module = _module("residual", sampler, prediction_type="sample")
    hint = _hint()
    assert torch.equal(module.sample(hint, use_ema=False), hint[:, 0:3])


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_untrained_residual_predictor_returns_its_input_for_any_prediction_type(prediction_type):
    module = _module("residual", "predictor", prediction_type=prediction_type)
    hint = _hint()
    assert torch.equal(module.sample(hint, use_ema=False), hint[:, 0:3])


@pytest.mark.parametrize("steps", [1, 4, 10])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_untrained_bridge_returns_its_input(steps, eta):
    module = _module("bridge", SamplerSpec("bridge", steps=steps, eta=eta))
    hint = _hint()
    diff = (module.sample(hint, use_ema=False) - hint[:, 0:3]).abs()
    if eta == 0 or steps == 1:
        assert float(diff.max()) == 0.0
    else:
        # The bridge noise (sigma 0.1 in [-1, 1]) between steps is all an untrained bridge adds: about its input.
        assert 0 < float(diff.mean()) < 0.05


def test_without_zero_init_the_untrained_bridge_changes_its_input():
    module = _module(BridgeFormulation(zero_init=False), "bridge")
    hint = _hint()
    assert (module.sample(hint, use_ema=False) - hint[:, 0:3]).abs().max() > 1e-3


# ------------------------------------------------------------------------------------ perfect-predictor oracles
class _Oracle(nn.Module):
    """A net that knows the clean image x0 (model range) and answers each formulation's question exactly."""

    def __init__(self, x0: torch.Tensor, answer):
        super().__init__()
        self.x0, self.answer = x0, answer
        self.unused = nn.Parameter(torch.zeros(1))

    def trainable_module(self) -> nn.Module:
        return self

    def forward(self, x, t, hint):
        return self.answer(self, x, t, hint)


def _clean(seed: int = 1) -> torch.Tensor:
    return torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 1.6 - 0.8


@pytest.mark.parametrize("steps", [1, 3, 10])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_bridge_with_a_perfect_predictor_returns_the_image(steps, eta):
    x0 = _clean()
    oracle = _Oracle(x0, lambda self, x, t, hint: self.x0 - x)  # x0 = x_t + net(...)
    module = DequantModule(oracle, formulation=BridgeFormulation(zero_init=False),
                           sampler=SamplerSpec("bridge", steps=steps, eta=eta))
    out = module.sample(_hint(), use_ema=False)
    torch.testing.assert_close(out, (x0 + 1) / 2, atol=1e-5, rtol=0)


def test_residual_predictor_alone_is_the_predictors_answer():
    x0 = _clean()

    def answer(self, x, t, hint):
        assert bool((t == 1000).all()), "the predictor runs at the timestep T, outside the refiner's range"
        return self.x0 - hint[:, 0:3]

    module = DequantModule(_Oracle(x0, answer), formulation=ResidualFormulation(zero_init=False), sampler="predictor")
    out = module.sample(_hint(), use_ema=False)
    torch.testing.assert_close(out, (x0 + 1) / 2, atol=1e-6, rtol=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("sampler", [SamplerSpec("ddim", steps=5), SamplerSpec("dpmsolver", steps=5),
                                     SamplerSpec("ddpm", steps=5)])
def test_residual_with_a_useless_predictor_and_a_perfect_refiner_returns_the_image(prediction_type, sampler):
    # The predictor adds nothing (g = y), so the whole image must come from the sampled residual (x0 - y) / scale
    # (kept inside the samplers' clipping range [-1, 1]).
    x0 = _clean()
    hint = _hint()
    hint[:, 0:3] = ((x0 + 1) / 2 + 0.05 * torch.randn_like(x0, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    form = ResidualFormulation(residual_scale=0.5, zero_init=False)
    residual = (x0 - to_model_range(hint[:, 0:3])) / form.residual_scale
    module_box: list[DequantModule] = []

    def answer(self, x, t, hint_m):
        if bool((t == 1000).all()):
            return torch.zeros_like(x)
        a = module_box[0].noise_scheduler.alphas_cumprod[t.long().cpu()].view(-1, 1, 1, 1).to(x)
        eps = (x - a.sqrt() * residual) / (1 - a).sqrt()
        return {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * residual,
                "sample": residual.expand_as(x)}[prediction_type]

    module = DequantModule(_Oracle(x0, answer), formulation=form, sampler=sampler, prediction_type=prediction_type)
    module_box.append(module)
    out = module.sample(hint, use_ema=False)
    torch.testing.assert_close(out, (x0 + 1) / 2, atol=2e-3, rtol=0)


# ------------------------------------------------------------------------------------------------------ losses
@pytest.mark.parametrize("formulation", ["noise", "residual", "bridge"])
def test_training_loss_is_finite_backpropagates_and_is_seeded(formulation):
    batch = {"hint": _hint(), "target": torch.rand(2, 3, SIZE, SIZE)}
    sampler = {"noise": "ddim", "residual": "predictor", "bridge": "bridge"}[formulation]
    module = _module(formulation, sampler)
    loss = module.diffusion_loss(batch, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in module.net.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    again = _module(formulation, sampler).diffusion_loss(batch, torch.Generator().manual_seed(0))
    assert torch.equal(loss.detach(), again.detach())


def test_log_l2_loss_weighs_images_by_their_own_error():
    target = torch.zeros(2, 3, 4, 4)
    pred = target.clone()
    pred[0] += 0.01
    pred[1] += 1.0
    # Halving the small error lowers log_l2 as much as halving the large one; plain L2 barely sees the small one.
    small = pred.clone()
    small[0] = 0.005
    large = pred.clone()
    large[1] = 0.5
    gain = {k: float(regression_loss(pred, target, k)) for k in ("l2", "log_l2")}
    assert float(regression_loss(small, target, "log_l2")) < gain["log_l2"] - 0.2
    assert gain["l2"] - float(regression_loss(small, target, "l2")) < 1e-4
    assert float(regression_loss(large, target, "l2")) < gain["l2"] - 0.1


def test_grad_weight_charges_a_contour_more_than_a_uniform_error_of_the_same_mse():
    target = torch.zeros(2, 3, 8, 8)
    pred = target.clone()
    pred[0, :, :, 4:] = 0.2  # a step (a contour left in a flat area): MSE 0.02, gradient error at one column
    pred[1] += 0.2 * 0.5**0.5  # the same MSE, spread evenly: no gradient error
    for kind in ("l2", "log_l2", "l1"):
        plain = [float(regression_loss(pred[i:i + 1], target[i:i + 1], kind)) for i in range(2)]
        weighted = [float(regression_loss(pred[i:i + 1], target[i:i + 1], kind, grad_weight=1.0)) for i in range(2)]
        assert weighted[1] == pytest.approx(plain[1], abs=1e-6)  # a uniform offset has no gradient error
        assert weighted[0] > plain[0] + 1e-4
    assert float(regression_loss(pred, target, "l2", grad_weight=0.0)) == float(regression_loss(pred, target, "l2"))


def test_a_short_fit_moves_the_bridge_toward_the_target(tmp_path):
    # Learnable: target = the color input brightened by 0.2. A few steps must bring the one-step output closer.
    g = torch.Generator().manual_seed(0)
    hint = torch.rand(4, 7, SIZE, SIZE, generator=g)
    target = (hint[:, 0:3] + 0.2).clamp(0, 1)
    batches = [{"hint": hint, "target": target, "image_id": torch.arange(4)}]
    module = _module("bridge", SamplerSpec("bridge", steps=1), lr=3e-3, use_ema=False)
    before = (module.sample(hint) - target).abs().mean()
    trainer = L.Trainer(max_steps=40, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches * 40, batch_size=None))
    after = (module.sample(hint) - target).abs().mean()
    assert after < 0.5 * before


# ------------------------------------------------------------------------------------------- choices and errors
@pytest.mark.parametrize(("formulation", "sampler", "choices"), [
    ("noise", "predictor", "ddpm_super27"),
    ("noise", "bridge", "ddpm_super27"),
    ("residual", "bridge", "predictor"),
    ("bridge", "ddim", "bridge"),
    ("bridge", "predictor", "bridge"),
])
def test_a_sampler_of_another_formulation_is_refused_naming_key_and_choices(formulation, sampler, choices):
    with pytest.raises(ValueError, match=rf"sampler\.name: '{sampler}' cannot sample a '{formulation}'.*{choices}"):
        _module(formulation, sampler)
    # The same at sampling time, for a model built with a valid sampler.
    ok = {"noise": "ddim", "residual": "predictor", "bridge": "bridge"}[formulation]
    with pytest.raises(ValueError, match=r"sampler\.name"):
        _module(formulation, ok).sample(_hint(), sampler=sampler)


def test_bridge_refuses_an_sdedit_start_step():
    with pytest.raises(ValueError, match=r"sampler\.start_step.*choices: \[0\]"):
        _module("bridge", SamplerSpec("bridge", steps=4, start_step=1))


def test_predictor_sampler_takes_one_step_only():
    with pytest.raises(ValueError, match="steps must be 1 for the predictor"):
        SamplerSpec("predictor", steps=3)


@pytest.mark.parametrize("bad", ["diffusion", {"_target_": "dequant.models.formulations.Nope"},
                                 {"_target_": "dequant.models.formulations.BridgeFormulation", "nope": 1}])
def test_unknown_formulations_are_refused(bad):
    """An unknown name, target or field is refused naming the formulation."""
    with pytest.raises(ValueError, match="formulation"):
        as_formulation(bad)


def test_zero_init_needs_a_net_with_a_last_layer_to_zero():
    with pytest.raises(ValueError, match=r"formulation\.zero_init"):
        DequantModule(_Oracle(_clean(), lambda *a: None), formulation="bridge", sampler="bridge")


@pytest.mark.parametrize("kwargs, message", [
    (dict(predictor_loss="l3"), "predictor_loss must be one of ['l2', 'l1', 'log_l2'], got 'l3'"),
    (dict(residual_scale=0.0), "residual_scale must be > 0, got 0.0"),
    (dict(refiner_weight=-1), "refiner_weight must be >= 0, got -1"),
])
def test_residual_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ResidualFormulation(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(loss="huber"), "loss must be one of ['l2', 'l1', 'log_l2'], got 'huber'"),
    (dict(sigma=-0.1), "sigma must be >= 0, got -0.1"),
    (dict(p_endpoint=1.5), "p_endpoint must lie in [0, 1], got 1.5"),
    (dict(grad_weight=-1), "grad_weight must be a finite number >= 0, got -1"),
])
def test_bridge_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        BridgeFormulation(**kwargs)


@pytest.mark.parametrize("cls", [NoiseFormulation, ResidualFormulation, BridgeFormulation])
@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), True, "4"])
def test_grad_weight_out_of_range_is_refused_by_every_formulation(cls, bad):
    with pytest.raises(ValueError, match="grad_weight"):
        cls(grad_weight=bad)


@pytest.mark.parametrize("cls", [NoiseFormulation, ResidualFormulation, BridgeFormulation])
def test_grad_weight_adds_to_every_formulations_loss_and_defaults_to_none(cls):
    torch.manual_seed(0)
    net = ConcatUNet(**TINY_NET)
    nn.init.normal_(net.unet.conv_out.weight, std=0.1)  # an untrained zero-init net would make no contour error
    scheduler = DequantModule(ConcatUNet(**TINY_NET)).noise_scheduler
    x0 = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    hint = _hint()

    def loss(formulation):
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        return float(formulation.validation_loss(net, x0, hint, scheduler, gens))

    # An old checkpoint's formulation node has no grad_weight: its default must be the loss it trained with.
    assert loss(cls()) == loss(cls(grad_weight=0.0))
    assert loss(cls(grad_weight=4.0)) > loss(cls()) + 1e-4
    assert cls(grad_weight=4).hydra_config()["grad_weight"] == 4.0


@pytest.mark.parametrize("experiment", ["demo", "cpu_quality"])
@pytest.mark.parametrize("formulation", ["noise", "residual", "bridge", "bridge_one_step"])
def test_the_formulation_sweep_builds_every_formulation_on_the_cpu_recipes(experiment, formulation):
    # sweeps/formulation.yaml swaps the formulation of a recipe that sets formulation.grad_weight.
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from dequant.config import conf_dir

    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", f"formulation={formulation}"])
    built = instantiate(cfg.formulation)
    assert built.name == formulation.removesuffix("_one_step") and built.grad_weight == 4.0
    if built.name == "bridge":
        # bridge_one_step trains only where its own default sampler (one step from the color input) starts.
        assert built.p_endpoint == (1.0 if formulation == "bridge_one_step" else 0.5)
        assert cfg.sampler.name == "bridge" and cfg.sampler.steps == 1


def test_network_evaluations_per_image():
    assert NoiseFormulation().network_evaluations(SamplerSpec("ddim", steps=10, start_step=4)) == 6
    assert ResidualFormulation().network_evaluations(SamplerSpec("predictor", steps=1)) == 1
    assert ResidualFormulation().network_evaluations(SamplerSpec("ddim", steps=3)) == 4
    assert BridgeFormulation().network_evaluations(SamplerSpec("bridge", steps=4)) == 4


# ------------------------------------------------------------------------------------------------- checkpoints
def _save(module: DequantModule, path, drop_formulation: bool = False):
    cfg = module.dequant_config()
    if drop_formulation:
        cfg["module"].pop("formulation")
    torch.save({"state_dict": module.state_dict(), "dequant_config": cfg}, path)
    return path


@pytest.mark.parametrize(("formulation", "sampler"), [("residual", "predictor"), ("bridge", "bridge")])
def test_a_checkpoint_remembers_its_formulation(tmp_path, formulation, sampler):
    module = _module(formulation, sampler, use_ema=False)
    with torch.no_grad():
        for p in module.net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    loaded = load_model(_save(module, tmp_path / "m.ckpt"))
    assert loaded.formulation.hydra_config() == module.formulation.hydra_config()
    assert torch.equal(loaded.sample(_hint()), module.sample(_hint()))


def test_a_checkpoint_from_before_formulations_loads_as_noise(tmp_path):
    module = _module("noise", SamplerSpec("ddim", steps=3))
    loaded = load_model(_save(module, tmp_path / "old.ckpt", drop_formulation=True))
    assert isinstance(loaded.formulation, NoiseFormulation)
    assert torch.equal(loaded.sample(_hint()), module.sample(_hint()))
