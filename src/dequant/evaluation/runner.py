"""The evaluation run behind `evaluate.py`: the authors' five tests (SPEC 5) on held-out images, model and baselines.

What it does, from a composed `conf/evaluate.yaml`:
1. loads the model (`ckpt_path`: a Lightning checkpoint, a `dequant-export` folder or `pretrained`, the model
   shipped in the package) and reads from its training config the texture cue (`cond`), the quantizer, the palette
   matching, the sampler and the crop size (each can be overridden: `quantizer=kmeans`, `matching=neg`,
   `sampler=ddim sampler.steps=10`, `data.image_size=128`);
2. takes the held-out images: `data.paths` if given, else the checkpoint run's test split (`split.json` next to the
   run, or recomputed from the training config), falling back to the validation split when the test split is
   empty; each image is resized (short side = image size, bicubic or area when shrinking > 2x) and center-cropped;
   its id is its position in the sorted list of all images, as in training;
3. for every test letter and setting (`dequant.evaluation.tests`), on batches of images: samples the model with
   texture given and dropped (each image's noise seeded by (seed, image id)), with `post_L` (default true) also
   scores those same samples with their CIELab L replaced by the source's (method `model+post_L`, no extra
   sampling), runs the configured baselines on the same requested colors, scores everything per image;
4. with several processes (Lightning Fabric, e.g. `fabric.strategy=ddp fabric.devices=2`), rank r evaluates images
   r, r + world, ...; every (test, setting, method, metric) is a running mean in one torchmetrics accumulator
   (`dequant.models.metrics.KeyedImageMean`) that torchmetrics sums over the ranks, so every image counts once and
   the tables do not depend on the number of processes (the per-image rows are also gathered on rank 0);
5. rank 0 writes `metrics.csv`, `metrics.md`, `grids/<setting>.png` (first `grid_images` images of its first
   batch: source, hint, model outputs, baselines, ground truth) and hands the table, the grids and every result as
   one summary number per key (`report.summary_numbers`: `eval/r_tex/N4/psnr`, its `_input` and `_gain`, ...) to
   the configured loggers (W&B: the run's summary, where runs tables, bar charts and parallel coordinates read).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from dequant.color.cues import TextureCue
from dequant.color.edits import post_l
from dequant.color.matching import match_palettes
from dequant.color.quantize import Quantizer
from dequant.data.io import writable_folder
from dequant.data.resize import resize, short_side_size
from dequant.evaluation import report
from dequant.evaluation.tests import (T_SCORES, Case, build_case, case_metrics, image_rngs, parse_tests, settings,
                                      variant_name)
from dequant.models.metrics import KeyedImageMean
from dequant.preemption import StopFlag
from dequant.progress import Progress

log = logging.getLogger(__name__)

BASELINE_INPUTS = ("requested", "source")


@dataclass(frozen=True)
class Baseline:
    """A configured baseline: `fn(*inputs)` on the case's images, run on the test letters in `tests`."""

    name: str
    fn: Callable[..., Tensor]
    inputs: tuple[str, ...]
    tests: str

    def __call__(self, case: Case) -> Tensor:
        """The baseline's output `(B, 3, S, S)` for one case."""
        return self.fn(*(getattr(case, name) for name in self.inputs))


def check_ckpt_path(cfg: DictConfig) -> str:
    """`ckpt_path` from the config as a path to load (`pretrained`: the shipped model, checked against its
    SHA256SUMS); missing, empty or naming nothing is a ValueError saying how to pass it."""
    from dequant.models.pretrained import resolve_model

    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.get("ckpt_path"):
        raise ValueError("ckpt_path is required: python evaluate.py ckpt_path=<run>/checkpoints/last.ckpt "
                         "(a Lightning checkpoint from train.py or a folder from dequant-export), or "
                         "ckpt_path=pretrained (the model shipped in the package)")
    return resolve_model(str(cfg.ckpt_path), what="ckpt_path")


def _fields(node: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dict(node).items() if not str(k).startswith("_")}


def checkpoint_cue(dequant_config: Mapping[str, Any]) -> TextureCue:
    """The texture cue the checkpoint was trained with (`cond`, else `data.example.cue`)."""
    node = dequant_config.get("cond") or dequant_config.get("data", {}).get("example", {}).get("cue")
    if not node:
        raise ValueError("the checkpoint's config has no texture cue (cond) node")
    return TextureCue(**_fields(node))


