"""Evaluation tables: per-image metric rows -> mean and standard error per (test, setting, method), CSV and Markdown.

`metrics.csv` has the columns `test, setting, method`, then `<metric>_mean, <metric>_sem` for every metric (empty
where a metric does not apply, e.g. PSNR without ground truth). `metrics.md` is written to answer the paper's
question at a glance: first, per test letter, one compact table of the key metrics (PSNR, SSIM, palette ΔE00,
texture correlation, speckle) with a row per metric and setting (e.g. r at N=64, 16 and 4) and a column per method
(the model with and without texture, `model+post_L` and the baselines, the quantized `input` among them; best of
each row in bold); then per test the mean over its settings of every metric; then every setting with standard
errors. `compare_markdown` puts several runs (e.g. checkpoints trained with the T, G and L cues) side by side.

Command line: `python -m dequant.evaluation.report RUN_DIR [RUN_DIR ...] [-o compare.md]` prints (or writes) the
comparison of the runs' `metrics.csv` files, each run labelled by its folder name.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dequant.atomic import write_text
from dequant.metrics import mean_sem

KEYS = ("test", "setting", "method")
# Display order, label and format of the known metrics; any other metric follows in alphabetical order.
METRICS: dict[str, tuple[str, str]] = {
    "l1": ("L1", ".4f"),
    "smape": ("SMAPE", ".4f"),
    "psnr": ("PSNR", ".2f"),
    "ssim": ("SSIM", ".4f"),
    "palette_de2000": ("palette ΔE00", ".2f"),
    "palette_err_requant": ("palette err (requant)", ".4f"),
    "palette_l1_requant": ("palette L1 (requant)", ".4f"),
    "texture_corr": ("texture corr", ".3f"),
    "speckle": ("speckle (x source)", ".3f"),
}
# The metrics of the compact per-setting tables that open `metrics.md`.
KEY_METRICS = ("psnr", "ssim", "palette_de2000", "texture_corr", "speckle")
HIGHER_IS_BETTER = frozenset({"psnr", "ssim", "texture_corr"})
# Ratios to the source where 1 is ideal: below 1 is over-smoothed, above 1 speckled; best = nearest 1 (log scale).
IDEAL_ONE = frozenset({"speckle"})
TEST_TITLES = {
    "r": "r: reconstruction (ground truth = source)",
    "h": "h: HSV edit of the palette (ground truth = same edit of the source)",
    "t": "t: palette transfer from another image (no ground truth)",
    "p": "p: patch recoloring (mean fill: ground truth = source; random fill: none)",
    "m": "m: colormap transfer (no ground truth)",
}
MODEL = "model"
# The model's samples with their CIELab L replaced by the source's (`dequant.color.edits.post_l`).
POST_L = "model+post_L"


# Lower is better for these (the rest of the directional metrics: higher); a model's gain over the input is signed so
# that a positive gain is an improvement.
LOWER_IS_BETTER = frozenset({"l1", "smape", "palette_de2000", "palette_err_requant", "palette_l1_requant"})
INPUT = "input"


def setting_key(setting: str) -> str:
    """A setting label as one key part: `N=4` -> `N4`, `s=0.3 N=16` -> `s0p3_N16`, `score=neg N=8` -> `neg_N8`,
    `fill=mean` -> `mean`, `cmap=viridis N=64` -> `viridis_N64` (a dot becomes `p`: W&B reads dots as nesting)."""
    parts = []
    for token in str(setting).split():
        name, _, value = token.partition("=")
        parts.append(value if name in ("score", "fill", "cmap") else f"{name}{value}")
    return "_".join(parts).replace(".", "p")


def gain(name: str, model: float, baseline: float) -> float | None:
    """The model's improvement over a baseline on one metric (positive = better), None where no direction applies."""
    if name in HIGHER_IS_BETTER:
        return model - baseline
    if name in LOWER_IS_BETTER:
        return baseline - model
    return None


