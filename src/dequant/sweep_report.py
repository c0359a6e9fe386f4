"""One table for a whole sweep: `python -m dequant.sweep_report multirun/<date>/<sweep> [--metrics ...] [--repeat KEY]`.

One row per job folder found below the given paths (a folder holding `.hydra/overrides.yaml` or `sweep_job.json`):
the job, its status (from `sweep_job.json`, written by `dequant.sweep`; `unrecorded` for jobs run without it;
`killed` for a job that ended without a result: recorded so by the launcher from submitit's files, or still marked
running while no live process holds its folder), the swept overrides (the sweeper's parameters and every key whose
value differs between jobs), the chosen metrics, the W&B run (link, or id while offline), the launcher's job id (SLURM
on a cluster) and restarts, and the error of a failed job (for a killed one, the last lines of its log below the
table). Metrics are training metrics (`val/loss`, `val/r_tex/N4/psnr`: the last value logged) or evaluation results:
`<test>/<metric>`, the model's `<metric>_mean` from the job's `metrics.csv` (or `eval/metrics.csv`) averaged over
that test's settings (`r/psnr`: texture dropped, `r_tex/psnr`: texture given), or any run-summary key
`eval/<test>/<setting>/<metric>[_sem|_input|_gain]` (`dequant.evaluation.report.summary_numbers`).
Repeats (`seed` when the sweep varies it, or the keys given to `--repeat` / `sweep.repeat_keys`) are also folded:
one row per value of the other swept keys with mean ± standard deviation over the repeats, n, the standard error of
the mean and, for evaluation metrics, the repeats' mean standard error over images.
Below, a per-setting table: one row per test, setting (e.g. r at N=64, 16 and 4) and job, the key metrics (PSNR,
SSIM, palette ΔE00, texture correlation, speckle) of the model with their standard errors over images, each beside
the quantized input's value (the `input` baseline rows of the same `metrics.csv`), so a reader sees at once whether a
run helps; folded over repeats too.
Writes `sweep_report.md`, `sweep_report.csv`, `sweep_report_settings.csv` and, with repeats,
`sweep_report_folded.csv` and `sweep_report_settings_folded.csv` (into the first path, or `--out`) and prints the
markdown. A metric no job has, a metric name that names no evaluation metric, or a repeat key no job sets is a
one-line error (exit code 2).
"""

from __future__ import annotations

import argparse
import csv
import io
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
# Keys folded into mean ± std by default when a sweep varies them.
DEFAULT_REPEAT_KEYS = ("seed",)
_ERROR_CHARS = 160
_LONG_NUMBER = re.compile(r"-?\d*\.\d{5,}(e-?\d+)?")


@dataclass
class SweepTable:
    """A sweep report: column names and one dict per job (missing cells are absent); with repeats, the same folded
    over them (`folded`, `folded_settings`)."""

    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    settings: SweepTable | None = None
    keys: list[str] = field(default_factory=list)
    repeat_keys: list[str] = field(default_factory=list)
    folded: SweepTable | None = None
    folded_settings: SweepTable | None = None


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


def _status(record: Mapping[str, Any] | None, job_dir: Path) -> str:
    """The job's status: its record's, except that a job still marked running whose folder no live process holds
    (its run lock: dequant.runlock) was killed (SIGKILL, out of memory, a lost node): nothing will finish it."""
    if record is None:
        return "unrecorded"
    status = str(record.get("status", "unknown"))
    if status == "running":
        from dequant.runlock import busy_message

        if busy_message(job_dir) is None:
            return "killed"
    return status


LOG_TAIL_LINES = 15


