"""Package a trained run as the shipped model: `src/dequant/assets/pretrained` with its model card.

    python experiments/release_model.py RUN_DIR --eval EVAL_DIR --curve experiments/results/release_cpu.md
        [--bench experiments/results/bench_edit_12mp.md] [--command "python train.py experiment=release_cpu"]
        [--ckpt RUN_DIR/checkpoints/last.ckpt] [-o src/dequant/assets/pretrained]

What it writes (a `dequant-export` folder, so `dequant-edit`, `dequant-app`, `evaluate.py` and diffusers read it):
- `unet/` (the EMA network as diffusers safetensors: no pickle) and `dequant_config.json`, the run's resolved
  config with the checkout's folder taken off every path (`outputs/release_cpu`, `src/dequant/assets/...`);
- `split.json`: the run's split with each photo named relative to this folder (`../images/coffee.jpg`), so an
  installed package evaluates its own held-out photos (`evaluate.py ckpt_path=pretrained`);
- `MODEL_CARD.md`: the recipe command and commit, training steps, precision and wall time, the training photos and
  where their licenses are, the per-setting table on held-out photos (EVAL_DIR/metrics.md, from `evaluate.py`), the
  learning curve's file, the network evaluations per image and the 12-megapixel timing (--bench);
- `SHA256SUMS`: every file's sha256, checked before the model loads (a damaged or partial copy is refused).

The weights must stay under 20 MB (the package's size budget).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "dequant" / "assets" / "pretrained"
MAX_WEIGHT_BYTES = 20 * 1024 * 1024


def _relative(value: Any, root: str) -> Any:
    """`value` with the checkout's folder (`root/`) taken off every string inside it."""
    if isinstance(value, dict):
        return {k: _relative(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root + "/", "").replace(root, ".")
    return value


def _git(*args: str) -> str:
    """A git answer about the checkout, or "unknown" outside one."""
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _training_facts(run_dir: Path) -> dict[str, Any]:
    """Steps, precision, sittings and training wall time from the run's train.log."""
    facts: dict[str, Any] = {}
    log = (run_dir / "train.log").read_text() if (run_dir / "train.log").is_file() else ""
    stamp = r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+\]"
    lines = [(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"), line)
             for line in log.splitlines() if (m := re.match(stamp, line))]
    # A sitting starts with the precision line every CPU run logs and ends at the last line before the next start.
    starts = [i for i, (_, line) in enumerate(lines) if " on the CPU: " in line] or [0]
    ends = [j - 1 for j in starts[1:]] + [len(lines) - 1]
    facts["sittings"] = len(starts)
    facts["wall_min"] = sum((lines[e][0] - lines[b][0]).total_seconds() for b, e in zip(starts, ends)) / 60 \
        if lines else 0.0
    found = re.findall(r"precision (\S+) on the CPU: (.*)$", log, flags=re.M)
    facts["precision"] = f"{found[-1][0]} ({found[-1][1]})" if found else "not logged"
    finished = re.findall(r"training finished at step (\d+)", log)
    facts["steps"] = int(finished[-1]) if finished else None
    return facts


def _split(run_dir: Path, out: Path) -> dict[str, list[str]]:
    """The run's split with every photo named relative to the shipped folder."""
    split = json.loads((run_dir / "split.json").read_text())
    return {name: [os.path.relpath(Path(p).resolve(), out.resolve()) for p in paths] for name, paths in split.items()}


def _licenses(split: dict[str, list[str]]) -> list[str]:
    """One line per folder of training photos: how many, and the file that holds their licenses."""
    counts: dict[str, int] = {}
    for p in split["train"]:
        counts[Path(p).parent.name] = counts.get(Path(p).parent.name, 0) + 1
    lines = []
    for name, count in sorted(counts.items()):
        folder = Path("src/dequant/assets") / name
        lic = folder / "LICENSES.md" if (ROOT / folder / "LICENSES.md").is_file() else folder.parent / "README.md"
        lines.append(f"- {count} photos from `{folder}/` (licenses: `{lic}`)")
    return lines


def card(run_dir: Path, cfg: dict[str, Any], split: dict[str, list[str]], eval_md: str, curve: Path | None,
         bench_md: str | None, command: str, weight_bytes: int) -> str:
    """The model card's markdown."""
    facts = _training_facts(run_dir)
    module, data = cfg["module"], cfg["data"]
    formulation = cfg.get("formulation", {})
    lines = [
        "# dequant's shipped model",
        "",
        "The EMA network of a `release_cpu` run: the model `dequant-edit`, `dequant-app` and "
        "`evaluate.py ckpt_path=pretrained` use when no checkpoint is given.",
        "",
        "## Recipe",
        f"- command: `{command}` (then `python experiments/release_model.py outputs/release_cpu ...`)",
        f"- commit (of the checkout that exported it): `{_git('rev-parse', 'HEAD')}`",
        f"- steps: {facts['steps']}; precision: {facts['precision']}; training wall time: "
        f"{facts['wall_min']:.0f} min on 2 CPU cores in {facts['sittings']} sitting(s)",
        f"- network: `{module['net']['_target_']}`, {weight_bytes / 1e6:.1f} MB of fp32 weights (safetensors); "
        f"formulation `{formulation.get('_target_', '?').rsplit('.', 1)[-1]}`; crops of "
        f"{data['example']['crop_size']} px, batches of {data['batch_size']}",
        "- network evaluations per image: 1 (the bridge sampled in one step)",
        "",
        "## Training photos",
        f"{len(split['train'])} photos, every photo of the package that is not held out:",
        *_licenses(split),
        f"- held out (never trained on): validation {', '.join(Path(p).name for p in split['val'])}; test "
        f"{', '.join(Path(p).name for p in split['test'])}; and the 10 photos of "
        "`src/dequant/assets/heldout_photos/` (licenses in its LICENSES.md)",
        "",
        "## On held-out photos",
        "The 13 held-out photos at 64x64 (`evaluate.py`, all five tests, the classical baselines beside the model):",
        "",
        eval_md.strip(),
        "",
    ]
    if curve is not None:
        lines += ["## Learning curve", f"Every 1000 steps on the held-out photos: `{curve}`.", ""]
    if bench_md:
        wall = re.search(r"\| wall s, median / max \| ([\d.]+)", bench_md)
        mp = re.search(r"\| megapixels \| ([\d.]+)", bench_md)
        per_mp = (f"{float(wall.group(1)) / float(mp.group(1)):.1f} s per megapixel of photo on one core (the "
                  "whole command: load, quantize, render at `--max-side` 1024, resize back, write)"
                  if wall and mp else "see the table")
        lines += ["## Time and memory at a photo's size", f"Time per megapixel: {per_mp}.", "", bench_md.strip(), ""]
    return "\n".join(lines)


def _eval_table(eval_dir: Path) -> str:
    """The evaluation's notes and its per-setting key metrics (the full table stays in EVAL_DIR/metrics.md), with
    the checkout's folder taken off paths."""
    text = (eval_dir / "metrics.md").read_text().replace(str(ROOT) + "/", "")
    head, _, rest = text.partition("\n## Per setting: key metrics\n")
    head = re.sub(r"^# .*\n", "", head, count=1)
    key = rest.split("\n## ", 1)[0]
    return head.strip() + "\n\n### Per setting: key metrics\n" + key.replace("\n### ", "\n#### ")


def release(run_dir: Path, eval_dir: Path, curve: Path | None, bench: Path | None, command: str,
            ckpt: Path | None = None, out: Path = OUT) -> Path:
    """Export the run's checkpoint into `out` with its card and checksums; returns `out`."""
    from dequant.export import export
    from dequant.models.exported import CONFIG_FILE, SPLIT_FILE
    from dequant.models.pretrained import write_sha256sums

    ckpt = ckpt or run_dir / "checkpoints" / "last.ckpt"
    with tempfile.TemporaryDirectory() as tmp:
        staged = export(ckpt, Path(tmp) / "pretrained")
        weights = sum(p.stat().st_size for p in staged.rglob("*.safetensors"))
        if weights > MAX_WEIGHT_BYTES:
            raise SystemExit(f"the weights take {weights / 1e6:.1f} MB, over the {MAX_WEIGHT_BYTES / 1e6:.0f} MB budget")
        cfg = json.loads((staged / CONFIG_FILE).read_text())
        cfg = _relative(cfg, str(ROOT))
        (staged / CONFIG_FILE).write_text(json.dumps(cfg, indent=1) + "\n")
        split = _split(run_dir, out)
        (staged / SPLIT_FILE).write_text(json.dumps(split, indent=1) + "\n")
        bench_md = bench.read_text() if bench is not None else None
        (staged / "MODEL_CARD.md").write_text(
            card(run_dir, cfg, split, _eval_table(eval_dir), curve, bench_md, command, weights))
        for path in [staged, *staged.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        write_sha256sums(staged)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(staged, out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--eval", type=Path, required=True, help="evaluate.py's output folder (metrics.md)")
    p.add_argument("--curve", type=Path, default=None, help="the committed learning curve (repo-relative)")
    p.add_argument("--bench", type=Path, default=None, help="bench_edit_12mp.py's markdown output")
    p.add_argument("--command", default="python train.py experiment=release_cpu")
    p.add_argument("--ckpt", type=Path, default=None)
    p.add_argument("-o", "--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    out = release(args.run_dir, args.eval, args.curve, args.bench, args.command, args.ckpt, args.out)
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    print((out / "MODEL_CARD.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
