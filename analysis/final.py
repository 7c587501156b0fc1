"""The final table (`study final DIR --seeds N`): each cell's chosen configuration over seeds.

Per (method, label %) and metric: n, mean, standard deviation, the 95 % t interval of the mean, and
against CG at the same label %, the mean paired difference (paired by seed: the same train / data /
split / sample seed) with its 95 % t interval; a cell "differs from CG" when that interval excludes
0. With one seed there is no spread: std and intervals are blank and nothing is marked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.tables import DEFAULT_METRICS, completed
from trainables.names import METHODS, cell_label

SEED_KEY = "train.seed"  # the seed a final run was given (every seed key gets the same value)
REFERENCE = "CG"  # the baseline every method is compared with, at the same label %
LEVEL = 0.95


def final_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The finished `study final` runs, the latest per (method, label %, seed) (a repeated final
    run replaces an older one of the same seed)."""
    done = completed(runs, stage="final")
    if done.empty or SEED_KEY not in done.columns:
        return done.iloc[0:0]
    if "start_time" in done.columns:
        done = done.sort_values("start_time", kind="stable")
    return done.drop_duplicates(["method", "label_percent", SEED_KEY], keep="last")


def _interval(values: pd.Series) -> tuple[float, float, float, float]:
    """(mean, std, low, high) of the mean's t interval; NaN spread for fewer than 2 values."""
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(values.std(ddof=1))
    from scipy import stats  # 1.7 s to import; only final runs' seed intervals need it

    half = float(stats.t.ppf(0.5 + LEVEL / 2, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def seed_statistics(runs: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Long table: cell, method, label_percent, metric, n, mean, std, ci_low, ci_high, diff_vs_cg,
    diff_ci_low, diff_ci_high, differs_from_cg (paired by seed; see the module docstring)."""
    final = final_runs(runs)
    rows = []
    metrics = [m for m in metrics if m in final.columns]
    for (method, pct), group in final.groupby(["method", "label_percent"], sort=False):
        reference = final[(final["method"] == REFERENCE) & (final["label_percent"] == pct)]
        for metric in metrics:
            values = group[metric].dropna()
            if values.empty:
                continue
            mean, std, low, high = _interval(values)
            row = {
                "cell": cell_label(method, pct),
                "method": method,
                "label_percent": pct,
                "metric": metric,
                "n": len(values),
                "mean": mean,
                "std": std,
                "ci_low": low,
                "ci_high": high,
            }
            if method != REFERENCE and not reference.empty:
                paired = group.set_index(SEED_KEY)[metric].sub(
                    reference.set_index(SEED_KEY)[metric]
                )
                paired = paired.dropna()
                diff, _, dlow, dhigh = _interval(paired)
                row.update(
                    diff_vs_cg=diff,
                    diff_ci_low=dlow,
                    diff_ci_high=dhigh,
                    n_paired=len(paired),
                    differs_from_cg=bool(
                        len(paired) > 1 and math.isfinite(dlow) and (dlow > 0 or dhigh < 0)
                    ),
                )
            rows.append(row)
    return pd.DataFrame(rows)


def _cell(row: pd.Series, digits: int) -> str:
    """'mean ± std [low, high] n=k' plus a dagger where the method differs from CG."""
    text = f"{row['mean']:.{digits}g}"
    if math.isfinite(row["std"]):
        text += f" ± {row['std']:.2g} [{row['ci_low']:.{digits}g}, {row['ci_high']:.{digits}g}]"
    text += f" n={int(row['n'])}"
    flag = row.get("differs_from_cg")
    if flag is not None and pd.notna(flag) and bool(flag):
        text += " †"
    return text


def final_markdown(
    statistics: pd.DataFrame,
    metrics: Sequence[str],
    digits: int = 3,
    left_out: Sequence[str] = (),
) -> str:
    """One Markdown table per metric: rows = methods (registry order), columns = label %; a
    footnote names the study's cells left_out (no final runs)."""
    if statistics.empty:
        return "(no finished final runs)\n"
    out = []
    for metric in [m for m in metrics if m in set(statistics["metric"])]:
        part = statistics[statistics["metric"] == metric]
        percents = sorted(set(part["label_percent"]))
        out.append(f"### {metric}\n")
        out.append("| method | " + " | ".join(f"{p:g}%" for p in percents) + " |")
        out.append("|---|" + "---|" * len(percents))
        for method in [m for m in METHODS if m in set(part["method"])]:
            cells = []
            for pct in percents:
                match = part[(part["method"] == method) & (part["label_percent"] == pct)]
                cells.append(_cell(match.iloc[0], digits) if len(match) else "")
            out.append(f"| {method} | " + " | ".join(cells) + " |")
        out.append("")
    out.append(
        f"mean ± std over seeds [{LEVEL:.0%} t interval of the mean], n seeds. † : differs from "
        f"{REFERENCE} at the same label % beyond the seed spread (the {LEVEL:.0%} t interval of "
        "the seed-paired difference excludes 0)."
    )
    if left_out:
        out.append(
            f"\nLeft out (no final runs: `study final --allow-missing` ran without them, as they "
            f"had no finished search trial): {', '.join(left_out)}."
        )
    return "\n".join(out) + "\n"


def write_final(
    runs: pd.DataFrame,
    objectives: Sequence[tuple[str, str]],
    out_dir: Path,
    cells: Sequence[str] | None = None,
) -> list[Path]:
    """tables/final.md and final.csv from the study's final runs; [] when it has none. cells: the
    study's cells; those without final runs are named under the table."""
    metrics = list(dict.fromkeys([m for m, _ in objectives] + list(DEFAULT_METRICS)))
    statistics = seed_statistics(runs, metrics)
    if statistics.empty:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    md, csv = out_dir / "final.md", out_dir / "final.csv"
    present = set(statistics["cell"])
    left_out = [c for c in (cells or []) if c not in present]
    md.write_text(final_markdown(statistics, metrics, left_out=left_out))
    statistics.to_csv(csv, index=False)
    return [md, csv]
