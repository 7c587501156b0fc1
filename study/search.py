"""The Tune searcher and scheduler a study runs: OptunaSearch told only final results, and ASHA that
keeps every (method, label %) cell's first trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from search_spaces import cell_points, make_space
from study.spec import StudySpec
from trainables.names import LABEL_PERCENT_KEY, METHOD_KEY


class FinalResultOptunaSearch(OptunaSearch):
    """OptunaSearch that ignores per-epoch results without the objective (told only at the end)."""

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


def make_searcher(
    spec: StudySpec, study_dir: Path, points: list[dict] | None = None
) -> FinalResultOptunaSearch:
    """Seeded TPE (one objective) or NSGA-II (several), stored in the study's optuna.db; its first
    trials are the given points (default: one per cell at the default settings)."""
    metrics = [o.metric for o in spec.objectives]
    modes = [o.mode for o in spec.objectives]
    if len(metrics) == 1:
        sampler = optuna.samplers.TPESampler(seed=spec.seed, multivariate=True)
    else:
        sampler = optuna.samplers.NSGAIISampler(seed=spec.seed)
    # Cover every (method, label %) cell once, at the default settings, before searching freely.
    if points is None:
        points = cell_points(spec.methods, spec.label_percents, spec.search)[: spec.num_trials]
    return FinalResultOptunaSearch(
        space=make_space(spec.methods, spec.label_percents, spec.search),
        metric=metrics if len(metrics) > 1 else metrics[0],
        mode=modes if len(modes) > 1 else modes[0],
        points_to_evaluate=points,
        sampler=sampler,
        study_name=spec.name,
        storage=optuna_storage(study_dir),
    )


def fail_orphaned_trials(spec: StudySpec, study_dir: Path) -> list[dict]:
    """Optuna trials still RUNNING once every Tune trial has ended were handed out to trials that
    Tune never recorded (the driver was killed before its next experiment checkpoint): mark them
    FAIL and return their params, so the study can run those configurations again."""
    try:
        study = optuna.load_study(study_name=spec.name, storage=optuna_storage(study_dir))
    except KeyError:
        return []  # killed before the study was created
    orphans = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING])
    for trial in orphans:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return [dict(t.params) for t in orphans]


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
        time_attr="eval_epoch",
        metric=spec.scheduler.metric,
        mode=mode,
        max_t=spec.epochs_per_trial(),
        grace_period=spec.scheduler.grace_period,
        reduction_factor=spec.scheduler.reduction_factor,
        stop_last_trials=False,  # the last epoch is followed by the final evaluation
    )
