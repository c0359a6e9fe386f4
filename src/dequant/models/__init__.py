"""Model side: networks, samplers, EMA and the LightningModule.

Names are imported lazily so that `dequant.models.ranges` stays cheap to import (no Lightning, diffusers, Hydra).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EMA": "dequant.models.ema",
    "ConcatUNet": "dequant.models.nets",
    "ControlNetUNet": "dequant.models.nets",
    "DequantModule": "dequant.models.module",
    "BridgeFormulation": "dequant.models.formulations",
    "NoiseFormulation": "dequant.models.formulations",
    "ResidualFormulation": "dequant.models.formulations",
    "as_formulation": "dequant.models.formulations",
    "load_model": "dequant.models.module",
    "SamplerSpec": "dequant.models.sampling",
    "image_generators": "dequant.models.sampling",
    "make_scheduler": "dequant.models.sampling",
    "sample_loop": "dequant.models.sampling",
    "super27_timesteps": "dequant.models.sampling",
    "from_model_range": "dequant.models.ranges",
    "to_model_range": "dequant.models.ranges",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines `name` on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dequant.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """List the lazy exports too."""
    return sorted(set(globals()) | set(__all__))
