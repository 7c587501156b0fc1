"""What restoring a study saved by an older version of the platform needs, in one place: the state
layouts of the searchers Tune pickled then, and a searcher class those pickles still name."""

from __future__ import annotations

from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from study.cell_budgets import CellBudgets
from study.cell_studies import CellStudies
from study.stages import StageGate


def cell_searcher_state(state: dict[str, Any]) -> dict[str, Any]:
    """A CellSearcher's pickled state in today's layout. Older layouts kept the budgets (budget,
    asked) and the Optuna side (storage_url, study_name, seed, ranges, points) as flat attributes,
    and before that had no stages (gate, cell_needs)."""
    state = dict(state)
    if "asked" in state:
        budgets = CellBudgets(state["cells"], state.pop("budget"))
        budgets.asked.update(state.pop("asked"))
        state["budgets"] = budgets
        searches = state.pop("points", None) is None
        state["optuna"] = CellStudies(
            state.pop("storage_url"),
            state.pop("study_name"),
            state.pop("seed"),
            state["objectives"],
            state.pop("ranges"),
            state["cells"],
            searches=searches,
        )
        state.pop("_studies", None)
        state.pop("point_needs", None)
    state.setdefault("gate", StageGate())
    state.setdefault("cell_needs", {})
    return state


def point_searcher_state(state: Any) -> dict[str, Any]:
    """A PointSearcher's saved state; before stages existed it was the list of points alone."""
    if isinstance(state, list):
        return {"points": state, "gate": StageGate(), "needs": []}
    return state


class FinalResultOptunaSearch(OptunaSearch):
    """OptunaSearch that ignores per-epoch results without the objective (told only at the end):
    the searcher of studies started before the per-cell CellSearcher, kept so they restore."""

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
