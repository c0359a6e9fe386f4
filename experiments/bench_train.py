"""Benchmark one training step of a small ConcatUNet (64x64, batch 8): Lightning Trainer vs a bare PyTorch loop.

Both run the same work per step (DequantModule.diffusion_loss, backward, AdamW, warmup LR schedule, EMA update) on
the same pre-made batches; the Trainer's overhead is the difference. A last run feeds the Trainer from the real
DequantDataModule (examples made on the fly from the shipped photos) and reports the fraction of each step spent
waiting for data (time from one batch's end to the next batch's start).

Run: .venv/bin/python experiments/bench_train.py [--steps 20] [--warmup 3] [--rounds 2] [--threads 1] [--workers 2]
Prints a markdown table and writes it to experiments/results/bench_train.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

import dequant
from dequant.models.module import DequantModule
from dequant.models.nets import ConcatUNet

RESULTS = Path(__file__).parent / "results" / "bench_train.md"
ASSETS = Path(dequant.__file__).parent / "assets" / "images"
SMALL = dict(block_out_channels=(32, 64, 128), layers_per_block=1, attention_levels=(False, False, True),
             norm_num_groups=8, attention_head_dim=8)
# Test-sized model: its step is so short that the Trainer's fixed per-step cost shows in absolute terms.
TINY = dict(block_out_channels=(16, 32), layers_per_block=1, attention_levels=(False, False), norm_num_groups=8)


def make_module(size: int, net: dict = SMALL) -> DequantModule:
    """A ConcatUNet module (default: conf/model/small.yaml), identically initialised on every call."""
    torch.manual_seed(0)
    return DequantModule(ConcatUNet(sample_size=size, **net), lr=2e-4, warmup_steps=100)


def make_batches(n: int, batch: int, size: int) -> list[dict[str, torch.Tensor]]:
    """Pre-made random batches in the data module's format (so no data cost enters the comparison)."""
    g = torch.Generator().manual_seed(1)
    return [{
        "hint": torch.rand(batch, 7, size, size, generator=g),
        "target": torch.rand(batch, 3, size, size, generator=g),
        "image_id": torch.arange(i * batch, (i + 1) * batch),
        "n_colors": torch.full((batch,), 16),
        "patch": torch.zeros(batch, dtype=torch.bool),
    } for i in range(n)]


def bare_loop(batches: list[dict], size: int, net: dict = SMALL) -> list[float]:
    """Seconds per step of a plain PyTorch loop doing the module's work."""
    module = make_module(size, net)
    module.train()
    opt_cfg = module.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    times = []
    last = time.perf_counter()
    for step, batch in enumerate(batches):
        gen = torch.Generator().manual_seed(step)
        loss = module.diffusion_loss(batch, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        module.ema.update(module.net.trainable_module())
        float(loss)  # Lightning also reads the loss back every step (progress bar / logging)
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times


class StepTimer(L.Callback):
    """Records, per step, the time from the previous batch's end to this batch's start (wait) and its end."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.fit_start = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.fit_start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())

    def step_times(self) -> list[float]:
        """End-to-end time of every step: end(k) - end(k-1), the first measured from the start of training."""
        prev = [self.fit_start, *self.ends[:-1]]
        return [e - p for e, p in zip(self.ends, prev)]

    def wait_times(self) -> list[float]:
        """start(k) - end(k-1): fetching the batch plus the Trainer's work between steps."""
        prev = [self.fit_start, *self.ends[:-1]]
        return [s - p for s, p in zip(self.starts, prev)]


def trainer(steps: int, timer: StepTimer, root: Path) -> L.Trainer:
    """A Trainer with nothing but the training loop (as train.py would run it, minus checkpoints and logs)."""
    return L.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        callbacks=[timer], default_root_dir=root, use_distributed_sampler=False,
    )


def lightning_loop(batches: list[dict], size: int, root: Path, net: dict = SMALL) -> list[float]:
    """Seconds per step of Trainer.fit on the same pre-made batches."""
    timer = StepTimer()
    trainer(len(batches), timer, root).fit(make_module(size, net), DataLoader(batches, batch_size=None))
    return timer.step_times()


