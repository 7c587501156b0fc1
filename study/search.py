"""The Tune searcher and scheduler a study runs: one Optuna study per (method, label %) cell with an
equal budget per cell, and ASHA that keeps every cell's first trial."""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any

import optuna
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search_spaces import cell_points, suggest_knobs
from study.signing import note_staging
from study.spec import StudySpec
from study.stages import StageGate, plan_stages
from trainables.names import (
    LABEL_PERCENT_KEY,
    METHOD_KEY,
    STAGE_KEY,
    TUNED_KEYS,
    VALIDATION_PREFIX,
    cell_label,
    parse_cell_label,
)
from trainables.records import EVAL_EPOCH_KEY, TrialRecords, is_final
from trainables.storage import Place


class FinalResultOptunaSearch(OptunaSearch):
    """OptunaSearch that ignores per-epoch results without the objective (told only at the end).

    Studies now use CellSearcher; this class stays so that studies started before can be restored.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Forward results that carry every objective; skip trials Optuna already holds finished."""
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if not all(m in result for m in metrics):
            return
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            # After a restore Tune may re-run a trial the SQLite study already holds as finished.
            pass


def optuna_storage(study_dir: Path) -> optuna.storages.RDBStorage:
    """The study's Optuna storage (optuna-dashboard opens the same file)."""
    return optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'optuna.db'}")


Cell = tuple[str, float]  # (method, label %)


def cell_study_name(study: str, cell: Cell, existing: Collection[str] = ()) -> str:
    """The Optuna study of one table cell, e.g. 'toy/CG-SC-all@5%' (optuna-dashboard lists them);
    a study that began under the older name 'toy/CG-SC-all@5' (in existing) keeps it."""
    old = f"{study}/{cell[0]}@{cell[1]:g}"
    return old if old in existing else f"{study}/{cell_label(*cell)}"


