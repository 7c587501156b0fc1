"""The driver's records of its trials (a Tune callback before the MLflow tracker)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from ray.tune import Callback

from trainables.records import HEARTBEAT_S, TrialRecords, is_final, result_numbers


class TrialRecorder(Callback):
    """What the driver learns of its trials, into their records (the ledger's side; the MLflow
    tracker, after it, logs the same into the store): a trial's params as it starts (written
    once: its start) and each epoch's numbers (history.json: its learning curves, with which a
    lost store's runs are written again: study.runner.rebuild_runs), and the session's heartbeat
    (beat(), every HEARTBEAT_S of the driver's loop: its session record, which tells a reader on
    another machine that the driver lives). A records folder that cannot be written fails the
    trial in its worker, which says why; never the driver."""

    def __init__(self, record_root: str, beat: Callable[[], None] | None = None) -> None:
        self.record_root = record_root
        self._history: dict[str, list[dict[str, float]]] = {}
        self._beat = beat
        self._last_beat = time.monotonic()

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self._beat is None or time.monotonic() - self._last_beat < HEARTBEAT_S:
            return
        self._last_beat = time.monotonic()
        with contextlib.suppress(OSError):  # a store that does not answer: the next beat
            self._beat()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        records = TrialRecords.of(self.record_root, trial.trial_id)
        with contextlib.suppress(OSError):
            if records.params() is None:
                records.write_params(dict(trial.config))

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        if is_final(result):  # the worker records its final result itself
            return
        records = TrialRecords.of(self.record_root, trial.trial_id)
        if trial.trial_id not in self._history:  # a restarted trial goes on from its record
            self._history[trial.trial_id] = records.history()
        self._history[trial.trial_id].append(result_numbers(result))
        with contextlib.suppress(OSError):
            records.write_history(self._history[trial.trial_id])
