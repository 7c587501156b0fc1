"""trainables.storage against a real S3-compatible endpoint (moto's server on 127.0.0.1): each
"node" is a mirror folder of its own, and the store is the only thing they share."""

import time

import pytest
from cli_helpers import S3Server

from trainables.cache import _Leases
from trainables.storage import MIRROR_ENV, Place, is_uri, stored


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture
def node(s3, tmp_path, monkeypatch):
    """This process as a node: the store's environment and a mirror of its own."""
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)

    def switch(name: str) -> None:
        monkeypatch.setenv(MIRROR_ENV, str(tmp_path / name))

    switch("node-a")
    return switch


def test_a_folder_place_is_the_folder_and_syncs_nothing(tmp_path):
    place = Place(str(tmp_path / "x")) / "y"
    assert not place.remote and place.local == tmp_path / "x" / "y"
    assert place.pull() is False and place.problem() is None
    (tmp_path / "x" / "y").mkdir(parents=True)
    assert place.pull() is True and stored(str(tmp_path / "x" / "y"))
    assert not is_uri("file:///tmp/x") and is_uri("s3://b/x") and not is_uri("/tmp/a:b")


def test_what_one_node_pushes_another_pulls_and_nothing_else(s3, node, tmp_path):
    place = Place(f"s3://{s3.bucket}/study") / "trials"
    a = place.local
    assert str(a).startswith(str(tmp_path / "node-a"))
    (a / "t1").mkdir(parents=True)
    (a / "t1" / "final.json").write_text('{"fid": 1.5}')
    (a / "t1" / "samples.png").write_bytes(b"\x89PNG" + bytes(300))
    (a / "t2").mkdir()
    (a / "t2" / "params.json").write_text("{}")
    assert place.exists(a / "t1" / "final.json")  # its own copy, not yet in the store
    (place / "t1").push()
    assert s3.files("study") == ["study/trials/t1/final.json", "study/trials/t1/samples.png"]
    node("node-b")  # another node: an empty mirror, the same store
    b = Place(place.location)
    assert b.local != a and not b.local.exists()
    assert b.exists(b.local / "t1" / "final.json") and not b.exists(b.local / "t2")
    assert stored(f"{place.location}/t1/final.json") and not stored(f"{place.location}/t2/x")
    time.sleep(2.0)
    pulled_at = time.time()
    assert b.pull() is True
    assert (b.local / "t1" / "final.json").read_text() == '{"fid": 1.5}'
    # Stamped with the store's time (when it was pushed), not the pull's: a run rebuilt or
    # settled from records on another node spans its trial (trainables.records.TrialRecords.times).
    assert (b.local / "t1" / "final.json").stat().st_mtime <= pulled_at - 1.0
    assert (b.local / "t1" / "samples.png").read_bytes() == b"\x89PNG" + bytes(300)
    assert not (b.local / "t2").exists()  # never pushed
    assert b.pull(b.local / "t3") is False


def test_a_store_that_cannot_be_written_is_named(s3, node):
    assert Place(f"s3://{s3.bucket}/ok").problem() is None
    assert s3.files("ok") == []  # the probe object is removed
    problem = Place("s3://no-such-bucket/x").problem()
    assert problem is not None and "no-such-bucket" in problem


def test_the_lease_actor_elects_one_holder_and_replaces_a_silent_one():
    leases = _Leases()  # the actor's class, called directly
    assert leases.acquire("k", "a", stale_after=60)
    assert not leases.acquire("k", "b", stale_after=60)  # held and alive
    assert leases.acquire("k", "a", stale_after=60)  # the holder again
    assert leases.acquire("other", "b", stale_after=60)  # another key
    leases.release("k", "b")  # not b's: nothing changes
    assert not leases.acquire("k", "b", stale_after=60)
    assert leases.acquire("k", "b", stale_after=0)  # a's heartbeat is older than 0 s: taken over
    leases.beat("k", "a")  # the old holder's late beat does not take it back
    assert not leases.acquire("k", "a", stale_after=60)
    leases.release("k", "b")
    assert leases.acquire("k", "a", stale_after=60)


