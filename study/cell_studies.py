"""The Optuna side of a study's search: one Optuna study per (method, label %) cell in optuna.db,
asked for configurations the cell has not run and told how each trial ended. The cells' studies are
the study's state: a session starts by settling the trials a gone driver left RUNNING."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Collection

import optuna

from analysis.ledger import LOST, SO_FAR
from search_spaces import cell_points, suggest_knobs
from trainables.names import (
    TUNED_KEYS,
    VALIDATION_PREFIX,
    cell_label,
)
from trainables.records import TrialRecords, is_final
from trainables.storage import Place

Cell = tuple[str, float]  # (method, label %)
Objectives = list[tuple[str, str]]  # (validation metric, "min" | "max")
STATE = optuna.trial.TrialState


def selection_metric(metric: str) -> str:
    """The name of an objective's validation value, the one searches and schedulers compare."""
    return f"{VALIDATION_PREFIX}{metric}"


def cell_study_name(study: str, cell: Cell) -> str:
    """The Optuna study of one table cell, e.g. 'toy/CG-SC-all@5%' (optuna-dashboard lists them)."""
    return f"{study}/{cell_label(*cell)}"


def config_key(knobs: dict) -> tuple:
    """A configuration's knobs as a hashable key (floats compared exactly)."""
    return tuple(sorted((k, float(v)) for k, v in knobs.items()))


def default_knobs(cell: Cell, ranges: dict) -> dict:
    """The cell's first configuration: its knobs at the paper's values."""
    default = cell_points([cell[0]], [cell[1]], ranges)[0]
    return {k: default[k] for k in TUNED_KEYS[cell[0]]}


def objective_values(result: dict | None, objectives: Objectives) -> list[float] | None:
    """A finished result's objective values, or None if it has none or a non-finite one."""
    if result is None:
        return None
    values = [result.get(metric) for metric, _ in objectives]
    if any(v is None or not math.isfinite(float(v)) for v in values):
        return None
    return [float(v) for v in values]


