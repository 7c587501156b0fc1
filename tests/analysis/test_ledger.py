"""Which of a ledger frame's trials a resumed session counts as spent (its live status)."""

import contextlib
import sqlite3
import subprocess
import sys

import pandas as pd

from analysis.ledger import BASE_COLUMNS, not_run_again, sqlite_problem


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


KILLED_WRITER = """
import os, signal, sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.execute("CREATE TABLE experiments (x)")
conn.executemany("INSERT INTO experiments VALUES (?)", [(i,) for i in range(1000)])
conn.commit()
conn.execute("PRAGMA cache_size=1")  # the transaction spills into the file: a hot journal
conn.execute("BEGIN")
conn.executemany("INSERT INTO experiments VALUES (?)", [("y" * 500,) for _ in range(5000)])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_writer_killed_mid_transaction_leaves_a_readable_database(tmp_path):
    """A driver killed by kill -9 while MLflow or Optuna wrote leaves a hot journal. A read-only
    connection may not roll it back (SQLITE_READONLY_ROLLBACK): the check rolls it back as the
    next writer would, and the database reads as it was before the dead transaction. A file cut
    short is still a problem."""
    db = tmp_path / "mlflow.db"
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(db)], check=False, timeout=60)
    assert (tmp_path / "mlflow.db-journal").exists()
    assert sqlite_problem(db, "experiments") is None
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM experiments").fetchone()[0] == 1000
    cut = tmp_path / "cut.db"
    cut.write_bytes(db.read_bytes()[:5000])
    assert sqlite_problem(cut, "experiments") is not None
