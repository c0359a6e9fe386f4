"""Sampling cost per formulation and sampler: network evaluations and milliseconds per 64x64 image on one core.

The cost does not depend on the weights, so untrained nets of the demo's size stand in for trained ones.

    python experiments/bench_sampling.py [--model small_conv] [--size 64] [--batch 8] [--repeats 3] [-o table.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml
from hydra.utils import instantiate

from dequant.config import conf_dir
from dequant.models.module import DequantModule
from dequant.models.sampling import SamplerSpec

CASES = [
    ("noise", SamplerSpec("ddpm_super27", steps=27)),
    ("noise", SamplerSpec("dpmsolver", steps=10)),
    ("residual", SamplerSpec("predictor", steps=1)),
    ("residual", SamplerSpec("ddim", steps=3)),
    ("bridge", SamplerSpec("bridge", steps=1)),
    ("bridge", SamplerSpec("bridge", steps=4)),
]


def net_from_conf(model: str, size: int) -> torch.nn.Module:
    """The net of `conf/model/<model>.yaml` at `size`."""
    node = yaml.safe_load((Path(conf_dir()) / "model" / f"{model}.yaml").read_text())
    node["sample_size"] = size
    return instantiate(node)


def main(argv: list[str] | None = None) -> int:
    """Print the table (and write it with -o)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small_conv")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    hint = torch.rand(args.batch, 7, args.size, args.size, generator=torch.Generator().manual_seed(0))
    lines = [f"Sampling cost, model `{args.model}`, {args.size}x{args.size}, batches of {args.batch}, one core "
             f"(torch {torch.__version__}); median of {args.repeats} runs", "",
             "| formulation | sampler | steps | network evaluations | ms per image |", "|---|---|---|---|---|"]
    for formulation, spec in CASES:
        torch.manual_seed(0)
        module = DequantModule(net_from_conf(args.model, args.size), formulation=formulation, sampler=spec).eval()
        module.sample(hint[:1])  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            module.sample(hint)
            times.append((time.perf_counter() - start) * 1000 / args.batch)
        ms = sorted(times)[len(times) // 2]
        nfe = module.formulation.network_evaluations(spec)
        lines.append(f"| {formulation} | {spec.name} | {spec.steps} | {nfe} | {ms:.1f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
