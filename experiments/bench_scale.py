"""Benchmark at scale: training throughput, data wait, sampling time and peak memory of the three model setups.

Models (GPU presets read from conf/experiment/*.yaml and conf/model/*.yaml, so they follow the configs):
- `scratch_64`: ConcatUNet model=base at 64x64, batch 64 (conf/experiment/scratch_64.yaml);
- `scratch_256`: ConcatUNet model=large at 256x256, batch 8 per GPU (conf/experiment/scratch_256.yaml);
- `controlnet`: ControlNetUNet (paper_256: 256x256, batch 8, no EMA) on a RANDOMLY INITIALISED UNet2DConditionModel
  with IF-II's interface (6 input/output channels, T5-width text projection, text add-embedding, timestep class
  embedding, 77 null tokens), built here and saved to a temporary folder because no weights can be downloaded. The
  UNet's size is printed with the results; speed depends on shape, not on the weight values.

Per model it measures: training throughput (images/s, after warm-up, CUDA synchronised) of one step = diffusion loss,
backward, AdamW, LR schedule, EMA update (DequantModule's own methods, as in bench_train.py) in fp32, bf16-mixed and
fp16-mixed (torch.autocast; fp16 with a GradScaler); peak GPU memory (torch.cuda.max_memory_allocated) on CUDA; the
fraction of step time spent waiting for data from the real DequantDataModule (examples made on the fly from the
shipped photos) at 8 and 16 workers; sampling time per image of DequantModule.sample with 27-step super27 DDPM and
20-step DPM-Solver++.

GPU run (the one the results table is meant for; writes experiments/results/bench_scale_gpu.md); with 2 or more GPUs
visible it also runs train.py with trainer=ddp and trainer=fsdp (module.use_ema=false) on 2 GPUs for
`--two-gpu-steps` (300) steps at 64x64 and loads the FSDP checkpoint on one device:
    .venv/bin/python experiments/bench_scale.py --device cuda --out experiments/results/bench_scale_gpu.md
(to stay under a per-command time limit, run one model per call with `--models scratch_64` etc. and a separate
`--out` each, or lower `--data-steps`; the data-wait runs are the longest part.)
CPU run (no GPU lent; `--cpu-small` is implied on CPU: small stand-in models at 32-64 px, fewer steps, workers capped
at the core count; about 2-3 minutes on 2 shared cores):
    .venv/bin/python experiments/bench_scale.py --device cpu --out experiments/results/bench_scale_cpu.md
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

import dequant
from dequant.models.module import DequantModule
from dequant.models.nets import ConcatUNet, ControlNetUNet

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
ASSETS = Path(dequant.__file__).parent / "assets" / "images"
MODELS = ("scratch_64", "scratch_256", "controlnet")
PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed")
GPU_COMMAND = "python experiments/bench_scale.py --device cuda --out experiments/results/bench_scale_gpu.md"

# IF-II-like UNet2DConditionModel (interface of DeepFloyd IF stage II; widths chosen to land near IF-II-M's size).
IF_II_LIKE = dict(
    sample_size=256, in_channels=6, out_channels=6, block_out_channels=(128, 256, 512, 1024), layers_per_block=2,
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    cross_attention_dim=1024, attention_head_dim=64, norm_num_groups=32, encoder_hid_dim=4096,
    encoder_hid_dim_type="text_proj", addition_embed_type="text", addition_embed_type_num_heads=64,
    class_embed_type="timestep", resnet_time_scale_shift="scale_shift",
)
# CPU stand-in: same interface, test-sized.
IF_II_TINY = dict(
    IF_II_LIKE, sample_size=32, block_out_channels=(16, 32), layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8, encoder_hid_dim=32,
    addition_embed_type_num_heads=4,
)


@dataclass
class Setup:
    """One benchmarked model: how to build it and at which size and batch it trains."""

    name: str
    label: str
    size: int
    batch: int
    build: Callable[[], DequantModule]


def _model_node(name: str, size: int) -> dict:
    """conf/model/<name>.yaml as ConcatUNet kwargs at `size`."""
    node = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{name}.yaml"), resolve=False)
    node.pop("_target_")
    node["sample_size"] = size
    return node


def _experiment(name: str) -> tuple[int, int, dict]:
    """(crop size, batch size, module kwargs) of conf/experiment/<name>.yaml."""
    cfg = OmegaConf.load(CONF / "experiment" / f"{name}.yaml")
    return int(cfg.data.example.crop_size), int(cfg.data.batch_size), dict(OmegaConf.to_container(cfg.module))


def _concat_setup(name: str, label: str, model: str, size: int, batch: int, module_kw: dict) -> Setup:
    """A ConcatUNet setup, identically initialised on every build."""

    def build() -> DequantModule:
        torch.manual_seed(0)
        return DequantModule(ConcatUNet(**_model_node(model, size)), **module_kw)

    return Setup(name, label, size, batch, build)


def _controlnet_setup(label: str, unet_cfg: dict, cond: list[int], seq: int, size: int, batch: int,
                      module_kw: dict, folder: Path) -> Setup:
    """A ControlNetUNet on a random IF-II-like UNet saved once to `folder` (nothing is downloaded)."""
    from diffusers import UNet2DConditionModel

    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        UNet2DConditionModel(**dict(unet_cfg, sample_size=size)).save_pretrained(folder)

    def build() -> DequantModule:
        torch.manual_seed(0)
        # Zeros of the right length: a random UNet has no text to match, and the timing is the same.
        net = ControlNetUNet(folder, conditioning_channels=cond, null_seq_len=seq, null_embedding_path="zeros")
        return DequantModule(net, **module_kw)

    return Setup("controlnet", label, size, batch, build)


def make_setups(small: bool, sizes: list[int] | None, batches: list[int] | None, tmp: Path) -> list[Setup]:
    """The three setups: the experiment configs on GPU, labelled small stand-ins with `small`."""
    sizes = sizes or []
    batches = batches or []

    def pick(i: int, size: int, batch: int) -> tuple[int, int]:
        s = sizes[i] if i < len(sizes) else size
        b = batches[i] if i < len(batches) else (batches[-1] if batches else batch)
        return s, b

    out = []
    exp = {n: _experiment(n) for n in ("scratch_64", "scratch_256", "paper_256")}
    cond = list(OmegaConf.load(CONF / "model" / "controlnet.yaml").conditioning_channels)
    if small:
        s, b = pick(0, 32, 4)
        out.append(_concat_setup("scratch_64", f"CPU stand-in for scratch_64 (base@64): model=small@{s}",
                                 "small", s, b, exp["scratch_64"][2]))
        s, b = pick(1, 64, 2)
        out.append(_concat_setup("scratch_256", f"CPU stand-in for scratch_256 (large@256): model=small@{s}",
                                 "small", s, b, exp["scratch_256"][2]))
        s, b = pick(2, 32, 2)
        out.append(_controlnet_setup(f"CPU stand-in for paper_256 ControlNet: tiny IF-II-like UNet@{s}",
                                     IF_II_TINY, [8, 16], 4, s, b, exp["paper_256"][2], tmp / "unet_tiny"))
        return out
    for i, (name, model) in enumerate((("scratch_64", "base"), ("scratch_256", "large"))):
        size, batch, kw = exp[name]
        s, b = pick(i, size, batch)
        out.append(_concat_setup(name, f"{name}: model={model}@{s}", model, s, b, kw))
    size, batch, kw = exp["paper_256"]
    s, b = pick(2, size, batch)
    out.append(_controlnet_setup(f"paper_256: ControlNet on random IF-II-like UNet@{s}", IF_II_LIKE, cond, 77,
                                 s, b, kw, tmp / "unet_if_ii_like"))
    return out


# ------------------------------------------------------------------------------------------------------ timing
def sync(device: torch.device) -> None:
    """Wait for queued CUDA work (a no-op on CPU) so that wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_batches(n: int, batch: int, size: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Pre-made random batches in the data module's format, on `device` (no data cost in throughput runs)."""
    g = torch.Generator().manual_seed(1)
    return [{"hint": torch.rand(batch, 7, size, size, generator=g).to(device),
             "target": torch.rand(batch, 3, size, size, generator=g).to(device)} for _ in range(n)]


class Trainer:
    """A bare training step doing DequantModule's work under a given precision (autocast, GradScaler for fp16)."""

    def __init__(self, module: DequantModule, precision: str, device: torch.device) -> None:
        self.module = module.to(device)
        self.module.train()
        self.device = device
        self.dtype = {"fp32": None, "bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}[precision]
        cfg = module.configure_optimizers()
        self.opt, self.sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16-mixed" else None
        self.step_count = 0

    def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Loss, backward, optimizer and LR step, EMA update; returns the (unsynchronised) loss."""
        gen = torch.Generator(device=self.device).manual_seed(self.step_count)
        self.step_count += 1
        amp = (torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None
               else contextlib.nullcontext())
        with amp:
            loss = self.module.diffusion_loss(batch, gen)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        self.sched.step()
        if self.module.ema is not None:
            self.module.ema.update(self.module.net.trainable_module())
        return loss.detach()


def reset_peak(device: torch.device) -> None:
    """Start a fresh peak-memory window (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> str:
    """Peak allocated GPU memory since the last reset, in GiB ('-' on CPU)."""
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}" if device.type == "cuda" else "-"


def throughput(setup: Setup, precision: str, steps: int, warmup: int, device: torch.device) -> dict:
    """Images/s and ms/step over `steps` timed steps after `warmup` untimed ones; peak memory on CUDA."""
    reset_peak(device)
    trainer = Trainer(setup.build(), precision, device)
    batches = random_batches(min(steps + warmup, 4), setup.batch, setup.size, device)
    for i in range(warmup):
        trainer.step(batches[i % len(batches)])
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        loss = trainer.step(batches[i % len(batches)])
    sync(device)
    elapsed = time.perf_counter() - start
    finite = bool(torch.isfinite(loss))
    out = {"img_s": steps * setup.batch / elapsed, "ms": 1e3 * elapsed / steps, "peak": peak_gib(device),
           "finite": finite}
    del trainer
    return out


def data_wait(setup: Setup, workers: int, steps: int, warmup: int, precision: str, device: torch.device) -> dict:
    """Fraction of step time spent waiting for the next batch of the real DequantDataModule (loss read each step)."""
    from dequant.data.datamodule import DequantDataModule
    from dequant.data.examples import ExampleMaker

    dm = DequantDataModule(
        sorted(ASSETS.glob("*.jpg")), ExampleMaker(crop_size=setup.size), batch_size=setup.batch,
        num_workers=workers, n_val=1, n_test=0, samples_per_epoch=(steps + warmup) * setup.batch,
        pin_memory=device.type == "cuda",
    )
    dm.setup("fit")
    trainer = Trainer(setup.build(), precision, device)
    it = iter(dm.train_dataloader(rank=0, world_size=1))
    waits, totals = [], []
    last = time.perf_counter()
    for i in range(warmup + steps):
        batch = next(it)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k in ("hint", "target")}
        got = time.perf_counter()
        float(trainer.step(batch))  # reading the loss (as a progress bar does) synchronises the step
        now = time.perf_counter()
        if i >= warmup:
            waits.append(got - last)
            totals.append(now - last)
        last = now
    del it, trainer
    return {"frac": sum(waits) / sum(totals), "ms": 1e3 * statistics.fmean(totals),
            "wait_ms": 1e3 * statistics.fmean(waits)}


def sampling(setup: Setup, sampler: str, steps: int, batch: int, device: torch.device,
             precision: str = "fp32") -> dict:
    """Seconds per image of DequantModule.sample (EMA weights where the module has them) and peak memory."""
    module = setup.build().to(device).eval()
    hint = torch.rand(batch, 7, setup.size, setup.size, generator=torch.Generator().manual_seed(2)).to(device)
    dtype = {"fp32": None, "bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}[precision]
    amp = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with amp:
        module.sample(hint[:1], sampler="ddim", steps=2)  # warm-up: kernels, allocator, scheduler setup
        sync(device)
        reset_peak(device)
        start = time.perf_counter()
        out = module.sample(hint, sampler=sampler, steps=steps)
        sync(device)
    elapsed = time.perf_counter() - start
    return {"s_img": elapsed / batch, "peak": peak_gib(device), "finite": bool(torch.isfinite(out).all())}


# ------------------------------------------------------------------------------------------------------ report
def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def params(setup: Setup) -> tuple[float, float]:
    """(total, trainable) parameters in millions."""
    net = setup.build().net
    total = sum(p.numel() for p in net.parameters())
    train = sum(p.numel() for p in net.trainable_module().parameters() if p.requires_grad)
    return total / 1e6, train / 1e6


def if_ii_like_size(cond: list[int]) -> tuple[float, float]:
    """(UNet, ControlNet) parameters in millions of the GPU-size IF-II-like setup, counted on the meta device."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**IF_II_LIKE)
        cn = ControlNetModel.from_unet(unet, conditioning_channels=7, conditioning_embedding_out_channels=cond)
    return sum(p.numel() for p in unet.parameters()) / 1e6, sum(p.numel() for p in cn.parameters()) / 1e6


def two_gpu_runs(steps: int, folder: Path, log: Callable[[str], None]) -> list[str]:
    """Table rows for 2-GPU DDP and FSDP runs of train.py (experiment=scratch_64, 64x64) of `steps` steps each: exit
    status, wall time, steps reached, and whether each checkpoint loads on one device (CPU) and samples."""
    import subprocess

    from dequant.callbacks import load_checkpoint_data
    from dequant.models.module import load_model

    rows = []
    runs = {"ddp": ["trainer=ddp"], "fsdp": ["trainer=fsdp", "module.use_ema=false"]}
    for name, overrides in runs.items():
        run_dir = folder / name
        cmd = [sys.executable, "train.py", "experiment=scratch_64", *overrides, "trainer.devices=2",
               f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", "logger=csv",
               f"callbacks.model_checkpoint.every_n_train_steps={steps}", "trainer.enable_progress_bar=false",
               f"hydra.run.dir={run_dir}"]
        log(f"two-GPU {name}: {' '.join(cmd[1:])}")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        last = run_dir / "checkpoints" / "last.ckpt"
        reached, loads = "-", "-"
        if last.is_file():
            reached = str(load_checkpoint_data(last)["global_step"])
            try:
                module = load_model(str(last), map_location="cpu").eval()
                with torch.no_grad():
                    module.sample(torch.rand(1, 7, 64, 64))  # the run's own sampler
                loads = "yes"
            except Exception as exc:  # noqa: BLE001 - reported in the table
                loads = f"no: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:100]}"
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] if proc.returncode else []
        note = f"exit {proc.returncode}" + (f": {tail[0][:120]}" if tail else "")
        rows.append(f"| {name} | 2 | {steps} | {reached} | {wall:.0f} | {loads} | {note} |")
    return rows


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch.cuda.is_available() is False")
    return torch.device(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--sizes", type=int, nargs="+", help="image size per model, in --models order")
    parser.add_argument("--batch", type=int, nargs="+", help="batch size per model (one value: all models)")
    parser.add_argument("--steps", type=int, help="timed training steps (GPU 30, CPU 6)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (GPU 5, CPU 1)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 16], help="DataLoader workers to compare")
    parser.add_argument("--data-steps", type=int, help="timed steps of the data-wait runs (GPU 200, CPU 10)")
    parser.add_argument("--data-models", nargs="+", choices=MODELS,
                        help="models for the data-wait runs (GPU: all, CPU: scratch_64)")
    parser.add_argument("--sample-batch", type=int, help="images per sampling call (GPU 8, CPU 1)")
    parser.add_argument("--cpu-small", action="store_true", help="small stand-in models (implied on CPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    parser.add_argument("--out", type=Path, help="markdown output (default experiments/results/bench_scale_<dev>.md)")
    parser.add_argument("--two-gpu-steps", type=int, default=300,
                        help="steps of the 2-GPU DDP and FSDP train.py runs (only with >= 2 GPUs; 0 skips them)")
    args = parser.parse_args()

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    small = args.cpu_small or not cuda
    steps = args.steps or (30 if cuda else 6)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    data_steps = args.data_steps or (200 if cuda else 10)
    sample_batch = args.sample_batch or (8 if cuda else 1)
    out_path = args.out or ROOT / "experiments" / "results" / f"bench_scale_{'gpu' if cuda else 'cpu'}.md"
    if not cuda:
        torch.set_num_threads(args.threads)
    else:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32: TF32 would blur it with the mixed modes
        torch.backends.cudnn.allow_tf32 = False
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    cores = os.cpu_count() or 1
    workers = sorted(set(args.workers))
    worker_note = f"workers {workers}"
    if max(workers) > cores:
        asked = workers
        workers = sorted({1, cores})
        worker_note = (f"asked for workers {asked} but this machine has {cores} cores: measured with {workers} "
                       "instead (more workers than cores only time-share)")

    with tempfile.TemporaryDirectory(prefix="dequant_bench_scale_") as tmp:
        all_setups = {s.name: s for s in make_setups(small, args.sizes, args.batch, Path(tmp))}
        setups = [all_setups[m] for m in args.models]
        data_models = args.data_models or ([s.name for s in setups] if cuda else [setups[0].name])

        model_rows, train_rows, data_rows, sample_rows = [], [], [], []
        frozen_m: float | None = None
        for s in setups:
            total, trainable = params(s)
            if s.name == "controlnet":
                frozen_m = total - trainable
            model_rows.append(f"| {s.name} | {s.label} | {total:.2f}M | {trainable:.2f}M | {s.size} | {s.batch} |")
            log(f"{s.name}: {total:.2f}M parameters ({trainable:.2f}M trainable)")
            for prec in args.precisions:
                try:
                    r = throughput(s, prec, steps, warmup, device)
                    note = "" if r["finite"] else "non-finite loss"
                    if not cuda and prec == "fp16-mixed":
                        note = "runs on CPU, but without fast fp16 kernels" + (f"; {note}" if note else "")
                    train_rows.append(f"| {s.name} | {prec} | {r['img_s']:.1f} | {r['ms']:.1f} | {r['peak']} | "
                                      f"{note} |")
                    log(f"  {prec}: {r['img_s']:.1f} img/s, {r['ms']:.1f} ms/step, peak {r['peak']} GiB")
                except (RuntimeError, NotImplementedError, TypeError) as exc:
                    what = "n/a on CPU" if not cuda else "failed"
                    first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
                    train_rows.append(f"| {s.name} | {prec} | {what} | - | - | {first} |")
                    log(f"  {prec}: {what}: {first}")
            data_prec = "bf16-mixed" if cuda else "fp32"
            if s.name in data_models:
                for w in workers:
                    r = data_wait(s, w, data_steps, warmup + w, data_prec, device)
                    data_rows.append(f"| {s.name} | {data_prec} | {w} | {r['ms']:.1f} | {r['wait_ms']:.1f} | "
                                     f"{100 * r['frac']:.1f}% |")
                    log(f"  data, {w} workers: {100 * r['frac']:.1f}% of {r['ms']:.1f} ms/step waiting")
            sample_precs = ("fp32", "bf16-mixed") if cuda else ("fp32",)
            for prec in sample_precs:
                for sampler, n in (("ddpm_super27", 27), ("dpmsolver", 20)):
                    r = sampling(s, sampler, n, sample_batch, device, prec)
                    note = "" if r["finite"] else "non-finite output"
                    sample_rows.append(f"| {s.name} | {s.size}x{s.size} | {sampler} | {n} | {prec} | "
                                       f"{r['s_img']:.3f} | {r['peak']} | {note} |")
                    log(f"  sample {sampler} {prec}: {r['s_img']:.3f} s/image")
            if cuda:
                torch.cuda.empty_cache()
        two_gpu_rows: list[str] = []
        if cuda and torch.cuda.device_count() >= 2 and args.two_gpu_steps > 0:
            two_gpu_rows = two_gpu_runs(args.two_gpu_steps, Path(tmp) / "two_gpu", log)

    elapsed = time.perf_counter() - t_start
    cond_channels = list(OmegaConf.load(CONF / "model" / "controlnet.yaml").conditioning_channels)
    name = device_name(device)
    kind = f"GPU: {name}" if cuda else f"CPU: {name} ({cores} cores shared with other jobs, {args.threads} thread(s))"
    if cuda:
        scope = "Full-size models from the experiment configs."
    else:
        scope = ("**CPU run at small sizes (no GPU was lent): every model is a labelled small stand-in, so the "
                 "numbers show that the benchmark runs and how the setups compare, not the speed at scale.** "
                 f"The GPU numbers come from: `{GPU_COMMAND}`.")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"# Scale benchmark ({'GPU' if cuda else 'CPU, small stand-ins'})",
        "",
        f"Device: **{kind}**. torch {torch.__version__}, {steps} timed training steps after {warmup} warm-up steps, "
        f"load average {load:.1f} at the end, whole run {elapsed:.0f} s.",
        "",
        scope,
        "",
        f"Command: `{' '.join(['python', 'experiments/bench_scale.py', *sys.argv[1:]])}`",
        "",
        "## Models",
        "",
        "| model | what runs | parameters | trainable | size | batch |",
        "|---|---|---:|---:|---:|---:|",
        *model_rows,
        "",
        "controlnet: a randomly initialised UNet2DConditionModel (no weights can be downloaded) with IF-II's "
        "interface (6 input/output channels, text projection, text add-embedding, timestep class embedding; at GPU "
        "size a T5-width (4096) null text embedding of 77 tokens), frozen, plus the trainable ControlNet fed the "
        "7-channel hint"
        + (f"; here the UNet has {frozen_m:.2f}M parameters" if frozen_m is not None else "")
        + ". At GPU size that UNet has {:.1f}M parameters (IF-II-M: about 450M) and the ControlNet about {:.0f}M."
        .format(*if_ii_like_size(cond_channels)),
        "",
        "## Training throughput",
        "",
        "One step = diffusion loss, backward, AdamW, LR schedule, EMA update (none for controlnet, as in paper_256), "
        "on pre-made random batches. fp16-mixed uses a GradScaler.",
        "",
        "| model | precision | images/s | ms/step | peak GPU GiB | note |",
        "|---|---|---:|---:|---:|---|",
        *train_rows,
        "",
        "## Waiting for data (real DequantDataModule on the shipped photos)",
        "",
        f"{worker_note}. Wait = time blocked on the next batch (plus its copy to the device) over the whole step; "
        f"{data_steps} timed steps after warm-up, loss read every step.",
        "",
        "| model | precision | workers | ms/step | wait ms/step | waiting for data |",
        "|---|---|---:|---:|---:|---:|",
        *data_rows,
        "",
        "## Sampling (DequantModule.sample)",
        "",
        f"{sample_batch} image(s) per call, after a 2-step warm-up call; time per image. EMA weights where the module "
        "keeps an EMA (not controlnet). bf16-mixed = the sampling call under torch.autocast.",
        "",
        "| model | size | sampler | steps | precision | s/image | peak GPU GiB | note |",
        "|---|---|---|---:|---|---:|---:|---|",
        *sample_rows,
        "",
        "## Two-GPU training runs (train.py, experiment=scratch_64, 64x64)",
        "",
        *(["DDP (EMA on) and FSDP (module.use_ema=false: FSDP with the EMA is refused at startup) for "
           f"{args.two_gpu_steps} steps each; each checkpoint is then loaded on the CPU and sampled with the "
           "run's sampler (for FSDP: it loads without FSDP).", "",
           "| strategy | GPUs | steps asked | steps reached | wall s | loads on one device | result |",
           "|---|---:|---:|---:|---:|---|---|", *two_gpu_rows]
          if two_gpu_rows else
          [f"Not run: {torch.cuda.device_count() if cuda else 0} GPU(s) visible (needs 2) or --two-gpu-steps 0."]),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text)


if __name__ == "__main__":
    main()
