"""The live status's model (study.progress): counts per kind, cell states, and the time left."""

import pytest

from study.progress import Progress, format_seconds, from_records, replay

CG, SC = ("CG", 5.0), ("CG-SC-all", 5.0)


def _plan(slots=1):
    # CG costs 100 units a trial, CG-SC-all 300; one stage trial of 50 units.
    return Progress(
        budgets={CG: 2, SC: 3}, work={CG: 100.0, SC: 300.0}, shared_work=[50.0], slots=slots
    )


def _sequential(rates, order):
    """Records of trials run one after another, each taking rate[method] x its units."""
    progress, now, rows = _plan(), 0.0, []
    for i, (kind, cell) in enumerate(order):
        units = progress.shared_work[0] if kind == "shared" else progress.work[cell]
        rate = rates["stage"] if kind == "shared" else rates[cell[0]]
        rows.append({"trial_id": f"t{i}", "cell": cell, "kind": kind, "status": "FINISHED",
                     "start": now, "end": now + units * rate, "value": 0.5})  # fmt: skip
        now += units * rate
    return rows


def test_time_left_is_exact_when_durations_follow_the_planned_work():
    # Per-method throughput: CG 0.01 s a unit, CG-SC-all 0.02 s (its input gradients), the stage
    # trial at the overall rate measured when it runs first.
    order = [("shared", CG), ("search", CG), ("search", SC), ("search", CG), ("search", SC),
             ("search", SC)]  # fmt: skip
    rates = {"stage": 0.01, "CG": 0.01, "CG-SC-all": 0.02}
    rows = _sequential(rates, order)
    trace = replay(_plan(), rows)
    # Once every method has finished a trial (after the third end), the estimate is the truth.
    for done, estimate, actual in trace[2:]:
        assert estimate == pytest.approx(actual, rel=1e-9), (done, estimate, actual)
    # Before CG-SC-all finished one, its trials are priced at the overall rate: an underestimate.
    _, early, actual = trace[1]
    assert early < actual


def test_time_left_divides_the_remaining_work_over_the_slots_and_counts_running_trials():
    progress = _plan(slots=2)
    progress.started("a", CG, "search", 0.0)
    progress.ended("a", "FINISHED", 10.0, 0.7)  # 100 units in 10 s: 0.1 s a unit
    progress.started("b", CG, "search", 10.0)  # running for 4 s of its expected 10
    # Pending: CG-SC-all x3 (900 units, 90 s at the overall rate) and the stage trial (5 s).
    assert progress.remaining_seconds(14.0) == pytest.approx((90 + 5 + 6) / 2)


def test_counts_states_and_best_values_per_cell():
    progress = from_records(_plan(), [
        {"trial_id": "s", "cell": CG, "kind": "shared", "status": "FINISHED", "start": 0,
         "end": 1},
        {"trial_id": "a", "cell": CG, "kind": "search", "status": "FINISHED", "start": 1,
         "end": 2, "value": 0.6},
        {"trial_id": "b", "cell": CG, "kind": "search", "status": "FINISHED", "start": 2,
         "end": 3, "value": 0.8},
        {"trial_id": "c", "cell": SC, "kind": "search", "status": "FAILED", "start": 3, "end": 4},
        {"trial_id": "d", "cell": SC, "kind": "search", "status": "RUNNING", "start": 4},
    ])  # fmt: skip
    assert progress.cell_state(CG) == ("done", 2, 2) and progress.best(CG) == 0.8
    assert progress.cell_state(SC) == ("running", 1, 3) and progress.best(SC) is None
    summary = progress.summary(10.0)
    assert summary.startswith("search trials 3/5, stage trials 1/1; 1 running, 1 pending")
    assert "1 failed" in summary and "10 s elapsed" in summary and "left" in summary
    assert progress.brief(10.0).startswith("search 3/5, stage 1/1 ended, ~")
    table = progress.table("gen_accuracy")
    assert "CG@5%" in table and "0.8" in table and "running" in table


def test_a_minimising_objective_keeps_the_lowest_value():
    progress = Progress(budgets={CG: 2}, work={CG: 1.0}, mode="min")
    for i, value in enumerate([3.0, 1.0]):
        progress.started(str(i), CG, "search", i)
        progress.ended(str(i), "FINISHED", i + 0.5, value)
    assert progress.best(CG) == 1.0


def test_format_seconds():
    assert [format_seconds(s) for s in (5, 65, 3725)] == ["5 s", "1 min 05 s", "1 h 02 min"]


def test_the_console_prints_a_status_every_15_s_while_a_trial_runs(monkeypatch, capsys):
    """The README's promise: a status line every STATUS_EVERY seconds while a trial runs; the
    per-cell table when a trial started or ended since the last one, else the line alone."""
    from study import console

    progress = Progress(budgets={CG: 2}, work={CG: 1.0}, mode="min", start=0.0)
    progress.started("t1", CG, "search", 0.0)
    tracker = console.ConsoleProgress(progress, verbose=1, stage="search", selection="val/m")
    clock = {"now": 0.0}
    monkeypatch.setattr(console.time, "time", lambda: clock["now"])
    tracker._shown = 0.0
    printed = []
    for second in range(1, 241):  # four minutes of Tune's loop, one step a second
        clock["now"] = float(second)
        if second == 100:
            progress.started("t2", CG, "search", 100.0)  # a trial starts: the table again
        tracker.on_step_end(second, [])
        out = capsys.readouterr().out
        if out:
            printed.append((second, "cell" in out))
    seconds = [s for s, _ in printed]
    assert seconds == list(range(15, 241, 15))  # every 15 s, nothing in between
    tables = [s for s, table in printed if table]
    assert tables == [15, 105, 225]  # the first, after t2 started, and 120 s after that one


def test_time_left_waits_for_a_trial_that_samples():
    # A stage trial only trains: its rate says nothing of what sampling costs.
    progress = _plan(slots=2)
    progress.started("s", CG, "shared", 0.0)
    progress.ended("s", "FINISHED", 5.0)
    assert progress.remaining_seconds(6.0) is None
    assert "time left: estimating" in progress.summary(6.0)
    progress.started("a", CG, "search", 5.0)
    progress.ended("a", "FINISHED", 15.0, 0.7)
    assert progress.remaining_seconds(16.0) is not None
