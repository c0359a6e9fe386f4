"""Formulations: what the net is trained to predict, where sampling starts and how one sampling step moves.

One class per option of the config group `formulation` (conf/formulation/):

- `NoiseFormulation` (`noise`, the paper's): conditional diffusion from pure noise; the net predicts eps, v or x0 of
  the image at a DDPM timestep, and the diffusers samplers (super27 DDPM, DDPM, DDIM, DPM-Solver++) walk from noise.
- `ResidualFormulation` (`residual`, predict-and-refine as in Whang et al., "Deblurring via Stochastic Refinement",
  CVPR 2022): one shared UNet is both a deterministic predictor `g = y + net(y, T, hint)` trained with an L1/L2 loss
  to the target, and a diffusion model of what the predictor misses, `x0 - g`. The sampler `predictor` returns `g`
  alone (one network evaluation); any diffusion sampler adds a sampled residual to it.
- `BridgeFormulation` (`bridge`, InDI / I2SB-style): a bridge from the target (t=0) to the quantized color input y
  (t=1), `x_t = (1-t) x0 + t y + sigma sqrt(t (1-t)) eps`. The net predicts `x0 = x_t + net(x_t, t T, hint)`;
  the sampler `bridge` starts at y itself and walks to t=0 in `steps` network evaluations.

With `zero_init` (residual, bridge) the net's last layer starts at zero, so an untrained model returns its color
input exactly, and training can only move it from there. Every tensor here is in the model range [-1, 1]; the
module converts at its boundary. DequantModule, the evaluation and the editors call these methods and never branch
on a formulation's name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import Tensor, nn

from dequant.color._checks import check_choice
from dequant.color.hint import COLOR
from dequant.models.sampling import DIFFUSION_SAMPLERS, SamplerSpec, make_scheduler, randn_like_per_image, sample_loop

Net = Callable[[Tensor, Tensor, Tensor], Tensor]
REGRESSION_LOSSES = ("l2", "l1", "log_l2")
_LOG_EPS = 1e-4


def _color(hint: Tensor) -> Tensor:
    """The color input y (the quantized image, or the photo with a flat patch) of a model-range hint."""
    return hint[:, COLOR]


def _gradient_sq_error(diff: Tensor) -> Tensor:
    """Per image, the mean squared forward difference of `diff` along rows and columns: the error of the output's
    gradients, where a quantization contour left in a smooth area counts fully, however few pixels it covers."""
    dy = (diff[..., 1:, :] - diff[..., :-1, :]).square().flatten(1).mean(1)
    dx = (diff[..., :, 1:] - diff[..., :, :-1]).square().flatten(1).mean(1)
    return 0.5 * (dx + dy)


def regression_loss(pred: Tensor, target: Tensor, kind: str, grad_weight: float = 0.0) -> Tensor:
    """L2, L1, or `log_l2`: the mean over images of log(MSE + 1e-4), i.e. minus the mean PSNR up to a constant.

    `log_l2` weighs every image by the inverse of its own error, so the large errors of 1- and 2-color examples do
    not drown the small corrections that 64-color examples need. `grad_weight` > 0 adds that weight times the
    squared error of the gradients (`_gradient_sq_error`) to each image's error (l2, log_l2) or to the loss (l1).
    """
    diff = pred.float() - target.float()
    grad = _gradient_sq_error(diff) if grad_weight > 0 else None
    if kind == "l1":
        return diff.abs().mean() + (grad_weight * grad.mean() if grad is not None else 0.0)
    per_image = diff.square().flatten(1).mean(1)
    if grad is not None:
        per_image = per_image + grad_weight * grad
    if kind == "l2":
        return per_image.mean()
    return torch.log(per_image + _LOG_EPS).mean()


def _check_grad_weight(grad_weight: float) -> float:
    """A finite weight >= 0 for the gradient term."""
    if isinstance(grad_weight, bool) or not isinstance(grad_weight, (int, float)) or not (
            math.isfinite(grad_weight) and grad_weight >= 0):
        raise ValueError(f"grad_weight must be a finite number >= 0, got {grad_weight!r}")
    return float(grad_weight)


def _diffusion_mse(pred: Tensor, target: Tensor, grad_weight: float) -> Tensor:
    """MSE of the net's eps / v / x0 prediction, plus `grad_weight` times the squared error of its gradients
    (`_gradient_sq_error`); for eps and v that is the x0 estimate's gradient error, scaled per timestep."""
    loss = F.mse_loss(pred.float(), target.float())
    if grad_weight > 0:
        loss = loss + grad_weight * _gradient_sq_error(pred.float() - target.float()).mean()
    return loss


