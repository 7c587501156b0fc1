"""pandas over MLflow runs: comparison tables, Pareto sets, best-config export; no torch, no ray."""