def log_tail(paths: Sequence[str | Path], lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last `lines` non-empty lines of the first of `paths` that has any (a job's stderr, then stdout)."""
    for path in paths:
        p = Path(path)
        if p.is_file():
            text = p.read_text(errors="replace").splitlines()
            found = [line for line in text if line.strip()][-lines:]
            if found:
                return found
    return []


def _log_tail(record: Mapping[str, Any], job_dir: Path) -> list[str]:
    """The last lines of a killed job's log: what its record kept, else submitit's log files, else the job's own
    Hydra log (`<job>/<name>.log`)."""
    if record.get("log_tail"):
        return [str(line) for line in record["log_tail"]]
    return log_tail([*(record.get("log_files") or []), *sorted(job_dir.glob("*.log"))])


def load_job(job_dir: Path, method: str = "model") -> dict[str, Any]:
    """Everything the report needs from one job folder."""
    from dequant.evaluation.report import summary_numbers

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
            if method == "model":
                metrics.update(summary_numbers(found))  # the run summary's eval/<test>/<setting>/<metric> keys
    status = _status(record, job_dir)
    error = (record or {}).get("error")
    tail = _log_tail(record, job_dir) if record is not None and status == "killed" else []
    if status == "killed" and not error:
        error = "ended without a result (killed: out of memory, time limit, lost node or SIGKILL)"
    wandb = (record or {}).get("wandb") or ({"id": record["wandb_id"]} if (record or {}).get("wandb_id") else {})
    optimized = ((_yaml(job_dir / ".hydra" / "config.yaml") or {}).get("optimized_metric"))
    return {"dir": job_dir, "status": status, "overrides": overrides, "metrics": metrics, "eval_rows": eval_rows,
            "error": error, "log_tail": tail, "keys": sweep_keys(job_dir), "seconds": (record or {}).get("seconds"),
            "optimized": optimized, "wandb": wandb.get("url") or wandb.get("id"),
            "job_id": (record or {}).get("job_id") or (record or {}).get("slurm_job_id"),
            "restarts": (record or {}).get("slurm_restarts") or 0}


def _is_eval_key(name: str) -> bool:
    return name.startswith("eval/")


def _choose_metrics(jobs: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None) -> list[str]:
    available = list(dict.fromkeys(k for job in jobs for k in job["metrics"]))
    if metrics and list(metrics) != ["all"]:
        return list(metrics)
    if metrics:
        # Every metric but the per-setting eval/ keys (the per-setting table shows those).
        return sorted(m for m in available if not _is_eval_key(m))
    optimized = [str(job["optimized"]) for job in jobs if job.get("optimized")]
    chosen = [m for m in dict.fromkeys([*optimized, *DEFAULT_TRAIN_METRICS]) if m in available]
    tests = list(dict.fromkeys(k.split("/")[0] for k in available
                               if "/" in k and not k.startswith(("val", "train", "eval/"))))
    chosen += [f"{t}/{m}" for t in tests for m in DEFAULT_EVAL_METRICS if f"{t}/{m}" in available]
    return list(dict.fromkeys(chosen))


_TEST_NAME = re.compile(r"[rhtpm](_tex)?")


def check_metric_names(names: Sequence[str], key: str = "metrics") -> None:
    """Refuse a metric name that cannot name a result (before any job runs): `<test>/<metric>` and
    `eval/<test>/<setting>/<metric>[_sem|_input|_gain]` need a known evaluation metric; `val/...`, `train/...` and
    other training keys are only known once jobs have logged them (checked when the report is built)."""
    from dequant.evaluation.report import METRICS

    for name in names:
        if name == "all":
            continue
        parts = str(name).split("/")
        if parts[0] == "eval" and len(parts) >= 3:
            metric = re.sub(r"_(sem|input|gain)$", "", parts[-1])
        elif len(parts) == 2 and _TEST_NAME.fullmatch(parts[0]):
            metric = parts[1]
        else:
            continue
        if metric not in METRICS:
            raise ValueError(f"{key}: {name!r} names no evaluation metric ({metric!r}); metrics: "
                             f"{', '.join(METRICS)}")


def _check_present(names: Sequence[str], jobs: Sequence[Mapping[str, Any]], key: str) -> None:
    """A named metric that no job has, once some job completed, is a typo: a one-line error naming what exists."""
    if not any(job["status"] == "completed" for job in jobs):
        return
    available = list(dict.fromkeys(k for job in jobs for k in job["metrics"]))
    missing = [m for m in names if m != "all" and m not in available]
    if missing:
        shown = [m for m in available if not _is_eval_key(m)]
        raise ValueError(f"{key}: no job has the metric{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(repr(m) for m in missing)}; available: {', '.join(sorted(shown))} (and "
                         "eval/<test>/<setting>/<metric> keys)")


def repeat_columns(keys: Sequence[str], jobs: Sequence[Mapping[str, Any]],
                   repeat_keys: Sequence[str] | None) -> list[str]:
    """The keys whose values are repeats (folded into mean ± std): `repeat_keys` if given (each must be set by some
    job), else `seed` when the sweep varies it."""
    if repeat_keys is None:
        return [k for k in DEFAULT_REPEAT_KEYS if k in keys]
    set_by_jobs = list(dict.fromkeys(k for job in jobs for k in job["overrides"]))
    for key in repeat_keys:
        if key not in set_by_jobs:
            raise ValueError(f"repeat key {key!r} is set by no job; keys the jobs set: {', '.join(set_by_jobs)}")
    return list(repeat_keys)


def build_table(paths: Sequence[str | Path], metrics: Sequence[str] | None = None, method: str = "model",
                repeat_keys: Sequence[str] | None = None, check_names: bool = True) -> SweepTable:
    """The sweep table of every job below `paths` (see the module docstring); with repeats, also folded."""
    dirs = find_jobs(paths)
    if not dirs:
        raise ValueError(f"paths: no sweep job folders (with .hydra/overrides.yaml or {RECORD_FILE}) below "
                         f"{[str(p) for p in paths]}")
    check_metric_names(metrics or (), "metrics")
    jobs = [load_job(d, method) for d in dirs]
    keys = list(dict.fromkeys(k for job in jobs for k in job["keys"]))
    all_keys = list(dict.fromkeys(k for job in jobs for k in job["overrides"]))
    keys += [k for k in all_keys if k not in keys and len({job["overrides"].get(k) for job in jobs}) > 1]
    repeats = repeat_columns(keys, jobs, repeat_keys)
    keys += [k for k in repeats if k not in keys]
    if metrics and check_names:
        _check_present(list(metrics), jobs, "metrics")
    chosen = _choose_metrics(jobs, metrics)
    root = Path(*_common_parts([d.resolve() for d in dirs])) if len(dirs) > 1 else dirs[0].resolve().parent
    rows = []
    for d, job in zip(dirs, jobs):
        row: dict[str, Any] = {"job": str(d.resolve().relative_to(root)), "status": job["status"]}
        row.update({k: job["overrides"][k] for k in keys if k in job["overrides"]})
        row.update({m: job["metrics"][m] for m in chosen if m in job["metrics"]})
        for extra in ("seconds", "wandb", "job_id"):
            if job[extra] is not None:
                row[extra] = job[extra]
        if job["restarts"]:
            row["restarts"] = job["restarts"]
        if job["error"]:
            row["error"] = job["error"]
        if job["log_tail"]:
            row["log_tail"] = "\n".join(job["log_tail"])
        row["path"] = str(d)
        rows.append(row)
    columns = ["job", "status", *keys, *chosen]
    columns += [c for c in ("seconds", "wandb", "job_id", "restarts", "error", "log_tail") if any(c in r for r in rows)]
    settings = settings_table(jobs, [r["job"] for r in rows], keys, metrics, method)
    table = SweepTable(columns=columns + ["path"], rows=rows, settings=settings, repeat_keys=repeats)
    if repeats:
        group = [k for k in keys if k not in repeats]
        table.folded = fold(rows, group, chosen, repeats)
        if settings.rows:
            setting_metrics = [c for c in settings.columns if c in _setting_metric_names(settings)]
            table.folded_settings = fold(settings.rows, ["test", "setting", *group], setting_metrics, repeats)
    return table


def _setting_metric_names(settings: SweepTable) -> list[str]:
    """The per-setting table's value columns (the model's metrics and the input's), not their standard errors."""
    return [c for c in settings.columns
            if c not in ("test", "setting", "job") and not c.endswith(" sem") and c not in settings.keys]


def fold(rows: Sequence[Mapping[str, Any]], group: Sequence[str], metrics: Sequence[str],
         repeats: Sequence[str]) -> SweepTable:
    """Rows that differ only in the `repeats` keys folded into one: per metric the mean, standard deviation
    (ddof 1), number of repeats with a value, the standard error of the mean over repeats (`sd/sqrt(n)`) and, where
    the rows carry per-image standard errors (`<metric> sem`), their mean over the repeats (`image sem`: the same
    images in every repeat, so it does not shrink with n); per group the statuses of its jobs."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in group), []).append(row)
    out = []
    for values, members in groups.items():
        folded: dict[str, Any] = {k: v for k, v in zip(group, values) if v is not None}
        folded["n"] = len(members)
        statuses = [str(m.get("status", "")) for m in members if m.get("status")]
        if statuses:
            folded["status"] = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
        folded[" + ".join(repeats)] = ",".join(str(m.get(k)) for m in members for k in repeats)
        for metric in metrics:
            found = [float(m[metric]) for m in members if isinstance(m.get(metric), (int, float))
                     and math.isfinite(float(m[metric]))]
            if not found:
                continue
            n = len(found)
            mean = sum(found) / n
            if metric.endswith(f" ({INPUT_METHOD})"):
                folded[metric] = mean  # the same quantized input in every repeat
                continue
            sd = math.sqrt(sum((v - mean) ** 2 for v in found) / (n - 1)) if n > 1 else 0.0
            folded[metric], folded[f"{metric} sd"], folded[f"{metric} n"] = mean, sd, n
            folded[f"{metric} sem"] = sd / math.sqrt(n)
            sems = [float(m[f"{metric} sem"]) for m in members if isinstance(m.get(f"{metric} sem"), float)]
            if sems:
                folded[f"{metric} image sem"] = sum(sems) / len(sems)
        out.append(folded)
    columns = [*group, "n", *(["status"] if any("status" in r for r in out) else []), " + ".join(repeats)]
    for metric in metrics:
        columns += [c for c in (metric, f"{metric} sd", f"{metric} n", f"{metric} sem", f"{metric} image sem")
                    if any(c in r for r in out)]
    return SweepTable(columns=columns, rows=out, keys=list(group))


def _setting_metrics(jobs: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None) -> tuple[list[str], set[str]]:
    """(metric names, tests or empty for all) of the per-setting table: the `<test>/<metric>` entries of an
    explicit `metrics`, every evaluation metric for `all`, else `SETTING_METRICS`."""
    present = list(dict.fromkeys(k[: -len("_mean")] for job in jobs for row in job["eval_rows"] for k in row
                                 if k.endswith("_mean")))
    if metrics and list(metrics) != ["all"]:
        named = [m.split("/", 1) for m in metrics if "/" in m and not m.startswith(("val/", "train/", "eval/"))]
        return [m for m in dict.fromkeys(n for _, n in named) if m in present], {t for t, _ in named}
    if metrics:
        return present, set()
    return [m for m in SETTING_METRICS if m in present], set()


def settings_table(jobs: Sequence[Mapping[str, Any]], names: Sequence[str], keys: Sequence[str],
                   metrics: Sequence[str] | None = None, method: str = "model") -> SweepTable:
    """One row per (test, setting, job): `method`'s `<metric>` and its standard error over images (`<metric> sem`)
    beside the input baseline's `<metric> (input)`."""
    chosen, tests = _setting_metrics(jobs, metrics)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for name, job in zip(names, jobs) if chosen else ():
        by_key = {(str(r.get("test")), str(r.get("setting")), str(r.get("method"))): r for r in job["eval_rows"]}
        for (test, setting, m), row in by_key.items():
            if m != method or (tests and test not in tests):
                continue
            out: dict[str, Any] = {"test": test, "setting": setting, "job": name, "status": job["status"]}
            out.update({k: job["overrides"][k] for k in keys if k in job["overrides"]})
            base = by_key.get((test, setting, INPUT_METHOD), {})
            for metric in chosen:
                for column, source, stat in ((metric, row, "mean"), (f"{metric} sem", row, "sem"),
                                             (f"{metric} ({INPUT_METHOD})", base, "mean")):
                    if isinstance(source.get(f"{metric}_{stat}"), float):
                        out[column] = source[f"{metric}_{stat}"]
            groups.setdefault((test, setting), []).append(out)
    columns = ["test", "setting", "job", *keys,
               *(c for m in chosen for c in (m, f"{m} sem", f"{m} ({INPUT_METHOD})"))]
    # Jobs of one setting sit together: the runs compare along a few adjacent rows.
    return SweepTable(columns=columns, rows=[r for rows in groups.values() for r in rows], keys=list(keys))


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


# Columns the markdown leaves to the CSV files (or shows inside another cell).
_HIDDEN = ("path", "log_tail")


def _merged(table: SweepTable) -> dict[str, str]:
    """{metric column: its spread column shown in the same cell}: `<m> sd` in folded tables (`mean ± sd`), else
    `<m> sem` (`v ± sem`, the standard error over images)."""
    merged = {}
    for column in table.columns:
        for suffix in (" sd", " sem"):
            if f"{column}{suffix}" in table.columns:
                merged[column] = f"{column}{suffix}"
                break
    return merged


def to_markdown(table: SweepTable) -> str:
    """The table as GitHub markdown (without the `path` column; `v ± sem` / `mean ± sd` in one cell)."""
    merged = _merged(table)
    # A folded table's n, standard error and image standard error per metric stay in its CSV.
    folded_extra = {f"{m} {part}" for m, spread in merged.items() if spread.endswith(" sd")
                    for part in ("n", "sem", "image sem")}
    columns = [c for c in table.columns if c not in _HIDDEN and c not in merged.values() and c not in folded_extra]

    def cell(row: Mapping[str, Any], column: str) -> str:
        text = _cell(row.get(column), column)
        spread = merged.get(column)
        if text and spread and isinstance(row.get(spread), float):
            text += f" ± {row[spread]:.2g}"
        return text

    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---:" if c in _numeric(table, c) else "---" for c in columns) + "|"]
    lines += ["| " + " | ".join(cell(row, c) for c in columns) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def _numeric(table: SweepTable, column: str) -> set[str]:
    values = [r[column] for r in table.rows if column in r]
    return {column} if values and all(isinstance(v, (int, float)) for v in values) else set()


def report_markdown(table: SweepTable) -> str:
    """The whole report: the job table, the last log lines of killed jobs, the repeats folded into mean ± std, then
    (when any job was evaluated) the per-setting table, also folded."""
    text = to_markdown(table)
    killed = [r for r in table.rows if r.get("status") == "killed"]
    if killed:
        text += "\n## Killed jobs\n\nJobs that ended without a result; the last lines of their logs:\n"
        for row in killed:
            tail = row.get("log_tail") or "(no log lines found)"
            text += f"\n### job {row['job']}\n\n```\n{tail}\n```\n"
    repeats = " + ".join(table.repeat_keys)
    if table.folded is not None and table.folded.rows:
        text += (f"\n## Repeats folded ({repeats})\n\nJobs that differ only in `{repeats}` as one row: mean ± "
                 "standard deviation over the n repeats (the CSV adds each metric's n, standard error of the mean "
                 "`sem` = sd / sqrt(n) and, for evaluation metrics, the repeats' mean per-image standard error).\n\n"
                 + to_markdown(table.folded))
    if table.settings is not None and table.settings.rows:
        text += ("\n## Per setting\n\nThe model's mean ± standard error over images for every test and setting, "
                 f"each metric beside the quantized input's (`{INPUT_METHOD}` baseline) on the same images.\n\n"
                 + to_markdown(table.settings))
    if table.folded_settings is not None and table.folded_settings.rows:
        text += (f"\n## Per setting, repeats folded ({repeats})\n\nMean ± standard deviation over the repeats of "
                 "each job's mean over images.\n\n" + to_markdown(table.folded_settings))
    return text


def _csv_text(table: SweepTable) -> str:
    """Every column of `table` as CSV."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=table.columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(table.rows)
    return buf.getvalue()


def write_report(table: SweepTable, out_dir: str | Path) -> tuple[Path, Path]:
    """Write `sweep_report.md`, `sweep_report.csv` (every column, full errors), and where they have rows
    `sweep_report_settings.csv`, `sweep_report_folded.csv` and `sweep_report_settings_folded.csv` into `out_dir`
    (each atomically: parallel jobs rewrite the report as they end); returns the first two paths."""
    from dequant.atomic import write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = out / f"{REPORT_NAME}.md", out / f"{REPORT_NAME}.csv"
    write_text(md_path, report_markdown(table))
    write_text(csv_path, _csv_text(table))
    for suffix, part in (("settings", table.settings), ("folded", table.folded),
                         ("settings_folded", table.folded_settings)):
        if part is not None and part.rows:
            write_text(out / f"{REPORT_NAME}_{suffix}.csv", _csv_text(part))
    return md_path, csv_path


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the sweep table and write it next to the sweep."""
    parser = argparse.ArgumentParser(prog="dequant-sweep-report", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="sweep folders (or job folders, or a parent of several sweeps)")
    parser.add_argument("--metrics", nargs="+", default=None,
                        help="metric columns, e.g. val/loss r/psnr r_tex/palette_de2000 eval/r_tex/N4/psnr "
                             "val/r_tex/N4/psnr; 'all' for every metric")
    parser.add_argument("--repeat", nargs="*", default=None, metavar="KEY",
                        help="keys whose values are repeats, folded into mean ± std (default: seed, when swept; "
                             "--repeat alone: no folding)")
    parser.add_argument("--method", default="model", help="method rows of metrics.csv to summarize (default model)")
    parser.add_argument("--out", default=None, help="folder for sweep_report.md/.csv (default: the first path)")
    parser.add_argument("--no-write", action="store_true", help="only print")
    args = parser.parse_args(argv)
    try:
        table = build_table(args.paths, metrics=args.metrics, method=args.method, repeat_keys=args.repeat)
    except ValueError as err:
        print(f"dequant-sweep-report: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(report_markdown(table), end="")
    if not args.no_write:
        md_path, csv_path = write_report(table, args.out or args.paths[0])
        print(f"\nwritten to {md_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
