"""Where a study can run: per-node feasibility, Ray Client addresses, one evaluation cache per
study (no Ray started here)."""

import pytest

from study.cluster import check_nodes
from study.errors import StudyError
from study.runner import with_evaluation_cache
from study.spec import SpecError, validate


def _spec(**resources):
    return validate({"resources": {"max_concurrent_trials": 1, **resources}})


def test_a_trial_that_fits_the_cluster_but_no_single_node_is_refused():
    two_small = [{"CPU": 2.0, "memory": 1e9}, {"CPU": 2.0}]
    check_nodes(_spec(cpus_per_trial=2), two_small)
    with pytest.raises(StudyError, match=r"a trial \(local mode\) needs 3 CPU on one node.*2 CPU"):
        check_nodes(_spec(cpus_per_trial=3), two_small)  # 4 CPUs in all, 2 per node
    # Train workers are placed one by one: 2 workers of 2 CPUs fit two 2-CPU nodes.
    check_nodes(_spec(cpus_per_trial=2, num_workers=2), two_small)
    gpu = _spec(cpus_per_trial=1, gpus_per_trial=1, num_workers=2)
    with pytest.raises(StudyError, match="a Train worker needs 1 CPU, 1 GPU on one node"):
        check_nodes(gpu, [{"CPU": 8.0}, {"CPU": 1.0, "GPU": 0.5}])
    check_nodes(gpu, [{"CPU": 8.0}, {"CPU": 1.0, "GPU": 1.0}])


def test_a_ray_client_address_is_refused_with_the_job_recipe(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(SpecError, match="ray job submit --address http://HEAD:8265"):
        validate({"address": "ray://head:10001"})
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    with pytest.raises(SpecError, match="Ray Client address"):
        validate({})


def test_a_study_owns_its_evaluation_cache_seeded_from_the_artifact_store(tmp_path):
    spec = validate({"artifact_store": str(tmp_path / "store")})
    study_dir = tmp_path / "studies" / "toy"
    pinned = with_evaluation_cache(spec, study_dir)
    assert pinned.config["eval.cache_dir"] == str(study_dir / "evaluation")
    assert pinned.base_params()["eval.shared_cache_dir"] == str(tmp_path / "store" / "evaluation")
    named = validate({"config": {"eval.cache_dir": str(tmp_path / "team")}})
    assert with_evaluation_cache(named, tmp_path).config["eval.cache_dir"] == str(tmp_path / "team")


def test_the_node_probe_names_a_folder_the_node_cannot_see_and_missing_data(tmp_path, monkeypatch):
    from study.cluster import _probe
    from trainables.config import from_flat

    seen = tmp_path / "shared" / ".study-probe-1"
    seen.parent.mkdir()
    seen.write_text("visible?")
    unseen = tmp_path / "elsewhere" / ".study-probe-2"
    toy = from_flat({}, base="toy")
    problems = _probe(toy, False, [str(seen), str(unseen)], [])
    assert problems == [
        f"{unseen.parent} is not visible there; mount it at the same path on every node"
    ]
    # An object store the node cannot write to (here: an endpoint nobody listens on).
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    problems = _probe(toy, False, [str(seen)], ["s3://bucket/studies"])
    assert len(problems) == 1 and problems[0].startswith(
        "cannot write to s3://bucket/studies there"
    )
    config = {"data.name": "cifar10", "data.root": str(tmp_path / "no-cifar"), "method": "CG"}
    problems = _probe(from_flat(config, base="cifar10"), True, [str(seen)], [])
    # The dataset and (cifar10's default extractor) the Inception weights, as the spec checks them.
    assert "dataset: cifar10 not found" in problems[0] and "no-cifar" in problems[0]
    assert any("eval.inception_weights" in p for p in problems)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "70000"], "--port must be 1-65535"),
        (["--workers", "0"], "--workers >= 1"),
        (["--backend", "mongodb://x"], "use a SQL database URI"),
    ],
)
def test_study_server_refuses_bad_input_before_starting(tmp_path, capsys, args, message):
    from study.cli import main

    assert main(["server", "--store", str(tmp_path / "server"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "server").exists()  # nothing written


def test_idle_cpus_are_lent_only_on_a_local_cluster_to_trials_in_local_mode():
    """study.cluster.core_lender: no lender (so no borrowing) on a cluster given by address (its
    free CPUs are other users' too), for Train workers, or when the spec turns it off. (The local
    case, an actor, is exercised by tests/study/test_interrupt.py.)"""
    from study.cluster import core_lender

    assert core_lender(validate({"address": "10.0.0.1:6379"})) is None
    assert core_lender(_spec(num_workers=1)) is None
    assert core_lender(_spec(lend_idle_cpus=False)) is None
    with pytest.raises(SpecError, match="lend_idle_cpus"):
        _spec(lend_idle_cpus="yes")
