"""Which of a ledger frame's trials a resumed session counts as spent (its live status)."""

import pandas as pd

from analysis.ledger import BASE_COLUMNS, not_run_again


def test_a_resumed_session_counts_the_trials_it_will_not_run_again():
    rows = [  # (trial, status, session, error)
        ("done", "FINISHED", "search", None),
        ("early", "FINISHED", "search", None),  # stopped early: spent
        ("nan", "FAILED", "search", "ObjectiveError: val/fid is nan"),  # would fail again
        ("oom", "FAILED", "search", "RuntimeError: out of memory"),  # run once more
        ("lost", "KILLED", "search", None),  # taken down with its driver: run again
        ("live", "RUNNING", "search", None),  # its driver died: settled and run again
        ("seed", "FINISHED", "final", None),  # a `study final` run, not the search's
    ]
    frame = pd.DataFrame(
        [{"trial_id": t, "status": s, "session": k, "error": e} for t, s, k, e in rows]
    )
    assert list(not_run_again(frame)["trial_id"]) == ["done", "early", "nan"]
    empty = pd.DataFrame(columns=BASE_COLUMNS)
    assert not_run_again(empty).empty
