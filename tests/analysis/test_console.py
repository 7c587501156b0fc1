"""The console table, the tidy CSV and the paper figures on hand-built run frames."""

import math

import pandas as pd
import pytest
from scipy import stats

from analysis.console import console_table
from analysis.figures import label_percent_figure, label_percent_points, write_figures
from analysis.runs import BASE_COLUMNS
from analysis.tables import long_table
from trainables.names import METHODS

OBJ = ("gen_accuracy", "max")


def _runs(rows):
    base = {"run_id": "r", "trial_id": "t", "status": "FINISHED", "early_stopped": False,
            "stage": "search"}  # fmt: skip
    frame = pd.DataFrame([{**base, **row} for row in rows])
    return frame[BASE_COLUMNS + [c for c in frame.columns if c not in BASE_COLUMNS]]


def _study(percents=(5.0, 100.0), final_seeds=0):
    rows = []
    for i, method in enumerate(METHODS):
        for pct in percents:
            rows.append({
                "trial_id": f"{method}{pct}", "method": method, "label_percent": pct,
                "gen_accuracy": 0.5 + 0.01 * i, "val/gen_accuracy": 0.5 + 0.01 * i,
                "fid": 30.0 - i, "intra_fid": 40.0 - i, "inception_score": 5.0 + i,
                "gen_accuracy_exact": 0.8975, "guidance_scale": 2.0 if method != "Cond" else None,
                "loss.lambda_sc": 0.1, "loss.lambda_joint": 1.0,
                "curve/gen_accuracy/g1": 0.4, "curve/gen_accuracy/g2": 0.5 + 0.01 * i,
            })  # fmt: skip
            for seed in range(final_seeds):
                rows.append({
                    "trial_id": f"{method}{pct}s{seed}", "method": method, "label_percent": pct,
                    "stage": "final", "train.seed": seed,
                    "gen_accuracy": 0.5 + 0.01 * i + 0.02 * seed, "fid": 30.0 - i + seed,
                })  # fmt: skip
    return _runs(rows)


def test_the_console_table_is_the_papers_layout_within_120_columns():
    text = console_table(_study(), [OBJ])
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 120
    assert "5% labels" in lines[0] and "100% labels" in lines[0]  # one row of column groups
    rows = [line.split()[0] for line in lines[3:11]]
    assert rows == list(METHODS)  # methods as rows, registry order
    header = lines[1]
    columns = [c.strip() for c in header.split("  ") if c.strip()]
    assert columns.count("gen acc") == 2 and columns.count("FID") == 2  # objective + headline
    assert len(columns) == 1 + 2 * 5  # method; per label %: objective, 3 headline, chosen
    assert header.count("chosen") == 2 and "γ=2 λSC=0.1" in text  # knobs, only the method's own
    assert "λJ" not in lines[4]  # CG-SC-labeled does not tune lambda_joint
    # The constant toy ceiling is a footnote, not a column.
    assert "gen acc (exact) = 0.8975 in every cell" in text and "exact" not in header


def test_label_percent_groups_that_do_not_fit_go_to_further_blocks():
    text = console_table(_study(percents=(5.0, 10.0, 20.0, 50.0, 100.0)), [OBJ])
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 120
    groups = [g for g in ("5% labels", "10% labels", "20% labels", "50% labels", "100% labels")]
    assert all(g in text for g in groups) and sum("labels" in line for line in lines) >= 2


def test_final_runs_show_mean_and_std():
    text = console_table(_study(final_seeds=3), [OBJ])
    # CG: gen_accuracy over seeds 0.50, 0.52, 0.54 -> 0.52 +- 0.02
    cg = next(line for line in text.splitlines() if line.startswith("CG "))
    assert "0.52 ± 0.02" in cg
    assert "mean ± std over the seeds" in text


