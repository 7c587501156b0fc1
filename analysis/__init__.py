"""pandas over a study's ledger and trial records (analysis.ledger): comparison tables, Pareto
sets, best-config export, figures and the results API (`from analysis import load_study`); no
torch, no ray. The results API loads on first use, so that importing analysis.ledger (the study's
commands do, at start) does not load pandas."""

from typing import Any

__all__ = ["StudyNotReady", "StudyResults", "load_study"]


def __getattr__(name: str) -> Any:
    """load_study, StudyResults and StudyNotReady from analysis.results, imported on first use."""
    if name in __all__:
        from analysis import results

        return getattr(results, name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
