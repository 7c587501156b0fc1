"""docs/spec.md: every key a spec may hold, generated from the spec's schema and the trial
config's."""

from pathlib import Path

from study.reference import HIDDEN, config_keys, render, study_keys
from study.schema import SpecModel
from trainables.config import from_flat, to_flat


def test_every_key_the_schema_accepts_is_documented_with_a_meaning():
    rows = {key: (kind, default, meaning) for key, kind, default, meaning in study_keys()}
    assert set(SpecModel.model_fields) - HIDDEN == {
        k for k in rows if "." not in k and "[" not in k
    }
    assert all(meaning for _, _, meaning in rows.values()), [k for k, v in rows.items() if not v[2]]
    assert rows["label_percents"][:2] == ("list of (number > 0, <= 100)", "[100]")
    assert rows["scheduler.reduction_factor"][:2] == ("int >= 2, <= 1000", "2")
    assert rows["search.<key>.low"][0].startswith("number >= 0")
    assert rows["guidance.scales"][1] == "[0.5, 1, 2, 4]" and rows["guidance.halving"][1] == "true"
    assert {"objectives[].metric", "resources.max_failures", "search.<key>.choices"} <= set(rows)


def test_every_trial_config_key_has_its_default_and_a_meaning():
    rows = {key: (default, meaning) for key, _, default, meaning in config_keys()}
    assert set(rows) == set(to_flat(from_flat({})))
    assert all(meaning for _, meaning in rows.values()), [k for k, v in rows.items() if not v[1]]
    assert rows["train.steps"][0] == "2000" and "denoiser" in rows["model.classifier_head"][1]


def test_docs_spec_md_is_up_to_date():
    committed = (Path(__file__).parents[2] / "docs" / "spec.md").read_text()
    assert committed == render(), "regenerate: python -m study.reference > docs/spec.md"
