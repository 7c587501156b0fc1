"""Was each cell's search budget enough? The expected best validation value after k trials.

Dodge et al. 2019 ("Show Your Work: Improved Reporting of Experimental Results", EMNLP): from the
n values a cell's trials reached, the expected best of k trials drawn from the same search
(with replacement) is, with v_(1) <= ... <= v_(n) the sorted values,

    E[max of k] = sum_i v_(i) * ((i / n)^k - ((i - 1) / n)^k)

(for a minimised objective, the same with the order reversed). No new runs: it reads the trials a
study already has. The gain of the last trial, E[best of n] - E[best of n - 1], says whether the
curve is still rising; where it is, `study resume DIR --add-trials N` is the remedy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.tables import completed, selection_column


def expected_best(values: Sequence[float], k: int, mode: str = "max") -> float:
    """Expected best of k trials drawn with replacement from values (Dodge et al. 2019)."""
    v = np.sort(np.asarray([x for x in values if np.isfinite(x)], dtype=float))
    n = len(v)
    if n == 0 or k < 1:
        return float("nan")
    if mode == "min":
        v = v[::-1]  # the best is now the last, as for a maximum
    i = np.arange(1, n + 1)
    weights = (i / n) ** k - ((i - 1) / n) ** k
    return float(np.dot(weights, v))


def expected_best_curve(values: Sequence[float], mode: str = "max") -> list[float]:
    """E[best of k] for k = 1 .. n (n: the number of finite values)."""
    n = sum(1 for x in values if np.isfinite(x))
    return [expected_best(values, k, mode) for k in range(1, n + 1)]


def search_budget(runs: pd.DataFrame, objective: tuple[str, str]) -> pd.DataFrame:
    """budget_table over a study's finished search trials by the objective's validation value
    (what each cell's search compared)."""

    done = completed(runs)
    if done.empty:
        return pd.DataFrame()
    return budget_table(done, selection_column(done, objective[0]), objective[1])


def write_budget(runs: pd.DataFrame, objective: tuple[str, str], out_dir) -> list:
    """tables/budget.{md,csv}: each cell's trials, expected best and its last trial's gain."""
    table = search_budget(runs, objective)
    if table.empty:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "budget.csv", index=False)
    lines = [
        f"Expected best validation {objective[0]} ({objective[1]}) after k trials of each cell's "
        "search (Dodge et al. 2019); the gain of its last trial says whether one more would still "
        "change the table (`study resume DIR --add-trials N`).",
        "",
        "| method | label % | trials | expected best | gain of the last trial |",
        "|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        gain = "" if pd.isna(row["last_trial_gain"]) else f"{row['last_trial_gain']:+.4g}"
        lines.append(
            f"| {row['method']} | {row['label_percent']:g} | {row['trials']} | "
            f"{row['expected_best']:.4g} | {gain} |"
        )
    (out_dir / "budget.md").write_text("\n".join(lines) + "\n")
    return [out_dir / "budget.md", out_dir / "budget.csv"]


def budget_table(trials: pd.DataFrame, column: str, mode: str = "max") -> pd.DataFrame:
    """Per cell (method, label %): its trials, E[best of n], and the gain of its last trial
    E[best of n] - E[best of n - 1] (NaN with a single trial, or for a cell with nothing to
    tune). trials: one row per finished search trial with method, label_percent and column."""
    rows = []
    for (method, percent), cell in trials.groupby(["method", "label_percent"], sort=False):
        values = cell[column].dropna().to_list()
        curve = expected_best_curve(values, mode)
        gain = curve[-1] - curve[-2] if len(curve) > 1 else float("nan")
        rows.append(
            {
                "method": method,
                "label_percent": percent,
                "trials": len(curve),
                "expected_best": curve[-1] if curve else float("nan"),
                "last_trial_gain": gain,
            }
        )
    return pd.DataFrame(rows)
