"""The knobs each cell searches, their ranges and the cells' starting points; no torch, no Ray."""

from search_spaces.spaces import (
    DEFAULT_GUIDANCE_SCALES,
    DEFAULT_RANGES,
    PAPER_GRID,
    Range,
    cell_points,
    suggest_knobs,
)

__all__ = [
    "DEFAULT_GUIDANCE_SCALES",
    "DEFAULT_RANGES",
    "PAPER_GRID",
    "Range",
    "cell_points",
    "suggest_knobs",
]
