"""docs/spec.md: every key a spec may hold, generated from the validator's key sets and the trial
config's dataclasses."""

from pathlib import Path

from study.reference import LEGACY_KEYS, STUDY_KEYS, config_keys, render
from study.spec import GUIDANCE_KEYS, RESOURCE_KEYS, SCHEDULER_KEYS, TOP_KEYS
from trainables.config import from_flat, to_flat


def test_every_key_the_validator_accepts_is_documented_and_nothing_else():
    documented = {key for key, *_ in STUDY_KEYS}
    assert {k.split(".")[0] for k in documented} == TOP_KEYS - set(LEGACY_KEYS)
    for section, keys in (("resources", RESOURCE_KEYS), ("scheduler", SCHEDULER_KEYS - {"type"}),
                          ("guidance", GUIDANCE_KEYS)):  # fmt: skip
        assert {k.split(".", 1)[1] for k in documented if k.startswith(f"{section}.")} == keys


def test_every_trial_config_key_has_its_default_and_a_meaning():
    rows = {key: (default, meaning) for key, _, default, meaning in config_keys()}
    assert set(rows) == set(to_flat(from_flat({})))
    assert all(meaning for _, meaning in rows.values()), [k for k, v in rows.items() if not v[1]]
    assert rows["train.steps"][0] == "2000" and "denoiser" in rows["model.classifier_head"][1]


def test_docs_spec_md_is_up_to_date():
    committed = (Path(__file__).parents[2] / "docs" / "spec.md").read_text()
    assert committed == render(), "regenerate: python -m study.reference > docs/spec.md"
