import pytest
import yaml

from study.spec import SpecError, load_spec, preset_names, validate


def _write(tmp_path, data):
    path = tmp_path / "spec.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def test_default_preset_covers_every_method_at_two_label_percents():
    spec = load_spec(None)
    assert len(spec.methods) == 8 and len(spec.label_percents) >= 2
    assert spec.num_trials >= len(spec.methods) * len(spec.label_percents)
    assert "toy" in preset_names()


def test_all_errors_reported_at_once(tmp_path):
    bad = {
        "methods": ["CG", "CG-SC"],
        "label_percents": [0, 50, 120],
        "search": {
            "loss.lambda_sc": {"low": 5, "high": 1},
            "sample.guidance_scale": {"low": -1, "high": 2, "log": False},
        },
        "scheduler": "hyperband",
        "objectives": [{"metric": "fid", "mode": "lowest"}],
        "colour": "blue",
    }
    with pytest.raises(SpecError) as err:
        load_spec(_write(tmp_path, bad))
    msg = str(err.value)
    for needle in [
        "methods[1]: unknown method 'CG-SC'",
        "label_percents[0]: must be greater than 0, got 0",
        "label_percents[2]: must be less than or equal to 100, got 120",
        "search.loss.lambda_sc: empty range",
        "search.sample.guidance_scale.low: must be greater than or equal to 0",
        "scheduler.type: must be 'fifo' or 'asha', got 'hyperband'",
        "objectives[0].mode: must be 'min' or 'max'",
        "colour: unknown key",
    ]:
        assert needle in msg, needle


def test_malformed_yaml_and_missing_file(tmp_path):
    with pytest.raises(SpecError, match="malformed YAML"):
        load_spec(_write(tmp_path, "methods: [CG\n"))
    with pytest.raises(SpecError, match="no spec file or preset named 'nope.yaml'"):
        load_spec("nope.yaml")


def test_config_typo_is_caught_with_suggestion(tmp_path):
    with pytest.raises(SpecError, match="did you mean 'train.steps'"):
        load_spec(_write(tmp_path, {"config": {"train.stpes": 10}}))


def test_unknown_dataset_names_choices(tmp_path):
    with pytest.raises(SpecError, match=r"unknown dataset 'cifar-11'.*gmm2.*tiny-images"):
        load_spec(_write(tmp_path, {"dataset": "cifar-11"}))


def test_missing_cifar_names_the_folder_and_the_download_option(tmp_path):
    spec = {
        "dataset": "cifar10",
        "base_config": "cifar10",
        "config": {"data.root": str(tmp_path / "nowhere")},
    }
    with pytest.raises(
        SpecError,
        match=r"cifar10 not found: expected .*nowhere/cifar-10-batches-py.*data.download: true",
    ):
        load_spec(_write(tmp_path, spec))


def test_image_dataset_with_the_toy_network_is_refused(tmp_path):
    with pytest.raises(
        SpecError, match=r"needs model.arch ncsnpp, got 'mlp'; use an image base_config"
    ):
        load_spec(_write(tmp_path, {"dataset": "tiny-images"}))


def test_guidance_scales_default_to_a_grid_holding_the_plain_conditional_and_reach_the_trials():
    spec = validate({"methods": ["CG"]})
    assert 1.0 in spec.guidance.scales and spec.guidance.val_num_per_class is None
    assert spec.base_params()["sample.guidance_grid"] == tuple(spec.guidance.scales)
    custom = validate({"methods": ["CG"], "guidance": {"scales": [2, 1], "val_num_per_class": 9}})
    assert custom.guidance.scales == [2.0, 1.0]  # order kept
    with pytest.raises(SpecError, match=r"guidance.scales: lists 2.0 twice"):
        validate({"methods": ["CG"], "guidance": {"scales": [2, 1, 2]}})
    assert custom.base_params()["eval.val_num_per_class"] == 9
    assert validate(custom.to_dict()) == custom  # spec.yaml round trip


def test_searching_the_guidance_scale_names_the_sweep_instead():
    with pytest.raises(SpecError) as err:
        validate({"methods": ["CG"], "search": {"sample.guidance_scale": {"low": 0.5, "high": 8}}})
    assert "swept inside every trial" in str(err.value) and "guidance: {scales" in str(err.value)


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_validates_or_only_misses_its_dataset(name):
    """A preset's only allowed problems on a machine without CIFAR and Inception's weights are those
    two missing files."""
    try:
        spec = load_spec(name)
    except SpecError as err:
        problems = [line for line in str(err).splitlines() if line.startswith("  - ")]
        missing = ("  - dataset: cifar", "  - eval: Inception weights not found")
        assert problems and all(p.startswith(missing) for p in problems), str(err)
    else:
        assert spec.name == name


def test_validating_a_spec_and_planning_a_toy_study_import_neither_torch_nor_ray():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from study.plan import make_plan, to_text\n"
        "from study.spec import load_spec\n"
        "load_spec('tiny-images', check_data=False)\n"
        "spec = load_spec('toy'); assert 'stage 1' in to_text(spec, make_plan(spec))\n"
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]


def test_a_section_written_with_no_value_takes_its_defaults():
    """YAML `config:` with every line under it commented out is None: the section's defaults, as
    if the key were absent (the spec model's sections default in one place)."""
    text = "methods: [CG]\nbase_config:\nconfig:\n#  train.steps: 10\nguidance:\nresources:\n"
    spec = validate(yaml.safe_load(text))
    assert spec == validate({"methods": ["CG"]})
    assert spec.base_config == "toy" and spec.config == {} and spec.guidance.scales


def test_validation_steps_above_the_samplers_are_refused_if_written_capped_if_a_bases():
    tiny = {"dataset": "tiny-images", "base_config": "tiny-images",
            "objectives": [{"metric": "guided_dsm", "mode": "min"}]}  # fmt: skip
    # The base's 25 validation steps with a quick study's 4 sampler steps: capped, not refused.
    assert validate({**tiny, "config": {"sample.num_steps": 4}}, check_data=False)
    assert validate({**tiny, "guidance": {"val_num_steps": 4}, "config": {"sample.num_steps": 4}},
                    check_data=False)  # fmt: skip
    with pytest.raises(SpecError, match=r"^invalid study spec: eval.val_num_steps: 5 is above "
                       r"sample.num_steps 4, .* give at most 4"):  # fmt: skip
        validate({**tiny, "config": {"sample.num_steps": 4, "eval.val_num_steps": 5}},
                 check_data=False)  # fmt: skip
    with pytest.raises(SpecError, match="guidance.val_num_steps: 26 is above sample.num_steps 25"):
        validate({"guidance": {"val_num_steps": 26}, "config": {"sample.num_steps": 25}})