def test_the_long_table_has_one_row_per_cell_and_metric_with_one_spelling():
    long = long_table(_study(), OBJ, ["gen_accuracy", "fid", "loss.lambda_sc"])
    assert set(long.columns) >= {"cell", "method", "label_percent", "metric", "value"}
    row = long[(long["cell"] == "CG-SC-all@5%") & (long["metric"] == "fid")]
    assert len(row) == 1 and row["value"].iloc[0] == 28.0
    assert long[long["metric"] == "loss.lambda_sc"]["method"].tolist() == [
        "CG-SC-labeled",
        "CG-SC-labeled",
        "CG-SC-all",
        "CG-SC-all",
    ]  # a knob only where the method tunes it


def test_the_label_percent_figure_draws_each_method_with_its_seed_interval(tmp_path):
    runs = _study(final_seeds=3)
    points = label_percent_points(runs, OBJ, "gen_accuracy")
    assert list(points) == list(METHODS)
    pct, mean, low, high = points["CG"][0]
    half = stats.t.ppf(0.975, 2) * 0.02 / math.sqrt(3)
    assert (pct, mean) == (5.0, pytest.approx(0.52))
    assert (low, high) == (pytest.approx(0.52 - half), pytest.approx(0.52 + half))
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    drawn = {}
    original = plt.Figure.savefig

    def spy(fig, path, **kw):
        ax = fig.axes[0]
        legend = fig.legends[0]
        pairs = {  # each method's drawn line: its colour and marker
            c.get_label(): (to_hex(c.lines[0].get_color()), c.lines[0].get_marker())
            for c in ax.containers
        }
        bars = [c for c in ax.containers if c.has_yerr]
        drawn[str(path)] = (pairs, len(bars), ax.get_ylabel(), [t.get_text() for t in
                                                                 legend.get_texts()])  # fmt: skip
        return original(fig, path, **kw)

    plt.Figure.savefig = spy
    try:
        paths = label_percent_figure(runs, [OBJ], tmp_path)
    finally:
        plt.Figure.savefig = original
    pairs, bars, ylabel, legend = drawn[str(tmp_path / "label_percent_gen_accuracy.png")]
    assert legend[: len(METHODS)] == list(METHODS)  # registry order
    assert len(set(pairs[m] for m in METHODS)) == len(METHODS)  # 8 distinct (colour, marker)
    assert bars == len(METHODS)  # each method's seed interval
    assert ylabel == "generation accuracy ↑"  # readable, with its direction
    assert any(t.startswith("ceiling: exact samples (0.897") for t in legend)  # the toy's
    assert {p.name for p in paths} >= {"label_percent_gen_accuracy.pdf", "label_percent_fid.png"}
    assert drawn[str(tmp_path / "label_percent_fid.png")][2] == "FID ↓"


def test_with_one_label_percent_every_method_is_a_dot_of_its_own(tmp_path):
    import matplotlib.pyplot as plt

    seen = {}
    original = plt.Figure.savefig

    def spy(fig, path, **kw):
        ax = fig.axes[0]
        seen[str(path)] = [t.get_text() for t in ax.get_xticklabels()]
        return original(fig, path, **kw)

    plt.Figure.savefig = spy
    try:
        label_percent_figure(_study(percents=(20.0,)), [OBJ], tmp_path)
    finally:
        plt.Figure.savefig = original
    assert seen[str(tmp_path / "label_percent_gen_accuracy.png")] == list(METHODS)


def test_coinciding_methods_are_nudged_apart(tmp_path):
    import matplotlib.pyplot as plt

    runs = _study()
    same = runs["method"].isin(["CFG-labeled", "CFG-all"])
    runs.loc[same, "gen_accuracy"] = 0.7  # CFG-labeled and CFG-all identical, as at 100 %
    runs.loc[same, "val/gen_accuracy"] = 0.7
    xs = {}
    original = plt.Figure.savefig

    def spy(fig, path, **kw):
        for c in fig.axes[0].containers:
            if c.get_label() in ("CFG-labeled", "CFG-all"):
                xs.setdefault(str(path), {})[c.get_label()] = tuple(c.lines[0].get_xdata())
        return original(fig, path, **kw)

    plt.Figure.savefig = spy
    try:
        label_percent_figure(runs, [OBJ], tmp_path)
    finally:
        plt.Figure.savefig = original
    drawn = xs[str(tmp_path / "label_percent_gen_accuracy.png")]
    assert drawn["CFG-labeled"] != drawn["CFG-all"]  # both visible


