"""The Tune searchers and scheduler a study runs: one Optuna study per (method, label %) cell with
an equal budget per cell (CellSearcher), exactly given configurations (PointSearcher), and early
stopping decided per cell from the ledger (CellHalving).

Tune runs trials and forgets them: every session builds a new Tuner, whose searcher reads what the
cells have spent from their Optuna studies (optuna.db, the study's one state); nothing of Tune's is
saved for a later session or restored from one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optuna.pruners import SuccessiveHalvingPruner
from optuna.study import StudyDirection
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from study.cell_budgets import CellBudgets
from study.cell_studies import (
    Cell,
    CellStudies,
    selection_metric,
    settle_trials,
)
from study.spec import StudySpec
from study.stages import StageGate, cell_stages
from trainables.names import LABEL_PERCENT_KEY, METHOD_KEY, TUNED_KEYS
from trainables.records import EVAL_EPOCH_KEY, TrialRecords, is_final, tune_error


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
            url, spec.name, spec.seed, self.objectives, spec.ranges(), self.cells, searches
        )
        self.live: dict[str, tuple[Cell, int]] = {}  # Tune trial id -> (cell, Optuna number)
        self.errors: dict[str, dict] = {}  # Tune's error of a trial, noted by the scheduler

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """The stage gate's, else the cell study's: the final objective(s), FAIL or PRUNED."""
        if self.gate.complete(trial_id) or trial_id not in self.live:
            return
        cell, number = self.live.pop(trial_id)
        self.optuna.link_run(cell, number, self.record_root, trial_id)
        records, outside = (
            TrialRecords.of(self.record_root, trial_id),
            self.errors.pop(trial_id, None),
        )
        # Failed outside its worker's records (none could be written): Tune's error is why.
        why = outside if error and records.error() is None else None
        retry = not (error and records.failed_on_objective())
        self.optuna.tell(cell, number, result, error, retry=retry, why=why)


def settle_study(spec: StudySpec, study_dir: Path) -> int:
    """Settle the trials a stopped session left RUNNING in the cells' studies (study.cell_studies.
    settle_trials); how many."""
    holder = _TellsOptuna()
    holder._open_cell_studies(spec, study_dir, searches=True)
    return settle_trials(holder.optuna, holder.record_root)


class CellSearcher(_TellsOptuna, Searcher):
    """One Optuna study per (method, label %) cell, an equal budget per cell, interleaved.

    Method and label % are the table's grid, not knobs: each cell searches only its own knobs
    (search_spaces / trainables.names.TUNED_KEYS) with its own seeded sampler, starting from the
    paper's point (study.cell_studies). The next trial goes to the open cell with the fewest
    trials (study.cell_budgets). A cell with no knob (Cond) trains once. A configuration a cell
    has already run (or failed) is never run again: a repeat the sampler proposes is told PRUNED
    and it is asked again. What each cell has spent is read from its Optuna study when the
    searcher is made: trials a gone driver left RUNNING are settled first (study.cell_studies.
    settle_trials), and every failed trial not yet run again is run once more, first, within the
    cell's budget.
    """

    def __init__(self, spec: StudySpec, study_dir: Path) -> None:
        self._open_cell_studies(spec, study_dir, searches=True)
        super().__init__(metric=self.objectives[0][0], mode=self.objectives[0][1])
        settle_trials(self.optuna, self.record_root)
        self.retry = {cell: self.optuna.retries(cell) for cell in self.cells}
        self.budgets = CellBudgets(self.cells, spec.cell_budgets())
        for cell in self.cells:
            retrying = [number for number, _ in self.retry[cell]]
            self.budgets.asked[cell] = self.optuna.spent(cell, retrying)
        # Shared networks as their own stage (study.stages): handed out first; a cell waits for
        # the stages its first configuration needs, the other slots run cells that need none.
        open_cells = self.budgets.open()
        stages, needs = cell_stages(spec, study_dir, open_cells)
        self.gate = StageGate(stages)
        self.cell_needs = dict(zip(open_cells, needs))

    def save(self, checkpoint_path: str) -> None:
        """Nothing: the cells' Optuna studies are the state (Tune asks at its checkpoints)."""

    @property
    def remaining(self) -> int:
        """Trials the cells' budgets still allow."""
        return self.budgets.remaining

    @property
    def total(self) -> int:
        """Trials this session hands out (Tune's num_samples): the cells' and the stage trials."""
        return self.budgets.remaining + self.gate.count if self.budgets.remaining else 0

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
        """A failed configuration to run once more, else one the cell has not run, else None."""
        if self.retry[cell]:
            failed, knobs = self.retry[cell].pop(0)
            number = self.optuna.rerun(cell, trial_id, failed, knobs)
        else:
            ran = self.optuna.ran(cell)
            if not TUNED_KEYS[cell[0]] and ran:
                return None  # nothing to tune and already run: the cell is done
            asked = self.optuna.ask(cell, trial_id, lambda key: key not in ran)
            if asked is None:
                return None
            number, knobs = asked
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
        return self.points.pop(index)

    def save(self, checkpoint_path: str) -> None:
        """Nothing: a session of `study final` is planned afresh from the study's records."""

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """Only a stage trial's end matters (its configurations may start)."""
        self.gate.complete(trial_id)


