"""Samplers (SPEC 2): DDPM on DeepFloyd's "super27" timesteps, DDPM/DDIM/DPM-Solver++ with any step count.

Every image draws its noise from its own generator, seeded from (seed, image id), so a result never depends on
the batch size, on the other images in the batch or on the number of GPUs. An SDEdit-style start skips the first
`start_step` timesteps and starts from the color input noised to the first remaining timestep.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from dequant.color._checks import check_choice
from dequant.color.hint import COLOR

# DeepFloyd IF's "super27" respacing (diffusers/pipelines/deepfloyd_if/timesteps.py), kept here because that module
# is a pipeline internal that diffusers may move or drop between releases.
_SUPER27 = (999, 991, 982, 974, 966, 958, 950, 941, 933, 925, 916, 908, 900, 899, 874, 850, 825, 800, 799, 700, 600,
            500, 400, 300, 200, 100, 0)

DIFFUSION_SAMPLERS = ("ddpm_super27", "ddpm", "ddim", "dpmsolver")
# `predictor`: a residual model's predictor alone (one evaluation); `bridge`: a bridge model's walk from the color
# input (models/formulations.py says which formulation takes which).
SAMPLERS = (*DIFFUSION_SAMPLERS, "predictor", "bridge")
# Step counts when a sampler is named without one (as in conf/sampler/).
DEFAULT_STEPS = {"ddpm_super27": 27, "ddpm": 50, "ddim": 50, "dpmsolver": 20, "predictor": 1, "bridge": 4}
_SEED_STRIDE = 1_000_003

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class SamplerSpec:
    """How to sample: sampler name, step count, hint guidance, SDEdit start step and DDIM eta."""

    name: str = "ddpm_super27"
    steps: int = 27
    guidance: float = 1.0
    start_step: int = 0
    eta: float = 0.0

    def __post_init__(self) -> None:
        check_choice(self.name, SAMPLERS, "name")
        self.steps = int(self.steps)
        self.start_step = int(self.start_step)
        self.guidance = float(self.guidance)
        self.eta = float(self.eta)
        if self.name == "ddpm_super27" and self.steps != len(_SUPER27):
            raise ValueError(f"steps must be {len(_SUPER27)} for the ddpm_super27 sampler, got {self.steps}")
        if self.name == "predictor" and self.steps != 1:
            raise ValueError(f"steps must be 1 for the predictor sampler (one network evaluation), got {self.steps}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 <= self.start_step < self.steps:
            raise ValueError(f"start_step must lie in [0, steps={self.steps}), got {self.start_step}")
        if self.guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {self.guidance}")
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")


def as_sampler_spec(sampler: SamplerSpec | Mapping | str | None) -> SamplerSpec:
    """Accept a SamplerSpec, a mapping of its fields (a config node) or just a sampler name."""
    if sampler is None:
        return SamplerSpec()
    if isinstance(sampler, SamplerSpec):
        return sampler
    if isinstance(sampler, str):
        check_choice(sampler, SAMPLERS, "sampler")
        return SamplerSpec(name=sampler, steps=DEFAULT_STEPS[sampler])
    if isinstance(sampler, Mapping):
        fields = {k: v for k, v in dict(sampler).items() if k != "_target_"}
        try:
            return SamplerSpec(**fields)
        except TypeError as exc:
            raise ValueError(f"sampler has unknown fields: {exc}") from exc
    raise ValueError(f"sampler must be a SamplerSpec, a mapping or a name in {list(SAMPLERS)}, got {sampler!r}")


def super27_timesteps() -> list[int]:
    """DeepFloyd's "super27" respacing used by the authors: 999..900 densely, then 899, 874, ..., 100, 0."""
    return list(_SUPER27)


def _train_config(train_config: Mapping | DDPMScheduler) -> dict:
    """The training scheduler's config as a plain dict."""
    if hasattr(train_config, "config"):
        train_config = train_config.config
    if not isinstance(train_config, Mapping):
        raise ValueError(f"train_config must be a scheduler or its config mapping, got {type(train_config).__name__}")
    return dict(train_config)


