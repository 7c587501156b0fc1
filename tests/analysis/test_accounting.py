"""Compute accounting on hand-built runs: spent vs the naive plan, useful-work fraction."""

import pandas as pd

from analysis.accounting import compute_report, to_markdown


def _run(**metrics):
    return {"run_id": "r", "trial_id": "t", "status": "FINISHED", "early_stopped": False,
            "stage": "search", "method": "CG", "label_percent": 5.0, **metrics}  # fmt: skip


def test_spent_and_naive_costs_follow_their_definitions():
    runs = pd.DataFrame(
        [
            # Trained both networks (2 x 100 steps), swept 3 scales.
            _run(**{"cost/steps_trained": 200, "cost/steps_reused": 0,
                    "cost/sampling_score_evals": 1000, "cost/val_sampling_score_evals": 750,
                    "cost/train_seconds": 6.0, "cost/eval_seconds": 2.0, "cost/wait_seconds": 0.5,
                    "curve/fid/g1": 1.0, "curve/fid/g2": 1.0, "curve/fid/g4": 1.0}),
            # Reused the score model (100 steps), trained its classifier, swept nothing.
            _run(**{"cost/steps_trained": 100, "cost/steps_reused": 100,
                    "cost/sampling_score_evals": 1000, "cost/val_sampling_score_evals": 250,
                    "cost/train_seconds": 3.0, "cost/eval_seconds": 1.0}),
            _run(**{"cost/steps_trained": 999, "status": "FAILED"}),  # not counted
            _run(**{"cost/steps_trained": 999, "stage": "final"}),  # not the search
        ]
    )  # fmt: skip
    report = compute_report(runs, wall_seconds=10.0, slots=2)
    assert report["trials"] == 2 and report["train_steps"] == 300
    # Naive: every network retrained, once per scale: 200 x 3 + 200 x 1.
    assert report["train_steps_naive"] == 800
    assert report["score_evals"] == 3000 and report["score_evals_naive"] == 4000
    assert report["device_seconds"] == 12.0 and report["wait_seconds"] == 0.5
    assert report["useful_work_fraction"] == 12.0 / 20.0
    text = to_markdown(report, 2)
    assert "| training steps | 300 | 800 | 2.7x |" in text and "useful-work fraction: 60%" in text
    assert compute_report(runs.iloc[2:3], 10.0, 2) == {}
