"""The one place where images move between [0, 1] (data, metrics, files) and [-1, 1] (the diffusion model)."""

from __future__ import annotations

from torch import Tensor


def to_model_range(x: Tensor) -> Tensor:
    """Map a tensor in [0, 1] to the model's [-1, 1]."""
    return x * 2.0 - 1.0


def from_model_range(y: Tensor) -> Tensor:
    """Map a model-range tensor back to [0, 1], clamping what the sampler overshot."""
    return ((y + 1.0) / 2.0).clamp(0.0, 1.0)