def _with_guidance(net: Net, guidance: float, null_hint: Tensor | None) -> Net:
    """A net whose output mixes conditional and null-hint outputs, u + g (c - u), when guidance != 1."""
    if guidance == 1.0:
        return net

    def guided(x: Tensor, t: Tensor, hint: Tensor) -> Tensor:
        null = torch.full_like(hint, -1.0) if null_hint is None else null_hint.to(hint)
        out = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([hint, null]))
        cond, uncond = out.chunk(2)
        return uncond + guidance * (cond - uncond)

    return guided


def diffusion_targets(scheduler: DDPMScheduler, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """What a diffusion net regresses: eps, v = sqrt(a) eps - sqrt(1 - a) x0, or x0 itself ("sample")."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    return scheduler.get_velocity(x0, noise, t)


class Formulation:
    """Base class: the training loss, the validation loss and the sampler of one formulation."""

    name: ClassVar[str] = ""
    samplers: ClassVar[tuple[str, ...]] = ()

    def hydra_config(self) -> dict:
        """A plain Hydra node (`_target_` + constructor arguments) that rebuilds this formulation."""
        return {"_target_": f"{type(self).__module__}.{type(self).__qualname__}", **self._kwargs()}

    def _kwargs(self) -> dict:
        return {}

    def init_net(self, net: nn.Module) -> None:
        """Prepare a freshly built net (e.g. zero its last layer); loading a checkpoint overwrites it anyway."""

    def check_sampler(self, spec: SamplerSpec, key: str = "sampler.name") -> None:
        """Refuse a sampler this formulation cannot use, naming the key and the choices."""
        if spec.name not in self.samplers:
            raise ValueError(
                f"{key}: {spec.name!r} cannot sample a {self.name!r} model (formulation={self.name}); "
                f"choices: {list(self.samplers)}"
            )

    def network_evaluations(self, spec: SamplerSpec) -> int:
        """How many net calls one image costs with `spec` (guidance doubles the batch, not the count)."""
        return spec.steps - spec.start_step

    def training_loss(self, net: Net, x0: Tensor, hint: Tensor, scheduler: DDPMScheduler,
                      generator: torch.Generator | None) -> Tensor:
        """The loss of one batch (model range) with randomness from `generator`."""
        raise NotImplementedError

    def validation_loss(self, net: Net, x0: Tensor, hint: Tensor, scheduler: DDPMScheduler,
                        generators: Sequence[torch.Generator]) -> Tensor:
        """The loss at randomness fixed per image (one generator each), so it is comparable across validations."""
        raise NotImplementedError

    def sample(self, net: Net, hint: Tensor, spec: SamplerSpec, scheduler: DDPMScheduler,
               generators: Sequence[torch.Generator], null_hint: Tensor | None = None) -> Tensor:
        """Outputs `(B,3,H,W)` in [-1, 1] for a model-range hint."""
        raise NotImplementedError


def _fixed_t_noise(x0: Tensor, generators: Sequence[torch.Generator], n_t: int) -> tuple[Tensor, Tensor]:
    """Per-image integer timesteps in [0, n_t) and noise, each image from its own CPU generator."""
    t = torch.cat([torch.randint(0, n_t, (1,), generator=g) for g in generators])
    noise = torch.cat([torch.randn((1, *x0.shape[1:]), generator=g) for g in generators])
    return t.to(x0.device), noise.to(device=x0.device, dtype=x0.dtype)


class NoiseFormulation(Formulation):
    """The paper's conditional diffusion from pure noise (eps / v / x0 prediction on the module's DDPM schedule)."""

    name = "noise"
    samplers = DIFFUSION_SAMPLERS

    def __init__(self, grad_weight: float = 0.0) -> None:
        self.grad_weight = _check_grad_weight(grad_weight)

    def _kwargs(self) -> dict:
        return {"grad_weight": self.grad_weight}

    def training_loss(self, net, x0, hint, scheduler, generator):
        """MSE between the net's prediction and eps/v/x0 at uniform random timesteps (plus the gradient term)."""
        b = x0.shape[0]
        t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        pred = net(scheduler.add_noise(x0, noise, t), t, hint)
        return _diffusion_mse(pred, diffusion_targets(scheduler, x0, noise, t), self.grad_weight)

    def validation_loss(self, net, x0, hint, scheduler, generators):
        """The same MSE at per-image fixed timesteps and noise."""
        t, noise = _fixed_t_noise(x0, generators, scheduler.config.num_train_timesteps)
        pred = net(scheduler.add_noise(x0, noise, t), t, hint)
        return _diffusion_mse(pred, diffusion_targets(scheduler, x0, noise, t), self.grad_weight)

    def sample(self, net, hint, spec, scheduler, generators, null_hint=None):
        """Walk from pure noise (or from the noised color input after `start_step`) with a diffusers sampler."""
        self.check_sampler(spec)
        sched = make_scheduler(spec, scheduler.config, device=hint.device)
        return sample_loop(net, hint, sched, generators=list(generators), start_step=spec.start_step,
                           guidance=spec.guidance, null_hint=null_hint, eta=spec.eta)