class CellSearcher(Searcher):
    """One Optuna study per (method, label %) cell, an equal budget per cell, interleaved.

    Method and label % are the table's grid, not knobs: each cell searches only its own knobs
    (search_spaces / trainables.names.TUNED_KEYS) with its own seeded TPE (NSGA-II for several
    objectives), starting from the paper's point (every knob at its default). The next trial goes
    to the open cell with the fewest trials, so a study stopped early covers every cell evenly. A
    cell with no knob (Cond) trains once. A configuration a cell has already run (or failed) is
    never run again: a repeat the sampler proposes is told PRUNED and it is asked again. Given
    points, it runs exactly those (method, label %, knobs) configurations instead.
    """

    MAX_REPEATS = 20  # proposals in a row that repeat a run configuration close the cell

    def __init__(self, spec: StudySpec, study_dir: Path, points: list[dict] | None = None) -> None:
        # Selection reads the validation split's values (val/<metric>), never the reported ones.
        metrics = [selection_metric(o.metric) for o in spec.objectives]
        super().__init__(metric=metrics[0], mode=spec.objectives[0].mode)
        self.objectives = [(selection_metric(o.metric), o.mode) for o in spec.objectives]
        self.study_name, self.seed = spec.name, spec.seed
        self.ranges = dict(spec.search)
        self.storage_url = f"sqlite:///{study_dir / 'optuna.db'}"
        # The trials' records (trainables.names): a folder or an object-store URI.
        self.record_root = str(spec.study_place(study_dir) / "trials")
        self.cells: list[Cell] = [(m, float(p)) for m in spec.methods for p in spec.label_percents]
        self.points = list(points) if points is not None else None
        self.budget = spec.cell_budgets()
        self.asked: dict[Cell, int] = dict.fromkeys(self.cells, 0)
        self.live: dict[str, tuple[Cell, int]] = {}  # Tune trial id -> (cell, Optuna number)
        self.requeued: set[tuple[Cell, tuple]] = set()  # lost configurations to run once more
        self.lost: set[tuple[Cell, int]] = set()  # their Optuna trials (FAIL, not spent)
        self._studies: dict[Cell, optuna.Study] = {}
        # Shared networks as their own stage (study.stages): handed out first; a configuration
        # waits for the stages it needs, the other slots run configurations that need none.
        if self.points is not None:
            stage_points = self.points
        else:
            stage_points = [self._default_point(cell) for cell in self.cells]
        store = spec.artifact_place(spec.study_place(study_dir))
        stages, needs = plan_stages(stage_points, spec.trial_config, store)
        self.gate = StageGate(stages)
        self.point_needs = list(needs) if self.points is not None else []
        self.cell_needs = dict(zip(self.cells, needs)) if self.points is None else {}

    def _default_point(self, cell: Cell) -> dict:
        """The cell's first configuration: its knobs at the paper's values."""
        default = cell_points([cell[0]], [cell[1]], self.ranges)[0]
        knobs = {k: default[k] for k in TUNED_KEYS[cell[0]]}
        return {METHOD_KEY: cell[0], LABEL_PERCENT_KEY: cell[1], **knobs}

    def __getstate__(self) -> dict:
        """Pickled with Tune's experiment state; the Optuna studies live in their storage."""
        return {**self.__dict__, "_studies": {}}

    def save(self, checkpoint_path: str) -> None:
        """Tune's searcher checkpoint (and the note that Tune is saving: study.signing)."""
        Path(checkpoint_path).write_bytes(pickle.dumps(self.__getstate__()))
        note_staging(Path(checkpoint_path).parent)

    def restore(self, checkpoint_path: str) -> None:
        """Back to the state save wrote; then every configuration handed out after that save (its
        Optuna trial RUNNING, its Tune trial lost with the killed driver) is marked FAIL and queued
        again, so the cell's budget is spent on it and no Optuna trial stays RUNNING."""
        self.__dict__.update(pickle.loads(Path(checkpoint_path).read_bytes()))
        self._studies = {}
        if not hasattr(self, "gate"):  # saved before stages existed
            self.gate, self.point_needs, self.cell_needs = StageGate(), [], {}
        # Stage trials live at the save are in Tune's saved state too (it saves both together)
        # and run again; those handed out after it are still pending here.
        state = optuna.trial.TrialState
        finished = self._finished_records()
        for cell in self.cells:
            known = {n for c, n in self.live.values() if c == cell}
            study = self.study(cell)
            for trial in study.get_trials(deepcopy=False, states=[state.RUNNING]):
                if trial.number in known:
                    continue
                # It finished before the kill (its record says so): tell its result, run it not
                # again.
                values = _values(finished.get((cell, _key(trial.params))), self.objectives)
                if values is not None:
                    study.tell(trial.number, values if len(values) > 1 else values[0])
                else:
                    self.lost.add((cell, trial.number))
                    study.tell(trial.number, state=state.FAIL)
                    study.enqueue_trial(dict(trial.params))
                    self.requeued.add((cell, _key(trial.params)))
            # What the cell has spent, from its study (trials may have ended after the save).
            spent = [
                t
                for t in study.get_trials(deepcopy=False)
                if (t.state == state.RUNNING and t.number in known)
                or t.state == state.COMPLETE
                or (t.state == state.PRUNED and not t.user_attrs.get("repeat"))
                or (t.state == state.FAIL and (cell, t.number) not in self.lost)
            ]
            self.asked[cell] = len(spent)

    def _finished_records(self) -> dict[tuple[Cell, tuple], dict]:
        """(cell, knobs) -> final result of every trial whose records say it finished."""
        location = getattr(self, "record_root", "") or "/nonexistent"
        Place(location).pull()  # an object store's records into this machine's mirror
        root = Place(location).local
        out = {}
        for folder in root.iterdir() if root.is_dir() else []:
            records = TrialRecords.of(root, folder.name)  # pulled above: read from the mirror
            p, final = records.params(), records.final()
            if p is None or final is None:
                continue
            if p.get(STAGE_KEY):
                continue  # a stage trial: it trained a shared network, it holds no result
            cell = (p.get(METHOD_KEY), float(p.get(LABEL_PERCENT_KEY, "nan")))
            if cell in self.asked:
                knobs = {k: p[k] for k in TUNED_KEYS[cell[0]] if k in p}
                out[(cell, _key(knobs))] = final
        return out

    def recount(self) -> None:
        """Count each cell's spent trials from its Optuna study (a searcher extending a finished
        study: `study resume DIR --add-trials N`)."""
        state = optuna.trial.TrialState
        for cell in self.cells:
            trials = self.study(cell).get_trials(deepcopy=False)
            self.asked[cell] = sum(
                t.state in (state.COMPLETE, state.FAIL, state.RUNNING)
                or (t.state == state.PRUNED and not t.user_attrs.get("repeat"))
                for t in trials
            )

    @property
    def remaining(self) -> int:
        """Trials the cells' budgets still allow."""
        return sum(max(0, self.budget[c] - self.asked[c]) for c in self.cells)

    def study(self, cell: Cell) -> optuna.Study:
        """The cell's Optuna study, created (with its default point enqueued) on first use."""
        if cell not in self._studies:
            index = self.cells.index(cell) if cell in self.cells else len(self.cells)
            modes = [mode for _, mode in self.objectives]
            directions = ["minimize" if mode == "min" else "maximize" for mode in modes]
            if len(directions) == 1:
                sampler = optuna.samplers.TPESampler(seed=self.seed + index, multivariate=True)
            else:
                sampler = optuna.samplers.NSGAIISampler(seed=self.seed + index)
            existing = optuna.get_all_study_names(self.storage_url)
            name = cell_study_name(self.study_name, cell, existing)
            fresh = name not in existing
            study = optuna.create_study(
                storage=self.storage_url,
                study_name=name,
                sampler=sampler,
                directions=directions,
                load_if_exists=True,
            )
            if fresh:
                # optuna-dashboard names the objectives (not "Objective 0") and the cell.
                with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.set_metric_names([metric for metric, _ in self.objectives])
                study.set_user_attr("cell", cell_label(*cell))
            if fresh and self.points is None:
                default = cell_points([cell[0]], [cell[1]], self.ranges)[0]
                study.enqueue_trial({k: default[k] for k in TUNED_KEYS[cell[0]]})
            self._studies[cell] = study
        return self._studies[cell]

    def suggest(self, trial_id: str) -> dict | str | None:
        """The next trial's config: a stage trial while any is left, then the point list in order,
        else the least-tried open cell; among those, only configurations whose stages are done
        (None, "ask again later", when none is)."""
        stage = self.gate.next_stage(trial_id)
        if stage is not None:
            return stage
        if self.points is not None:
            if not self.points:
                return Searcher.FINISHED
            index = _first_ready(self.gate, self.point_needs, len(self.points))
            if index is None:
                return None
            point = self.points.pop(index)
            if self.point_needs:
                self.point_needs.pop(index)
            cell = (point[METHOD_KEY], float(point[LABEL_PERCENT_KEY]))
            knobs = {k: point[k] for k in TUNED_KEYS[cell[0]] if k in point}
            self.study(cell).enqueue_trial(knobs)
            return self._ask(trial_id, cell)
        while True:
            open_cells = [c for c in self.cells if self.asked[c] < self.budget[c]]
            if not open_cells:
                return Searcher.FINISHED
            ready = [c for c in open_cells if self.gate.ready(self.cell_needs.get(c, frozenset()))]
            if not ready:
                return None  # every open cell waits for a stage trial
            cell = min(ready, key=lambda c: (self.asked[c], self.cells.index(c)))
            config = self._ask(trial_id, cell)
            if config is not None:
                return config
            self.budget[cell] = self.asked[cell]  # the sampler only repeats itself: close the cell

    def _ask(self, trial_id: str, cell: Cell) -> dict | None:
        """Ask the cell's study for a configuration it has not run; None after MAX_REPEATS."""
        study, ran = self.study(cell), self._ran(cell)
        if not TUNED_KEYS[cell[0]] and ran and not any(c == cell for c, _ in self.requeued):
            return None  # nothing to tune and already run: the cell is done
        for _ in range(self.MAX_REPEATS):
            trial = study.ask()
            knobs = suggest_knobs(trial, cell[0], self.ranges)
            again = (cell, _key(knobs)) in self.requeued
            if self.points is not None or again or _key(knobs) not in ran:
                self.requeued.discard((cell, _key(knobs)))
                self.asked[cell] += 1
                self.live[trial_id] = (cell, trial.number)
                # Links for optuna-dashboard: the Tune trial, its cell (the MLflow run follows).
                trial.set_user_attr("tune_trial_id", trial_id)
                trial.set_user_attr("cell", cell_label(*cell))
                return {METHOD_KEY: cell[0], LABEL_PERCENT_KEY: cell[1], **knobs}
            trial.set_user_attr("repeat", True)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)  # a repeat: never run twice
        return None

    def _ran(self, cell: Cell) -> set[tuple]:
        """Configurations the cell has run, is running or saw fail."""
        states = [
            optuna.trial.TrialState.RUNNING,
            optuna.trial.TrialState.COMPLETE,
            optuna.trial.TrialState.FAIL,
        ]
        trials = self.study(cell).get_trials(deepcopy=False, states=states)
        return {_key(t.params) for t in trials}

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """Tell the cell's study the final objective(s); FAIL for an error or a non-finite
        value, PRUNED for a trial stopped before its final evaluation (ASHA). A stage trial's
        end lets the configurations that need its network start."""
        if self.gate.complete(trial_id) or trial_id not in self.live:
            return
        cell, number = self.live.pop(trial_id)
        values = [(result or {}).get(metric) for metric, _ in self.objectives]
        if not is_final(result):  # stopped before its final evaluation
            values = [None]
        if error:
            state, told = optuna.trial.TrialState.FAIL, None
        elif any(v is None for v in values):
            state, told = optuna.trial.TrialState.PRUNED, None
        elif not all(math.isfinite(float(v)) for v in values):
            state, told = optuna.trial.TrialState.FAIL, None
        else:
            state, told = None, [float(v) for v in values]
        self._link_run(trial_id, cell, number)
        try:
            self.study(cell).tell(
                number, told if len(values) > 1 or told is None else told[0], state=state
            )
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError):
            pass  # replayed after a restore: Optuna already holds its result

    def _link_run(self, trial_id: str, cell: Cell, number: int) -> None:
        """The Optuna trial's user attribute mlflow_run_id, from the run record the tracker wrote
        at the trial's start (set before tell: a finished Optuna trial is read-only)."""
        run_id = TrialRecords.of(self.record_root, trial_id).run_id()
        if run_id is None:
            return
        study = self.study(cell)
        storage = study._storage  # Optuna's storage API sets attributes by internal trial id
        internal = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        try:
            storage.set_trial_user_attr(internal, "mlflow_run_id", run_id)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError, OSError):
            pass  # replayed after a restore: the trial is finished and already linked

    @property
    def total(self) -> int:
        """The study's trial budget (Tune's num_samples)."""
        planned = len(self.points) if self.points is not None else sum(self.budget.values())
        return planned + self.gate.count


