"""The knobs a cell searches: each method's tuned weights, drawn by the cell's own Optuna study.

Method and label % are the table's grid, not searched: every (method, label %) cell is a study of
its own (study.search). loss.lambda_sc only for CG-SC-labeled / CG-SC-all, loss.lambda_joint only
for Joint-SC (paper 000 ties its SC term to lambda_joint); the other methods search nothing. The
guidance scale is not searched: every trial sweeps a grid of scales at sampling time
(DEFAULT_GUIDANCE_SCALES) and chooses on the validation split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainables.names import LABEL_PERCENT_KEY, METHOD_KEY, TUNED_KEYS

PAPER_GRID = (0.01, 0.1, 1.0, 10.0)  # paper 000's grid for lambda_SC and lambda_joint


@dataclass(frozen=True)
class Range:
    """A searched range: log-uniform / uniform floats, or a categorical set of values."""

    low: float | None = None
    high: float | None = None
    log: bool = True
    choices: tuple[Any, ...] | None = None

    def default(self) -> Any:
        """The value a cell's first trial uses: 1 (the papers' chosen lambda, the plain posterior's
        guidance scale) when the range holds it, else the middle of the range (geometric when
        log)."""
        if self.choices is not None:
            return 1.0 if 1.0 in self.choices else sorted(self.choices)[len(self.choices) // 2]
        if self.low <= 1.0 <= self.high:
            return 1.0
        return (self.low * self.high) ** 0.5 if self.log else (self.low + self.high) / 2

    def to_dict(self) -> dict[str, Any]:
        """As a spec's search section holds it."""
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log}

    def suggest(self, trial: Any, key: str) -> Any:
        """Ask the trial for a value in this range."""
        if self.choices is not None:
            return trial.suggest_categorical(key, list(self.choices))
        return trial.suggest_float(key, self.low, self.high, log=self.log)


DEFAULT_RANGES: dict[str, Range] = {
    "loss.lambda_sc": Range(0.01, 10.0),
    "loss.lambda_joint": Range(0.01, 10.0),
}
# The scales every guided trial sweeps when the spec gives none: 1 is the plain conditional
# (exact posterior for CG, the conditional model for CFG, gamma = 1 + w), the rest span the
# over-guided side the papers sweep (paper 001 App. D) and one under-guided point.
DEFAULT_GUIDANCE_SCALES = (0.5, 1.0, 2.0, 4.0)


def suggest_knobs(trial: Any, method: str, ranges: dict[str, Range]) -> dict[str, Any]:
    """One trial's tuned knobs for a cell of `method` (trial: an optuna.Trial of the cell's study):
    each key the method tunes, from the spec's range or the default one."""
    return {
        key: ranges.get(key, DEFAULT_RANGES[key]).suggest(trial, key) for key in TUNED_KEYS[method]
    }


def cell_points(
    methods: Sequence[str], label_percents: Sequence[float], ranges: dict[str, Range] | None = None
) -> list[dict[str, Any]]:
    """One starting point per (method, label %) cell with every tuned key at its default, so the
    first
    pass of a study compares the methods at the same, paper-chosen settings before the search
    moves."""
    ranges = ranges or {}
    return [
        {
            METHOD_KEY: m,
            LABEL_PERCENT_KEY: p,
            **{k: ranges.get(k, DEFAULT_RANGES[k]).default() for k in TUNED_KEYS[m]},
        }
        for m in methods
        for p in label_percents
    ]
