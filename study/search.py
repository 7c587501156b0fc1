"""The Tune searchers and scheduler a study runs: one Optuna study per (method, label %) cell with
an equal budget per cell (CellSearcher), exactly given configurations (PointSearcher; RerunSearcher
for search trials a killed driver lost), and ASHA that keeps every cell's first trial."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher

from study.cell_budgets import CellBudgets
from study.cell_studies import Cell, CellStudies, config_key, default_knobs, selection_metric
from study.older_state import (
    FinalResultOptunaSearch,  # noqa: F401  (older studies' pickles name it here)
    cell_searcher_state,
    point_searcher_state,
)
from study.recovery import finished_records, recover_cells
from study.signing import note_staging
from study.spec import StudySpec
from study.stages import StageGate, plan_stages
from trainables.names import LABEL_PERCENT_KEY, METHOD_KEY, TUNED_KEYS
from trainables.records import EVAL_EPOCH_KEY


class _TellsOptuna:
    """A searcher whose search trials are Optuna trials of their cells (live: Tune trial id ->
    (cell, Optuna number)): a trial's end is told to its cell's study, linked to its MLflow run;
    a stage trial's end lets the configurations that need its network start."""

    def _open_cell_studies(self, spec: StudySpec, study_dir: Path, searches: bool) -> None:
        """The objectives (validation values: selection never reads the reported ones), the
        trials' record root (a folder or an object-store URI), the cells' Optuna studies and the
        live trials."""
        self.objectives = [(selection_metric(o.metric), o.mode) for o in spec.objectives]
        self.record_root = str(spec.study_place(study_dir) / "trials")
        self.cells: list[Cell] = [(m, float(p)) for m in spec.methods for p in spec.label_percents]
        url = f"sqlite:///{study_dir / 'optuna.db'}"
        self.optuna = CellStudies(
            url, spec.name, spec.seed, self.objectives, dict(spec.search), self.cells, searches
        )
        self.live: dict[str, tuple[Cell, int]] = {}  # Tune trial id -> (cell, Optuna number)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """The stage gate's, else the cell study's: the final objective(s), FAIL or PRUNED."""
        if self.gate.complete(trial_id) or trial_id not in self.live:
            return
        cell, number = self.live.pop(trial_id)
        self.optuna.link_run(cell, number, self.record_root, trial_id)
        self.optuna.tell(cell, number, result, error)


