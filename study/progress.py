"""A study's progress: per cell its state, trials done of its budget and the best validation value
so far; overall done / running / pending, elapsed and the time left. Pure bookkeeping (no Ray, no
MLflow): the driver's console (study.console.ConsoleProgress) feeds it trial starts and ends and
prints it, `study status DIR` the runs of the store.

The time left comes from the plan's compute counts (study.plan: each trial's own training steps and
sampling score evaluations, weighed as score-network evaluations) calibrated by the throughput
measured so far: seconds per unit of work of the finished trials, per method where that method has
finished a trial (methods differ in what a unit costs: guided sampling takes an input gradient),
else over every finished trial. The work still to do is spread over the study's trial slots.
Until a trial that samples (a search trial or final run) has finished, the time left reads
"estimating": the stage trials only train, and from their rate alone the first estimate was 2.7x
the time left of the default toy study and a third of the tiny-images preset's (docs/benchmarks.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from trainables.names import cell_label

KINDS = ("search", "shared", "final")  # search trials, stage trials (shared networks), final runs
KIND_NAMES = {"search": "search trials", "shared": "stage trials", "final": "final runs"}
SHORT_KINDS = {"search": "search", "shared": "stage", "final": "final"}


@dataclass
class TrialState:
    """One trial as the progress sees it (times in seconds on one clock)."""

    trial_id: str
    cell: tuple[str, float]
    kind: str = "search"  # KINDS
    status: str = "RUNNING"  # RUNNING | FINISHED | FAILED | KILLED
    start: float = 0.0
    end: float | None = None
    value: float | None = None  # the first objective's validation value when it finished
    units: float | None = None  # planned work (None: from the plan by kind and cell)


@dataclass
class Progress:
    """The study's plan (budgets and work per trial) and the trials seen so far."""

    budgets: dict[tuple[str, float], int]  # trials per cell (search trials, or final runs)
    work: dict[tuple[str, float], float]  # planned work units of one such trial of the cell
    shared_work: list[float] = field(default_factory=list)  # one entry per stage trial
    main_kind: str = "search"  # what the cells' trials are: search (study run) | final
    mode: str = "max"  # the first objective's direction
    slots: int = 1  # trials run at once
    start: float = 0.0
    trials: dict[str, TrialState] = field(default_factory=dict)
    stopped: int = 0  # runs a stopped driver left RUNNING (study status: not counted as started)

    # Recording: trial starts and ends.
    def started(self, trial_id: str, cell: tuple[str, float], kind: str, now: float) -> None:
        """A trial started (a second start of one trial id keeps the first)."""
        if trial_id not in self.trials:
            self.trials[trial_id] = TrialState(trial_id, cell, kind, start=now)
        else:
            self.trials[trial_id].status = "RUNNING"

    def ended(self, trial_id: str, status: str, now: float, value: float | None = None) -> None:
        """A trial ended FINISHED / FAILED / KILLED, with its validation objective if any."""
        trial = self.trials.get(trial_id)
        if trial is None:
            return
        trial.status, trial.end = status, now
        if value is not None and math.isfinite(value):
            trial.value = value

    # Counting: one count per kind, named as such.
    def planned(self, kind: str) -> int:
        """Trials of a kind the study plans."""
        if kind == self.main_kind:
            return sum(self.budgets.values())
        return len(self.shared_work) if kind == "shared" else 0

    def of_kind(self, kind: str, status: str | None = None) -> list[TrialState]:
        """Trials of a kind seen so far (with that status)."""
        return [t for t in self.trials.values() if t.kind == kind and status in (None, t.status)]

    def best(self, cell: tuple[str, float]) -> float | None:
        """The cell's best validation objective so far."""
        mine = [t for t in self.of_kind(self.main_kind) if t.cell == cell]
        values = [t.value for t in mine if t.value is not None]
        if not values:
            return None
        return max(values) if self.mode == "max" else min(values)

    def cell_state(self, cell: tuple[str, float]) -> tuple[str, int, int]:
        """(state, trials ended, budget): state done | running | failed | pending."""
        mine = [t for t in self.of_kind(self.main_kind) if t.cell == cell]
        ended = [t for t in mine if t.status != "RUNNING"]
        budget = self.budgets.get(cell, 0)
        if any(t.status == "RUNNING" for t in mine):
            state = "running"
        elif len(ended) >= budget:
            finished = any(t.status == "FINISHED" for t in ended)
            state = "done" if finished or not ended else "failed"
        else:
            state = "pending"
        return state, len(ended), budget

    # The estimate.
    def _units(self, trial: TrialState) -> float:
        if trial.units is not None:
            return trial.units
        if trial.kind == "shared":
            return sum(self.shared_work) / max(1, len(self.shared_work))
        return self.work.get(trial.cell, 0.0)

    def seconds_per_unit(self) -> tuple[dict[str, float], float | None]:
        """Measured throughput: (per method and per family, overall) seconds per planned work
        unit of the trials that finished; overall None before the first. A family (FAMILY: the
        classifier-guided, the classifier-free, the plain conditional) prices a method that has
        not finished a trial yet by its relatives."""
        done = [
            t for t in self.trials.values()
            if t.status == "FINISHED" and t.end is not None and self._units(t) > 0
        ]  # fmt: skip
        if not done:
            return {}, None
        overall = sum(t.end - t.start for t in done) / sum(self._units(t) for t in done)
        per_method: dict[str, tuple[float, float]] = {}
        for t in done:
            if t.kind == "shared":
                continue
            for key in (t.cell[0], family(t.cell[0]), "trials"):
                seconds, units = per_method.get(key, (0.0, 0.0))
                per_method[key] = (seconds + t.end - t.start, units + self._units(t))
        return {m: s / u for m, (s, u) in per_method.items()}, overall

    def _estimate(self, trial: TrialState, rates: dict[str, float], overall: float) -> float:
        if trial.kind == "shared":
            return self._units(trial) * overall
        method = trial.cell[0]
        rate = rates.get(method, rates.get(family(method), rates.get("trials", overall)))
        return self._units(trial) * rate

    def pending(self) -> list[TrialState]:
        """The trials not started yet, as placeholders (one per unspent budget entry)."""
        out = []
        for cell, budget in self.budgets.items():
            seen = sum(1 for t in self.of_kind(self.main_kind) if t.cell == cell)
            out += [TrialState("", cell, self.main_kind) for _ in range(max(0, budget - seen))]
        started = len(self.of_kind("shared"))
        for units in self.shared_work[started:]:
            out.append(TrialState("", ("", 0.0), "shared", units=units))
        return out

    def remaining_seconds(self, now: float) -> float | None:
        """Estimated seconds until the last trial ends; None before a trial that samples finished
        (rates["trials"]: the search trials' or final runs' rate)."""
        rates, overall = self.seconds_per_unit()
        if overall is None or "trials" not in rates:
            return None
        left = 0.0
        for trial in self.pending():
            left += self._estimate(trial, rates, overall)
        running = [t for t in self.trials.values() if t.status == "RUNNING"]
        for trial in running:
            left += max(0.0, self._estimate(trial, rates, overall) - (now - trial.start))
        return left / max(1, self.slots)

    # Text.
    def summary(self, now: float, live: bool = True) -> str:
        """One line: counts per kind, running, pending, elapsed and the time left (not live: a
        study no driver runs now, no time left)."""
        parts = self._counts(KIND_NAMES)
        running = len([t for t in self.trials.values() if t.status == "RUNNING"])
        failed = len([t for t in self.trials.values() if t.status == "FAILED"])
        pending = len(self.pending())
        text = f"{', '.join(parts)}; {running} running, {pending} pending"
        text += f", {failed} failed" if failed else ""
        if not running and not pending:
            return f"{text}; all ended, {format_seconds(now - self.start)} in all"
        if not live:
            return text
        return f"{text}; {format_seconds(now - self.start)} elapsed, {self._eta(now)}"

    def brief(self, now: float) -> str:
        """'search 3/22, stage 2/2 ended, ~28 s left', for one-line updates (a trial's end line
        stays within 120 columns)."""
        eta = self._eta(now).replace("about ", "~")
        return f"{', '.join(self._counts(SHORT_KINDS))} ended, {eta}"

    def _counts(self, names: dict[str, str]) -> list[str]:
        """'<name> ended/planned' per kind the study plans or has seen."""
        parts = []
        for kind in KINDS:
            planned = self.planned(kind)
            if planned or self.of_kind(kind):
                ended = len([t for t in self.of_kind(kind) if t.status != "RUNNING"])
                parts.append(f"{names[kind]} {ended}" + (f"/{planned}" if planned else ""))
        return parts

    def _eta(self, now: float) -> str:
        left = self.remaining_seconds(now)
        return "time left: estimating" if left is None else f"about {format_seconds(left)} left"

    def table(self, metric: str) -> str:
        """Per cell: state, trials ended / budget, best validation value (compact, < 80 cols)."""
        width = max([len(cell_label(*c)) for c in self.budgets] + [4])
        lines = [f"  {'cell':<{width}}  {'state':<8} trials  best val/{metric}"]
        for cell in self.budgets:
            state, ended, budget = self.cell_state(cell)
            best = self.best(cell)
            shown = "" if best is None else f"{best:.4g}"
            lines.append(
                f"  {cell_label(*cell):<{width}}  {state:<8} {ended:>2}/{budget:<3}  {shown}"
            )
        return "\n".join(lines)


