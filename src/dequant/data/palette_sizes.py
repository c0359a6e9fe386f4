"""Palette-size distributions for training examples (SPEC 1.3); the Hydra `palette/` group targets these classes.

Each has `.sample(rng) -> int` (one draw from a numpy Generator) and `.probabilities() -> {size: probability}`.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np

MIN_COLORS = 1
MAX_COLORS = 256


def _check_int(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or not low <= int(value) <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    return int(value)


def _check_rng(rng: object) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


class PaletteSizeDistribution:
    """Base class: a distribution over palette sizes, held as parallel arrays `sizes` and `probs`."""

    sizes: np.ndarray
    probs: np.ndarray

    def sample(self, rng: np.random.Generator) -> int:
        """Draw one palette size."""
        _check_rng(rng)
        # One uniform draw per sample whatever the distribution, so that streams stay aligned across configs.
        u = rng.random()
        i = int(np.searchsorted(np.cumsum(self.probs), u, side="right"))
        return int(self.sizes[min(i, len(self.sizes) - 1)])

    def probabilities(self) -> dict[int, float]:
        """Probability of each palette size, sizes ascending."""
        return {int(s): float(p) for s, p in zip(self.sizes, self.probs)}

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.probabilities() == other.probabilities()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(self.probabilities().items())))


class WeightedPowerOfTwo(PaletteSizeDistribution):
    """N = 2^k for k in [k_min, k_max], weight (offset - k/scale), normalised; the authors': k 0..7, 1.5 - k/7."""

    def __init__(self, k_min: int = 0, k_max: int = 7, offset: float = 1.5, scale: float = 7.0) -> None:
        self.k_min = _check_int(k_min, "k_min", 0, 8)
        self.k_max = _check_int(k_max, "k_max", 0, 8)
        if self.k_max < self.k_min:
            raise ValueError(f"k_max must be >= k_min ({self.k_min}), got {k_max!r}")
        if isinstance(offset, bool) or not isinstance(offset, Real) or not np.isfinite(offset):
            raise ValueError(f"offset must be a finite number, got {offset!r}")
        if isinstance(scale, bool) or not isinstance(scale, Real) or not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite positive number, got {scale!r}")
        self.offset, self.scale = float(offset), float(scale)
        ks = np.arange(self.k_min, self.k_max + 1)
        weights = self.offset - ks / self.scale
        if (weights <= 0).any():
            raise ValueError(
                f"offset must exceed k_max/scale = {self.k_max / self.scale:.4g} so every weight is positive, "
                f"got {offset!r}")
        self.sizes = 2**ks
        self.probs = weights / weights.sum()

    def __repr__(self) -> str:
        return f"WeightedPowerOfTwo(k_min={self.k_min}, k_max={self.k_max}, offset={self.offset}, scale={self.scale})"


class FixedPaletteSize(PaletteSizeDistribution):
    """Always the same palette size `n`."""

    def __init__(self, n: int) -> None:
        self.n = _check_int(n, "n", MIN_COLORS, MAX_COLORS)
        self.sizes = np.array([self.n])
        self.probs = np.array([1.0])

    def __repr__(self) -> str:
        return f"FixedPaletteSize(n={self.n})"


class UniformPaletteSize(PaletteSizeDistribution):
    """Uniform over the integers low..high, both included."""

    def __init__(self, low: int, high: int) -> None:
        self.low = _check_int(low, "low", MIN_COLORS, MAX_COLORS)
        self.high = _check_int(high, "high", MIN_COLORS, MAX_COLORS)
        if self.high < self.low:
            raise ValueError(f"high must be >= low ({self.low}), got {high!r}")
        self.sizes = np.arange(self.low, self.high + 1)
        self.probs = np.full(len(self.sizes), 1.0 / len(self.sizes))

    def __repr__(self) -> str:
        return f"UniformPaletteSize(low={self.low}, high={self.high})"


