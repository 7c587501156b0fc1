import pytest
import yaml

from study.spec import SpecError, load_spec, preset_names


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
        "unknown method 'CG-SC'",
        "0 is outside (0, 100]",
        "120 is outside",
        "empty range",
        "must be >= 0",
        "unknown scheduler 'hyperband'",
        "mode: min|max",
        "unknown spec key 'colour'",
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
