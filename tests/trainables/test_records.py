"""A trial's records: each writer's output is what its reader returns; an absent record reads as
none; the final record appears whole or not at all; no torch is needed to read them."""

import json
import subprocess
import sys

import pytest

from trainables.records import RecordError, TrialRecords, evaluated_epochs, is_final, sessions


def test_every_record_reads_back_what_was_written(tmp_path):
    records = TrialRecords.of(tmp_path / "trials", "abc123")
    assert records.final() is None and records.params() is None and records.run_id() is None
    assert records.artifacts() == {} and records.tags() == {} and records.error() is None
    records.write_params({"method": "CG-SC-all", "data.label_percent": 5.0, "x": (1, 2)})
    records.write_run_id("0123abcd")
    records.write_outputs({"score": "/store/score-1"}, {"feature_extractor": "inception"})
    records.write_final({"gen_accuracy": 0.75, "final": 1.0})
    try:
        raise ValueError("lr must be > 0")
    except ValueError as exc:
        exc.step = 17
        records.write_error(exc)
    again = TrialRecords.of(str(tmp_path / "trials"), "abc123")  # another process's view
    assert again.params() == {"method": "CG-SC-all", "data.label_percent": 5.0, "x": [1, 2]}
    assert again.run_id() == "0123abcd"
    assert again.artifacts() == {"score": "/store/score-1"}
    assert again.tags() == {"feature_extractor": "inception"}
    assert again.final() == {"gen_accuracy": 0.75, "final": 1.0}
    assert again.error() == {"type": "ValueError", "message": "lr must be > 0", "step": 17}
    # Written through a temporary file and a rename: nothing else is left in the folder.
    assert sorted(p.name for p in again.folder.iterdir()) == [
        "artifacts.json", "error.json", "final.json", "mlflow_run_id.txt", "params.json",
        "tags.json",
    ]  # fmt: skip


def test_a_result_is_final_only_with_the_final_key():
    assert is_final({"final": 1.0, "eval_epoch": 3}) and not is_final({"eval_epoch": 3})
    assert not is_final(None) and evaluated_epochs({"eval_epoch": 3.0}) == 3
    assert evaluated_epochs(None) == 0


