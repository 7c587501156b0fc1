"""A study's report in DIR/tables: the comparison (wide and tidy), the per-class table, Pareto
fronts and the final table; the figures are analysis.figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.budget import write_budget
from analysis.final import write_final
from analysis.tables import per_class_table, to_markdown, write_tables


def write_report(
    runs: pd.DataFrame,
    objectives: Sequence[tuple[str, str]],
    out_dir: Path,
    cells: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, list[Path]]:
    """Every table of the study into out_dir (cells: the study's cells, so that final.md names
    those without final runs); returns (comparison table, files written)."""
    table = write_tables(runs, objectives, out_dir)
    files = [out_dir / n for n in ("comparison.md", "comparison.csv", "comparison_long.csv")]
    per_class = per_class_table(runs, objectives[0])
    if not per_class.empty:
        (out_dir / "per_class.md").write_text(to_markdown(per_class))
        flat = per_class.copy()
        flat.columns = [f"{p:g}%/{m}" for p, m in per_class.columns]
        flat.to_csv(out_dir / "per_class.csv")
        files += [out_dir / "per_class.md", out_dir / "per_class.csv"]
    if len(objectives) > 1:
        files += [p for p in (out_dir / "pareto.md", out_dir / "pareto.csv") if p.exists()]
    files += write_final(runs, objectives, out_dir, cells)
    files += write_budget(runs, objectives[0], out_dir)
    return table, files
