"""A ninth method registered in a fixture reaches every table, figure, search space and spec check:
the method facts live in its registry record (trainables.registry.Method) and every table of them
(trainables.names) is a live view of the registry."""

import pandas as pd
import pytest

from analysis import style
from analysis.figures import write_figures
from analysis.runs import BASE_COLUMNS
from analysis.tables import KNOB_COLUMNS, comparison_table
from search_spaces import cell_points
from trainables import names
from trainables.registry import CE, METHODS, SCORE_MODEL, LossTerm, Method, classifier, register

NINTH = "CG-SC-ninth"


@pytest.fixture
def ninth():
    method = register(
        Method(
            NINTH,
            artifacts=(
                SCORE_MODEL,
                classifier(
                    CE, LossTerm("sc", rows="labeled", weight_key="loss.lambda_sc", tuned=True)
                ),
            ),  # fmt: skip
            guidance="cg",
        )
    )
    yield method
    del METHODS[NINTH]


def _runs(*rows):
    base = {"run_id": "r", "status": "FINISHED", "early_stopped": False, "stage": "search"}
    frame = pd.DataFrame([{**base, **row} for row in rows])
    return frame[BASE_COLUMNS + [c for c in frame.columns if c not in BASE_COLUMNS]]


def test_a_ninth_method_reaches_the_tables_figures_search_space_and_spec(ninth, tmp_path,
                                                                         monkeypatch):  # fmt: skip
    from matplotlib.axes import Axes

    from study.spec import validate

    # The registry's tables.
    assert names.METHODS[-1] == NINTH and NINTH in names.GUIDED and NINTH in names.WITH_CLASSIFIER
    assert names.TUNED_KEYS[NINTH] == ("loss.lambda_sc",) and names.check_method(NINTH) == NINTH
    # The spec accepts it; its cell searches its knob from the paper's point.
    spec = validate({"methods": ["CG", NINTH], "label_percents": [20], "trials_per_cell": 2})
    assert list(spec.methods) == ["CG", NINTH] and spec.cell_budgets()[(NINTH, 20.0)] == 2
    (point,) = cell_points([NINTH], [20], {})
    assert point["loss.lambda_sc"] == 1.0
    # The comparison table: its row, after the papers' methods, with its knob's column.
    runs = _runs(
        {"trial_id": "a", "method": "CG", "label_percent": 20.0, "gen_accuracy": 0.6,
         "val/gen_accuracy": 0.6, "guidance_scale": 2.0},
        {"trial_id": "b", "method": NINTH, "label_percent": 20.0, "gen_accuracy": 0.7,
         "val/gen_accuracy": 0.7, "guidance_scale": 4.0, "loss.lambda_sc": 0.3},
    )  # fmt: skip
    assert "loss.lambda_sc" in KNOB_COLUMNS
    table = comparison_table(runs, ("gen_accuracy", "max"), ("gen_accuracy", "loss.lambda_sc"))
    assert list(table.index) == ["CG", NINTH]
    assert table.loc[NINTH, (20.0, "loss.lambda_sc")] == 0.3
    # The figures: its own colour and marker, not the grey of an unknown name.
    others = {m.color for m in METHODS.values() if m.name != NINTH} | {"#999999"}
    assert style.color(NINTH).startswith("#") and style.color(NINTH) not in others
    drawn = []
    for name in ("plot", "errorbar"):
        original = getattr(Axes, name)

        def record(self, *args, _original=original, **kwargs):
            drawn.append((kwargs.get("label"), kwargs.get("color")))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Axes, name, record)
    write_figures(runs, [("gen_accuracy", "max")], tmp_path)
    assert (NINTH, style.color(NINTH)) in drawn, drawn
