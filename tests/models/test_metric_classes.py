"""torchmetrics accumulators (dequant.models.metrics) over the color core's per-image metrics: the same numbers as the
functions, PSNR pinned to torchmetrics' own, and the same numbers from 2 DDP processes as from one."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dequant import metrics as M
from dequant.evaluation import report
from dequant.evaluation.tests import patch_color_error
from dequant.models.metrics import (PSNR, SSIM, KeyedImageMean, PaletteDeltaE, PatchDeltaE, Speckle,
                                    TextureCorrelation, ImageMean)

SIZE = 24


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, 3, SIZE, SIZE, generator=g)
    target = torch.nn.functional.avg_pool2d(target, 3, stride=1, padding=1)  # some flat-ish areas for speckle
    output = (target + 0.08 * torch.randn(n, 3, SIZE, SIZE, generator=g)).clamp(0, 1)
    return output, target


def _palette_inputs(target: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    index = (target.mean(1) * 3.999).long()  # 4 regions per image
    palettes = [torch.rand(4, 3, generator=torch.Generator().manual_seed(i)) for i in range(target.shape[0])]
    return index, palettes


def _update_all(metrics: dict, output: torch.Tensor, target: torch.Tensor) -> None:
    index, palettes = _palette_inputs(target)
    mask = target[:, 0] > 0.5
    fill = torch.rand(target.shape[0], 3, generator=torch.Generator().manual_seed(7))
    metrics["psnr"].update(output, target)
    metrics["ssim"].update(output, target)
    metrics["palette"].update(output, index, palettes)
    metrics["patch"].update(output, mask, fill)
    metrics["texture"].update(output, target)
    metrics["speckle"].update(output, target)


def _fresh() -> dict:
    return {"psnr": PSNR(), "ssim": SSIM(), "palette": PaletteDeltaE(), "patch": PatchDeltaE(),
            "texture": TextureCorrelation(), "speckle": Speckle()}


def test_each_class_is_the_mean_and_standard_error_of_its_function() -> None:
    batches = [_images(3, 0), _images(2, 1)]
    metrics = _fresh()
    for output, target in batches:
        _update_all(metrics, output, target)
    output = torch.cat([b[0] for b in batches])
    target = torch.cat([b[1] for b in batches])
    index, _ = _palette_inputs(target)
    palettes = [p for b in batches for p in _palette_inputs(b[1])[1]]
    mask = target[:, 0] > 0.5
    fill = torch.cat([torch.rand(n, 3, generator=torch.Generator().manual_seed(7)) for n in (3, 2)])
    expected = {
        "psnr": M.psnr(output, target), "ssim": M.ssim(output, target),
        "palette": M.palette_error_ciede(output, index, palettes),
        "patch": patch_color_error(output, mask, fill),
        "texture": M.texture_fidelity(output, target), "speckle": M.speckle(output, target),
    }
    for name, values in expected.items():
        mean, sem, n = metrics[name].mean_sem()
        want_mean, want_sem = M.mean_sem(values)
        assert n == 5 and mean == pytest.approx(want_mean, rel=1e-6, abs=1e-9), name
        assert sem == pytest.approx(want_sem, rel=1e-5, abs=1e-9), name
        assert float(metrics[name].compute()) == pytest.approx(want_mean, rel=1e-6, abs=1e-9), name
    metrics["psnr"].reset()
    assert math.isnan(metrics["psnr"].mean_sem()[0]) and metrics["psnr"].mean_sem()[2] == 0


def test_psnr_agrees_with_torchmetrics_except_the_cap() -> None:
    from torchmetrics.image import PeakSignalNoiseRatio

    ours, theirs = PSNR(), PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))
    for seed in range(3):
        output, target = _images(4, seed)
        ours.update(output, target)
        theirs.update(output, target)
    assert float(ours.compute()) == pytest.approx(float(theirs.compute()), abs=1e-4)
    # Identical images: torchmetrics gives inf, the project caps at 100 dB so that means stay finite.
    same = _images(1, 9)[1]
    capped, unbounded = PSNR(), PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))
    capped.update(same, same)
    unbounded.update(same, same)
    assert float(capped.compute()) == 100.0 and math.isinf(float(unbounded.compute()))


def test_ssim_differs_from_torchmetrics_which_pads_borders() -> None:
    """Why the project keeps its own SSIM: the authors' valid-window SSIM (piq, skimage) and torchmetrics' differ
    measurably on small crops."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    output, target = _images(4, 3)
    ours = M.ssim(output, target)
    theirs = structural_similarity_index_measure(output, target, data_range=1.0, reduction="none")
    gap = (ours - theirs).abs().max()
    assert float(gap) > 1e-2  # 0.05 here: far beyond float noise


