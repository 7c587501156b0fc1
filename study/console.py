"""The driver's console during a study: each trial's end with its count and the time left, every
epoch at --verbose, and the per-cell status (study.progress) every STATUS_EVERY seconds. A Tune
callback of its own: study.tracking writes MLflow and nothing else."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from study.progress import Progress
from trainables.names import (
    LABEL_PERCENT_KEY,
    METHOD_KEY,
    STAGE_KEY,
    VALIDATION_PREFIX,
    cell_label,
)
from trainables.records import evaluated_epochs, is_final

# While a trial runs, a status every STATUS_EVERY seconds: the per-cell table when a trial started
# or ended since the last one (or STATUS_QUIET seconds passed), else its one summary line.
STATUS_EVERY = 15.0
STATUS_QUIET = 120.0


class ConsoleProgress(Callback):
    """Tune callback on the driver: the study's progress on its terminal. Each trial's end with
    its count and the time left (verbose 1), every epoch too (verbose 2), and the per-cell status
    every STATUS_EVERY s; it feeds the Progress model its trials' starts and ends."""

    def __init__(
        self, progress: Progress | None, verbose: int, stage: str, selection: str | None
    ) -> None:
        self.progress, self.verbose, self.stage = progress, verbose, stage
        self._selection = selection  # the first objective's validation key, e.g. val/fid
        self._shown = time.time()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.on_event("start", trial, None)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self.on_event("result", trial, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.on_event("FINISHED", trial, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.on_event("FAILED", trial, None)

    def on_event(self, event: str, trial: Any, result: dict | None) -> None:
        """Progress on the driver's terminal: each trial's end with its count and the time left
        (verbose 1), every epoch too (verbose 2); the per-cell status every STATUS_EVERY s."""
        params = trial.config
        cell = (str(params.get(METHOD_KEY)), float(params.get(LABEL_PERCENT_KEY, "nan")))
        kind = "shared" if params.get(STAGE_KEY) else self.stage
        progress, now = self.progress, time.time()
        if progress is not None and event == "start":
            progress.started(trial.trial_id, cell, kind, now)
        elif progress is not None and event in ("FINISHED", "FAILED"):
            value = (trial.last_result or {}).get(self._selection) if self._selection else None
            status = event if event == "FAILED" or is_final(trial.last_result) else ("KILLED")
            progress.ended(trial.trial_id, status, now, value)
        if not self.verbose:
            return
        label = cell_label(*cell)
        if params.get(STAGE_KEY):
            label = f"stage trial: shared {params[STAGE_KEY]} network"
        if event == "result" and result is not None and "epoch" in result and self.verbose > 1:
            loss = next((f"{k} {v:.4g}" for k, v in result.items() if k.endswith("/loss")), "")
            print(f"  [{trial.trial_id}] {label}: epoch {int(result['epoch'])} {loss}", flush=True)
        elif event in ("FINISHED", "FAILED"):
            early = event == "FINISHED" and not is_final(trial.last_result)
            epoch = evaluated_epochs(trial.last_result)
            what = f"stopped early by ASHA at epoch {epoch}" if early else event.lower()
            value = (trial.last_result or {}).get(self._selection) if self._selection else None
            if isinstance(value, (int, float)) and event == "FINISHED" and not early:
                what += f", {self._selection} {value:.4g}"
            count = f" · {progress.brief(now)}" if progress is not None else ""
            print(f"  [{trial.trial_id}] {label} {what}{count}", flush=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """While trials run, a status every STATUS_EVERY seconds: the per-cell table when a trial
        started or ended since the last table (or STATUS_QUIET seconds passed), else the summary
        line alone (the time left, the trials running)."""
        progress = self.progress
        now = time.time()
        if not self.verbose or progress is None or now - self._shown < STATUS_EVERY:
            return
        if not any(t.status == "RUNNING" for t in progress.trials.values()):
            return
        state = tuple(sorted((t.trial_id, t.status) for t in progress.trials.values()))
        self._shown = now
        tabled = getattr(self, "_tabled", 0.0)
        if state == getattr(self, "_shown_state", None) and now - tabled < STATUS_QUIET:
            print(f"status: {progress.summary(now)}", flush=True)
            return
        self._shown_state, self._tabled = state, now
        metric = self._selection.removeprefix(VALIDATION_PREFIX) if self._selection else ""
        print(f"status: {progress.summary(now)}\n{progress.table(metric)}", flush=True)