class CellStudies:
    """The cells' Optuna studies, each created on first use with its own seeded TPE (NSGA-II for
    several objectives) and, when it searches, the paper's point enqueued as its first trial."""

    MAX_REPEATS = 20  # proposals in a row that repeat a run configuration: the cell is done

    def __init__(
        self,
        storage_url: str,
        study_name: str,
        seed: int,
        objectives: Objectives,
        ranges: dict,
        cells: list[Cell],
        searches: bool = True,
    ) -> None:
        self.storage_url, self.study_name, self.seed = storage_url, study_name, seed
        self.objectives, self.ranges, self.cells = objectives, ranges, cells
        self.searches = searches  # False: configurations are enqueued by the caller, none proposed
        self._studies: dict[Cell, optuna.Study] = {}

    def __getstate__(self) -> dict:
        """Everything but the open Optuna studies (Tune pickles its searcher into the experiment
        folder, which no session reads back)."""
        return {**self.__dict__, "_studies": {}}

    def study(self, cell: Cell) -> optuna.Study:
        """The cell's Optuna study, created (its default point enqueued) on first use."""
        if cell not in self._studies:
            existing = optuna.get_all_study_names(self.storage_url)
            name = cell_study_name(self.study_name, cell)
            fresh = name not in existing
            study = optuna.create_study(
                storage=self.storage_url,
                study_name=name,
                sampler=self._sampler(cell),
                directions=["minimize" if m == "min" else "maximize" for _, m in self.objectives],
                load_if_exists=True,
            )
            if fresh:
                self._label(study, cell)
            if fresh and self.searches:
                study.enqueue_trial(default_knobs(cell, self.ranges))
            self._studies[cell] = study
        return self._studies[cell]

    def _sampler(self, cell: Cell) -> optuna.samplers.BaseSampler:
        """TPE for one objective, NSGA-II for several, seeded per cell."""
        index = self.cells.index(cell) if cell in self.cells else len(self.cells)
        if len(self.objectives) == 1:
            return optuna.samplers.TPESampler(seed=self.seed + index, multivariate=True)
        return optuna.samplers.NSGAIISampler(seed=self.seed + index)

    def _label(self, study: optuna.Study, cell: Cell) -> None:
        """Names for optuna-dashboard: the objectives (not "Objective 0") and the cell."""
        with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([metric for metric, _ in self.objectives])
        study.set_user_attr("cell", cell_label(*cell))

    def ran(self, cell: Cell) -> set[tuple]:
        """Configurations the cell has run, is running or saw fail."""
        states = [STATE.RUNNING, STATE.COMPLETE, STATE.FAIL]
        trials = self.study(cell).get_trials(deepcopy=False, states=states)
        return {config_key(t.params) for t in trials}

    def ask(
        self, cell: Cell, trial_id: str, fresh: Callable[[tuple], bool]
    ) -> tuple[int, dict] | None:
        """(Optuna number, knobs) of a configuration fresh(key) accepts, linked to the Tune trial;
        a proposal it refuses is told PRUNED (marked a repeat) and the sampler asked again, at
        most MAX_REPEATS times (then None)."""
        study = self.study(cell)
        for _ in range(self.MAX_REPEATS):
            trial = study.ask()
            knobs = suggest_knobs(trial, cell[0], self.ranges)
            if fresh(config_key(knobs)):
                # Links for optuna-dashboard: the Tune trial, its cell (the MLflow run follows).
                trial.set_user_attr("tune_trial_id", trial_id)
                trial.set_user_attr("cell", cell_label(*cell))
                return trial.number, knobs
            trial.set_user_attr("repeat", True)
            study.tell(trial, state=STATE.PRUNED)  # a repeat: never run twice
        return None

    def tell(
        self,
        cell: Cell,
        number: int,
        result: dict | None,
        error: bool,
        retry: bool = True,
        why: dict | None = None,
    ) -> None:
        """The trial's end: its objective values; FAIL for an error or a non-finite value, PRUNED
        for a trial stopped before its final evaluation (early stopping). A non-finite value, or
        an error with retry False (its objective failed: TrialRecords.failed_on_objective), is
        marked diverged: it would fail again, so no session runs it again (retries). why: an error
        with no record of its own ({"type", "message"}), kept as the trial's error attribute."""
        values = [(result or {}).get(metric) for metric, _ in self.objectives]
        if not is_final(result):  # stopped before its final evaluation
            values = [None]
        if error:
            state, told = STATE.FAIL, None
            if why is not None:
                self._set_attr(cell, number, "error", f"{why['type']}: {why['message']}")
            if not retry:
                self._set_attr(cell, number, "diverged", True)
        elif any(v is None for v in values):
            state, told = STATE.PRUNED, None
            for key in SO_FAR:  # the training it spent before it stopped (analysis.accounting)
                if key in (result or {}):
                    self._set_attr(cell, number, key, float(result[key]))
        elif not all(math.isfinite(float(v)) for v in values):
            state, told = STATE.FAIL, None
            self._set_attr(cell, number, "diverged", True)  # it would diverge again: no retry
        else:
            state, told = None, [float(v) for v in values]
        try:
            self.study(cell).tell(
                number, told if len(values) > 1 or told is None else told[0], state=state
            )
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError):
            pass  # already told (settled from its record)

    def _set_attr(self, cell: Cell, number: int, key: str, value: object) -> None:
        """Set a user attribute of the cell's trial number (Optuna's storage API sets attributes by
        internal trial id); a finished trial is read-only and keeps what it has."""
        study = self.study(cell)
        storage = study._storage
        internal = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        try:
            storage.set_trial_user_attr(internal, key, value)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError, OSError):
            pass  # already finished (settled from its record)

    def rerun(self, cell: Cell, trial_id: str, number: int, knobs: dict) -> int:
        """A new trial of the cell running the knobs of its failed trial number once more (linked
        to it by the user attribute rerun_of); its Optuna number."""
        study = self.study(cell)
        study.enqueue_trial(knobs, user_attrs={"rerun_of": number}, skip_if_exists=False)
        asked = self.ask(cell, trial_id, lambda key: True)
        assert asked is not None
        return asked[0]

    def link_run(self, cell: Cell, number: int, record_root: str, trial_id: str) -> None:
        """The Optuna trial's user attribute mlflow_run_id, from the run record the tracker wrote
        at the trial's start (set before tell: a finished Optuna trial is read-only)."""
        run_id = TrialRecords.of(record_root, trial_id).run_id()
        if run_id is not None:
            self._set_attr(cell, number, "mlflow_run_id", run_id)

    def retries(self, cell: Cell) -> list[tuple[int, dict]]:
        """(number, knobs) of the cell's FAIL trials that no later trial ran again: a trial that
        errored or was lost with a killed driver. A session runs each once more (Optuna's
        RetryFailedTrialCallback pattern), within the cell's budget."""
        trials = self.study(cell).get_trials(deepcopy=False)
        rerun = {t.user_attrs.get("rerun_of") for t in trials}
        return [
            (t.number, dict(t.params))
            for t in trials
            if t.state == STATE.FAIL and t.number not in rerun and not t.user_attrs.get("diverged")
        ]

    def spent(self, cell: Cell, retrying: Collection[int] = ()) -> int:
        """Trials the cell has spent: finished, running, pruned (not as a repeat), and failed
        unless run again (or being run again: retrying)."""
        trials = self.study(cell).get_trials(deepcopy=False)
        rerun = {t.user_attrs.get("rerun_of") for t in trials}
        return sum(
            t.state in (STATE.COMPLETE, STATE.RUNNING)
            or (t.state == STATE.PRUNED and not t.user_attrs.get("repeat"))
            or (t.state == STATE.FAIL and t.number not in rerun and t.number not in retrying)
            for t in trials
        )


def settle_trials(studies: CellStudies, record_root: str) -> int:
    """A session's start (and end): every Optuna trial still RUNNING belonged to a driver that is
    gone (the study's driver lease rules out a live one). Told its result when its trial's final
    record holds one (it finished, the driver died before telling), else FAIL, so the next session
    runs its configuration again (CellStudies.retries); linked to its MLflow run first, as a trial
    told by its own session is. Returns how many were settled."""
    Place(record_root).pull()  # an object store's records into this machine's mirror
    settled = 0
    for cell in studies.cells:
        study = studies.study(cell)
        for trial in study.get_trials(deepcopy=False, states=[STATE.RUNNING]):
            tune_id = trial.user_attrs.get("tune_trial_id")
            records = TrialRecords.of(record_root, str(tune_id)) if tune_id else None
            if records is not None:
                studies.link_run(cell, trial.number, record_root, str(tune_id))
            values = objective_values(records and records.final(), studies.objectives)
            if values is not None:
                study.tell(trial.number, values if len(values) > 1 else values[0])
            else:  # run again next session, unless its objective failed (it would again)
                studies._set_attr(cell, trial.number, LOST, True)
                retry = records is None or not records.failed_on_objective()
                studies.tell(cell, trial.number, None, error=True, retry=retry)
            settled += 1
    return settled
