"""docs/spec.md: every key a spec may hold, generated from the spec's schema and the trial
config's."""

from pathlib import Path

from study.reference import STUDY_KEYS, config_keys, render, spec_types
from trainables.config import from_flat, to_flat


def test_every_key_the_schema_accepts_is_documented_and_nothing_else():
    documented = [key for key, *_ in STUDY_KEYS]
    assert len(documented) == len(set(documented))
    assert set(documented) == set(spec_types())
    types = spec_types()
    assert types["label_percents"] == "list of (number > 0, <= 100)"
    assert types["scheduler.reduction_factor"] == "int >= 2, <= 1000"
    assert types["search.<key>.low"].startswith("number >= 0")


def test_every_trial_config_key_has_its_default_and_a_meaning():
    rows = {key: (default, meaning) for key, _, default, meaning in config_keys()}
    assert set(rows) == set(to_flat(from_flat({})))
    assert all(meaning for _, meaning in rows.values()), [k for k, v in rows.items() if not v[1]]
    assert rows["train.steps"][0] == "2000" and "denoiser" in rows["model.classifier_head"][1]


def test_docs_spec_md_is_up_to_date():
    committed = (Path(__file__).parents[2] / "docs" / "spec.md").read_text()
    assert committed == render(), "regenerate: python -m study.reference > docs/spec.md"
