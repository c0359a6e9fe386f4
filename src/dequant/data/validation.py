"""The fixed validation set: the same problems for every job of a sweep, so that validation numbers compare.

Training examples follow the job's own palette-size distribution, quantizer and cue dropout; validated on those,
each job of a `palette_sizes` or `quantizer` sweep would be scored on a different problem. The fixed set instead
poses, on each of the first `images` validation photos (center crop at the training crop size, the evaluation's
crop), the evaluation's own test settings (`dequant.evaluation.tests.build_case`, so `val/r/N4/psnr` is computed as
the evaluation's `eval/r/N4/psnr`):
- reconstruction `r` at N = `sizes` (default 4, 16, 64), median cut whatever the job's quantizer;
- patch recoloring `p` with the mean fill (ground truth = the photo), one mask per photo;
each with texture given (`r_tex`, `p_tex`) and dropped (`r`, `p`); a job trained without a cue (`cond=none`) gets the
dropped variants only. Masks are drawn from (seed, test, image id), once: the same for every job and every
validation. The hint is written in the job's cue (mode, threshold), the model's input language; the requested
colors, masks and crops do not depend on it.

Examples are dicts of tensors (default_collate stacks them): `hint (7,S,S)`, `target (3,S,S)`, `requested (3,S,S)`
(the color image asked for), `mask (S,S)` and `fill (3,)` (patch settings; zeros otherwise), `setting` (index into
`FixedValidation.names`), `image_id`, `index` (position in the set: ranks split the set by it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dequant.color.cues import TextureCue
from dequant.color.quantize import Quantizer
from dequant.data.resize import resize, short_side_size

PATCH_FILL = "mean"


def center_crop(image: Tensor, size: int) -> Tensor:
    """Resize `(3, H, W)` so its short side is `size` (area when shrinking > 2x, else bicubic) and center-crop."""
    nh, nw = short_side_size(*image.shape[-2:], size)
    top, left = (nh - size) // 2, (nw - size) // 2
    return resize(image, nh, nw)[:, top:top + size, left:left + size].contiguous()


@dataclass(frozen=True)
class FixedSetting:
    """One validation setting: the evaluation test name (`r`, `r_tex`, `p`, `p_tex`) and its setting key."""

    test: str
    key: str
    letter: str
    n_colors: int | None
    keep_texture: bool

    @property
    def name(self) -> str:
        """`r_tex/N4`: the part of `val/<test>/<setting>/<metric>`."""
        return f"{self.test}/{self.key}"


class FixedValidation:
    """The fixed validation set's recipe (`data.val_fixed`): photos, palette sizes, patches and the draws' seed."""

    def __init__(self, images: int = 4, sizes: Sequence[int] = (4, 16, 64), patch: bool = True,
                 seed: int = 0) -> None:
        if isinstance(images, bool) or not isinstance(images, int) or images < 1:
            raise ValueError(f"images must be an int >= 1 (validation photos in the fixed set), got {images!r}")
        sizes = tuple(sizes)
        if not sizes and not patch:
            raise ValueError("sizes is empty and patch is false: the fixed validation set would hold nothing")
        for n in sizes:
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 256:
                raise ValueError(f"sizes must hold palette sizes (ints in 1..256), got {n!r}")
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"sizes must be distinct, got {list(sizes)}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.images = images
        self.sizes = sizes
        self.patch = bool(patch)
        self.seed = seed

    def settings(self, cue_mode: str = "T") -> list[FixedSetting]:
        """The settings in set order: reconstruction per N, then the patch; texture given first (unless no cue)."""
        variants = (False,) if cue_mode == "none" else (True, False)
        out = []
        for keep in variants:
            for n in self.sizes:
                out.append(FixedSetting("r_tex" if keep else "r", f"N{n}", "r", n, keep))
            if self.patch:
                out.append(FixedSetting("p_tex" if keep else "p", PATCH_FILL, "p", None, keep))
        return out

    def build(self, photos: Callable[[int], tuple[int, Tensor]], n_photos: int, crop_size: int,
              cue: TextureCue) -> list[dict[str, Tensor]]:
        """The examples of the first `images` photos: `photos(i) -> (image id, (3,H,W) image)` gives photo i."""
        from dequant.evaluation.tests import Setting, build_case, image_rngs

        settings = self.settings(cue.mode)
        examples: list[dict[str, Tensor]] = []
        quantizer = Quantizer("median_cut")
        for i in range(min(self.images, n_photos)):
            image_id, image = photos(i)
            crop = center_crop(image, crop_size)[None]
            cases = {}
            for letter, n in {(s.letter, s.n_colors) for s in settings}:
                setting = Setting("p", fill=PATCH_FILL) if letter == "p" else Setting("r", n_colors=n)
                cases[(letter, n)] = build_case(setting, crop, quantizer=quantizer, cue=cue,
                                                rngs=image_rngs(self.seed, setting, [image_id]), seed=self.seed)
            for k, s in enumerate(settings):
                case = cases[(s.letter, s.n_colors)]
                size = crop.shape[-1]
                examples.append({
                    "hint": case.hints[s.keep_texture][0],
                    "target": case.target[0],
                    "requested": case.requested[0],
                    "mask": case.mask[0] if case.mask is not None else torch.zeros(size, size, dtype=torch.bool),
                    "fill": case.fill[0] if case.fill is not None else torch.zeros(3),
                    "setting": torch.tensor(k, dtype=torch.int64),
                    "image_id": torch.tensor(int(image_id), dtype=torch.int64),
                    "index": torch.tensor(len(examples), dtype=torch.int64),
                })
        return examples


def requested_palette(requested: Tensor) -> tuple[Tensor, Tensor]:
    """The palette `(K,3)` and index map `(H,W)` of a quantized (flat-colored) image `(3,H,W)`."""
    h, w = requested.shape[-2:]
    palette, index = torch.unique(requested.reshape(3, -1).t(), dim=0, return_inverse=True)
    return palette.clamp(0, 1), index.reshape(h, w)