def summary_numbers(aggregated: Sequence[Mapping[str, Any]], prefix: str = "eval") -> dict[str, float]:
    """Every result of an evaluation table as one flat number per key, for run summaries and sweep records.

    - `<prefix>/<test>/<setting>/<metric>`: the model's mean (e.g. `eval/r_tex/N4/psnr`), `..._sem` its standard
      error over images, `..._input` the quantized input's mean on the same images, `..._gain` the model's signed
      improvement over the input (positive = better; none for speckle, whose best is 1);
    - `<prefix>/<test>/<setting>/<method>/<metric>`: every other method row (`model+post_L`, the baselines), key
      metrics only;
    - `<prefix>/<test>/<metric>`: the model's mean over the test's settings (the sweep report's `<test>/<metric>`).
    """
    rows = {(str(r["test"]), str(r["setting"]), str(r["method"])): r for r in aggregated}
    names = metric_names(aggregated)
    out: dict[str, float] = {}
    over_settings: dict[str, list[float]] = {}
    for (test, setting, method), row in rows.items():
        base = f"{prefix}/{test}/{setting_key(setting)}"
        if method == MODEL:
            ref = rows.get((test, setting, INPUT), {})
            for name in names:
                value = row.get(f"{name}_mean")
                if value is None:
                    continue
                out[f"{base}/{name}"] = float(value)
                out[f"{base}/{name}_sem"] = float(row.get(f"{name}_sem", 0.0))
                over_settings.setdefault(f"{prefix}/{test}/{name}", []).append(float(value))
                if ref.get(f"{name}_mean") is not None:
                    out[f"{base}/{name}_input"] = float(ref[f"{name}_mean"])
                    g = gain(name, float(value), float(ref[f"{name}_mean"]))
                    if g is not None:
                        out[f"{base}/{name}_gain"] = g
        elif method != INPUT:
            for name in KEY_METRICS:
                if row.get(f"{name}_mean") is not None:
                    out[f"{base}/{method}/{name}"] = float(row[f"{name}_mean"])
    out.update({k: sum(v) / len(v) for k, v in over_settings.items()})
    return out


def metric_names(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Metric names present in per-image rows or aggregated rows, in display order."""
    found: set[str] = set()
    for row in rows:
        for key in row:
            if key in KEYS or key == "image_id":
                continue
            found.add(key[: -len("_mean")] if key.endswith("_mean") else key[: -len("_sem")] if key.endswith("_sem")
                      else key)
    known = [m for m in METRICS if m in found]
    return known + sorted(found - set(known))


def aggregate(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per-image rows `{test, setting, method, image_id?, <metric>: value}` -> one row per (test, setting, method)
    with `<metric>_mean` and `<metric>_sem` over images, in the order the groups first appear."""
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        missing = [k for k in KEYS if k not in row]
        if missing:
            raise ValueError(f"rows: every row needs the keys {list(KEYS)}, missing {missing} in {dict(row)}")
        groups.setdefault(tuple(str(row[k]) for k in KEYS), []).append(row)
    names = metric_names(rows)
    out = []
    for key, members in groups.items():
        agg: dict[str, Any] = dict(zip(KEYS, key))
        for name in names:
            values = [float(r[name]) for r in members if r.get(name) is not None]
            if values:
                agg[f"{name}_mean"], agg[f"{name}_sem"] = mean_sem(values)
        out.append(agg)
    return out


def csv_columns(aggregated: Sequence[Mapping[str, Any]]) -> list[str]:
    """`test, setting, method`, then mean and sem of every metric."""
    return [*KEYS, *(f"{m}_{s}" for m in metric_names(aggregated) for s in ("mean", "sem"))]


def write_csv(aggregated: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write aggregated rows as `metrics.csv` (atomically); missing metrics are empty cells."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=csv_columns(aggregated), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in aggregated:
        writer.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return write_text(Path(path), buf.getvalue())


def read_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a `metrics.csv` back (numbers as floats, empty cells dropped)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"path: no metrics.csv at {p}")
    rows = []
    with p.open(newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            rows.append({k: (v if k in KEYS else float(v)) for k, v in raw.items() if v != ""})
    return rows


def _letter(test: str) -> str:
    return test.split("_", 1)[0]


def _method_label(test: str, method: str) -> str:
    if method not in (MODEL, POST_L):
        return method
    return f"{method}, texture given" if test.endswith("_tex") else f"{method}, texture dropped"


def _fmt(name: str, value: float | None, sem: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    spec = METRICS.get(name, ("", ".4g"))[1]
    text = format(value, spec)
    return text if sem is None else f"{text} ± {format(sem, spec)}"


def _header(name: str) -> str:
    label = METRICS.get(name, (name, ""))[0]
    return f"{label} {'↑' if name in HIGHER_IS_BETTER else '→1' if name in IDEAL_ONE else '↓'}"


def _best(name: str, values: Sequence[float]) -> float:
    """The best of several values of one metric."""
    if name in IDEAL_ONE:
        return min(values, key=lambda v: abs(math.log(max(v, 1e-12))))
    return max(values) if name in HIGHER_IS_BETTER else min(values)


Cells = dict[str, tuple[float, float | None]]


def _table(rows: list[tuple[list[str], Cells]], lead: list[str], names: list[str]) -> str:
    """A Markdown table: leading text columns, then one column per metric with the best value in bold."""
    best: dict[str, float] = {}
    for name in names:
        values = [cells[name][0] for _, cells in rows if name in cells]
        if len(values) > 1:
            best[name] = _best(name, values)
    lines = ["| " + " | ".join([*lead, *(_header(n) for n in names)]) + " |",
             "|" + "---|" * (len(lead) + len(names))]
    for texts, cells in rows:
        out = list(texts)
        for name in names:
            if name not in cells:
                out.append("–")
                continue
            mean, sem = cells[name]
            text = _fmt(name, mean, sem)
            out.append(f"**{text}**" if name in best and mean == best[name] else text)
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def _blocks(aggregated: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, list[Mapping[str, Any]]]]]:
    """letter -> setting -> method label -> rows (baselines are the same with and without texture: kept once)."""
    out: dict[str, dict[str, dict[str, list[Mapping[str, Any]]]]] = {}
    for row in aggregated:
        test, setting, method = (str(row[k]) for k in KEYS)
        label = _method_label(test, method)
        per_setting = out.setdefault(_letter(test), {}).setdefault(setting, {})
        if method not in (MODEL, POST_L) and label in per_setting:
            continue
        per_setting.setdefault(label, []).append(row)
    return out


def _method_order(labels: Iterable[str]) -> list[str]:
    labels = list(dict.fromkeys(labels))
    models = [f"{m}, texture {v}" for m in (MODEL, POST_L) for v in ("given", "dropped")]
    models = [m for m in models if m in labels]
    return models + [m for m in labels if m not in models]


def _mean_over_settings(per_setting: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]], method: str,
                        names: Sequence[str]) -> dict[str, tuple[float, None]]:
    """Table cells of one method: each metric's per-setting means averaged over the test's settings."""
    cells = {}
    for name in names:
        values = [r[f"{name}_mean"] for rs in per_setting.values() for r in rs.get(method, []) if f"{name}_mean" in r]
        if values:
            cells[name] = (sum(values) / len(values), None)
    return cells