def checkpoint_crop_size(dequant_config: Mapping[str, Any]) -> int:
    """The training crop size of the checkpoint (`data.example.crop_size`)."""
    size = dequant_config.get("data", {}).get("example", {}).get("crop_size")
    if not isinstance(size, int) or size < 1:
        raise ValueError("the checkpoint's config has no data.example.crop_size: pass data.image_size=...")
    return size


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def build_quantizer(override: Any, dequant_config: Mapping[str, Any]) -> Callable[..., Any]:
    """The quantizer: `override` (a config node) or the checkpoint's training quantizer (default median cut)."""
    node = _plain(override) or dequant_config.get("data", {}).get("example", {}).get("quantizer") \
        or dequant_config.get("quantizer")
    return instantiate(node) if node else Quantizer()


def build_matcher(override: Any, dequant_config: Mapping[str, Any]) -> Callable[..., Tensor]:
    """Palette matching (`match_palettes` partial): `override` or the checkpoint's `matching` node; the tests pass
    the score."""
    node = _plain(override) or dequant_config.get("matching")
    if not node:
        return match_palettes
    node = dict(node)
    node["_partial_"] = True
    return instantiate(node)


def build_baselines(node: Any) -> list[Baseline]:
    """Baselines from the `baselines` config group (entries set to null are skipped)."""
    out = []
    for name, spec in (_plain(node) or {}).items():
        if spec is None:
            continue
        inputs = tuple(spec.get("inputs") or ())
        bad = [i for i in inputs if i not in BASELINE_INPUTS]
        if not inputs or bad:
            raise ValueError(f"baselines.{name}.inputs must list names from {list(BASELINE_INPUTS)}, got {inputs}")
        tests = "".join(parse_tests(str(spec.get("tests", "rhtpm"))))
        fn = instantiate(spec["fn"]) if isinstance(spec.get("fn"), Mapping) else None
        if not callable(fn):
            raise ValueError(f"baselines.{name}.fn must be a `_partial_` node of a callable")
        out.append(Baseline(str(name), fn, inputs, tests))
    return out


def held_out_paths(ckpt_path: str, dequant_config: Mapping[str, Any],
                   paths: Any = None) -> tuple[list[Path], list[int], str]:
    """(files, image ids, description) of the images to evaluate (see the module docstring, step 2)."""
    from dequant.data.catalog import list_photos, split_positions
    from dequant.data.io import list_images, load_split
    from dequant.models.exported import SPLIT_FILE, run_folder

    if paths is not None:
        files = list_images(_plain(paths))
        return files, list(range(len(files))), f"{len(files)} images from data.paths"
    split_file = run_folder(ckpt_path) / SPLIT_FILE
    if split_file.is_file():
        split = load_split(split_file)
        origin = str(split_file)
    else:
        data = dequant_config.get("data", {})
        if not data.get("paths"):
            raise ValueError("the checkpoint has no split.json next to it and no data.paths in its config: "
                             "pass data.paths=...")
        listing = list_photos(data["paths"])
        # A config from before the hash split has no `split` key: it was split by the shuffle.
        positions = split_positions(listing, str(data.get("split", "shuffle")), n_val=int(data.get("n_val", 100)),
                                    n_test=int(data.get("n_test", 1000)), seed=int(data.get("split_seed", 42)),
                                    val_fraction=float(data.get("val_fraction", 5e-4)),
                                    test_fraction=float(data.get("test_fraction", 5e-3)))
        split = {k: [Path(listing[int(i)]) for i in v] for k, v in positions.items()}
        origin = "the split recomputed from the checkpoint's data config"
    everything = sorted({Path(p) for part in split.values() for p in part})
    ids = {p: i for i, p in enumerate(everything)}
    for name in ("test", "val"):
        files = [Path(p) for p in split.get(name, [])]
        if files:
            return files, [ids[p] for p in files], f"{len(files)} {name} images ({origin})"
    raise ValueError(f"the checkpoint's split ({origin}) has no test or validation images: pass data.paths=...")


def prepare_image(image: Tensor, size: int) -> Tensor:
    """Resize `(3, H, W)` so its short side is `size` (area when shrinking > 2x, else bicubic) and center-crop."""
    nh, nw = short_side_size(*image.shape[-2:], size)
    top, left = (nh - size) // 2, (nw - size) // 2
    return resize(image, nh, nw)[:, top:top + size, left:left + size].contiguous()


def load_images(paths: Sequence[Path], size: int) -> Tensor:
    """Load and prepare images `(N, 3, size, size)`."""
    from dequant.data.io import load_rgb

    return torch.stack([prepare_image(load_rgb(p), size) for p in paths])