def heal_failed_trials(spec: StudySpec, study_dir: Path, finished: set[str]) -> int:
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
        for trial in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.FAIL]):
            tune_id = trial.user_attrs.get("tune_trial_id")
            if tune_id not in finished:
                continue
            final = TrialRecords.of(spec.study_place(study_dir) / "trials", str(tune_id)).final()
            values = _values(final, objectives) if final is not None else None
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
    import sqlalchemy

    storage = study._storage
    internal = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    if storage.get_trial(internal).state != optuna.trial.TrialState.FAIL:
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


def _first_ready(gate: StageGate, needs: list[frozenset[str]], count: int) -> int | None:
    """The first of count configurations whose stages are done (needs may be empty: no stages)."""
    if not needs:
        return 0
    return next((i for i in range(count) if gate.ready(needs[i])), None)


class PointSearcher(Searcher):
    """Exactly the given configurations, in order (`study final`: chosen configurations x seeds;
    nothing is searched, so no Optuna study is touched), after the stage trials of the networks
    they share (study.stages), each configuration once the stages it needs are done."""

    def __init__(
        self,
        points: list[dict],
        gate: StageGate | None = None,
        needs: list[frozenset[str]] | None = None,
    ) -> None:
        super().__init__()
        self.points = list(points)
        self.gate = gate or StageGate()
        self.needs = list(needs or [])

    def suggest(self, trial_id: str) -> dict | str | None:
        """A stage trial, else the first configuration whose stages are done, then FINISHED."""
        stage = self.gate.next_stage(trial_id)
        if stage is not None:
            return stage
        if not self.points:
            return Searcher.FINISHED
        index = _first_ready(self.gate, self.needs, len(self.points))
        if index is None:
            return None
        if self.needs:
            self.needs.pop(index)
        return self.points.pop(index)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """Only a stage trial's end matters (its configurations may start)."""
        self.gate.complete(trial_id)

    def save(self, checkpoint_path: str) -> None:
        """Tune's searcher checkpoint: the configurations and stages not yet handed out."""
        state = {"points": self.points, "gate": self.gate, "needs": self.needs}
        Path(checkpoint_path).write_bytes(pickle.dumps(state))
        note_staging(Path(checkpoint_path).parent)

    def restore(self, checkpoint_path: str) -> None:
        """Back to the state save wrote (stage trials then in flight are Tune's to run again)."""
        state = pickle.loads(Path(checkpoint_path).read_bytes())
        if isinstance(state, list):  # saved before stages existed
            state = {"points": state, "gate": StageGate(), "needs": []}
        self.points, self.gate, self.needs = state["points"], state["gate"], state["needs"]