def _best_in_row(name: str, values: Sequence[float | None]) -> float | None:
    """The best of a row's values (None where a method lacks the metric), or None when fewer than two compete."""
    present = [v for v in values if v is not None]
    return _best(name, present) if len(present) > 1 else None


def key_table(per_setting: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
              names: Sequence[str] = KEY_METRICS) -> str:
    """One test's compact table: a row per (key metric, setting), a column per method, the row's best in bold."""
    methods = _method_order(m for rs in per_setting.values() for m in rs)
    lines = ["| metric | setting | " + " | ".join(methods) + " |", "|---|---|" + "---:|" * len(methods)]
    for name in names:
        first = True
        for setting, by_method in per_setting.items():
            values = [next((r[f"{name}_mean"] for r in by_method.get(m, []) if f"{name}_mean" in r), None)
                      for m in methods]
            if all(v is None for v in values):
                continue
            best = _best_in_row(name, values)
            cells = ["–" if v is None else f"**{_fmt(name, v)}**" if v == best else _fmt(name, v) for v in values]
            lines.append("| " + " | ".join([_header(name) if first else "", setting, *cells]) + " |")
            first = False
    return "\n".join(lines) if len(lines) > 2 else ""


def markdown(aggregated: Sequence[Mapping[str, Any]], title: str = "Evaluation", notes: Sequence[str] = ()) -> str:
    """The readable `metrics.md`: per test, the key metrics per setting, a summary over settings, then every
    setting with standard errors."""
    names = metric_names(aggregated)
    blocks = _blocks(aggregated)
    parts = [f"# {title}", ""]
    parts += [*notes, ""] if notes else []
    parts += ["Mean ± standard error over images; ↑ higher is better, ↓ lower is better, →1 best at 1; "
              "**bold**: best method in the row or block. `model, texture given` is the `<letter>_tex` test, `model, texture "
              "dropped` the `<letter>` test; `model+post_L` is the same samples with their CIELab L replaced by the "
              "source's; baselines are computed once per setting (they see no texture cue), `input` is the "
              "quantized (requested) image itself.", "",
              "## Per setting: key metrics", ""]
    for letter, per_setting in blocks.items():
        table = key_table(per_setting)
        parts += [f"### {TEST_TITLES.get(letter, letter)}", "", table, ""] if table else []
    parts += ["## At a glance (mean over each test's settings)", ""]
    for letter, per_setting in blocks.items():
        used = [n for n in names if any(f"{n}_mean" in r for rs in per_setting.values() for rows in rs.values()
                                        for r in rows)]
        methods = _method_order(m for rs in per_setting.values() for m in rs)
        rows = []
        for method in methods:
            rows.append(([method], _mean_over_settings(per_setting, method, used)))
        parts += [f"### {TEST_TITLES.get(letter, letter)}", "", _table(rows, ["method"], used), ""]
    parts += ["## Per setting, every metric", ""]
    for letter, per_setting in blocks.items():
        parts += [f"### {TEST_TITLES.get(letter, letter)}", ""]
        for setting, methods in per_setting.items():
            used = [n for n in names if any(f"{n}_mean" in r for rows in methods.values() for r in rows)]
            rows = [([method], {n: (r[f"{n}_mean"], r.get(f"{n}_sem")) for r in methods[method][:1] for n in used
                                if f"{n}_mean" in r}) for method in _method_order(methods)]
            parts += [f"#### {letter} {setting}", "", _table(rows, ["method"], used), ""]
    return "\n".join(parts).rstrip() + "\n"


