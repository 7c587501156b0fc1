"""pandas over MLflow runs: comparison tables, Pareto sets, best-config export, figures and the
results API (`from analysis import load_study`); no torch, no ray."""

from analysis.results import StudyNotReady, StudyResults, load_study

__all__ = ["StudyNotReady", "StudyResults", "load_study"]
