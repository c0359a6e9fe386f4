"""Time and peak memory of `dequant-edit transfer` on a 12-megapixel photo (4000x3000) on one CPU core.

A package photo (default `src/dequant/assets/images/chelsea.jpg`) is upscaled with OpenCV's bicubic interpolation
(INTER_CUBIC) to `--size` (default 4000x3000) and written as a JPEG (quality 95) into a temporary folder; the
installed command

    dequant-edit transfer PHOTO --palette-from OTHER -n N --device cpu -o out.png [--ckpt CKPT]

then runs `--repeats` times (default 3), each a fresh process: pinned to the first `--threads` cores with
`taskset -c` where taskset exists, and told to use that many threads (OMP_NUM_THREADS, MKL_NUM_THREADS; dequant-edit
has no thread option of its own, and torch takes its intra-op thread count from OMP_NUM_THREADS). `--palette-from`
is another package photo (default coffee.jpg) at its own size; `--ckpt` is passed only when given, so the command's
own default (the shipped pretrained model) is what is measured otherwise.

Per repeat: the wall time of the whole command (Python start, imports, model load, quantization, rendering at
`--max-side` and resizing back, writing the PNGs) with time.perf_counter, and the process's peak resident memory
(`ru_maxrss` of that child, from os.wait4). The table gives the median and the max over repeats and whether the
targets (< 60 s, < 3 GB; GB = 10^9 bytes) hold for the worst repeat, with the threads, the CPU model
(/proc/cpuinfo) and the torch version. Paths in the output are file names or relative to the checkout.

    python experiments/bench_edit_12mp.py [--ckpt CKPT] [--size 4000x3000] [--repeats 3] [--threads 1]
        [--photo FILE] [--palette-from FILE] [-n 16] [-o results.md]

A quick check with a tiny checkpoint: `python train.py experiment=tiny trainer.max_steps=2
hydra.run.dir=/tmp/tiny_run`, then `python experiments/bench_edit_12mp.py --ckpt
/tmp/tiny_run/checkpoints/last.ckpt --size 800x600 --repeats 1`.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from dequant.config import assets_path

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 60.0
TARGET_GB = 3.0
DEFAULT_PHOTO = "chelsea.jpg"
DEFAULT_OTHER = "coffee.jpg"


def package_photo(name: str) -> Path:
    """A photo shipped in the package (assets/images, heldout_photos, train_photos) by file name, or a path."""
    given = Path(name)
    if given.is_file():
        return given
    assets = Path(assets_path("images")).parent
    for folder in ("images", "heldout_photos", "train_photos"):
        if (assets / folder / name).is_file():
            return assets / folder / name
    raise FileNotFoundError(f"{name}: no such file, nor a package photo in {assets.name}/images, heldout_photos "
                            "or train_photos")


def shown(value: object) -> str:
    """A path as the output names it: relative to the checkout when inside it, else its file name."""
    path = Path(str(value))
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return path.name


def parse_size(text: str) -> tuple[int, int]:
    """'4000x3000' -> (width, height)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 4000x3000, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"expected positive sides, got {text!r}")
    return width, height


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def make_photo(source: Path, width: int, height: int, folder: Path) -> Path:
    """`source` upscaled (bicubic) to width x height, written as a JPEG (quality 95) in `folder`."""
    import cv2

    image = cv2.imread(str(source), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{shown(source)}: not a readable image")
    big = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)
    out = folder / f"{source.stem}_{width}x{height}.jpg"
    if not cv2.imwrite(str(out), big, [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise OSError(f"could not write {out.name}")
    return out


def dequant_edit() -> str:
    """The installed `dequant-edit` command: beside this Python (its virtual environment), else on PATH."""
    beside = Path(sys.executable).parent / "dequant-edit"
    found = str(beside) if beside.is_file() else shutil.which("dequant-edit")
    if not found:
        raise FileNotFoundError("dequant-edit is not installed (pip install -e .)")
    return found


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_once(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, int, int]:
    """(wall seconds, peak RSS bytes, exit code) of one fresh child running `cmd`, its output into `log`."""
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    return seconds, usage.ru_maxrss * 1024, proc.returncode  # ru_maxrss is in KiB on Linux


def bench(args: argparse.Namespace, folder: Path) -> dict:
    """Make the photo, run dequant-edit `args.repeats` times; the measurements and the setting."""
    from PIL import Image

    width, height = args.size
    photo = make_photo(package_photo(args.photo), width, height, folder)
    other = package_photo(args.palette_from)
    out = folder / "out.png"
    cmd = [dequant_edit(), "transfer", str(photo), "--palette-from", str(other), "-n", str(args.colors),
           "--device", args.device, "-o", str(out)]
    if args.ckpt is not None:
        cmd += ["--ckpt", args.ckpt]
    pin = shutil.which("taskset")
    cores = f"0-{args.threads - 1}" if args.threads > 1 else "0"
    if pin:
        cmd = [pin, "-c", cores, *cmd]
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
           "NUMEXPR_NUM_THREADS": threads}
    walls, peaks = [], []
    for i in range(args.repeats):
        out.unlink(missing_ok=True)
        log = folder / f"repeat{i + 1}.log"
        seconds, peak, code = run_once(cmd, env, log)
        if code != 0:
            tail = log.read_text(errors="replace").replace(str(folder) + "/", "")[-2000:]
            raise RuntimeError(f"dequant-edit transfer exited with {code} (repeat {i + 1}):\n{tail}")
        with Image.open(out) as im:
            if im.size != (width, height):
                raise RuntimeError(f"dequant-edit wrote {im.size[0]}x{im.size[1]}, not the photo's {width}x{height}")
        walls.append(seconds)
        peaks.append(peak)
        print(f"repeat {i + 1}/{args.repeats}: {seconds:.1f} s, peak RSS {peak / 1e9:.2f} GB", file=sys.stderr,
              flush=True)
    shown_cmd = ["dequant-edit", "transfer", photo.name, "--palette-from", shown(other), "-n", str(args.colors),
                 "--device", args.device, "-o", out.name]
    if args.ckpt is not None:
        shown_cmd += ["--ckpt", args.ckpt if args.ckpt == "pretrained" else shown(args.ckpt)]
    if pin:
        shown_cmd = ["taskset", "-c", cores, *shown_cmd]
    return {"photo": f"{shown(package_photo(args.photo))} upscaled (cv2 INTER_CUBIC), JPEG q95",
            "width": width, "height": height, "colors": args.colors, "walls": walls, "peaks": peaks,
            "threads": args.threads, "cores": cores if pin else None, "command": " ".join(shown_cmd),
            "ckpt": "pretrained (dequant-edit's default)" if args.ckpt is None else
            (args.ckpt if args.ckpt == "pretrained" else shown(args.ckpt))}


def table(r: dict) -> str:
    """The measurements as markdown: a quantity per line."""
    walls, gbs = r["walls"], [p / 1e9 for p in r["peaks"]]
    wall_med, wall_max = statistics.median(walls), max(walls)
    gb_med, gb_max = statistics.median(gbs), max(gbs)
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    pinning = f"taskset -c {r['cores']}" if r["cores"] else "not pinned (no taskset)"
    rows = [
        ("photo", r["photo"]),
        ("photo size", f"{r['width']}x{r['height']}"),
        ("megapixels", f"{r['width'] * r['height'] / 1e6:.1f}"),
        ("palette size N", str(r["colors"])),
        ("checkpoint", r["ckpt"]),
        ("repeats", str(len(walls))),
        ("wall s, median / max", f"{wall_med:.1f} / {wall_max:.1f}"),
        ("peak RSS GB, median / max", f"{gb_med:.2f} / {gb_max:.2f}"),
        ("threads", f"{r['threads']} ({pinning}, OMP_NUM_THREADS={r['threads']})"),
        ("CPU", cpu_model()),
        ("torch", torch_version),
        (f"wall < {TARGET_SECONDS:.0f} s (max)", "yes" if wall_max < TARGET_SECONDS else "no"),
        (f"peak RSS < {TARGET_GB:.0f} GB (max)", "yes" if gb_max < TARGET_GB else "no"),
    ]
    lines = [f"`{r['command']}`", "", "| quantity | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "Per repeat: " + ", ".join(f"{w:.1f} s / {g:.2f} GB" for w, g in zip(walls, gbs)) + "."]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Time and peak memory of dequant-edit transfer on a 12 MP photo, one "
                                            "core (module docstring).")
    p.add_argument("--ckpt", default=None,
                   help="checkpoint for dequant-edit --ckpt (default: not passed, so dequant-edit's own default, "
                        "the shipped pretrained model)")
    p.add_argument("--size", type=parse_size, default=(4000, 3000), metavar="WxH",
                   help="photo size after upscaling (default 4000x3000, 12 MP)")
    p.add_argument("--repeats", type=_positive, default=3, help="fresh runs of the command (default 3)")
    p.add_argument("--threads", type=_positive, default=1, help="cores and threads the command gets (default 1)")
    p.add_argument("--photo", default=DEFAULT_PHOTO, help=f"package photo name or a path (default {DEFAULT_PHOTO})")
    p.add_argument("--palette-from", default=DEFAULT_OTHER,
                   help=f"photo whose palette is taken: package photo name or a path (default {DEFAULT_OTHER})")
    p.add_argument("-n", "--colors", type=_positive, default=16, help="palette size N (default 16)")
    p.add_argument("--device", default="cpu", help="dequant-edit --device (default cpu)")
    p.add_argument("-o", "--output", default=None, help="also write the markdown table here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_edit_12mp_") as tmp:
            result = bench(args, Path(tmp))
    except (OSError, ValueError, RuntimeError) as err:
        print(f"bench_edit_12mp: {err}", file=sys.stderr)
        return 1
    text = table(result)
    print(text, end="")
    if args.output:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