def write_markdown(aggregated: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "Evaluation",
                   notes: Sequence[str] = ()) -> Path:
    """Write `metrics.md` atomically."""
    return write_text(Path(path), markdown(aggregated, title, notes))


def compare_markdown(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """Several runs side by side (e.g. one checkpoint per cue): per test, the model rows of every run, then each
    baseline once (from the first run that has it), each a mean over the test's settings."""
    if not runs:
        raise ValueError("runs must hold at least one run")
    all_rows = [r for rows in runs.values() for r in rows]
    names = metric_names(all_rows)
    letters = list(dict.fromkeys(_letter(str(r["test"])) for r in all_rows))
    parts = ["# Comparison of evaluation runs", "",
             "Means over each test's settings (per-setting means averaged), then the key metrics per setting; "
             "↑ higher / ↓ lower / →1 nearest 1 is better.", ""]
    for letter in letters:
        table_rows, seen_baselines = [], set()
        for run, rows in runs.items():
            blocks = _blocks(rows).get(letter, {})
            for method in _method_order(m for rs in blocks.values() for m in rs):
                if not method.startswith(MODEL) and method in seen_baselines:
                    continue
                seen_baselines.add(method)
                cells = _mean_over_settings(blocks, method, names)
                table_rows.append(([run if method.startswith(MODEL) else "baseline", method], cells))
        used = [n for n in names if any(n in cells for _, cells in table_rows)]
        parts += [f"## {TEST_TITLES.get(letter, letter)}", "", _table(table_rows, ["run", "method"], used), ""]
        per_setting = _runs_per_setting(runs, letter)
        table = key_table(per_setting)
        parts += [table, ""] if table else []
    return "\n".join(parts).rstrip() + "\n"


def _runs_per_setting(runs: Mapping[str, Sequence[Mapping[str, Any]]],
                      letter: str) -> dict[str, dict[str, list[Mapping[str, Any]]]]:
    """setting -> `<run>: <model label>` for every run's model rows, then each baseline once -> rows."""
    out: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    # Two passes so that every run's model columns come before the baselines'.
    for models in (True, False):
        for run, rows in runs.items():
            for setting, methods in _blocks(rows).get(letter, {}).items():
                for method in _method_order(methods):
                    if method.startswith(MODEL) == models:
                        label = f"{run}: {method}" if models else method
                        out.setdefault(setting, {}).setdefault(label, list(methods[method]))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m dequant.evaluation.report RUN_DIR ...`: compare the runs' metrics.csv tables."""
    parser = argparse.ArgumentParser(prog="python -m dequant.evaluation.report", description=main.__doc__)
    parser.add_argument("runs", nargs="+", help="evaluation run folders (or metrics.csv files)")
    parser.add_argument("-o", "--output", help="write the Markdown here instead of printing it")
    args = parser.parse_args(argv)
    try:
        runs = {}
        for run in args.runs:
            p = Path(run)
            csv_path = p / "metrics.csv" if p.is_dir() else p
            label = csv_path.parent.name if csv_path.name == "metrics.csv" else csv_path.stem
            runs[label if label not in runs else str(csv_path.parent)] = read_csv(csv_path)
        text = compare_markdown(runs)
    except ValueError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    if args.output:
        write_text(Path(args.output), text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
