import pytest

from trainables.config import BASE_CONFIGS, TrialConfig, flat_keys, from_flat, override, to_flat


def test_flat_round_trip():
    config = from_flat(
        {"method": "Joint-SC", "loss.lambda_joint": 0.1, "data.label_percent": 5}, base="toy"
    )
    assert from_flat(to_flat(config)) == config
    assert set(to_flat(config)) == set(flat_keys())


def test_strings_are_cast_to_the_schema_type():
    config = override(
        TrialConfig(), {"train.steps": "300", "loss.lambda_sc": "0.1", "eval.sigmas": "0.1,0.5"}
    )
    assert (
        config.train.steps == 300
        and config.loss.lambda_sc == 0.1
        and config.eval.sigmas == (0.1, 0.5)
    )


def test_typo_gets_a_close_match():
    with pytest.raises(
        ValueError, match=r"unknown config key 'loss.lamda_sc'; did you mean 'loss.lambda_sc'"
    ):
        override(TrialConfig(), {"loss.lamda_sc": 1.0})


@pytest.mark.parametrize(
    "updates, match",
    [
        ({"method": "CGSC"}, r"unknown method 'CGSC'; valid: \['CG'"),
        ({"data.label_percent": 0}, r"data.label_percent must be in \(0, 100\], got 0"),
        ({"data.label_percent": 101}, r"must be in \(0, 100\]"),
        ({"loss.lambda_sc": -1}, r"loss.lambda_sc must be >= 0, got -1"),
        ({"loss.lambda_joint": -0.5}, "loss.lambda_joint must be >= 0"),
        ({"sample.sampler": "ddim"}, r"unknown sampler 'ddim'; valid: \['em', 'ode', 'pc'\]"),
        ({"train.steps": "many"}, "train.steps: expected int, got 'many'"),
        ({"train.classifier_steps": -5}, r"train.classifier_steps must be >= 0 \(0 = as train"),
        ({"sample.guidance_precision": "fp16"}, r"must be 'fp32' or 'bf16', got 'fp16'"),
    ],
)
def test_bad_values_raise_naming_value_and_choices(updates, match):
    with pytest.raises(ValueError, match=match):
        override(TrialConfig(), updates)


def test_base_configs_are_valid_and_an_unknown_one_lists_choices():
    for name in BASE_CONFIGS:
        from_flat({}, base=name)
    with pytest.raises(ValueError, match="unknown base config 'cifar11'"):
        from_flat({}, base="cifar11")