def _zero_output(net: nn.Module) -> None:
    """Zero the net's last layer (nets that have one: ConcatUNet.zero_output)."""
    if not hasattr(net, "zero_output"):
        raise ValueError(f"formulation.zero_init: {type(net).__name__} has no last layer to zero (ConcatUNet has); "
                         "set formulation.zero_init=false")
    net.zero_output()


class ResidualFormulation(Formulation):
    """Predict-and-refine: a deterministic predictor plus a diffusion model of its residual, in one shared UNet."""

    name = "residual"
    samplers = ("predictor", *DIFFUSION_SAMPLERS)

    def __init__(self, predictor_loss: str = "log_l2", refiner_weight: float = 1.0, residual_scale: float = 0.5,
                 zero_init: bool = True, grad_weight: float = 0.0) -> None:
        check_choice(predictor_loss, REGRESSION_LOSSES, "predictor_loss")
        if refiner_weight < 0:
            raise ValueError(f"refiner_weight must be >= 0, got {refiner_weight}")
        if residual_scale <= 0:
            raise ValueError(f"residual_scale must be > 0, got {residual_scale}")
        self.predictor_loss = predictor_loss
        self.refiner_weight = float(refiner_weight)
        self.residual_scale = float(residual_scale)
        self.zero_init = bool(zero_init)
        self.grad_weight = _check_grad_weight(grad_weight)

    def _kwargs(self) -> dict:
        return {"predictor_loss": self.predictor_loss, "refiner_weight": self.refiner_weight,
                "residual_scale": self.residual_scale, "zero_init": self.zero_init, "grad_weight": self.grad_weight}

    def init_net(self, net: nn.Module) -> None:
        """Zero the last layer: the untrained predictor returns its color input and the refiner adds nothing."""
        if self.zero_init:
            _zero_output(net)

    def network_evaluations(self, spec: SamplerSpec) -> int:
        """The predictor's one call, plus the refiner's steps."""
        return 1 if spec.name == "predictor" else 1 + spec.steps - spec.start_step

    def predict(self, net: Net, hint: Tensor, n_timesteps: int) -> Tensor:
        """The predictor `y + net(y, T, hint)`: the timestep T, outside the refiner's 0..T-1, tells the tasks apart."""
        y = _color(hint)
        t = torch.full((y.shape[0],), n_timesteps, device=y.device, dtype=torch.long)
        return y + net(y, t, hint)

    def _losses(self, net, x0, hint, scheduler, t, noise) -> Tensor:
        n_t = scheduler.config.num_train_timesteps
        g = self.predict(net, hint, n_t)
        # The gradient term charges the predictor, whose output is the image; the refiner keeps its diffusion MSE.
        loss = regression_loss(g, x0, self.predictor_loss, self.grad_weight)
        if self.refiner_weight > 0:
            # The refiner learns what the predictor misses; it does not push the predictor around.
            r = (x0 - g.detach()) / self.residual_scale
            pred = net(scheduler.add_noise(r, noise, t), t, hint)
            target = diffusion_targets(scheduler, r, noise, t)
            loss = loss + self.refiner_weight * F.mse_loss(pred.float(), target.float())
        return loss

    def training_loss(self, net, x0, hint, scheduler, generator):
        """Predictor loss plus `refiner_weight` times the residual's diffusion loss."""
        b = x0.shape[0]
        t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        return self._losses(net, x0, hint, scheduler, t, noise)

    def validation_loss(self, net, x0, hint, scheduler, generators):
        """The same losses at per-image fixed timesteps and noise."""
        t, noise = _fixed_t_noise(x0, generators, scheduler.config.num_train_timesteps)
        return self._losses(net, x0, hint, scheduler, t, noise)

    def sample(self, net, hint, spec, scheduler, generators, null_hint=None):
        """The predictor (sampler `predictor`), plus a residual sampled from noise with a diffusion sampler."""
        self.check_sampler(spec)
        guided = _with_guidance(net, spec.guidance, null_hint)
        g = self.predict(guided, hint, scheduler.config.num_train_timesteps)
        if spec.name == "predictor":
            return g.clamp(-1.0, 1.0)
        sched = make_scheduler(spec, scheduler.config, device=hint.device)
        # An SDEdit-style start noises a zero residual: the refiner then only adds detail around the predictor.
        r = sample_loop(net, hint, sched, generators=list(generators), start_step=spec.start_step,
                        color_model_range=torch.zeros_like(g), guidance=spec.guidance, null_hint=null_hint,
                        eta=spec.eta, clip=False)
        return (g + self.residual_scale * r).clamp(-1.0, 1.0)


