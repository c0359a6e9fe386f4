"""Samplers: super27 timesteps, scheduler construction, per-image seeding, SDEdit start, guidance."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from dequant.models.nets import ConcatUNet
from dequant.models.ranges import from_model_range, to_model_range
from dequant.models.sampling import (
    SamplerSpec,
    as_sampler_spec,
    image_generators,
    make_scheduler,
    sample_loop,
    super27_timesteps,
)

torch.set_num_threads(1)

TRAIN = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").config
SPECS = [SamplerSpec("ddpm_super27"), SamplerSpec("ddim", steps=8, eta=0.7), SamplerSpec("dpmsolver", steps=8)]


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return ConcatUNet(sample_size=16, block_out_channels=(16, 32), attention_levels=(False, False)).eval()


@pytest.fixture(scope="module")
def hint():
    return to_model_range(torch.rand(3, 7, 16, 16, generator=torch.Generator().manual_seed(3)))


def _zero_eps(x, t, hint):
    return torch.zeros_like(x)


def test_super27_matches_deepfloyd():
    ts = super27_timesteps()
    assert len(ts) == 27 and ts[0] == 999 and ts[-1] == 0
    assert all(a > b for a, b in zip(ts, ts[1:]))
    assert ts[12:20] == [900, 899, 874, 850, 825, 800, 799, 700]
    assert ts[20:] == [600, 500, 400, 300, 200, 100, 0]


def test_sampler_spec_validates():
    with pytest.raises(ValueError, match="name"):
        SamplerSpec("euler")
    with pytest.raises(ValueError, match="steps"):
        SamplerSpec("ddpm_super27", steps=20)
    with pytest.raises(ValueError, match="start_step"):
        SamplerSpec("ddim", steps=10, start_step=10)
    assert as_sampler_spec({"_target_": "x", "name": "ddim", "steps": 5}) == SamplerSpec("ddim", steps=5)
    assert as_sampler_spec("dpmsolver").name == "dpmsolver"


@pytest.mark.parametrize(
    ("spec", "cls"),
    [(SamplerSpec("ddpm_super27"), DDPMScheduler), (SamplerSpec("ddpm", steps=10), DDPMScheduler),
     (SamplerSpec("ddim", steps=10), DDIMScheduler), (SamplerSpec("dpmsolver", steps=10), DPMSolverMultistepScheduler)],
)
def test_make_scheduler(spec, cls):
    sched = make_scheduler(spec, TRAIN)
    assert type(sched) is cls
    assert sched.config.beta_schedule == "squaredcos_cap_v2"
    assert len(sched.timesteps) == spec.steps and int(sched.timesteps[0]) == 999
    if spec.name == "ddpm_super27":
        assert sched.timesteps.tolist() == super27_timesteps()
        assert sched.config.clip_sample and sched.config.clip_sample_range == 1.0
    if spec.name == "dpmsolver":
        assert sched.config.algorithm_type == "dpmsolver++"


def test_image_generators_depend_only_on_seed_and_id():
    a = [torch.randn(4, generator=g) for g in image_generators(7, [1, 2, 3])]
    b = [torch.randn(4, generator=g) for g in image_generators(7, torch.tensor([3, 2]))]
    c = [torch.randn(4, generator=g) for g in image_generators(8, [1])]
    assert torch.equal(a[2], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], c[0])


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_sample_does_not_depend_on_batch(net, hint, spec):
    sched = make_scheduler(spec, TRAIN)
    batch = sample_loop(net, hint, sched, generators=image_generators(0, [10, 11, 12]), eta=spec.eta)
    alone = sample_loop(net, hint[1:2], sched, generators=image_generators(0, [11]), eta=spec.eta)
    assert batch.shape == (3, 3, 16, 16)
    assert batch.min() >= -1 and batch.max() <= 1
    out = from_model_range(batch)
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(alone, batch[1:2], atol=1e-5, rtol=0)
    # Different images get different noise.
    assert (batch[0] - batch[1]).abs().max() > 1e-3
    again = sample_loop(net, hint, sched, generators=image_generators(0, [10, 11, 12]), eta=spec.eta)
    assert torch.equal(batch, again)


def test_sdedit_start_differs_and_stays_near_the_color(hint):
    spec = SamplerSpec("ddim", steps=10)
    sched = make_scheduler(spec, TRAIN)
    gens = lambda: image_generators(0, [0, 1, 2])  # noqa: E731
    full = sample_loop(_zero_eps, hint, sched, generators=gens())
    late = sample_loop(_zero_eps, hint, sched, generators=gens(), start_step=9)
    color = hint[:, 0:3]
    # A zero-eps "model" keeps whatever x_t holds: pure noise (clipped) from t=999, the noised color from t=99.
    assert (full - color).abs().mean() > 0.5
    assert (late - color).abs().mean() < 0.2
    other = -color
    late_other = sample_loop(_zero_eps, hint, sched, generators=gens(), start_step=9, color_model_range=other)
    assert (late_other - other).abs().mean() < 0.2


def test_sdedit_runs_with_every_sampler(net, hint):
    for spec in SPECS:
        sched = make_scheduler(spec, TRAIN)
        a = sample_loop(net, hint, sched, generators=image_generators(0, [0, 1, 2]), eta=spec.eta)
        b = sample_loop(net, hint, sched, generators=image_generators(0, [0, 1, 2]), start_step=3, eta=spec.eta)
        assert b.shape == a.shape and (a - b).abs().max() > 1e-3


def test_guidance_mixes_conditional_and_null_predictions(net, hint):
    g = 3.0
    null = torch.full_like(hint, -1.0)

    def guided_by_hand(x, t, h):
        u = net(x, t, null[: x.shape[0]])
        return u + g * (net(x, t, h) - u)

    sched = make_scheduler(SamplerSpec("ddim", steps=5), TRAIN)
    ours = sample_loop(net, hint, sched, generators=image_generators(0, [0, 1, 2]), guidance=g)
    ref = sample_loop(guided_by_hand, hint, sched, generators=image_generators(0, [0, 1, 2]))
    plain = sample_loop(net, hint, sched, generators=image_generators(0, [0, 1, 2]))
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    assert (ours - plain).abs().max() > 1e-3


def test_sample_loop_rejects_bad_arguments(net, hint):
    sched = make_scheduler(SamplerSpec("ddim", steps=5), TRAIN)
    with pytest.raises(ValueError, match="generators"):
        sample_loop(net, hint, sched, generators=image_generators(0, [0]))
    with pytest.raises(ValueError, match="start_step"):
        sample_loop(net, hint, sched, generators=image_generators(0, [0, 1, 2]), start_step=5)