def datamodule_loop(steps: int, batch: int, size: int, workers: int, root: Path) -> tuple[list[float], list[float]]:
    """Step and wait times of Trainer.fit fed by DequantDataModule on the shipped photos."""
    import cv2

    from dequant.data.datamodule import DequantDataModule
    from dequant.data.examples import ExampleMaker

    # The data module's worker_init calls cv2.setNumThreads(1) after fork; if this process had already started
    # OpenCV's thread pool (setup() makes the validation examples with OpenCV), the forked workers deadlock in
    # that call. Keeping the parent at one OpenCV thread avoids starting the pool.
    cv2.setNumThreads(1)

    dm = DequantDataModule(
        sorted(ASSETS.glob("*.jpg")), ExampleMaker(crop_size=size), batch_size=batch, num_workers=workers,
        n_val=1, n_test=0, samples_per_epoch=steps * batch * 2,
    )
    timer = StepTimer()
    trainer(steps, timer, root).fit(make_module(size), datamodule=dm)
    return timer.step_times(), timer.wait_times()


def summary(times: list[float], warmup: int) -> tuple[float, float]:
    """(median, mean) in ms, skipping the warmup steps."""
    kept = times[warmup:]
    return 1e3 * statistics.median(kept), 1e3 * statistics.fmean(kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps at the start of every run")
    parser.add_argument("--tiny-steps", type=int, default=60, help="measured steps of the tiny-net pair")
    parser.add_argument("--rounds", type=int, default=2, help="alternating bare/Lightning rounds")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads in the training process")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the data module run")
    parser.add_argument("--root", type=Path, default=Path("/tmp/dequant_bench_train"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    def pair(net: dict, size: int, batch: int, steps: int) -> tuple[list[float], list[float]]:
        batches = make_batches(args.warmup + steps, batch, size)
        bare, light = [], []
        # Alternate so that load from other processes on a shared machine hits both about equally.
        for _ in range(args.rounds):
            bare += bare_loop(batches, size, net)[args.warmup:]
            light += lightning_loop(batches, size, args.root, net)[args.warmup:]
        return bare, light

    n = args.warmup + args.steps
    bare, light = pair(SMALL, args.size, args.batch, args.steps)
    b_med, b_mean = summary(bare, 0)
    l_med, l_mean = summary(light, 0)
    tiny_bare, tiny_light = pair(TINY, 16, 2, args.tiny_steps)
    tb_med, tb_mean = summary(tiny_bare, 0)
    tl_med, tl_mean = summary(tiny_light, 0)

    rows = [
        ("bare PyTorch loop", b_med, b_mean, "-", "-"),
        ("Lightning Trainer", l_med, l_mean, f"{100 * (l_med / b_med - 1):+.1f}%", "-"),
    ]
    tiny_rows = [
        ("tiny net, 16x16, batch 2: bare loop", tb_med, tb_mean, "-", "-"),
        ("tiny net, 16x16, batch 2: Lightning", tl_med, tl_mean,
         f"{100 * (tl_med / tb_med - 1):+.1f}% ({tl_med - tb_med:+.1f} ms)", "-"),
    ]
    dm_note = ""
    try:
        steps, waits = datamodule_loop(n, args.batch, args.size, args.workers, args.root)
        d_med, d_mean = summary(steps, args.warmup)
        frac = sum(waits[args.warmup:]) / sum(steps[args.warmup:])
        rows.append((f"Lightning + DequantDataModule ({args.workers} workers)", d_med, d_mean,
                     f"{100 * (d_med / b_med - 1):+.1f}%", f"{100 * frac:.1f}%"))
    except ImportError as exc:
        dm_note = f"\nDequantDataModule run skipped: {exc}\n"

    params = sum(p.numel() for p in ConcatUNet(sample_size=args.size, **SMALL).parameters())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"# Training step time: small ConcatUNet ({params / 1e6:.2f}M parameters), {args.size}x{args.size}, "
        f"batch {args.batch}",
        "",
        f"CPU only ({platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs, "
        f"load average {load:.1f} at the end), torch {torch.__version__}, {args.threads} intra-op thread(s), "
        f"lightning {L.__version__}. {args.steps} measured steps after {args.warmup} warmup steps; "
        f"bare/Lightning alternate for {args.rounds} rounds. A step = loss, backward, AdamW, LR schedule, EMA update.",
        "",
        "| run | median ms/step | mean ms/step | vs bare (median) | waiting for data |",
        "|---|---:|---:|---:|---:|",
        *[f"| {r[0]} | {r[1]:.1f} | {r[2]:.1f} | {r[3]} | {r[4]} |" for r in rows + tiny_rows],
        "",
        "Waiting for data = time from one batch's end to the next batch's start (fetching the batch plus the "
        "Trainer's own work between steps) over the whole step. The tiny-net rows show the Trainer's fixed cost "
        "per step in milliseconds, which is what matters once a GPU makes steps short.",
        dm_note,
    ]
    text = "\n".join(lines).rstrip() + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
