"""The driver's records callback (study.recorder.TrialRecorder): a trial's params as it starts,
written once, and each epoch's numbers in order, continued by a restarted trial."""

from types import SimpleNamespace

from study.recorder import TrialRecorder
from trainables.records import HEARTBEAT_S, TrialRecords


def test_the_recorder_keeps_params_once_and_every_epochs_numbers(tmp_path):
    trial = SimpleNamespace(trial_id="t1", config={"method": "CG", "loss.lambda_sc": 0.5})
    recorder = TrialRecorder(str(tmp_path))
    recorder.on_trial_start(0, [], trial)
    records = TrialRecords.of(tmp_path, "t1")
    assert records.params() == {"method": "CG", "loss.lambda_sc": 0.5}
    written = records.written("params.json")
    recorder.on_trial_start(0, [], SimpleNamespace(trial_id="t1", config={"method": "other"}))
    assert records.params()["method"] == "CG" and records.written("params.json") == written
    for epoch in (1, 2):  # Tune's own keys, strings, flags and non-finite numbers are left out
        result = {"epoch": epoch, "score/loss": 1.0 / epoch, "training_iteration": epoch,
                  "time_total_s": 3.0, "node_ip": "1.2.3.4", "done": False,
                  "val/fid": float("nan")}  # fmt: skip
        recorder.on_trial_result(0, [], trial, result)
    recorder.on_trial_result(0, [], trial, {"final": 1.0, "fid": 3.0})  # the worker's record
    assert records.history() == [
        {"epoch": 1.0, "score/loss": 1.0},
        {"epoch": 2.0, "score/loss": 0.5},
    ]
    # A new driver (Tune restarted the trial) goes on from the record, not from nothing.
    again = TrialRecorder(str(tmp_path))
    again.on_trial_result(0, [], trial, {"epoch": 3, "training_iteration": 1})
    assert [e["epoch"] for e in records.history()] == [1.0, 2.0, 3.0]


def test_a_folder_the_recorder_cannot_write_does_not_fail_the_driver(tmp_path):
    blocked = tmp_path / "trials"
    blocked.write_text("a file where the records folder should be")
    recorder = TrialRecorder(str(blocked))
    trial = SimpleNamespace(trial_id="t1", config={"method": "CG"})
    recorder.on_trial_start(0, [], trial)
    recorder.on_trial_result(0, [], trial, {"epoch": 1})
    assert blocked.is_file()  # nothing written, nothing raised


def test_the_recorder_beats_the_sessions_heart_every_heartbeat(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("study.recorder.time.monotonic", lambda: clock[0])
    beats = []
    recorder = TrialRecorder("unused", beat=lambda: beats.append(clock[0]))
    for now in (0, 0.5, 0.99, 1.0, 1.05, 1.9, 2.1):  # the driver loop's steps, in heartbeats
        clock[0] = 100.0 + now * HEARTBEAT_S
        recorder.on_step_begin(0, [])
    assert beats == [100.0 + HEARTBEAT_S, 100.0 + 2.1 * HEARTBEAT_S]  # one per heartbeat
    TrialRecorder("unused").on_step_begin(0, [])  # no heart to beat: nothing happens
