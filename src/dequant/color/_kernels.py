"""The color core's optional numba kernels: each module is imported on first use (numba is slow to load), and is
None where numba does not import, so its caller falls back to numpy."""

from __future__ import annotations

import importlib
from types import ModuleType


def optional_kernels(slot: list, module: str) -> ModuleType | None:
    """The kernels `module`, imported into the one-element list `slot` on first use (None when numba does not
    import); later calls return what `slot` holds."""
    if not slot:
        try:
            slot.append(importlib.import_module(module))
        except ImportError:
            slot.append(None)
    return slot[0]
