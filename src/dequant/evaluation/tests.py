"""The authors' five evaluation tests (SPEC 5) as pure functions: settings grid, inputs, ground truth, metrics.

Every test letter has a fixed grid of settings; each setting is run twice by the evaluation, texture given
(`<letter>_tex`) and texture dropped (`<letter>`), on the same images, palettes, edits and masks, so the two are a
paired comparison. A `Case` holds, for one setting on a batch of held-out images `(B, 3, S, S)`:
- `hints[keep_texture]`: the model inputs, made only through `dequant.color.hint.hint` / `fill_mask`;
- `requested`: the color image that was asked for (quantized, edited, transferred or patch-filled), which is also
  what the baselines start from;
- `target`: the ground truth where one exists, else None;
- `index` + `palettes`: the requested index map and palette per image (the palette error), `mask` + `fill` for
  patches.

Grids (SPEC 5):
- `r` reconstruction: N in {64, 16, 4}; ground truth = the source.
- `h` HSV edit: s in {0.1, ..., 0.5} x N in {4, 16, 64}: the palette's hue moves by U(-s, s) of the circle and S, V
  scale by U(1 - s, 1 + s); ground truth = the same shift applied to the source. One shift per image and strength,
  shared by the three N (so N is compared on equal edits).
- `t` palette transfer: score in {color, neg} x N in {8, 32}; the target palette is the next held-out image's
  N-color palette (`references`, by default the batch shifted by one); no ground truth.
- `p` patch: a grown-superpixel mask (`patch_mask`) per image, filled with the masked pixels' mean (ground truth =
  the source) or with a uniformly random color (no ground truth); both fills use the same mask.
- `m` colormap transfer: N in {64, 16, 4} x 8 colormaps, matched with the `cmap` score; no ground truth.

Randomness: every image draws from its own generator seeded by (seed, test letter, setting group, image id), so a
result depends neither on the batch nor on how images are sharded over processes. The quantizer's own seed (k-means)
is the evaluation seed, so an image quantized to N colors is the same in every test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from dequant.color._checks import check_choice, check_image
from dequant.color.colorspace import rgb_to_lab
from dequant.color.cues import TextureCue
from dequant.color.edits import apply_hsv_shift, hsv_params
from dequant.color.hint import fill_mask, hint
from dequant.color.masks import patch_mask
from dequant.color.matching import colormap_palette, match_palettes, transfer
from dequant.color.quantize import Quantized
from dequant.metrics import ciede2000, compute_metrics

TEST_LETTERS = "rhtpm"
R_SIZES = (64, 16, 4)
H_STRENGTHS = (0.1, 0.2, 0.3, 0.4, 0.5)
H_SIZES = (4, 16, 64)
T_SCORES = ("color", "neg")
T_SIZES = (8, 32)
P_FILLS = ("mean", "random")
M_SIZES = (64, 16, 4)
M_COLORMAPS = ("viridis", "plasma", "inferno", "cividis", "bone", "magma", "hsv", "twilight")

# Metrics where lower is better (the rest: higher is better); the report uses it to mark the best method.
LOWER_IS_BETTER = frozenset({"l1", "smape", "palette_de2000", "palette_err_requant", "palette_l1_requant",
                             "speckle"})

Matcher = Callable[..., Tensor]


@dataclass(frozen=True)
class Setting:
    """One point of a test's grid; `rng_key` groups settings that share their random draws (edits, masks)."""

    letter: str
    n_colors: int | None = None
    strength: float | None = None
    score: str | None = None
    fill: str | None = None
    colormap: str | None = None
    rng_key: int = 0

    @property
    def label(self) -> str:
        """Human-readable name, e.g. `s=0.3 N=16` (the `setting` column of the tables)."""
        parts = []
        if self.strength is not None:
            parts.append(f"s={self.strength:g}")
        if self.score is not None:
            parts.append(f"score={self.score}")
        if self.fill is not None:
            parts.append(f"fill={self.fill}")
        if self.colormap is not None:
            parts.append(f"cmap={self.colormap}")
        if self.n_colors is not None:
            parts.append(f"N={self.n_colors}")
        return " ".join(parts)

    @property
    def slug(self) -> str:
        """File-name-safe name, e.g. `h_s0.3_N16`, `t_neg_N8`, `p_mean`."""
        parts = [self.letter]
        if self.strength is not None:
            parts.append(f"s{self.strength:g}")
        parts += [p for p in (self.score, self.fill, self.colormap) if p is not None]
        if self.n_colors is not None:
            parts.append(f"N{self.n_colors}")
        return "_".join(parts)