class _Rungs:
    """What Optuna's SuccessiveHalvingPruner reads of a study (its trials, its storage, its
    direction), with the direction of the guard metric: a cell study of several objectives has
    no single direction of its own."""

    def __init__(self, study: Any, direction: StudyDirection) -> None:
        self._study, self._storage, self.direction = study, study._storage, direction

    def get_trials(self, deepcopy: bool = False) -> list:
        """The cell's trials, with the rung values the pruner stored on them."""
        return self._study.get_trials(deepcopy=deepcopy)


class NotesErrors(FIFOScheduler):
    """First-in first-out, and a failed trial's error (Tune's error file) noted for the searcher,
    which Tune tells of the failure right after the scheduler but without the error: a trial that
    failed outside its worker's records is told FAIL with why (the ledger's error attribute)."""

    def __init__(self, searcher: CellSearcher) -> None:
        super().__init__()
        self.searcher = searcher

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        error = tune_error(getattr(trial, "error_file", None))
        if error is not None:
            self.searcher.errors[trial.trial_id] = error
        super().on_trial_error(tune_controller, trial)


class CellHalving(NotesErrors):
    """Early stopping decided from the ledger (asynchronous successive halving per cell).

    Each search trial's per-epoch guard value (EVAL_EPOCH_KEY epochs of its last artifact) is
    written to its cell's Optuna trial as an intermediate value, and Optuna's
    SuccessiveHalvingPruner compares it with the values the cell's other trials reached at the
    same rung, read from optuna.db: a resumed study goes on with the rungs it had, and a trial is
    compared only with its own cell's (a method weak early does not lose its trials to another
    method's). The first trial to reach a rung of a cell always goes on, so every cell keeps a
    trial that reaches its final evaluation. Stage trials are never stopped.
    """

    def __init__(
        self, searcher: CellSearcher, metric: str, mode: str, grace: int, reduction: int
    ) -> None:
        super().__init__(searcher)
        self.guard = metric
        self.direction = StudyDirection.MINIMIZE if mode == "min" else StudyDirection.MAXIMIZE
        self.pruner = SuccessiveHalvingPruner(min_resource=grace, reduction_factor=reduction)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """CONTINUE, or STOP when the pruner prunes the trial at the rung it just reached."""
        live = self.searcher.live.get(trial.trial_id)
        step, value = result.get(EVAL_EPOCH_KEY), result.get(self.guard)
        if live is None or step is None or value is None or is_final(result):
            return TrialScheduler.CONTINUE
        cell, number = live
        study = self.searcher.optuna.study(cell)
        storage = study._storage
        internal = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        storage.set_trial_intermediate_value(internal, int(step), float(value))
        pruned = self.pruner.prune(_Rungs(study, self.direction), storage.get_trial(internal))
        return TrialScheduler.STOP if pruned else TrialScheduler.CONTINUE


def make_scheduler(spec: StudySpec, searcher: CellSearcher) -> NotesErrors:
    """First-in first-out or successive halving per cell on the guard objective, in epochs of the
    trial's last artifact; either notes failed trials' errors for the searcher."""
    if spec.scheduler.type != "asha":
        return NotesErrors(searcher)
    mode = next(o.mode for o in spec.objectives if o.metric == spec.scheduler.metric)
    return CellHalving(
        searcher,
        selection_metric(spec.scheduler.metric),
        mode,
        spec.scheduler.grace_period,
        spec.scheduler.reduction_factor,
    )