def test_keyed_accumulator_gives_the_evaluation_table() -> None:
    g = torch.Generator().manual_seed(0)
    rows = [{"test": t, "setting": s, "method": m, "psnr": float(v), "ssim": float(w)}
            for t in ("r", "r_tex") for s in ("N=4", "N=64") for m in ("model", "input")
            for v, w in zip(torch.rand(5, generator=g) * 30, torch.rand(5, generator=g))]
    keys = [(t, s, m, n) for t in ("r", "r_tex") for s in ("N=4", "N=64") for m in ("model", "input")
            for n in ("psnr", "ssim", "l1")]
    table = KeyedImageMean(keys)
    for row in rows:
        for name in ("psnr", "ssim"):
            table.update((row["test"], row["setting"], row["method"], name), torch.tensor([row[name]]))
    results = table.compute()
    assert all(k[3] != "l1" for k in results)  # keys without images are left out
    expected = report.aggregate(rows)
    for agg in expected:
        for name in ("psnr", "ssim"):
            mean, sem, n = results[(agg["test"], agg["setting"], agg["method"], name)]
            assert n == 5 and mean == pytest.approx(agg[f"{name}_mean"], rel=1e-12)
            assert sem == pytest.approx(agg[f"{name}_sem"], rel=1e-9)
    with pytest.raises(ValueError, match="not among"):
        table.update(("h", "x", "model", "psnr"), torch.ones(1))
    with pytest.raises(ValueError, match="NaN"):
        ImageMean().update(torch.tensor([1.0, float("nan")]))


# ----------------------------------------------------------------------------------------------- two processes

# 5 images split unevenly over 2 ranks (3 + 2); one key only rank 0 sees, as when a rank's share misses a setting.
SHARDS = {0: [0, 1, 2], 1: [3, 4]}


def _accumulate(indices: list[int]) -> dict:
    output, target = _images(5, 11)
    metrics = _fresh()
    table = KeyedImageMean(["a", "b", "only_rank0"])
    for i in indices:
        _update_all(metrics, output[i:i + 1], target[i:i + 1])
        table.update("a", M.psnr(output[i:i + 1], target[i:i + 1]))
        table.update("b", M.speckle(output[i:i + 1], target[i:i + 1]))
        if i == 0:
            table.update("only_rank0", torch.tensor([1.5]))
    out = {name: m.mean_sem() for name, m in metrics.items()}
    out["compute"] = {name: float(m.compute()) for name, m in metrics.items()}
    out["table"] = table.compute()
    return out


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(_accumulate(SHARDS[rank]), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ddp_processes_give_the_numbers_of_one(tmp_path: Path) -> None:
    single = _accumulate([0, 1, 2, 3, 4])
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        synced = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for name in _fresh():
            mean, sem, n = synced[name]
            assert n == 5, name
            assert mean == pytest.approx(single[name][0], rel=1e-9, abs=1e-12), name
            assert sem == pytest.approx(single[name][1], rel=1e-6, abs=1e-12), name
            assert synced["compute"][name] == pytest.approx(single["compute"][name], rel=1e-6), name
        assert synced["table"].keys() == single["table"].keys()
        for key, (mean, sem, n) in single["table"].items():
            assert synced["table"][key][2] == n
            assert synced["table"][key][0] == pytest.approx(mean, rel=1e-9)
            assert synced["table"][key][1] == pytest.approx(sem, rel=1e-6, abs=1e-12)