def test_a_network_already_in_an_object_store_is_no_stage(s3, node):
    from study.spec import validate
    from study.stages import StageGate, plan_stages

    store = f"s3://{s3.bucket}/networks"
    spec = validate({"methods": ["CG", "CG-SC-all"], "label_percents": [5, 100],
                     "artifact_store": store})  # fmt: skip
    place = spec.artifact_place(spec.study_place())
    points = [{"method": m, "data.label_percent": p} for m in spec.methods for p in (5.0, 100.0)]
    stages, needs = plan_stages(points, spec.trial_config, place)
    assert [s.params["stage"] for s in stages] == ["score"] and all(needs)
    assert stages[0].model.startswith(f"{store}/score-") and stages[0].model.endswith("/model.pt")
    gate = StageGate(list(stages))
    # Trained by a trial on another node: in the bucket only, not in this node's mirror.
    key = stages[0].key
    with s3.filesystem().open_output_stream(f"{s3.bucket}/networks/{key}/model.pt") as out:
        out.write(b"trained")
    assert not (place.local / key / "model.pt").exists()
    stages, needs = plan_stages(points, spec.trial_config, place)
    assert stages == [] and not any(needs)
    assert gate.next_stage("t") is None and key in gate.done  # the gate sees it too


@pytest.mark.slow
def test_the_lease_actor_outlives_the_trial_that_made_it():
    # Tune runs a trial in a placement group that captures its child actors; a lease actor made
    # there died with the first trial that ended, and the next trial's lease call failed.
    import time

    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from trainables.cache import ActorLease, lease_actor

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        group = placement_group([{"CPU": 1}])
        ray.get(group.ready())

        @ray.remote(num_cpus=1)
        def trial() -> bool:
            return ray.get(lease_actor().acquire.remote("k", "a", 60.0))

        inside = PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)
        assert ray.get(trial.options(scheduling_strategy=inside).remote())
        remove_placement_group(group)  # the trial ended
        time.sleep(3)
        actor = ray.get_actor(ActorLease.ACTOR, namespace=ActorLease.NAMESPACE)
        assert not ray.get(actor.acquire.remote("k", "b", 60.0))  # alive, and a's lease held
    finally:
        ray.shutdown()


class _Killed(Exception):
    """The trainer's process dies (here: the training function raises) halfway."""


def test_a_network_interrupted_on_one_node_continues_from_its_checkpoint_on_another(
    s3, node, tmp_path
):
    import torch

    from trainables.cache import ArtifactCache
    from trainables.config import from_flat
    from trainables.data.toy import make_toy
    from trainables.fit import CHECKPOINT_FILE, TrainingSet, load_checkpoint, train_artifact
    from trainables.methods import get_method

    data = make_toy("gmm2", 200, 100, seed=0)
    flat = {"train.steps": 40, "train.steps_per_epoch": 10, "train.batch_size": 32}
    config = from_flat({"method": "CG", "data.label_percent": 20, **flat}, base="toy")
    split = TrainingSet.split(data.x, data.y, 2, 20, 0)
    artifact = get_method("CG").artifacts[0]
    straight = train_artifact(artifact, config, split)  # uninterrupted, no cache
    uri = f"s3://{s3.bucket}/artifacts"  # a Place per node: each caches its node's mirror
    steps: list[int] = []

    def train(stop_after):
        def run(folder):
            cache = ArtifactCache(Place(uri))
            net = train_artifact(
                artifact, config, split, checkpoint_dir=folder, stop_after=stop_after,
                callback=lambda m: steps.append(int(m["step"])), saved=cache.checkpoint_saved,
            )  # fmt: skip
            if stop_after is not None:
                raise _Killed  # never finishes: no model.pt
            return net

        return run

    with pytest.raises(_Killed):
        ArtifactCache(Place(uri)).get_or_train(artifact, config, train(20), dim=2, num_classes=2)
    assert steps == [10, 20]
    (stored_checkpoint,) = [f for f in s3.files("artifacts") if f.endswith(CHECKPOINT_FILE)]
    node("node-b")  # another node: an empty mirror, the same store
    steps.clear()
    net, key, reused = ArtifactCache(Place(uri)).get_or_train(
        artifact, config, train(None), dim=2, num_classes=2
    )
    assert not reused and steps == [30, 40]  # the step counter goes on from 20
    folder = Place(uri).local / key
    assert str(folder).startswith(str(tmp_path / "node-b"))
    assert load_checkpoint(folder / CHECKPOINT_FILE)["step"] == 40
    weights = [torch.cat([p.flatten() for p in n.state_dict().values()]) for n in (net, straight)]
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)
    assert f"artifacts/{key}/model.pt" in s3.files("artifacts") and stored_checkpoint
