"""torchmetrics `Metric`s over the project's per-image metric functions: thin accumulators that sync across ranks.

The definitions stay in the pure color core (`dequant.metrics`, `dequant.evaluation.tests.patch_color_error`); each
class here only turns a per-image function's `(B,)` values into running sums (sum, sum of squares, count, in float64)
that torchmetrics adds up over DDP ranks, so a validation or evaluation spread over processes reports the mean and
standard error of exactly the images it saw, each counted once.

PSNR and SSIM: torchmetrics' own `PeakSignalNoiseRatio(data_range=1, dim=(1, 2, 3))` gives the same per-image
PSNR as `dequant.metrics.psnr` (tests/models/test_metric_classes.py pins it to 1e-4 dB) except that the project's
caps identical images at 100 dB, which keeps means and standard errors finite; torchmetrics' SSIM averages
windows that reach into a reflect-padded border, which on small crops moves SSIM far from the authors'
valid-window SSIM (piq, skimage) that the project keeps (SPEC 5): by 0.05 on the test's 24 px images. Both
therefore wrap the project's functions like the other metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from dequant import metrics as M


def _mean_sem(total: Tensor, total_sq: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard error std(ddof=1)/sqrt(n) from running sums (NaN mean where n = 0, sem 0 where n = 1)."""
    n = count.clamp_min(1)
    mean = total / n
    var = ((total_sq - n * mean * mean) / (n - 1).clamp_min(1)).clamp_min(0)
    sem = torch.where(count > 1, (var / n).sqrt(), torch.zeros_like(var))
    return torch.where(count > 0, mean, torch.full_like(mean, math.nan)), sem


class ImageMean(Metric):
    """Mean over images of per-image values (`update(values (B,))`); `mean_sem()` also gives the standard error."""

    full_state_update = False
    is_differentiable = False
    higher_is_better: bool | None = None

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("total", "total_sq", "count"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def _add(self, values: Tensor) -> None:
        v = values.detach().reshape(-1).to(self.total.device, torch.float64)
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{type(self).__name__}: values contain NaN or infinite values")
        self.total += v.sum()
        self.total_sq += (v * v).sum()
        self.count += v.numel()

    def update(self, values: Tensor) -> None:  # type: ignore[override]
        """Add per-image values `(B,)`."""
        self._add(values)

    def compute(self) -> Tensor:
        """The mean over every image seen (on every rank); NaN before any image."""
        return _mean_sem(self.total, self.total_sq, self.count)[0]

    def mean_sem(self) -> tuple[float, float, int]:
        """(mean, standard error, number of images), synced across ranks like `compute`."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=True):
            mean, sem = _mean_sem(self.total, self.total_sq, self.count)
            return float(mean), float(sem), int(self.count)


class PSNR(ImageMean):
    """Mean PSNR in dB (`dequant.metrics.psnr`: data range 1, capped at 100 dB) of `update(output, target)`."""

    higher_is_better = True

    def update(self, output: Tensor, target: Tensor) -> None:  # type: ignore[override]
        """Add the PSNR of each output against its target."""
        self._add(M.psnr(output, target))


class SSIM(ImageMean):
    """Mean SSIM (`dequant.metrics.ssim`: Gaussian 11x11, sigma 1.5, valid windows) of `update(output, target)`."""

    higher_is_better = True

    def update(self, output: Tensor, target: Tensor) -> None:  # type: ignore[override]
        """Add the SSIM of each output against its target."""
        self._add(M.ssim(output, target))


class PaletteDeltaE(ImageMean):
    """Mean palette error in CIEDE2000 (`dequant.metrics.palette_error_ciede`) of `update(output, index, palette)`."""

    higher_is_better = False

    def update(self, output: Tensor, index: Tensor, palette: Tensor | Sequence[Tensor]) -> None:  # type: ignore[override]
        """Add each output's area-weighted ΔE00 against the requested index map and palette."""
        self._add(M.palette_error_ciede(output, index, palette))


class PatchDeltaE(ImageMean):
    """Mean CIEDE2000 between a patch's requested fill and the output's mean color there (patch recoloring)."""

    higher_is_better = False

    def update(self, output: Tensor, mask: Tensor, fill: Tensor) -> None:  # type: ignore[override]
        """Add each output's patch color error (`dequant.evaluation.tests.patch_color_error`)."""
        from dequant.evaluation.tests import patch_color_error

        self._add(patch_color_error(output, mask, fill))


class TextureCorrelation(ImageMean):
    """Mean texture correlation (`dequant.metrics.texture_fidelity`) of `update(output, source)`."""

    higher_is_better = True

    def update(self, output: Tensor, source: Tensor) -> None:  # type: ignore[override]
        """Add the gradient-magnitude correlation of each output with its source."""
        self._add(M.texture_fidelity(output, source))


class Speckle(ImageMean):
    """Mean speckle ratio (`dequant.metrics.speckle`; 1 = as grainy as the source) of `update(output, source)`."""

    def update(self, output: Tensor, source: Tensor) -> None:  # type: ignore[override]
        """Add each output's flat-region high-frequency energy over its source's."""
        self._add(M.speckle(output, source))


class KeyedImageMean(Metric):
    """`ImageMean` for a fixed list of keys at once (one set of states, so one sync for a whole evaluation table).

    `update(key, values (B,))`; `compute()` returns `{key: (mean, sem, n)}` for the keys that saw any image. Every
    rank must build it with the same keys in the same order.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, keys: Sequence[object], **kwargs) -> None:
        super().__init__(**kwargs)
        self.key_list = list(keys)
        self._index = {k: i for i, k in enumerate(self.key_list)}
        if len(self._index) != len(self.key_list):
            raise ValueError("keys must be distinct")
        for name in ("total", "total_sq", "count"):
            self.add_state(name, torch.zeros(len(self.key_list), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, key: object, values: Tensor) -> None:  # type: ignore[override]
        """Add per-image values `(B,)` under `key`."""
        i = self._index.get(key)
        if i is None:
            raise ValueError(f"key {key!r} is not among this metric's {len(self.key_list)} keys")
        v = values.detach().reshape(-1).to(self.total.device, torch.float64)
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"values of {key!r} contain NaN or infinite values")
        self.total[i] += v.sum()
        self.total_sq[i] += (v * v).sum()
        self.count[i] += v.numel()

    def compute(self) -> dict[object, tuple[float, float, int]]:
        """`{key: (mean, standard error, number of images)}` over every rank, for the keys that saw images."""
        mean, sem = _mean_sem(self.total, self.total_sq, self.count)
        count = self.count.long().tolist()
        return {k: (float(mean[i]), float(sem[i]), count[i]) for i, k in enumerate(self.key_list) if count[i] > 0}
