"""Each (method, label %) cell's trial budget and what it has spent: the table's grid gets an equal
budget per cell, and the next trial goes to the least-tried open cell, so a study stopped early
covers every cell evenly."""

from __future__ import annotations

Cell = tuple[str, float]  # (method, label %)


class CellBudgets:
    """Budgets (trials allowed) and spending (trials handed out) per cell, in the table's order."""

    def __init__(self, cells: list[Cell], budget: dict[Cell, int]) -> None:
        self.cells = list(cells)
        self.budget = {c: int(budget[c]) for c in self.cells}
        self.asked: dict[Cell, int] = dict.fromkeys(self.cells, 0)

    def open(self) -> list[Cell]:
        """Cells whose budget is not yet spent, in the table's order."""
        return [c for c in self.cells if self.asked[c] < self.budget[c]]

    def least_tried(self, cells: list[Cell]) -> Cell:
        """Of the given cells, the one with the fewest trials (ties: the table's order)."""
        return min(cells, key=lambda c: (self.asked[c], self.cells.index(c)))

    def spend(self, cell: Cell) -> None:
        """One more trial handed out to the cell."""
        self.asked[cell] += 1

    def close(self, cell: Cell) -> None:
        """The cell has nothing new to run: its budget is what it has spent."""
        self.budget[cell] = self.asked[cell]

    @property
    def remaining(self) -> int:
        """Trials the budgets still allow."""
        return sum(max(0, self.budget[c] - self.asked[c]) for c in self.cells)

    @property
    def total(self) -> int:
        """Every cell's budget together."""
        return sum(self.budget.values())