class BridgeFormulation(Formulation):
    """A bridge from the target (t=0) to the color input (t=1); sampling starts at the color input itself."""

    name = "bridge"
    samplers = ("bridge",)

    def __init__(self, sigma: float = 0.1, loss: str = "log_l2", p_endpoint: float = 0.5,
                 zero_init: bool = True, grad_weight: float = 0.0) -> None:
        check_choice(loss, REGRESSION_LOSSES, "loss")
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        if not 0.0 <= p_endpoint <= 1.0:
            raise ValueError(f"p_endpoint must lie in [0, 1], got {p_endpoint}")
        self.sigma = float(sigma)
        self.loss = loss
        self.p_endpoint = float(p_endpoint)
        self.zero_init = bool(zero_init)
        self.grad_weight = _check_grad_weight(grad_weight)

    def _kwargs(self) -> dict:
        return {"sigma": self.sigma, "loss": self.loss, "p_endpoint": self.p_endpoint, "zero_init": self.zero_init,
                "grad_weight": self.grad_weight}

    def init_net(self, net: nn.Module) -> None:
        """Zero the last layer: the untrained bridge predicts x0 = x_t, so it returns its color input."""
        if self.zero_init:
            _zero_output(net)

    def check_sampler(self, spec: SamplerSpec, key: str = "sampler.name") -> None:
        """Only the bridge's own walk; it always starts at the color input (no SDEdit start step)."""
        super().check_sampler(spec, key)
        if spec.start_step != 0:
            raise ValueError(f"sampler.start_step: a bridge always starts at the color input; got {spec.start_step}, "
                             "choices: [0]")

    def marginal(self, x0: Tensor, y: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = (1-t) x0 + t y + sigma sqrt(t (1-t)) eps, for per-image t in [0, 1]."""
        t = t.view(-1, 1, 1, 1).to(x0)
        return (1 - t) * x0 + t * y + self.sigma * (t * (1 - t)).clamp_min(0).sqrt() * noise

    @staticmethod
    def predict_x0(net: Net, x_t: Tensor, t: Tensor, hint: Tensor, n_timesteps: int) -> Tensor:
        """x0 = x_t + net(x_t, t T, hint): the net predicts what separates x_t from the target."""
        return x_t + net(x_t, t.to(x_t) * n_timesteps, hint)

    def _loss(self, net, x0, hint, scheduler, t, noise) -> Tensor:
        x_t = self.marginal(x0, _color(hint), t, noise)
        pred = self.predict_x0(net, x_t, t, hint, scheduler.config.num_train_timesteps)
        return regression_loss(pred, x0, self.loss, self.grad_weight)

    def _times(self, u: Tensor, endpoint: Tensor) -> Tensor:
        """t in (0, 1], exactly 1 with probability p_endpoint (where sampling starts and one-step sampling lives)."""
        return torch.where(endpoint < self.p_endpoint, torch.ones_like(u), u.clamp_min(1e-3))

    def training_loss(self, net, x0, hint, scheduler, generator):
        """Regression of x0 from x_t at random t."""
        b = x0.shape[0]
        u = torch.rand(b, device=x0.device, generator=generator)
        endpoint = torch.rand(b, device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        return self._loss(net, x0, hint, scheduler, self._times(u, endpoint), noise)

    def validation_loss(self, net, x0, hint, scheduler, generators):
        """The same regression at per-image fixed t and noise."""
        u = torch.cat([torch.rand(2, generator=g)[None] for g in generators]).to(x0.device)
        noise = torch.cat([torch.randn((1, *x0.shape[1:]), generator=g) for g in generators]).to(x0)
        return self._loss(net, x0, hint, scheduler, self._times(u[:, 0], u[:, 1]), noise)

    def sample(self, net, hint, spec, scheduler, generators, null_hint=None):
        """From x_1 = y to t = 0 in `steps` evaluations: x_s = x0 + (s/t)(x_t - x0) + eta sigma sqrt(s(t-s)/t) eps.

        That is the bridge's posterior given the predicted x0 (eta=1) or its mean (eta=0, InDI's update); the last
        step returns the predicted x0.
        """
        self.check_sampler(spec)
        guided = _with_guidance(net, spec.guidance, null_hint)
        n_t = scheduler.config.num_train_timesteps
        x = _color(hint)
        times = torch.linspace(1.0, 0.0, spec.steps + 1).tolist()
        for t, s in zip(times[:-1], times[1:]):
            t_batch = torch.full((x.shape[0],), t, device=x.device)
            x0 = self.predict_x0(guided, x, t_batch, hint, n_t).clamp(-1.0, 1.0)
            if s <= 0:
                x = x0
                break
            x = x0 + (s / t) * (x - x0)
            scale = spec.eta * self.sigma * math.sqrt(s * (t - s) / t)
            if scale > 0:
                x = x + scale * randn_like_per_image(x, generators)
        return x.clamp(-1.0, 1.0)


FORMULATIONS: dict[str, type[Formulation]] = {
    cls.name: cls for cls in (NoiseFormulation, ResidualFormulation, BridgeFormulation)
}


def as_formulation(value: Formulation | Mapping | str | None) -> Formulation:
    """Accept a Formulation, its Hydra node (`_target_` + arguments), a name, or None (the paper's `noise`)."""
    if value is None:
        return NoiseFormulation()
    if isinstance(value, Formulation):
        return value
    if isinstance(value, str):
        check_choice(value, tuple(FORMULATIONS), "formulation")
        return FORMULATIONS[value]()
    if isinstance(value, Mapping):
        node = dict(value)
        target = str(node.pop("_target_", ""))
        by_target = {f"{cls.__module__}.{cls.__qualname__}": cls for cls in FORMULATIONS.values()}
        if target not in by_target:
            names = ", ".join(by_target)
            raise ValueError(f"formulation._target_: unknown formulation {target!r}; choices: {names}")
        try:
            return by_target[target](**node)
        except TypeError as exc:
            raise ValueError(f"formulation has unknown fields: {exc}") from exc
    raise ValueError(f"formulation must be a Formulation, a mapping or a name in {list(FORMULATIONS)}, got {value!r}")


def describe(formulation: Formulation, spec: SamplerSpec) -> dict[str, Any]:
    """A short record of how outputs were made: formulation, sampler and network evaluations per image."""
    return {"formulation": formulation.name, "sampler": spec.name, "steps": spec.steps,
            "network_evaluations": formulation.network_evaluations(spec)}