def _rows(test: str, setting: str, method: str, ids: Sequence[int], metrics: Mapping[str, Tensor],
          order: tuple[int, ...]) -> list[dict[str, Any]]:
    values = {k: v.detach().float().cpu().tolist() for k, v in metrics.items()}
    return [{"test": test, "setting": setting, "method": method, "image_id": int(i), "_order": (*order, int(i)),
             **{k: float(v[j]) for k, v in values.items()}} for j, i in enumerate(ids)]


def metric_keys(letters: Sequence[str], t_scores: Sequence[str], variants: Sequence[bool], post_l_rows: bool,
                baselines: Sequence[Baseline]) -> list[tuple[str, str, str, str]]:
    """Every (test, setting, method, metric) an evaluation can produce, in the order of its tables."""
    names = list(report.METRICS)
    keys = []
    for letter in letters:
        methods = [report.MODEL, *([report.POST_L] if post_l_rows else []),
                   *(b.name for b in baselines if letter in b.tests)]
        for keep in variants:
            for setting in settings(letter, t_scores):
                keys += [(variant_name(letter, keep), setting.label, m, n) for m in methods for n in names]
    return keys


def accumulate(table: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """Add per-image rows (`_rows`) of one batch to the keyed accumulator, one update per (test, setting, method,
    metric)."""
    grouped: dict[tuple[str, str, str, str], list[float]] = {}
    for row in rows:
        for name, value in row.items():
            if name in ("test", "setting", "method", "image_id", "_order"):
                continue
            if name not in report.METRICS:
                raise ValueError(f"metric {name!r} has no entry in dequant.evaluation.report.METRICS")
            grouped.setdefault((row["test"], row["setting"], row["method"], name), []).append(float(value))
    for key, values in grouped.items():
        table.update(key, torch.tensor(values, dtype=torch.float64))


def aggregated_rows(results: Mapping[tuple[str, str, str, str], tuple[float, float, int]]) -> list[dict[str, Any]]:
    """`KeyedImageMean.compute()` -> the rows of `metrics.csv` (`<metric>_mean`, `<metric>_sem`), in key order."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for (test, setting, method, name), (mean, sem, _n) in results.items():
        row = out.setdefault((test, setting, method), {"test": test, "setting": setting, "method": method})
        row[f"{name}_mean"], row[f"{name}_sem"] = mean, sem
    return list(out.values())


def _grid(case: Case, outputs: Mapping[str, Tensor], n: int) -> Tensor:
    from dequant import viz

    hint = case.hints[True][:n]
    columns = {"source": case.source[:n], **viz.hint_columns(hint)}
    if case.reference is not None:
        columns["palette from"] = case.reference[:n]
    columns.update({name: out[:n] for name, out in outputs.items()})
    if case.target is not None:
        columns["ground truth"] = case.target[:n]
    scale = max(1, min(4, 128 // int(case.source.shape[-1])))
    return viz.labelled_grid(columns, scale=scale)


def _gather(fabric: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if fabric.world_size == 1:
        return rows
    gathered: list[Any] = [None] * fabric.world_size
    torch.distributed.all_gather_object(gathered, rows)
    return [r for part in gathered for r in part]


def _notes(ckpt: str, cue: TextureCue, n_images: int, size: int, origin: str, spec: Any, seed: int,
           quantizer: Any, world: int, formulation: Any) -> list[str]:
    return [f"- checkpoint: `{ckpt}`",
            f"- formulation: `{formulation.name}`, {formulation.network_evaluations(spec)} network evaluations "
            "per image",
            f"- texture cue: `{cue.mode}` (threshold {cue.threshold:g}, G neutral {cue.g_neutral:g})",
            f"- images: {n_images} at {size}x{size} ({origin})",
            f"- sampler: {spec.name}, {spec.steps} steps (start step {spec.start_step}, guidance {spec.guidance:g}); "
            f"seed {seed}; quantizer: {quantizer}; processes: {world}"]


def _flag(value: Any, key: str) -> bool:
    """A boolean config value; anything else is a ValueError naming the key."""
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def run_case(case: Case, module: Any, *, baselines: Sequence[Baseline], variants: Sequence[bool], sampler: Any,
             seed: int, image_ids: Sequence[int], fabric: Any, order: tuple[int, int],
             post_l_rows: bool = False) -> tuple[list, dict]:
    """Model (each texture variant, with `post_l_rows` also its L-swapped samples) and baselines on one case:
    (per-image metric rows, outputs by column name)."""
    rows: list[dict[str, Any]] = []
    outputs: dict[str, Tensor] = {}
    letter, label = case.setting.letter, case.setting.label
    for keep in variants:
        with fabric.autocast():
            out = module.sample(case.hints[keep].to(fabric.device), sampler=sampler, seed=seed, image_ids=image_ids)
        out = out.float().cpu().clamp(0, 1)
        outputs["model + texture" if keep else "model"] = out
        rows += _rows(variant_name(letter, keep), label, report.MODEL, image_ids, case_metrics(case, out),
                      (order[0], int(keep), order[1], 0))
        if post_l_rows:
            swapped = post_l(out, case.source)
            outputs["post_L + texture" if keep else "post_L"] = swapped
            rows += _rows(variant_name(letter, keep), label, report.POST_L, image_ids, case_metrics(case, swapped),
                          (order[0], int(keep), order[1], 1))
    for k, baseline in enumerate(baselines, start=2):
        out = baseline(case).float().cpu().clamp(0, 1)
        outputs[baseline.name] = out
        metrics = case_metrics(case, out)
        for keep in variants:  # baselines see no texture cue: the same rows for both tests
            rows += _rows(variant_name(letter, keep), label, baseline.name, image_ids, metrics,
                          (order[0], int(keep), order[1], k))
    return rows, outputs


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured tests; returns run_dir, the aggregated rows and the paths written (rank 0)."""
    from dequant import viz
    from dequant.models.exported import read_dequant_config
    from dequant.models.module import load_model
    from dequant.models.sampling import as_sampler_spec

    ckpt = check_ckpt_path(cfg)
    # Before any work: a folder that cannot take the results must not cost a whole evaluation. It is made when
    # the results are written, so a failed evaluation leaves no empty folder behind.
    run_dir = writable_folder(str(cfg.paths.run_dir), "paths.run_dir", create=False)
    letters = parse_tests(str(cfg.get("tests", "rhtpm")))
    dq_cfg = read_dequant_config(ckpt)
    cue = checkpoint_cue(dq_cfg)
    size = int(cfg.data.get("image_size") or checkpoint_crop_size(dq_cfg))
    batch_size = int(cfg.data.get("batch_size", 8))
    if batch_size < 1:
        raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
    seed = int(cfg.get("seed", 0))
    quantizer = build_quantizer(cfg.get("quantizer"), dq_cfg)
    match = build_matcher(cfg.get("matching"), dq_cfg)
    sampler = _plain(cfg.get("sampler")) or None
    baselines = build_baselines(cfg.get("baselines"))
    post_l_rows = _flag(cfg.get("post_L", True), "post_L")
    files, ids, origin = held_out_paths(ckpt, dq_cfg, cfg.data.get("paths"))
    if cfg.data.get("max_images"):
        files, ids = files[: int(cfg.data.max_images)], ids[: int(cfg.data.max_images)]

    fabric = instantiate(cfg.fabric)
    fabric.launch()
    rank, world = fabric.global_rank, fabric.world_size
    start = time.monotonic()
    module = load_model(ckpt).to(fabric.device)
    module.eval()
    if rank == 0:
        log.info("loaded %s on %s in %.1f s", ckpt, fabric.device, time.monotonic() - start)
    if sampler:
        module.formulation.check_sampler(as_sampler_spec(sampler))

    n = len(files)
    mine = list(range(rank, n, world))
    # Test t takes each image's target palette from the next held-out image (cyclically).
    needed = sorted(set(mine) | {(i + 1) % n for i in mine})
    loaded = dict(zip(needed, load_images([files[i] for i in needed], size))) if needed else {}
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    variants = (False,) if cue.mode == "none" else (False, True)

    rows: list[dict[str, Any]] = []
    grids: dict[str, Tensor] = {}
    n_grid = int(cfg.get("grid_images", 4))
    # An explicit `matching=<score>` replaces the authors' pair of transfer scores (the matching_cost sweep).
    t_scores = (cfg.matching.score,) if cfg.get("matching") is not None else T_SCORES
    # Every rank builds the same keys in the same order: torchmetrics sums the states key by key.
    table = KeyedImageMean(metric_keys(letters, t_scores, variants, post_l_rows, baselines)).to(fabric.device)
    # Counted in images (one image through one test setting), rank 0's share; a live bar on a terminal, else a log
    # line every progress_interval_s seconds.
    total = sum(len(settings(letter, t_scores)) for letter in letters) * len(mine)
    # SIGTERM / SIGUSR1 (SLURM preemption) stop the run between batches: nothing half-written, exit status 0.
    with StopFlag() as stop, Progress("evaluate", total, "images",
                                      enabled=bool(cfg.get("progress", True)) and rank == 0,
                                      interval_s=float(cfg.get("progress_interval_s", 30))) as progress:
        # Logged once the handler is in place: a signal sent on seeing this line stops the run cleanly.
        log.info("evaluating %s on %s (rank %d/%d: %d images), tests %s", ckpt, origin, rank, world, len(mine),
                 "".join(letters))
        for li, letter in enumerate(letters):
            active = [b for b in baselines if letter in b.tests]
            for si, setting in enumerate(settings(letter, t_scores)):
                for bi, batch in enumerate(batches):
                    if stop.received is not None:  # ranks agree once, after the loop (their batch counts differ)
                        break
                    images = torch.stack([loaded[i] for i in batch])
                    refs = torch.stack([loaded[(i + 1) % n] for i in batch])
                    batch_ids = [ids[i] for i in batch]
                    case = build_case(setting, images, quantizer=quantizer, cue=cue,
                                      rngs=image_rngs(seed, setting, batch_ids), references=refs, match=match,
                                      seed=seed)
                    case_rows, outputs = run_case(case, module, baselines=active, variants=variants,
                                                  sampler=sampler, seed=seed, image_ids=batch_ids, fabric=fabric,
                                                  order=(li, si), post_l_rows=post_l_rows)
                    rows += case_rows
                    accumulate(table, case_rows)
                    if rank == 0 and bi == 0 and n_grid > 0:
                        grids[setting.slug] = _grid(case, outputs, n_grid)
                    progress.advance(len(batch), f"{letter} {setting.label}")

    result: dict[str, Any] = {"run_dir": str(run_dir), "rank": rank, "stopped_by_signal": None}
    if stop.stop_requested(fabric if world > 1 else None):  # one collective per rank
        result["stopped_by_signal"] = stop.received or "a signal on another rank"
        log.warning("evaluation stopped by %s before it finished; nothing written; run it again to evaluate",
                    result["stopped_by_signal"])
        return result
    aggregated = aggregated_rows(table.compute())  # a collective: every rank
    rows = _gather(fabric, rows)
    if rank != 0:
        return result
    rows.sort(key=lambda r: r["_order"])
    csv_path = report.write_csv(aggregated, run_dir / "metrics.csv")
    spec = as_sampler_spec(sampler) if sampler else module.sampler_spec
    notes = _notes(ckpt, cue, n, size, origin, spec, seed, quantizer, world, module.formulation)
    md_path = report.write_markdown(aggregated, run_dir / "metrics.md", title="Evaluation", notes=notes)
    grid_paths = {slug: viz.save_png(g, run_dir / "grids" / f"{slug}.png") for slug, g in grids.items()}
    numbers = report.summary_numbers(aggregated)
    _log_to_loggers(cfg, aggregated, grids, numbers)
    log.info("wrote %s, %s and %d grids", csv_path, md_path, len(grid_paths))
    result.update(rows=aggregated, per_image=rows, metrics_csv=str(csv_path), metrics_md=str(md_path),
                  grids={k: str(v) for k, v in grid_paths.items()}, summary=numbers)
    return result


def _log_to_loggers(cfg: DictConfig, aggregated: list[dict[str, Any]], grids: Mapping[str, Tensor],
                    numbers: Mapping[str, float]) -> None:
    """Hand the table, the grids and the summary numbers to every configured logger that takes them (W&B: a
    wandb.Table, images and the run summary)."""
    from dequant.wandb_run import wandb_logger

    nodes = cfg.get("logger") or {}
    for name, node in nodes.items():
        logger = wandb_logger(node, key=f"logger.{name}") if _is_wandb_node(node) else instantiate(node)
        log_to(logger, aggregated, grids, numbers)
        if hasattr(logger, "finalize"):
            logger.finalize("success")
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.finish()  # an in-process caller (tests, multirun) must not leave the run open
        log.info("logged the evaluation to the %s logger", name)


def _is_wandb_node(node: Any) -> bool:
    return str((node or {}).get("_target_", "")).endswith("WandbLogger")


def log_to(logger: Any, aggregated: list[dict[str, Any]], grids: Mapping[str, Tensor],
           numbers: Mapping[str, float] | None = None) -> None:
    """`log_table("eval/metrics", ...)` and `log_image("eval/<setting>", ...)` on a logger that has them; the
    summary numbers into a W&B run's summary (one number per key: what runs tables and plots read)."""
    if numbers and type(logger).__name__ == "WandbLogger":
        logger.experiment.summary.update(dict(numbers))
    columns = report.csv_columns(aggregated)
    if hasattr(logger, "log_table"):
        data = [[row.get(c) for c in columns] for row in aggregated]
        logger.log_table(key="eval/metrics", columns=columns, data=data)
    if hasattr(logger, "log_image"):
        for slug, grid in grids.items():
            logger.log_image(key=f"eval/{slug}", images=[grid.permute(1, 2, 0).numpy()])