def make_scheduler(spec: SamplerSpec, train_config: Mapping | DDPMScheduler, device: torch.device | str | None = None):
    """A diffusers scheduler for `spec`, built from the training scheduler's config, with its timesteps set."""
    spec = as_sampler_spec(spec)
    if spec.name not in DIFFUSION_SAMPLERS:
        raise ValueError(f"sampler {spec.name!r} has no diffusers scheduler; choices: {list(DIFFUSION_SAMPLERS)}")
    cfg = _train_config(train_config)
    # "trailing" spacing makes every sampler start at t = T - 1, where training put (almost) pure noise.
    if spec.name == "ddpm_super27":
        sched = DDPMScheduler.from_config(cfg, clip_sample=True, clip_sample_range=1.0, variance_type="fixed_small")
        sched.set_timesteps(timesteps=super27_timesteps(), device=device)
    elif spec.name == "ddpm":
        sched = DDPMScheduler.from_config(
            cfg, clip_sample=True, clip_sample_range=1.0, variance_type="fixed_small", timestep_spacing="trailing"
        )
        sched.set_timesteps(spec.steps, device=device)
    elif spec.name == "ddim":
        sched = DDIMScheduler.from_config(
            cfg, clip_sample=True, clip_sample_range=1.0, timestep_spacing="trailing", set_alpha_to_one=True
        )
        sched.set_timesteps(spec.steps, device=device)
    else:
        # Thresholding with sample_max_value 1 clamps the predicted x0 to [-1, 1]: plain clipping, as in DDPM.
        sched = DPMSolverMultistepScheduler.from_config(
            cfg, algorithm_type="dpmsolver++", solver_order=2, thresholding=True, sample_max_value=1.0,
            variance_type=None, timestep_spacing="trailing",
        )
        sched.set_timesteps(spec.steps, device=device)
    return sched


def image_generators(
    seed: int, image_ids: Sequence[int] | Tensor, device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """One generator per image, seeded from (seed, image id) so results do not depend on how images are batched."""
    ids = image_ids.tolist() if isinstance(image_ids, Tensor) else list(image_ids)
    gens = []
    for i in ids:
        g = torch.Generator(device=torch.device(device))
        g.manual_seed((int(seed) * _SEED_STRIDE + int(i)) % (2**63 - 1))
        gens.append(g)
    return gens


def randn_like_per_image(x: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
    """Standard normal noise shaped like `x (B,...)`, image i drawn from generators[i]."""
    return randn_tensor(tuple(x.shape), generator=list(generators), device=x.device, dtype=x.dtype)


def _step_kwargs(scheduler, generators: list[torch.Generator], eta: float) -> dict:
    """Pass per-image generators (and eta) to the schedulers whose step accepts them."""
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict = {}
    if "generator" in params:
        kwargs["generator"] = generators
    if "eta" in params:
        kwargs["eta"] = eta
    return kwargs


@torch.no_grad()
def sample_loop(
    net: Denoiser,
    hint_model_range: Tensor,
    scheduler,
    *,
    generators: list[torch.Generator],
    start_step: int = 0,
    color_model_range: Tensor | None = None,
    guidance: float = 1.0,
    null_hint: Tensor | None = None,
    eta: float = 0.0,
    clip: bool = True,
) -> Tensor:
    """Run the reverse process for `hint (B,7,H,W)` in [-1, 1]; returns `(B,3,H,W)` clipped to [-1, 1].

    `start_step > 0` starts from `color_model_range` (default: the hint's color channels) noised to the first
    remaining timestep; `guidance != 1` mixes conditional and null-hint predictions, u + g (c - u). `clip=False`
    leaves the result unclipped (a residual is not an image).
    """
    if hint_model_range.ndim != 4:
        raise ValueError(f"hint_model_range must have shape (B, C, H, W), got {tuple(hint_model_range.shape)}")
    b, _, h, w = hint_model_range.shape
    if len(generators) != b:
        raise ValueError(f"generators must hold one generator per image ({b}), got {len(generators)}")
    # Multistep solvers keep state between steps: work on a copy so the caller's scheduler can be reused.
    scheduler = copy.deepcopy(scheduler)
    timesteps = scheduler.timesteps
    if not 0 <= start_step < len(timesteps):
        raise ValueError(f"start_step must lie in [0, {len(timesteps)}), got {start_step}")
    device, dtype = hint_model_range.device, hint_model_range.dtype
    noise = randn_tensor((b, 3, h, w), generator=generators, device=device, dtype=dtype)
    timesteps = timesteps[start_step:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start_step)
    if start_step == 0:
        x = noise * scheduler.init_noise_sigma
    else:
        color = hint_model_range[:, COLOR] if color_model_range is None else color_model_range
        if color.shape != (b, 3, h, w):
            raise ValueError(f"color_model_range must have shape {(b, 3, h, w)}, got {tuple(color.shape)}")
        x = scheduler.add_noise(color.to(dtype), noise, timesteps[:1].to(device))
    guided = guidance != 1.0
    if guided:
        if null_hint is None:
            null_hint = torch.full_like(hint_model_range, -1.0)
        hint_in = torch.cat([hint_model_range, null_hint.to(hint_model_range)], dim=0)
    else:
        hint_in = hint_model_range
    step_kwargs = _step_kwargs(scheduler, generators, eta)
    for t in timesteps:
        x_in = scheduler.scale_model_input(x, t)
        if guided:
            x_in = torch.cat([x_in, x_in], dim=0)
        t_batch = t.to(device=device, dtype=torch.long).expand(x_in.shape[0])
        out = net(x_in, t_batch, hint_in)
        if guided:
            cond, uncond = out.chunk(2, dim=0)
            out = uncond + guidance * (cond - uncond)
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
    return x.clamp(-1.0, 1.0) if clip else x
