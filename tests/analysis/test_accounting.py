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


def test_stage_trials_count_as_spent_and_the_trial_span_is_first_start_to_last_end():
    runs = pd.DataFrame(
        [
            # The shared score model's stage trial: 100 steps, 4 s, no naive counterpart.
            _run(**{"stage": "shared", "cost/steps_trained": 100, "cost/train_seconds": 4.0,
                    "start_time": 1_000, "end_time": 5_000}),
            _run(**{"cost/steps_trained": 50, "cost/steps_reused": 100,
                    "cost/train_seconds": 2.0, "cost/eval_seconds": 1.0,
                    "start_time": 5_000, "end_time": 8_500}),
            _run(**{"cost/steps_trained": 50, "cost/steps_reused": 100,
                    "cost/train_seconds": 2.0, "cost/eval_seconds": 1.0,
                    "start_time": 2_000, "end_time": 6_000}),
        ]
    )  # fmt: skip
    report = compute_report(runs, wall_seconds=10.0, slots=2)
    assert report["trials"] == 2 and report["stage_trials"] == 1
    assert report["train_steps"] == 200 and report["train_steps_naive"] == 300
    assert report["device_seconds"] == 10.0 and report["useful_work_fraction"] == 0.5
    assert report["trial_span_seconds"] == 7.5
    assert report["useful_work_fraction_trials"] == 10.0 / 15.0
    assert "useful-work fraction of the trial slots: 67%" in to_markdown(report, 2)


def test_the_training_of_a_trial_a_stopped_driver_took_down_counts_as_spent():
    """Its stored network is reused by the rerun of its configuration (which trains nothing):
    spent once, by the lost trial, and in no naive plan (its rerun's reuse is)."""
    runs = pd.DataFrame(
        [
            _run(**{"cost/steps_trained": 0, "cost/steps_reused": 60,
                    "cost/train_seconds": 0.0, "cost/eval_seconds": 1.0}),  # the rerun
            _run(**{"status": "KILLED", "cost/steps_trained": 60, "cost/train_seconds": 3.0}),
            _run(**{"status": "KILLED"}),  # taken down before it stored a network
            _run(**{"status": "KILLED", "stage": "final", "cost/steps_trained": 999}),
        ]
    )  # fmt: skip
    report = compute_report(runs, wall_seconds=10.0, slots=1)
    assert report["trials"] == 1 and report["train_steps"] == 60
    assert report["train_steps_naive"] == 60 and report["device_seconds"] == 4.0


def test_the_training_of_a_trial_the_scheduler_stopped_early_counts_as_spent():
    """ASHA stops a trial after an epoch: the training up to it was spent (the networks it stored
    and the one in training), though the trial reaches no table and no naive plan."""
    runs = pd.DataFrame(
        [
            _run(**{"cost/steps_trained": 100, "cost/steps_reused": 0, "cost/train_seconds": 4.0,
                    "cost/eval_seconds": 1.0, "cost/steps_trained_so_far": 100,
                    "cost/train_seconds_so_far": 4.0}),
            _run(**{"early_stopped": True, "cost/steps_trained_so_far": 40,
                    "cost/train_seconds_so_far": 1.5}),
            _run(**{"early_stopped": True, "stage": "final", "cost/steps_trained_so_far": 999}),
        ]
    )  # fmt: skip
    report = compute_report(runs, wall_seconds=10.0, slots=1)
    assert report["trials"] == 1 and report["train_steps"] == 140
    assert report["train_steps_naive"] == 100 and report["device_seconds"] == 6.5


def test_the_study_wall_sums_every_session_and_bounds_a_killed_one_by_its_trials():
    from analysis.accounting import study_wall

    # Session 1 (t = 100 s) logged its wall (30 s); session 2 (t = 1,000 s) was killed before
    # logging it: its trials (started inside it) ended at most at t = 1,045 s; session 3 (t =
    # 2,000 s) had nothing to do and logged 2 s.
    starts = {100_000: 100.0, 1_000_000: 1000.0, 2_000_000: 2000.0}
    walls = {100_000: 30.0, 2_000_000: 2.0}
    runs = pd.DataFrame(
        [
            _run(start_time=101_000, end_time=125_000),
            _run(start_time=1_001_000, end_time=1_030_000),
            _run(start_time=1_010_000, end_time=1_045_000),
        ]
    )
    assert study_wall(starts, walls, runs) == 30.0 + 45.0 + 2.0
    assert study_wall({}, {}, runs) is None
    # Device-seconds of those trials never exceed wall x slots: useful work stays <= 100 %.
    runs["cost/train_seconds"] = [24.0, 29.0, 35.0]
    report = compute_report(runs, study_wall(starts, walls, runs), slots=2)
    assert report["useful_work_fraction"] <= 1.0
