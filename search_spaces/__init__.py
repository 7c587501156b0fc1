"""Optuna define-by-run search spaces, one per method family; imports neither torch nor ray."""

from search_spaces.spaces import (
    DEFAULT_GUIDANCE_SCALES,
    DEFAULT_RANGES,
    PAPER_GRID,
    Range,
    cell_points,
    define_space,
    make_space,
)

__all__ = [
    "DEFAULT_GUIDANCE_SCALES",
    "DEFAULT_RANGES",
    "PAPER_GRID",
    "Range",
    "cell_points",
    "define_space",
    "make_space",
]
