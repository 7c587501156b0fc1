"""The twin study's answer (docs/science.md): per noise band, does the SC classifier's guidance
gradient come closer to the exact grad log p(y | x) than cross-entropy's, seed-paired; does
generation follow; and do the proxies (FID, intra-FID, the evaluation classifier's accuracy) rank
the cells as the exact metrics do (Kendall's tau over the cells, and per label % over methods).

Reads a study folder's `study final` runs (the search trials when it has none) and writes
<out>-grad_cos_bands.{png,pdf}.

    python bench/twin_report.py studies/twin-shapes-sc [--out docs/figures/twin-shapes-sc]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd
from scipy import stats

from analysis import load_study, style

REFERENCE = "CG"
SEED = "train.seed"
EXACT = ("bayes_gen_accuracy_matched", "guided_score_cos", "cond_log_likelihood",
         "bayes_gen_accuracy", "sample_var_ratio", "matched_sigma")  # fmt: skip
# proxy -> +1 when higher is better, -1 when lower is
PROXIES = {"fid": -1, "intra_fid": -1, "gen_accuracy": 1}


def _bands(runs: pd.DataFrame, metric: str) -> list[str]:
    columns = [c for c in runs.columns if c.startswith(f"{metric}_band")]
    return sorted(columns, key=lambda c: int(c.rsplit("band", 1)[1]))


def _interval(values: pd.Series) -> str:
    """'mean ± std [low, high]' (95 % t interval) of values."""
    values = values.dropna()
    if values.empty:
        return ""
    mean = values.mean()
    if len(values) < 2:
        return f"{mean:.3f}"
    std = values.std(ddof=1)
    half = stats.t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values))
    return f"{mean:.3f} ± {std:.3f} [{mean - half:.3f}, {mean + half:.3f}]"


def band_table(runs: pd.DataFrame, metric: str) -> str:
    """Markdown: rows method @ label %, columns the bands: mean ± std over seeds, and the
    seed-paired difference from CG with its 95 % t interval (a dagger where it excludes 0)."""
    bands = _bands(runs, metric)
    lines = ["| method | label % | " + " | ".join(b.rsplit("_", 1)[1] for b in bands) + " |",
             "|---|---|" + "---|" * len(bands)]  # fmt: skip
    for pct in sorted(runs["label_percent"].unique()):
        at = runs[runs["label_percent"] == pct]
        ref = at[at["method"] == REFERENCE].set_index(SEED)
        for method in style.method_order(at["method"]):
            mine = at[at["method"] == method].set_index(SEED)
            if not any(mine[b].notna().any() for b in bands if b in mine):
                continue
            cells = []
            for band in bands:
                text = _interval(mine[band])
                if method != REFERENCE and len(ref) and len(mine) > 1:
                    diff = (mine[band] - ref[band]).dropna()
                    if len(diff) > 1:
                        half = (
                            stats.t.ppf(0.975, len(diff) - 1)
                            * diff.std(ddof=1)
                            / math.sqrt(len(diff))
                        )
                        low, high = diff.mean() - half, diff.mean() + half
                        mark = " †" if low > 0 or high < 0 else ""
                        text += f"; vs CG {diff.mean():+.3f}{mark}"
                cells.append(text)
            lines.append(f"| {method} | {pct:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def agreement(means: pd.DataFrame) -> str:
    """Kendall's tau between each proxy (oriented: higher = better) and each exact metric over
    the cells' means, pooled and per label %."""
    lines = ["| proxy | exact metric | tau, all cells | " + " | ".join(
        f"tau at {p:g} %" for p in sorted(means["label_percent"].unique())) + " |"]  # fmt: skip
    lines.append("|---|---|---|" + "---|" * means["label_percent"].nunique())
    for proxy, sign in PROXIES.items():
        for exact in EXACT[:3]:
            if proxy not in means or exact not in means:
                continue
            pooled = stats.kendalltau(sign * means[proxy], means[exact], nan_policy="omit")[0]
            per = []
            for pct in sorted(means["label_percent"].unique()):
                at = means[means["label_percent"] == pct]
                per.append(stats.kendalltau(sign * at[proxy], at[exact], nan_policy="omit")[0])
            lines.append(
                f"| {proxy} | {exact} | {pooled:.2f} | "
                + " | ".join(f"{t:.2f}" for t in per)
                + " |"
            )
    return "\n".join(lines) + "\n"


def band_figure(runs: pd.DataFrame, metric: str, out: Path) -> None:
    """metric per noise band, one panel per label %, each method's seed mean and range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bands = _bands(runs, metric)
    percents = sorted(runs["label_percent"].unique())
    fig, axes = plt.subplots(1, len(percents), figsize=(4.2 * len(percents), 3.4), sharey=True,
                             squeeze=False)  # fmt: skip
    for ax, pct in zip(axes[0], percents):
        at = runs[runs["label_percent"] == pct]
        for method in style.method_order(at["method"]):
            mine = at[at["method"] == method][bands]
            if mine.isna().all().all():
                continue
            x = list(range(len(bands)))
            ax.plot(x, mine.mean(), marker=style.marker(method), color=style.color(method),
                    label=method)  # fmt: skip
            ax.fill_between(x, mine.min(), mine.max(), color=style.color(method), alpha=0.15)
        ax.set_xticks(range(len(bands)), [b.rsplit("_", 1)[1] for b in bands])
        ax.set_title(f"{pct:g} % labels")
        ax.set_xlabel("noise band (eval.sc_bands, low to high sigma)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{metric} (exact; higher is better)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    for suffix in ("png", "pdf"):
        fig.savefig(out.with_name(f"{out.name}-{metric}_bands.{suffix}"), dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("--out", default="", help="figure path prefix (default: the study's)")
    parser.add_argument("--search", action="store_true", help="the search trials, not the final")
    args = parser.parse_args()
    study = load_study(args.study, allow_running=args.search)
    final = len(study.final_runs) > 0 and not args.search
    runs = (study.final_runs if final else study.trials).copy()
    if SEED not in runs:
        runs[SEED] = 0
    out = Path(args.out or Path(args.study) / "figures" / "twin")
    out.parent.mkdir(parents=True, exist_ok=True)
    source = "study final" if final else "search trials"
    print(f"## grad_cos per noise band ({source}; mean ± std [95 % t interval] over seeds)\n")
    print(band_table(runs, "grad_cos"))
    print("\n## guided_score_cos per noise band\n")
    print(band_table(runs, "guided_score_cos"))
    keep = [m for m in (*EXACT, *PROXIES, "gen_accuracy_exact", "gen_accuracy_exact_matched")
            if m in runs]  # fmt: skip
    means = runs.groupby(["method", "label_percent"], as_index=False)[keep].mean()
    print("\n## cell means\n")
    print("| " + " | ".join(means.columns) + " |")
    print("|" + "---|" * len(means.columns))
    for _, row in means.iterrows():
        print("| " + " | ".join(v if isinstance(v, str) else f"{v:.3g}" for v in row) + " |")
    print("\n## do the proxies rank the cells as the exact metrics do? (Kendall's tau)\n")
    print(agreement(means))
    band_figure(runs, "grad_cos", out)
    print(f"figure: {out}-grad_cos_bands.png")


if __name__ == "__main__":
    main()