def selection_metric(metric: str) -> str:
    """The name of an objective's validation value, the one searches and schedulers compare."""
    return f"{VALIDATION_PREFIX}{metric}"


def make_searcher(
    spec: StudySpec, study_dir: Path, points: list[dict] | None = None
) -> CellSearcher:
    """The study's searcher: per-cell Optuna studies in optuna.db (or exactly the given points)."""
    return CellSearcher(spec, study_dir, points)


def fail_orphaned_trials(spec: StudySpec, study_dir: Path) -> list[dict]:
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
        for trial in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING]):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            orphans.append({**cell, **trial.params})
    return orphans


def _values(result: dict | None, objectives: list[tuple[str, str]]) -> list[float] | None:
    """A finished result's objective values, or None if it has none or a non-finite one."""
    if result is None:
        return None
    values = [result.get(metric) for metric, _ in objectives]
    if any(v is None or not math.isfinite(float(v)) for v in values):
        return None
    return [float(v) for v in values]


def _key(knobs: dict) -> tuple:
    """A configuration as a hashable key (floats compared exactly)."""
    return tuple(sorted((k, float(v)) for k, v in knobs.items()))


def _cell(trial: Any) -> tuple[Any, Any]:
    """A Tune trial's (method, label %) cell."""
    return trial.config.get(METHOD_KEY), trial.config.get(LABEL_PERCENT_KEY)