def family(method: str) -> str:
    """'family:cg' (classifier-guided), 'family:cfg' or 'family:none' (Cond)."""
    kind = "cfg" if method.startswith("CFG") else "none" if method == "Cond" else "cg"
    return f"family:{kind}"


def format_seconds(seconds: float) -> str:
    """'42 s', '3 min 05 s', '1 h 02 min'."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


# Relative costs the plan's counts do not carry, measured on the tiny NCSN++ on 2 CPU cores
# (docs/benchmarks.md): a training step whose loss has a double backward (SC, DLSM, QC, Joint's SC)
# costs 2.16x a CE step; a guided PC step costs 2.27x (classifier guidance) and 2.61x (CFG) a
# plain conditional one (0.2743 and 0.3155 s against 0.1207 s).
DOUBLE_BACKWARD_COST = 2.16
GUIDED_STEP_COST = {"cg": 2.27, "cfg": 2.61, "none": 1.0}


def work_units(
    steps: int,
    batch_size: int,
    score_evals: float,
    double_backward: bool = False,
    guidance: str = "none",
) -> float:
    """Planned work of a trial in score-network evaluations: a training step is a forward and a
    backward (about three evaluations) of each example in its batch (DOUBLE_BACKWARD_COST times
    that with a double backward), plus the sampling evaluations (GUIDED_STEP_COST times as dear
    when guided)."""
    train = 3.0 * steps * batch_size * (DOUBLE_BACKWARD_COST if double_backward else 1.0)
    return train + score_evals * GUIDED_STEP_COST.get(guidance, 1.0)


def from_records(progress: Progress, records: Iterable[dict], now: float | None = None) -> Progress:
    """Fill a Progress from stored runs (dicts with trial_id, cell, kind, status, start, end,
    value; times in seconds); the study's start is the first run's start."""
    rows = sorted(records, key=lambda r: r["start"])
    if rows:
        progress.start = rows[0]["start"]
    for row in rows:
        progress.started(row["trial_id"], row["cell"], row["kind"], row["start"])
        if row["status"] != "RUNNING" and row.get("end") is not None:
            progress.ended(row["trial_id"], row["status"], row["end"], row.get("value"))
    return progress


def replay(progress: Progress, records: list[dict]) -> list[tuple[float, float | None, float]]:
    """What the live status said at each trial's end of a recorded study, against what happened:
    (fraction of trials ended, estimated seconds left, actual seconds left until the last end).
    progress: a fresh Progress of the study's plan (no trials yet)."""
    rows = sorted(records, key=lambda r: r["start"])
    last = max(r["end"] for r in rows if r.get("end") is not None)
    ends = sorted(r["end"] for r in rows if r.get("end") is not None)
    out = []
    for moment in ends[:-1]:
        seen = Progress(
            budgets=progress.budgets, work=progress.work, shared_work=progress.shared_work,
            main_kind=progress.main_kind, mode=progress.mode, slots=progress.slots,
        )  # fmt: skip
        for row in rows:
            if row["start"] > moment:
                continue
            ended = row.get("end") is not None and row["end"] <= moment
            clipped = {**row, "status": row["status"] if ended else "RUNNING"}
            clipped["end"] = row["end"] if ended else None
            from_records(seen, [clipped])
        seen.start = rows[0]["start"]
        done = sum(1 for e in ends if e <= moment) / len(ends)
        out.append((done, seen.remaining_seconds(moment), last - moment))
    return out