def variant_name(letter: str, keep_texture: bool) -> str:
    """The `test` column: the letter, with `_tex` when texture was given (e.g. `r`, `r_tex`)."""
    return f"{letter}_tex" if keep_texture else letter


def settings(letter: str, t_scores: Sequence[str] = T_SCORES) -> list[Setting]:
    """The grid of one test letter, in report order (`t_scores`: the transfer test's scores, the authors' by default)."""
    check_choice(letter, tuple(TEST_LETTERS), "letter")
    if letter == "r":
        return [Setting("r", n_colors=n) for n in R_SIZES]
    if letter == "h":
        return [Setting("h", n_colors=n, strength=s, rng_key=i) for i, s in enumerate(H_STRENGTHS) for n in H_SIZES]
    if letter == "t":
        return [Setting("t", n_colors=n, score=sc) for sc in t_scores for n in T_SIZES]
    if letter == "p":
        return [Setting("p", fill=f) for f in P_FILLS]
    return [Setting("m", n_colors=n, colormap=c) for c in M_COLORMAPS for n in M_SIZES]


def parse_tests(tests: str | Sequence[str]) -> list[str]:
    """Test letters from a string like `rhtpm` (order kept, duplicates dropped); unknown letters raise."""
    letters = list(tests) if isinstance(tests, str) else [str(t) for t in tests]
    if not letters:
        raise ValueError(f"tests must name at least one of {list(TEST_LETTERS)}, got {tests!r}")
    bad = [t for t in letters if t not in TEST_LETTERS]
    if bad:
        raise ValueError(f"tests must be letters from {TEST_LETTERS!r}, got unknown {bad} in {tests!r}")
    return list(dict.fromkeys(letters))


def image_rngs(seed: int, setting: Setting, image_ids: Sequence[int]) -> list[np.random.Generator]:
    """One generator per image, seeded by (seed, letter, setting.rng_key, image id)."""
    code = TEST_LETTERS.index(setting.letter)
    return [np.random.default_rng([int(seed), code, int(setting.rng_key), int(i)]) for i in image_ids]


@dataclass
class Case:
    """Inputs, requests and ground truth of one setting on a batch (see the module docstring)."""

    setting: Setting
    source: Tensor
    requested: Tensor
    hints: dict[bool, Tensor]
    target: Tensor | None = None
    index: Tensor | None = None
    palettes: list[Tensor] | None = None
    mask: Tensor | None = None
    fill: Tensor | None = None
    reference: Tensor | None = None
    extras: dict[str, object] = field(default_factory=dict)


def _palette_hint(requested: Tensor, cue_map: Tensor, n_colors: int, cue: TextureCue) -> dict[bool, Tensor]:
    return {keep: hint(requested, cue_map, mode="palette", n_colors=n_colors, keep_texture=keep, cue_mode=cue.mode,
                       g_neutral=cue.g_neutral) for keep in (True, False)}


def _stack(quantized: list[Quantized]) -> tuple[Tensor, Tensor, list[Tensor]]:
    """(images (B,3,H,W), index maps (B,H,W), palettes) of a list of quantizations."""
    images = torch.stack([q.image for q in quantized]).float()
    index = torch.stack([q.index for q in quantized])
    return images, index, [q.palette.float() for q in quantized]


