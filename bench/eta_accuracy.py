"""How good the live status's time-left estimate was on a finished study: what it printed at each
trial's end (study.progress.replay over the study's ledger and trial records) against the time
the study really took from there, at about 25 %, 50 % and 75 % of the trials and at every end
with --all.

    python bench/eta_accuracy.py studies/tiny-images [--all]
"""

from __future__ import annotations

import argparse

from analysis.ledger import ledger_runs, progress_records
from analysis.results import objectives_of, read_spec
from study.progress import format_seconds, replay
from study.runner import load_study_spec, study_progress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir")
    parser.add_argument("--all", action="store_true", help="every trial end, not 25/50/75 %%")
    args = parser.parse_args()
    folder, raw = read_spec(args.study_dir)
    _, spec = load_study_spec(folder, store=False)
    metric, _ = objectives_of(raw)[0]
    runs = ledger_runs(spec.study_place(folder), spec.name)
    rows = [row for row in progress_records(runs, f"val/{metric}") if row["kind"] != "final"]
    trace = replay(study_progress(spec), rows)
    if not args.all:
        trace = [min(trace, key=lambda row, f=f: abs(row[0] - f)) for f in (0.25, 0.5, 0.75)]
    print("| trials ended | estimated time left | actual time left | error |")
    print("|---|---|---|---|")
    for done, estimate, actual in trace:
        error = "" if estimate is None or not actual else f"{estimate / actual - 1:+.0%}"
        shown = "estimating" if estimate is None else format_seconds(estimate)
        print(f"| {done:.0%} | {shown} | {format_seconds(actual)} | {error} |")


if __name__ == "__main__":
    main()
