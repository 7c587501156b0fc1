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
        ({"data.label_percent": 0}, r"data.label_percent must be greater than 0, got 0"),
        ({"data.label_percent": 101}, r"data.label_percent must be less than or equal to 100"),
        ({"loss.lambda_sc": -1}, r"loss.lambda_sc must be greater than or equal to 0, got -1"),
        ({"loss.lambda_joint": -0.5}, "loss.lambda_joint must be greater than or equal to 0"),
        ({"sample.sampler": "ddim"}, r"sample.sampler must be 'pc', 'em' or 'ode', got 'ddim'"),
        ({"train.steps": "many"}, "train.steps must be a valid integer.*got 'many'"),
        ({"train.classifier_steps": -5}, "train.classifier_steps must be greater than or equal"),
        ({"sample.guidance_precision": "fp16"}, r"must be 'fp32' or 'bf16', got 'fp16'"),
        # Values that once reached the trials unchecked or changed into something else:
        ({"train.steps": True}, "train.steps must be a number, not a boolean, got True"),
        ({"train.lr": float("nan")}, "train.lr must be greater than 0, got nan"),
        ({"train.lr": float("inf")}, "train.lr must be a finite number, got inf"),
        ({"train.lr": -1}, "train.lr must be greater than 0, got -1"),
        ({"sample.num_steps": 0}, "sample.num_steps must be greater than or equal to 1, got 0"),
        ({"eval.num_points": 1}, "eval.num_points must be greater than or equal to 2, got 1"),
        ({"data.num_train": 0}, "data.num_train must be greater than or equal to 1, got 0"),
        ({"model.hidden": 0}, "model.hidden must be greater than or equal to 1, got 0"),
        ({"eval.val_num_per_class": 10**12}, "eval.val_num_per_class must be less than or equal"),
        ({"data.flip": "perhaps"}, "data.flip must be a valid boolean"),
        ({"sample.guidance_grid": [1, float("nan")]}, r"guidance_grid\[1\] must be .*nan"),
        ({"model.ch_mult": []}, "model.ch_mult must have at least 1 item"),
        ({"eval.sc_bands": [0.1]}, "eval.sc_bands must have at least 2 items"),
    ],
)
def test_bad_values_raise_naming_value_and_choices(updates, match):
    with pytest.raises(ValueError, match=match) as caught:
        override(TrialConfig(), updates)
    assert len(str(caught.value)) < 300  # a long value is quoted by a short prefix


def test_a_long_bad_value_is_quoted_by_its_prefix():
    assert override(TrialConfig(), {"data.root": "x" * 10**6}).data.root == "x" * 10**6  # valid
    with pytest.raises(ValueError) as caught:
        override(TrialConfig(), {"train.precision": "x" * 10**6})
    assert len(str(caught.value)) < 200 and "xxx..." in str(caught.value)


def test_the_string_false_is_false_and_the_sampler_choices_are_the_samplers():
    from typing import get_args

    from trainables.config import Sampler
    from trainables.samplers import SAMPLERS

    assert override(TrialConfig(), {"data.flip": "false"}).data.flip is False
    assert set(get_args(Sampler)) == set(SAMPLERS)


def test_base_configs_are_valid_and_an_unknown_one_lists_choices():
    for name in BASE_CONFIGS:
        from_flat({}, base=name)
    with pytest.raises(ValueError, match="unknown base config 'cifar11'"):
        from_flat({}, base="cifar11")