def test_reading_records_imports_neither_torch_nor_ray(tmp_path):
    TrialRecords.of(tmp_path, "t").write_final({"fid": 1.0})
    code = (
        "import sys\n"
        "from trainables.records import TrialRecords\n"
        f"assert TrialRecords.of({str(tmp_path)!r}, 't').final() == {{'fid': 1.0}}\n"
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


def test_a_session_end_marks_its_unended_stage_and_final_trials_lost(tmp_path):
    # Only trials whose end lives in their records alone (stage trials, `study final` trials),
    # only those that neither finished nor failed; a search trial's end is its ledger state (an
    # early stop has neither record and is no loss). Their last-heard time is not the mark's.
    import os

    from trainables.records import mark_lost

    root = tmp_path / "trials"
    made = {
        "stage": {"method": "CG", "data.label_percent": 5.0, "stage": "score"},
        "seed": {"method": "CG", "data.label_percent": 5.0, "train.seed": 1},
        "search": {"method": "CG", "data.label_percent": 5.0},
        "done": {"method": "CG", "data.label_percent": 5.0, "stage": "classifier"},
        "failed": {"method": "CG", "data.label_percent": 5.0, "train.seed": 2},
    }
    for trial_id, params in made.items():
        TrialRecords.of(root, trial_id).write_params(params)
        os.utime(root / trial_id / "params.json", (1000.0, 1000.0))
    TrialRecords.of(root, "done").write_final({"final": 1.0})
    TrialRecords.of(root, "failed").write_error(RuntimeError("out of memory"))
    assert mark_lost(root) == 2
    lost = {t for t in made if TrialRecords.of(root, t).ended()}
    assert lost == {"stage", "seed", "done", "failed"}  # the search trial: its ledger's to say
    assert TrialRecords.of(root, "stage").times() == (1000.0, 1000.0)
    assert mark_lost(root) == 0  # marked once


def test_a_trials_times_do_not_move_when_its_run_id_is_written_again(tmp_path):
    # The run id is written as the trial starts and again when `study table` writes a lost
    # MLflow store's run again: the trial's start and end are its own records' (params, final).
    import os

    records = TrialRecords.of(tmp_path, "t1")
    records.write_run_id("run-a")
    os.utime(records.path("mlflow_run_id.txt"), (900.0, 900.0))
    records.write_params({"method": "CG"})
    os.utime(records.path("params.json"), (1000.0, 1000.0))
    records.write_final({"final": 1.0})
    os.utime(records.path("final.json"), (1050.0, 1050.0))
    assert records.times() == (1000.0, 1050.0)
    records.write_run_id("run-b")  # now, long after the trial
    assert records.times() == (1000.0, 1050.0)


def test_session_records_keep_each_sessions_start_and_wall(tmp_path):
    from trainables.records import sessions, write_session
    from trainables.storage import Place

    study = Place(str(tmp_path))
    assert sessions(study, "search") == ({}, {})
    write_session(study, "search", 1000.0)  # a session starts ...
    write_session(study, "search", 1000.0, 42.5)  # ... and ends: its record written again
    write_session(study, "search", 2000.25)  # killed before it ended: a start, no wall
    write_session(study, "final", 3000.0, 7.0)  # another stage's session is not the search's
    starts, walls = sessions(study, "search")
    assert starts == {1_000_000: 1000.0, 2_000_250: 2000.25}
    assert walls == {1_000_000: 42.5}
    assert sessions(study, "final") == ({3_000_000: 3000.0}, {3_000_000: 7.0})


def test_a_driver_is_live_while_its_session_beats_and_its_process_runs(tmp_path):
    from trainables.records import HEARTBEAT_S, SESSIONS, live_driver, write_session
    from trainables.storage import Place

    study = Place(str(tmp_path))
    assert live_driver(study) is None  # no session at all
    write_session(study, "search", 1000.0)  # started by this process, running, just heard of
    record = json.loads(next((tmp_path / SESSIONS).glob("search-*.json")).read_text())
    heard = record["heard"]
    assert live_driver(study, now=heard + 3 * HEARTBEAT_S) == record
    # Killed: no wall is ever written and it stops being heard of.
    assert live_driver(study, now=heard + 3 * HEARTBEAT_S + 1) is None
    write_session(study, "search", 1000.0, 42.5)  # ended: not running, however recent
    assert live_driver(study) is None
    # Another machine's driver is live while heard of; one of this machine whose process is gone
    # is dead at once (a kill -9 here, then a resume here: not refused for a minute).
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    for name, host, pid in (("a", "another-machine", 1), ("b", record["host"], gone.pid)):
        record = {"stage": "search", "start": 1.0, "wall": None, "heard": heard}
        (tmp_path / SESSIONS / f"final-{name}.json").write_text(
            json.dumps({**record, "host": host, "pid": pid})
        )
    assert live_driver(study, now=heard)["host"] == "another-machine"
    (tmp_path / SESSIONS / "final-a.json").unlink()
    assert live_driver(study, now=heard) is None


@pytest.mark.parametrize(
    "name, text",
    [
        ("final.json", '{"final": 1.0, "gen_acc'),
        ("final.json", "[1, 2]"),
        ("history.json", '{"epoch": 1}'),
        ("params.json", "\xff"),
    ],  # fmt: skip
)
def test_a_damaged_record_is_a_record_error_naming_it(tmp_path, name, text):
    records = TrialRecords.of(tmp_path / "trials", "t1")
    records.write_params({"method": "CG"})
    (records.folder / name).write_text(text, encoding="latin-1")
    with pytest.raises(RecordError, match=f"the record {records.folder / name} cannot be read"):
        records.read(name)


def test_a_damaged_session_record_is_a_record_error(tmp_path):
    from trainables.storage import Place

    (tmp_path / "sessions").mkdir()
    (tmp_path / "sessions" / "search-1.json").write_text('{"stage": "sea')
    with pytest.raises(RecordError, match="search-1.json cannot be read"):
        sessions(Place(str(tmp_path)), "search")
