from trainables.cache import artifact_identity, artifact_key
from trainables.config import from_flat
from trainables.methods import get_method


def _key(method, index, **flat):
    config = from_flat({"method": method, **flat}, base="toy")
    return artifact_key(artifact_identity(get_method(method).artifacts[index], config))


def test_guidance_and_sampler_never_change_an_artifact_key():
    base = _key("CG-SC-all", 1)
    assert (
        _key(
            "CG-SC-all",
            1,
            **{"sample.guidance_scale": 3.0, "sample.sampler": "pc", "sample.num_steps": 7},
        )
        == base
    )


def test_score_model_is_shared_across_cg_family_label_percents_and_lambda_sc():
    keys = {
        _key(m, 0, **{"data.label_percent": p, "loss.lambda_sc": lam})
        for m in ("CG", "CG-SC-labeled", "CG-SC-all", "CG-DLSM")
        for p in (5, 100)
        for lam in (0.1, 1.0)
    }
    assert len(keys) == 1


def test_classifier_key_depends_on_label_percent_and_its_weight():
    base = _key("CG-SC-all", 1)
    assert _key("CG-SC-all", 1, **{"data.label_percent": 5}) != base
    assert _key("CG-SC-all", 1, **{"loss.lambda_sc": 0.1}) != base
    # CE-only classifier does not read lambda_sc.
    assert _key("CG", 1, **{"loss.lambda_sc": 0.1}) == _key("CG", 1)
