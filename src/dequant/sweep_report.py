"""One table for a whole sweep: `python -m dequant.sweep_report multirun/<date>/<sweep> [--metrics ...]`.

One row per job folder found below the given paths (a folder holding `.hydra/overrides.yaml` or `sweep_job.json`):
the job, its status (from `sweep_job.json`, written by `dequant.sweep`; `unrecorded` for jobs run without it), the
swept overrides (the sweeper's parameters and every key whose value differs between jobs), the chosen metrics and
the error of a failed job. Metrics are training metrics (`val/loss`, the last value logged) or evaluation summaries
`<test>/<metric>`: the model's `<metric>_mean` from the job's `metrics.csv` (or `eval/metrics.csv`), averaged over
that test's settings, e.g. `r/psnr` (reconstruction, texture dropped) and `r_tex/psnr` (texture given).
Below it, a per-setting table: one row per test, setting (e.g. r at N=64, 16 and 4) and job, the key metrics
(PSNR, SSIM, palette ΔE00, texture correlation, speckle) of the model, each beside the quantized input's value (the
`input` baseline rows of the same `metrics.csv`), so a reader sees at once whether a run helps.
Writes `sweep_report.md`, `sweep_report.csv` and `sweep_report_settings.csv` (into the first path, or `--out`) and
prints the markdown.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RECORD_FILE = "sweep_job.json"
REPORT_NAME = "sweep_report"
# Shown by default when present (`--metrics all` shows every metric).
DEFAULT_TRAIN_METRICS = ("val/loss",)
DEFAULT_EVAL_METRICS = ("psnr", "palette_de2000", "texture_corr")
# The per-setting table's metrics, each beside the input baseline's value.
SETTING_METRICS = ("psnr", "ssim", "palette_de2000", "texture_corr", "speckle")
INPUT_METHOD = "input"
_ERROR_CHARS = 160
_LONG_NUMBER = re.compile(r"-?\d*\.\d{5,}(e-?\d+)?")


@dataclass
class SweepTable:
    """A sweep report: column names and one dict per job (missing cells are absent)."""

    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    settings: SweepTable | None = None


def _number(text: str) -> Any:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return value


def read_metrics_csv(path: Path) -> list[dict[str, Any]]:
    """The rows of an evaluation `metrics.csv` (numbers as floats, empty cells dropped)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: _number(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def eval_summary(rows: Iterable[Mapping[str, Any]], method: str = "model") -> dict[str, float]:
    """`{"<test>/<metric>": mean over the test's settings}` of one method's `<metric>_mean` columns."""
    sums: dict[str, list[float]] = {}
    for row in rows:
        if str(row.get("method")) != method:
            continue
        for key, value in row.items():
            if key.endswith("_mean") and isinstance(value, float) and math.isfinite(value):
                sums.setdefault(f"{row['test']}/{key[:-5]}", []).append(value)
    return {k: sum(v) / len(v) for k, v in sums.items()}


def last_logged(path: Path) -> dict[str, float]:
    """The last value of every column of a Lightning CSVLogger `metrics.csv`."""
    out: dict[str, float] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key not in ("epoch", "step") and value not in ("", None):
                    number = _number(value)
                    if isinstance(number, float):
                        out[key] = number
    return out


def find_jobs(paths: Sequence[str | Path]) -> list[Path]:
    """Job folders at or below `paths`, in a natural order (job 2 before job 10)."""
    jobs: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ValueError(f"paths: {path} does not exist")
        if (path / ".hydra" / "overrides.yaml").is_file() or (path / RECORD_FILE).is_file():
            jobs.add(path)
            continue
        jobs.update(p.parent.parent for p in path.rglob(".hydra/overrides.yaml"))
        jobs.update(p.parent for p in path.rglob(RECORD_FILE))

    def natural(p: Path) -> list[Any]:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]

    return sorted(jobs, key=natural)


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """`["cond=T", "+a.b=1"]` -> `{"cond": "T", "a.b": "1"}`."""
    out = {}
    for item in overrides:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def _yaml(path: Path) -> Any:
    # Plain YAML: Hydra's saved configs keep interpolations that only resolve inside the job.
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def is_sweep_value(override: str) -> bool:
    """True for an override that Hydra's sweepers expand to several values (`k=a,b`, `k=range(..)`, ...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_override(str(override)).is_sweep_override()
    except HydraException:
        return False


def swept_keys(sweeper: Mapping[str, Any] | None, multirun: Mapping[str, Any] | None = None) -> list[str]:
    """Keys a sweep varies: the sweeper's `params`, and the sweep overrides (`k=a,b`) of the multirun's command
    line (`multirun.yaml`, which Hydra's basic sweeper writes into the sweep folder)."""
    keys = list((sweeper or {}).get("params") or {})
    task = (((multirun or {}).get("hydra") or {}).get("overrides") or {}).get("task") or []
    keys += [str(item).partition("=")[0].lstrip("+~") for item in task if is_sweep_value(item)]
    return list(dict.fromkeys(keys))


def sweep_keys(job_dir: Path) -> list[str]:
    """`swept_keys` of a job folder (its `.hydra/hydra.yaml` and its sweep folder's `multirun.yaml`)."""
    hydra_cfg = (_yaml(job_dir / ".hydra" / "hydra.yaml") or {}).get("hydra") or {}
    return swept_keys(hydra_cfg.get("sweeper"), _yaml(job_dir.parent / "multirun.yaml"))


def load_job(job_dir: Path, method: str = "model") -> dict[str, Any]:
    """Everything the report needs from one job folder."""
    record = json.loads((job_dir / RECORD_FILE).read_text()) if (job_dir / RECORD_FILE).is_file() else None
    overrides = parse_overrides(_yaml(job_dir / ".hydra" / "overrides.yaml") or (record or {}).get("overrides") or [])
    metrics: dict[str, float] = {}
    eval_rows: list[dict[str, Any]] = []
    if record and (record.get("train") or {}).get("metrics"):
        metrics.update(record["train"]["metrics"])
    elif (job_dir / "csv" / "metrics.csv").is_file():
        metrics.update(last_logged(job_dir / "csv" / "metrics.csv"))
    for csv_path in (job_dir / "metrics.csv", job_dir / "eval" / "metrics.csv"):
        if csv_path.is_file():
            found = read_metrics_csv(csv_path)
            eval_rows += found
            metrics.update(eval_summary(found, method))
    error = (record or {}).get("error")
    optimized = ((_yaml(job_dir / ".hydra" / "config.yaml") or {}).get("optimized_metric"))
    return {"dir": job_dir, "status": record.get("status", "unknown") if record else "unrecorded",
            "overrides": overrides, "metrics": metrics, "eval_rows": eval_rows, "error": error,
            "keys": sweep_keys(job_dir),
            "seconds": (record or {}).get("seconds"), "optimized": optimized}


def _choose_metrics(jobs: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None) -> list[str]:
    available = list(dict.fromkeys(k for job in jobs for k in job["metrics"]))
    if metrics and list(metrics) != ["all"]:
        return list(metrics)
    if metrics:
        return sorted(available)
    optimized = [str(job["optimized"]) for job in jobs if job.get("optimized")]
    chosen = [m for m in dict.fromkeys([*optimized, *DEFAULT_TRAIN_METRICS]) if m in available]
    tests = list(dict.fromkeys(k.split("/")[0] for k in available if "/" in k and not k.startswith(("val", "train"))))
    chosen += [f"{t}/{m}" for t in tests for m in DEFAULT_EVAL_METRICS if f"{t}/{m}" in available]
    return list(dict.fromkeys(chosen))


def build_table(paths: Sequence[str | Path], metrics: Sequence[str] | None = None,
                method: str = "model") -> SweepTable:
    """The sweep table of every job below `paths` (see the module docstring)."""
    dirs = find_jobs(paths)
    if not dirs:
        raise ValueError(f"paths: no sweep job folders (with .hydra/overrides.yaml or {RECORD_FILE}) below "
                         f"{[str(p) for p in paths]}")
    jobs = [load_job(d, method) for d in dirs]
    keys = list(dict.fromkeys(k for job in jobs for k in job["keys"]))
    all_keys = list(dict.fromkeys(k for job in jobs for k in job["overrides"]))
    keys += [k for k in all_keys if k not in keys and len({job["overrides"].get(k) for job in jobs}) > 1]
    chosen = _choose_metrics(jobs, metrics)
    root = Path(*_common_parts([d.resolve() for d in dirs])) if len(dirs) > 1 else dirs[0].resolve().parent
    rows = []
    for d, job in zip(dirs, jobs):
        row: dict[str, Any] = {"job": str(d.resolve().relative_to(root)), "status": job["status"]}
        row.update({k: job["overrides"][k] for k in keys if k in job["overrides"]})
        row.update({m: job["metrics"][m] for m in chosen if m in job["metrics"]})
        if job["seconds"] is not None:
            row["seconds"] = job["seconds"]
        if job["error"]:
            row["error"] = job["error"]
        row["path"] = str(d)
        rows.append(row)
    columns = ["job", "status", *keys, *chosen]
    columns += [c for c in ("seconds", "error") if any(c in r for r in rows)]
    settings = settings_table(jobs, [r["job"] for r in rows], keys, metrics, method)
    return SweepTable(columns=columns + ["path"], rows=rows, settings=settings)


def _setting_metrics(jobs: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None) -> tuple[list[str], set[str]]:
    """(metric names, tests or empty for all) of the per-setting table: the `<test>/<metric>` entries of an
    explicit `metrics`, every evaluation metric for `all`, else `SETTING_METRICS`."""
    present = list(dict.fromkeys(k[: -len("_mean")] for job in jobs for row in job["eval_rows"] for k in row
                                 if k.endswith("_mean")))
    if metrics and list(metrics) != ["all"]:
        named = [m.split("/", 1) for m in metrics if "/" in m and not m.startswith(("val/", "train/"))]
        return [m for m in dict.fromkeys(n for _, n in named) if m in present], {t for t, _ in named}
    if metrics:
        return present, set()
    return [m for m in SETTING_METRICS if m in present], set()


def settings_table(jobs: Sequence[Mapping[str, Any]], names: Sequence[str], keys: Sequence[str],
                   metrics: Sequence[str] | None = None, method: str = "model") -> SweepTable:
    """One row per (test, setting, job): `method`'s `<metric>` beside the input baseline's `<metric> (input)`."""
    chosen, tests = _setting_metrics(jobs, metrics)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for name, job in zip(names, jobs) if chosen else ():
        by_key = {(str(r.get("test")), str(r.get("setting")), str(r.get("method"))): r for r in job["eval_rows"]}
        for (test, setting, m), row in by_key.items():
            if m != method or (tests and test not in tests):
                continue
            out: dict[str, Any] = {"test": test, "setting": setting, "job": name}
            out.update({k: job["overrides"][k] for k in keys if k in job["overrides"]})
            base = by_key.get((test, setting, INPUT_METHOD), {})
            for metric in chosen:
                for column, source in ((metric, row), (f"{metric} ({INPUT_METHOD})", base)):
                    if isinstance(source.get(f"{metric}_mean"), float):
                        out[column] = source[f"{metric}_mean"]
            groups.setdefault((test, setting), []).append(out)
    columns = ["test", "setting", "job", *keys, *(c for m in chosen for c in (m, f"{m} ({INPUT_METHOD})"))]
    # Jobs of one setting sit together: the runs compare along a few adjacent rows.
    return SweepTable(columns=columns, rows=[r for rows in groups.values() for r in rows])


def _common_parts(paths: Sequence[Path]) -> list[str]:
    parts = list(paths[0].parts)
    for p in paths[1:]:
        n = 0
        while n < min(len(parts), len(p.parts)) and parts[n] == p.parts[n]:
            n += 1
        parts = parts[:n]
    return parts


def _cell(value: Any, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.1f}" if column == "seconds" else f"{value:.4g}"
    if column != "job" and isinstance(value, str) and _LONG_NUMBER.fullmatch(value):
        return f"{float(value):.4g}"  # e.g. optuna's learning rates; the CSV keeps every digit
    text = " ".join(str(value).split()).replace("|", "\\|")
    return text[:_ERROR_CHARS] + ("..." if len(text) > _ERROR_CHARS else "") if column == "error" else text


def to_markdown(table: SweepTable) -> str:
    """The table as GitHub markdown (without the `path` column)."""
    columns = [c for c in table.columns if c != "path"]
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---:" if c in _numeric(table, c) else "---" for c in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(c), c) for c in columns) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def _numeric(table: SweepTable, column: str) -> set[str]:
    values = [r[column] for r in table.rows if column in r]
    return {column} if values and all(isinstance(v, (int, float)) for v in values) else set()


def report_markdown(table: SweepTable) -> str:
    """The whole report: the job table, then (when any job was evaluated) the per-setting table."""
    text = to_markdown(table)
    if table.settings is not None and table.settings.rows:
        text += ("\n## Per setting\n\nThe model's mean over images for every test and setting, each metric "
                 f"beside the quantized input's (`{INPUT_METHOD}` baseline) on the same images.\n\n"
                 + to_markdown(table.settings))
    return text


def _write_csv(table: SweepTable, path: Path) -> None:
    """Every column of `table` as CSV."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=table.columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table.rows)


def write_report(table: SweepTable, out_dir: str | Path) -> tuple[Path, Path]:
    """Write `sweep_report.md`, `sweep_report.csv` (every column, full errors) and, when any job was evaluated,
    `sweep_report_settings.csv` into `out_dir`; returns the first two paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = out / f"{REPORT_NAME}.md", out / f"{REPORT_NAME}.csv"
    md_path.write_text(report_markdown(table), encoding="utf-8")
    _write_csv(table, csv_path)
    if table.settings is not None and table.settings.rows:
        _write_csv(table.settings, out / f"{REPORT_NAME}_settings.csv")
    return md_path, csv_path


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the sweep table and write it next to the sweep."""
    parser = argparse.ArgumentParser(prog="dequant-sweep-report", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="sweep folders (or job folders, or a parent of several sweeps)")
    parser.add_argument("--metrics", nargs="+", default=None,
                        help="metric columns, e.g. val/loss r/psnr r_tex/palette_de2000; 'all' for every metric")
    parser.add_argument("--method", default="model", help="method rows of metrics.csv to summarize (default model)")
    parser.add_argument("--out", default=None, help="folder for sweep_report.md/.csv (default: the first path)")
    parser.add_argument("--no-write", action="store_true", help="only print")
    args = parser.parse_args(argv)
    try:
        table = build_table(args.paths, metrics=args.metrics, method=args.method)
    except ValueError as err:
        print(f"dequant-sweep-report: error: {err}", file=sys.stderr)
        return 2
    print(report_markdown(table), end="")
    if not args.no_write:
        md_path, csv_path = write_report(table, args.out or args.paths[0])
        print(f"\nwritten to {md_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
