"""A searcher restored after its driver was killed: which configurations finished without Tune
hearing of it (their records say so), which were lost with the driver and must run once more,
and what every cell has really spent."""

from __future__ import annotations

from study.cell_studies import STATE, Cell, CellStudies, config_key, objective_values
from trainables.names import LABEL_PERCENT_KEY, METHOD_KEY, STAGE_KEY, TUNED_KEYS
from trainables.records import TrialRecords
from trainables.storage import Place


def finished_records(record_root: str, cells: list[Cell]) -> dict[tuple[Cell, tuple], dict]:
    """(cell, knobs key) -> final result of every search trial whose records say it finished."""
    location = record_root or "/nonexistent"
    Place(location).pull()  # an object store's records into this machine's mirror
    root = Place(location).local
    out = {}
    for folder in root.iterdir() if root.is_dir() else []:
        records = TrialRecords.of(root, folder.name)  # pulled above: read from the mirror
        params, final = records.params(), records.final()
        if params is None or final is None or params.get(STAGE_KEY):
            continue  # unfinished, or a stage trial (it trained a shared network, no result)
        cell = (params.get(METHOD_KEY), float(params.get(LABEL_PERCENT_KEY, "nan")))
        if cell in cells:
            knobs = {k: params[k] for k in TUNED_KEYS[cell[0]] if k in params}
            out[(cell, config_key(knobs))] = final
    return out


def recover_cells(
    studies: CellStudies,
    live: dict[str, tuple[Cell, int]],
    finished: dict,
    lost: set[tuple[Cell, int]],
    requeued: set[tuple[Cell, tuple]],
) -> dict[Cell, int]:
    """Every Optuna trial RUNNING that the restored state does not hold live was handed out after
    the save: told its result when its record finished (never run again), else added to lost
    (its Optuna trial FAIL, not spent) and to requeued (enqueued to run once more). Returns each
    cell's spent trials."""
    spent: dict[Cell, int] = {}
    for cell in studies.cells:
        known = {n for c, n in live.values() if c == cell}
        study = studies.study(cell)
        for trial in study.get_trials(deepcopy=False, states=[STATE.RUNNING]):
            if trial.number in known:
                continue
            result = finished.get((cell, config_key(trial.params)))
            values = objective_values(result, studies.objectives)
            if values is not None:
                study.tell(trial.number, values if len(values) > 1 else values[0])
                continue
            lost.add((cell, trial.number))
            study.tell(trial.number, state=STATE.FAIL)
            study.enqueue_trial(dict(trial.params))
            requeued.add((cell, config_key(trial.params)))
        # What the cell has spent, from its study (trials may have ended after the save).
        spent[cell] = studies.spent(cell, known, {n for c, n in lost if c == cell})
    return spent