class CellAwareASHA(ASHAScheduler):
    """ASHA that never stops the first trial of a (method, label %) cell.

    ASHA compares every trial with every other; without this, a method that is weak early would
    lose all its trials at the first rung and its cell in the comparison table would hold an
    undertrained model. Protected trials still feed the rungs, so they set the bar for the others.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._first_of_cell: dict[tuple, str] = {}

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        """Remember the first trial of each cell."""
        super().on_trial_add(tune_controller, trial)
        self._first_of_cell.setdefault(_cell(trial), trial.trial_id)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """ASHA's decision, except that a cell's first trial always continues. (ASHA's own
        num_stopped counter, shown only in its debug string, still counts it.)"""
        action = super().on_trial_result(tune_controller, trial, result)
        if (
            action == TrialScheduler.STOP
            and self._first_of_cell.get(_cell(trial)) == trial.trial_id
        ):
            return TrialScheduler.CONTINUE
        return action


def make_scheduler(spec: StudySpec) -> CellAwareASHA | None:
    """None (FIFO) or ASHA on the guard objective, in epochs of the trial's last artifact."""
    if spec.scheduler.type != "asha":
        return None
    mode = next(o.mode for o in spec.objectives if o.metric == spec.scheduler.metric)
    return CellAwareASHA(
        time_attr=EVAL_EPOCH_KEY,
        metric=selection_metric(spec.scheduler.metric),
        mode=mode,
        max_t=spec.epochs_per_trial(),
        grace_period=spec.scheduler.grace_period,
        reduction_factor=spec.scheduler.reduction_factor,
        stop_last_trials=False,  # the last epoch is followed by the final evaluation
    )