def test_write_figures_writes_all_three_kinds(tmp_path):
    runs = _study()
    runs["val/fid"] = runs["fid"]
    written = {p.name for p in write_figures(runs, [OBJ, ("fid", "min")], tmp_path)}
    assert {"label_percent_gen_accuracy.pdf", "guidance_gen_accuracy.png", "pareto.pdf"} <= written
    assert all((tmp_path / "figures" / name).stat().st_size > 0 for name in written)


def test_a_cell_whose_chosen_scale_is_the_sweeps_cap_is_marked():
    runs = _study()
    runs["guidance_cap"] = 16.0
    capped = (runs["method"] == "CG") & (runs["label_percent"] == 5.0)
    runs.loc[capped, "guidance_scale"] = 16.0
    text = console_table(runs, [OBJ])
    cg = next(line for line in text.splitlines() if line.startswith("CG "))
    assert "γ=16(cap)" in cg and cg.count("(cap)") == 1  # the 100 % cell chose 2: not marked
    assert "chosen at the sweep's cap, guidance.max_scale" in text
    runs["guidance_cap"] = 0.0  # no extension: nothing is "at the cap"
    assert "(cap)" not in console_table(runs, [OBJ])


def test_the_seed_claim_names_the_cells_that_have_no_final_runs():
    runs = _study(final_seeds=3)
    holed = runs[~((runs["stage"] == "final") & (runs["method"] == "Cond"))]
    text = console_table(holed, [OBJ])
    footer = next(line for line in text.splitlines() if "mean ± std over the seeds" in line)
    assert "search trial only, no final runs: Cond@5%, Cond@100%" in footer
    assert "search trial only" not in console_table(runs, [OBJ])


def test_guidance_curves_draw_the_scales_the_race_dropped_early_hollow(tmp_path, monkeypatch):
    """A trial's curve records the samples per class each scale reached
    (curve/val_samples_per_class/g<scale>): the scales below the survivors' count are drawn
    hollow and the figure says so; a curve measured in full has none."""
    import analysis.figures as figures
    from analysis.figures import guidance_figure

    drawn = {}

    def keep(fig, out_dir, stem):
        drawn[stem] = (fig.axes, fig._suptitle.get_text())
        return []

    monkeypatch.setattr(figures, "_save", keep)
    runs = _study(percents=(5.0,))
    runs["curve/gen_accuracy/g4"] = 0.45
    cg = runs["method"] == "CG"
    for scale, reached in ((1, 4.0), (2, 16.0), (4, 8.0)):
        runs.loc[cg, f"curve/val_samples_per_class/g{scale}"] = reached
    guidance_figure(runs, OBJ, tmp_path, metrics=["gen_accuracy"])
    axes, title = drawn["guidance_gen_accuracy"]
    hollow = [
        line for line in axes[0].get_lines()
        if line.get_markerfacecolor() in ("white", (1.0, 1.0, 1.0, 1.0))
    ]  # fmt: skip
    assert len(hollow) == 1 and sorted(hollow[0].get_xdata()) == [1, 4]  # 2 reached 16
    assert "hollow: dropped early by the race" in title
    runs = runs.drop(columns=[c for c in runs.columns if "val_samples_per_class" in c])
    guidance_figure(runs, OBJ, tmp_path, metrics=["gen_accuracy"])
    axes, title = drawn["guidance_gen_accuracy"]
    assert "hollow" not in title
