"""The Optuna side of a study's search: one Optuna study per (method, label %) cell in optuna.db,
asked for configurations the cell has not run and told how each trial ended; and the repairs of a
killed driver (trials left RUNNING failed, trials told FAIL that a resume finished healed)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Collection
from pathlib import Path

import optuna

from search_spaces import cell_points, suggest_knobs
from trainables.names import (
    LABEL_PERCENT_KEY,
    METHOD_KEY,
    TUNED_KEYS,
    VALIDATION_PREFIX,
    cell_label,
    parse_cell_label,
)
from trainables.records import TrialRecords, is_final

Cell = tuple[str, float]  # (method, label %)
Objectives = list[tuple[str, str]]  # (validation metric, "min" | "max")
STATE = optuna.trial.TrialState


def optuna_storage(study_dir: Path) -> optuna.storages.RDBStorage:
    """The study's Optuna storage (optuna-dashboard opens the same file)."""
    return optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'optuna.db'}")


def selection_metric(metric: str) -> str:
    """The name of an objective's validation value, the one searches and schedulers compare."""
    return f"{VALIDATION_PREFIX}{metric}"


def cell_study_name(study: str, cell: Cell, existing: Collection[str] = ()) -> str:
    """The Optuna study of one table cell, e.g. 'toy/CG-SC-all@5%' (optuna-dashboard lists them);
    a study that began under the older name 'toy/CG-SC-all@5' (in existing) keeps it."""
    old = f"{study}/{cell[0]}@{cell[1]:g}"
    return old if old in existing else f"{study}/{cell_label(*cell)}"


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
    several objectives) and, when it searches, the paper's point enqueued as its first trial.
    Pickled without the open studies (they live in their storage)."""

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
        """Everything but the open Optuna studies."""
        return {**self.__dict__, "_studies": {}}

    def study(self, cell: Cell) -> optuna.Study:
        """The cell's Optuna study, created (its default point enqueued) on first use."""
        if cell not in self._studies:
            existing = optuna.get_all_study_names(self.storage_url)
            name = cell_study_name(self.study_name, cell, existing)
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

    def tell(self, cell: Cell, number: int, result: dict | None, error: bool) -> None:
        """The trial's end: its objective values; FAIL for an error or a non-finite value, PRUNED
        for a trial stopped before its final evaluation (ASHA). Replays after a restore (Optuna
        already holds the end) are ignored."""
        values = [(result or {}).get(metric) for metric, _ in self.objectives]
        if not is_final(result):  # stopped before its final evaluation
            values = [None]
        if error:
            state, told = STATE.FAIL, None
        elif any(v is None for v in values):
            state, told = STATE.PRUNED, None
        elif not all(math.isfinite(float(v)) for v in values):
            state, told = STATE.FAIL, None
        else:
            state, told = None, [float(v) for v in values]
        try:
            self.study(cell).tell(
                number, told if len(values) > 1 or told is None else told[0], state=state
            )
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError):
            pass  # replayed after a restore: Optuna already holds its result

    def link_run(self, cell: Cell, number: int, record_root: str, trial_id: str) -> None:
        """The Optuna trial's user attribute mlflow_run_id, from the run record the tracker wrote
        at the trial's start (set before tell: a finished Optuna trial is read-only)."""
        run_id = TrialRecords.of(record_root, trial_id).run_id()
        if run_id is None:
            return
        study = self.study(cell)
        storage = study._storage  # Optuna's storage API sets attributes by internal trial id
        internal = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        try:
            storage.set_trial_user_attr(internal, "mlflow_run_id", run_id)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError, OSError):
            pass  # replayed after a restore: the trial is finished and already linked

    def spent(
        self, cell: Cell, live: Collection[int] | None = None, lost: Collection[int] = ()
    ) -> int:
        """Trials the cell has spent: finished, failed (but not lost with a killed driver), pruned
        (not as a repeat) and running (those in live only, when live is given)."""
        trials = self.study(cell).get_trials(deepcopy=False)
        return sum(
            (t.state == STATE.RUNNING and (live is None or t.number in live))
            or t.state == STATE.COMPLETE
            or (t.state == STATE.PRUNED and not t.user_attrs.get("repeat"))
            or (t.state == STATE.FAIL and t.number not in lost)
            for t in trials
        )


def heal_failed_trials(spec: object, study_dir: Path, finished: set[str]) -> int:
    """Optuna trials told FAIL whose Tune trial a resume then ran to its end (finished: the Tune
    trial ids Tune holds TERMINATED; the searcher is not told again, Tune's concurrency limiter
    forgot the trial when it failed): told the values of the trial's final record instead, so
    that Optuna, MLflow and the summary count it once, finished. Returns how many."""
    objectives = [(selection_metric(o.metric), o.mode) for o in spec.objectives]
    storage = optuna_storage(study_dir)
    healed = 0
    for name in optuna.get_all_study_names(storage):
        if not name.startswith(f"{spec.name}/"):
            continue
        study = optuna.load_study(study_name=name, storage=storage)
        for trial in study.get_trials(deepcopy=False, states=[STATE.FAIL]):
            tune_id = trial.user_attrs.get("tune_trial_id")
            if tune_id not in finished:
                continue
            final = TrialRecords.of(spec.study_place(study_dir) / "trials", str(tune_id)).final()
            values = objective_values(final, objectives)
            if values is None:
                continue
            reopen_failed_trial(study, trial.number)
            fresh = optuna.load_study(study_name=name, storage=optuna_storage(study_dir))
            fresh.tell(trial.number, values if len(values) > 1 else values[0])
            healed += 1
    return healed


def reopen_failed_trial(study: optuna.Study, number: int) -> None:
    """Set a FAIL trial of the study back to RUNNING, so that it can be told its real end (a
    resume ran it again). Optuna's API never changes a finished trial; its RDB schema (table
    trials: state, datetime_complete; stable since Optuna 2) is updated directly."""
    import sqlalchemy  # Optuna's own dependency, needed only here

    storage = study._storage
    internal = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    if storage.get_trial(internal).state != STATE.FAIL:
        return
    engine = getattr(storage, "engine", None) or storage._backend.engine  # cached or plain RDB
    with engine.begin() as connection:
        connection.execute(
            sqlalchemy.text(
                "UPDATE trials SET state = 'RUNNING', datetime_complete = NULL "
                "WHERE trial_id = :id AND state = 'FAIL'"
            ),
            {"id": internal},
        )


def fail_orphaned_trials(spec: object, study_dir: Path) -> list[dict]:
    """Optuna trials still RUNNING once every Tune trial has ended were handed out to trials that
    Tune never recorded (the driver was killed before its next experiment checkpoint): mark them
    FAIL and return their configurations, so the study can run them again."""
    storage = optuna_storage(study_dir)
    names = optuna.get_all_study_names(storage)
    orphans = []
    for name in [n for n in names if n == spec.name or n.startswith(f"{spec.name}/")]:
        study = optuna.load_study(study_name=name, storage=storage)
        cell = {}
        if name != spec.name:  # a cell study: its trials hold the knobs only
            method, pct = parse_cell_label(name.removeprefix(f"{spec.name}/"))
            cell = {METHOD_KEY: method, LABEL_PERCENT_KEY: pct}
        for trial in study.get_trials(deepcopy=False, states=[STATE.RUNNING]):
            study.tell(trial.number, state=STATE.FAIL)
            orphans.append({**cell, **trial.params})
    return orphans
