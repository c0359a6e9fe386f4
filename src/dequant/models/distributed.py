"""Strategy builders that need Python objects a YAML file cannot name directly."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from lightning.pytorch.strategies import FSDPStrategy


def _import(path: str) -> type:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"wrap_classes: cannot import {path!r} ({err})") from err


def fsdp_strategy(wrap_classes: Sequence[str], sharding_strategy: str = "FULL_SHARD",
                  cpu_offload: bool = False) -> FSDPStrategy:
    """FSDP that wraps every module of the named classes (e.g. diffusers ResnetBlock2D) in its own shard unit."""
    policy = {_import(p) for p in wrap_classes}
    return FSDPStrategy(auto_wrap_policy=policy, sharding_strategy=sharding_strategy, cpu_offload=cpu_offload,
                        use_orig_params=True)