def build_case(
    setting: Setting,
    images: Tensor,
    *,
    quantizer: Callable[..., Quantized],
    cue: TextureCue,
    rngs: Sequence[np.random.Generator],
    references: Tensor | None = None,
    match: Matcher = match_palettes,
    seed: int = 0,
) -> Case:
    """Build the Case of one setting for held-out images `(B, 3, S, S)` with one generator per image."""
    source, _ = check_image(images, "images")
    source = source.float()
    b = source.shape[0]
    if len(rngs) != b:
        raise ValueError(f"rngs must hold one generator per image ({b}), got {len(rngs)}")
    cue_map = cue(source)
    letter, n = setting.letter, setting.n_colors

    if letter == "p":
        masks = torch.stack([patch_mask(img, None, rng) for img, rng in zip(source, rngs)])
        if setting.fill == "mean":
            filled = fill_mask(source, masks)
        else:
            colors = torch.stack([torch.from_numpy(rng.random(3).astype(np.float32)) for rng in rngs])
            filled = fill_mask(source, masks, colors)
        # The fill color actually used, read back from the filled image (mean fills are computed inside fill_mask).
        fill = torch.stack([f[:, m].mean(dim=1) for f, m in zip(filled, masks)])
        hints = {keep: hint(filled, cue_map, mode="patch", mask=masks, keep_texture=keep, cue_mode=cue.mode,
                            g_neutral=cue.g_neutral) for keep in (True, False)}
        target = source if setting.fill == "mean" else None
        return Case(setting, source, filled, hints, target=target, mask=masks, fill=fill)

    quantized = [quantizer(img, n, seed=int(seed)) for img in source]
    if letter == "r":
        requested, index, palettes = _stack(quantized)
        return Case(setting, source, requested, _palette_hint(requested, cue_map, n, cue), target=source,
                    index=index, palettes=palettes)

    if letter == "h":
        shifts = [hsv_params(setting.strength, rng) for rng in rngs]
        edited = [Quantized(apply_hsv_shift(q.palette.float(), s), q.index, q.fractions)
                  for q, s in zip(quantized, shifts)]
        requested, index, palettes = _stack(edited)
        target = torch.stack([apply_hsv_shift(img, s) for img, s in zip(source, shifts)])
        case = Case(setting, source, requested, _palette_hint(requested, cue_map, n, cue), target=target,
                    index=index, palettes=palettes)
        case.extras["shifts"] = shifts
        return case

    if letter == "t":
        ref = torch.roll(source, shifts=-1, dims=0) if references is None else check_image(references, "references")[0]
        if ref.shape != source.shape:
            raise ValueError(f"references must have the shape of images {tuple(source.shape)}, got {tuple(ref.shape)}")
        targets = [quantizer(r, n, seed=int(seed)) for r in ref.float()]
        mappings = [match(q.palette, t.palette, score=setting.score, source_fractions=q.fractions,
                          target_fractions=t.fractions) for q, t in zip(quantized, targets)]
        target_palettes = [t.palette for t in targets]
    else:  # "m"
        cmap = colormap_palette(setting.colormap, n)
        mappings = [match(q.palette, cmap, score="cmap", source_fractions=q.fractions) for q in quantized]
        target_palettes = [cmap] * b
        ref = None
    moved = [transfer(q, tp, m) for q, tp, m in zip(quantized, target_palettes, mappings)]
    requested, index, palettes = _stack(moved)
    case = Case(setting, source, requested, _palette_hint(requested, cue_map, n, cue), index=index,
                palettes=palettes, reference=ref)
    case.extras.update(mappings=mappings, target_palettes=target_palettes,
                       source_palettes=[q.palette for q in quantized])
    return case


def cases(
    letter: str,
    images: Tensor,
    image_ids: Sequence[int],
    *,
    quantizer: Callable[..., Quantized],
    cue: TextureCue,
    seed: int = 0,
    references: Tensor | None = None,
    match: Matcher = match_palettes,
) -> Iterator[Case]:
    """Every setting of test `letter` on a batch of held-out images, each with per-image seeded draws."""
    ids = [int(i) for i in image_ids]
    if len(ids) != images.shape[0]:
        raise ValueError(f"image_ids must hold one id per image ({images.shape[0]}), got {len(ids)}")
    for setting in settings(letter):
        yield build_case(setting, images, quantizer=quantizer, cue=cue, rngs=image_rngs(seed, setting, ids),
                         references=references, match=match, seed=seed)


def patch_color_error(output: Tensor, mask: Tensor, fill: Tensor) -> Tensor:
    """CIEDE2000 between each requested fill color `(B, 3)` and the output's mean sRGB color inside its mask, (B,)."""
    out, _ = check_image(output, "output")
    m = mask.to(out.device, torch.bool).reshape(out.shape[0], 1, *out.shape[-2:])
    means = (out * m).sum(dim=(-2, -1)) / m.sum(dim=(-2, -1)).clamp(min=1)
    return ciede2000(rgb_to_lab(means.float()), rgb_to_lab(fill.to(out.device).float()))


def case_metrics(case: Case, output: Tensor) -> dict[str, Tensor]:
    """Every metric that applies to `output` `(B, 3, S, S)` for this case, each a `(B,)` tensor.

    Ground-truth metrics (l1, smape, psnr, ssim) where a target exists; the palette error against the requested
    index map and palette (`palette_de2000`, and the authors' re-quantized `palette_err_requant` /
    `palette_l1_requant` with N colors), or for patches the CIEDE2000 of the patch's mean color against the fill;
    texture fidelity against the source.
    """
    n = case.setting.n_colors if case.index is not None else None
    metrics = compute_metrics(output, case.target, requested_index=case.index, requested_palette=case.palettes,
                              source=case.source, n_colors=n, requested_image=case.requested if n else None)
    if case.mask is not None:
        metrics["palette_de2000"] = patch_color_error(output, case.mask, case.fill)
    return metrics