class CellSearcher(_TellsOptuna, Searcher):
    """One Optuna study per (method, label %) cell, an equal budget per cell, interleaved.

    Method and label % are the table's grid, not knobs: each cell searches only its own knobs
    (search_spaces / trainables.names.TUNED_KEYS) with its own seeded sampler, starting from the
    paper's point (study.cell_studies). The next trial goes to the open cell with the fewest
    trials (study.cell_budgets). A cell with no knob (Cond) trains once. A configuration a cell
    has already run (or failed) is never run again: a repeat the sampler proposes is told PRUNED
    and it is asked again. Restored after a kill, it runs again what the kill lost
    (study.recovery).
    """

    def __init__(self, spec: StudySpec, study_dir: Path) -> None:
        self._open_cell_studies(spec, study_dir, searches=True)
        super().__init__(metric=self.objectives[0][0], mode=self.objectives[0][1])
        self.budgets = CellBudgets(self.cells, spec.cell_budgets())
        self.requeued: set[tuple[Cell, tuple]] = set()  # lost configurations to run once more
        self.lost: set[tuple[Cell, int]] = set()  # their Optuna trials (FAIL, not spent)
        # Shared networks as their own stage (study.stages): handed out first; a cell waits for
        # the stages its first configuration needs, the other slots run cells that need none.
        points = [
            {METHOD_KEY: c[0], LABEL_PERCENT_KEY: c[1], **default_knobs(c, self.optuna.ranges)}
            for c in self.cells
        ]
        store = spec.artifact_place(spec.study_place(study_dir))
        stages, needs = plan_stages(points, spec.trial_config, store)
        self.gate = StageGate(stages)
        self.cell_needs = dict(zip(self.cells, needs))

    def __setstate__(self, state: dict) -> None:
        """Unpickled with Tune's experiment state, also from an older layout."""
        self.__dict__.update(cell_searcher_state(state))

    def save(self, checkpoint_path: str) -> None:
        """Tune's searcher checkpoint (and the note that Tune is saving: study.signing)."""
        Path(checkpoint_path).write_bytes(pickle.dumps(self.__dict__))
        note_staging(Path(checkpoint_path).parent)

    def restore(self, checkpoint_path: str) -> None:
        """Back to the state save wrote; then every configuration handed out after that save (its
        Optuna trial RUNNING, its Tune trial lost with the killed driver) is marked FAIL and queued
        again, so the cell's budget is spent on it and no Optuna trial stays RUNNING."""
        self.__setstate__(pickle.loads(Path(checkpoint_path).read_bytes()))
        # Stage trials live at the save are in Tune's saved state too (it saves both together)
        # and run again; those handed out after it are still pending here.
        finished = finished_records(self.record_root, self.cells)
        spent = recover_cells(self.optuna, self.live, finished, self.lost, self.requeued)
        self.budgets.asked.update(spent)

    def recount(self) -> None:
        """Count each cell's spent trials from its Optuna study (a searcher extending a finished
        study: `study resume DIR --add-trials N`)."""
        for cell in self.cells:
            self.budgets.asked[cell] = self.optuna.spent(cell)

    @property
    def remaining(self) -> int:
        """Trials the cells' budgets still allow."""
        return self.budgets.remaining

    @property
    def total(self) -> int:
        """The study's trial budget (Tune's num_samples): the cells' and the stage trials."""
        return self.budgets.total + self.gate.count

    def suggest(self, trial_id: str) -> dict | str | None:
        """The next trial's config: a stage trial while any is left, else the least-tried open
        cell among those whose stages are done (None, "ask again later", when none is)."""
        stage = self.gate.next_stage(trial_id)
        if stage is not None:
            return stage
        while True:
            open_cells = self.budgets.open()
            if not open_cells:
                return Searcher.FINISHED
            ready = [c for c in open_cells if self.gate.ready(self.cell_needs.get(c, frozenset()))]
            if not ready:
                return None  # every open cell waits for a stage trial
            cell = self.budgets.least_tried(ready)
            config = self._ask(trial_id, cell)
            if config is not None:
                return config
            self.budgets.close(cell)  # the sampler only repeats itself: the cell is done

    def _ask(self, trial_id: str, cell: Cell) -> dict | None:
        """A configuration the cell has not run (or one lost with a killed driver), else None."""
        ran = self.optuna.ran(cell)
        if not TUNED_KEYS[cell[0]] and ran and not any(c == cell for c, _ in self.requeued):
            return None  # nothing to tune and already run: the cell is done
        asked = self.optuna.ask(
            cell, trial_id, lambda key: (cell, key) in self.requeued or key not in ran
        )
        if asked is None:
            return None
        number, knobs = asked
        self.requeued.discard((cell, config_key(knobs)))
        self.budgets.spend(cell)
        self.live[trial_id] = (cell, number)
        return {METHOD_KEY: cell[0], LABEL_PERCENT_KEY: cell[1], **knobs}


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

    @property
    def total(self) -> int:
        """Trials still to hand out (Tune's num_samples): the configurations and stage trials."""
        return len(self.points) + self.gate.count

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
        return self._hand_out(trial_id, self.points.pop(index))

    def _hand_out(self, trial_id: str, point: dict) -> dict:
        """The configuration the trial runs."""
        return point

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
        state = point_searcher_state(pickle.loads(Path(checkpoint_path).read_bytes()))
        self.points, self.gate, self.needs = state["points"], state["gate"], state["needs"]


class RerunSearcher(_TellsOptuna, PointSearcher):
    """Search configurations a killed driver lost (study.cell_studies.fail_orphaned_trials), run
    once more in order: each becomes a new Optuna trial of its cell and is told its end, so the
    cell's history and budget count it as the search trial it is."""

    def __init__(self, spec: StudySpec, study_dir: Path, points: list[dict]) -> None:
        store = spec.artifact_place(spec.study_place(study_dir))
        stages, needs = plan_stages(points, spec.trial_config, store)
        super().__init__(points, StageGate(stages), needs)
        self._open_cell_studies(spec, study_dir, searches=False)

    def _hand_out(self, trial_id: str, point: dict) -> dict:
        """The point as a new Optuna trial of its cell (enqueued, then asked)."""
        cell = (point[METHOD_KEY], float(point[LABEL_PERCENT_KEY]))
        knobs = {k: point[k] for k in TUNED_KEYS[cell[0]] if k in point}
        self.optuna.study(cell).enqueue_trial(knobs)
        number, knobs = self.optuna.ask(cell, trial_id, lambda key: True)
        self.live[trial_id] = (cell, number)
        return {METHOD_KEY: cell[0], LABEL_PERCENT_KEY: cell[1], **knobs}


def make_searcher(
    spec: StudySpec, study_dir: Path, points: list[dict] | None = None
) -> CellSearcher | RerunSearcher:
    """The study's searcher: per-cell Optuna studies in optuna.db (or the lost points again)."""
    if points is not None:
        return RerunSearcher(spec, study_dir, points)
    return CellSearcher(spec, study_dir)


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
