import torch

from trainables.config import from_flat
from trainables.identity import artifact_identity, artifact_key
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


class _Recorder:
    """A LossConfig stand-in that records which fields a term function reads."""

    def __init__(self, config):
        self._config, self.read = config, set()

    def __getattr__(self, name):
        self.read.add(f"loss.{name}")
        return getattr(self._config, name)


def test_every_term_reads_only_the_knobs_it_declares():
    from trainables.data.batches import Batch, Noise
    from trainables.methods import TERM_FNS, TERMS, model_fns
    from trainables.networks import build_network
    from trainables.sde import VESDE

    config = from_flat({}, base="toy")
    torch.manual_seed(0)
    nets = {
        k: build_network(k, dim=2, num_classes=2, model_config=config.model)
        for k in ("score", "classifier", "conditional")
    }
    fns = model_fns(nets, num_classes=2, frozen={"score": nets["score"]})
    x = torch.randn(6, 2)
    batch, noise = Batch(x, torch.tensor([0, 1, 0, 1, 0, 1])), Noise.draw(x, VESDE(0.01, 10.0))
    for name, term in TERMS.items():
        recorder = _Recorder(config.loss)
        TERM_FNS[name](fns, batch, noise, recorder)
        # A knob read but not declared would be missing from the artifact cache key.
        assert recorder.read <= set(term.knobs), (name, recorder.read - set(term.knobs))


def test_every_declared_knob_and_weight_changes_the_key_of_an_artifact_using_it():
    from trainables.methods import METHODS

    changed = {"loss.sc_weighting": "none", "loss.dlsm_power": 0.5, "loss.p_uncond": 0.3}
    flip = {"sum": "mean", "mean": "sum"}
    base = from_flat({}, base="toy").loss
    for name in ("dsm_reduction", "sc_reduction", "dlsm_reduction", "joint_reduction"):
        changed[f"loss.{name}"] = flip[getattr(base, name)]
    for method in METHODS.values():
        for index, artifact in enumerate(method.artifacts):
            for term in artifact.terms:
                for knob in term.knobs():
                    value = changed.get(knob, 0.37)
                    assert _key(method.name, index, **{knob: value}) != _key(method.name, index), (
                        method.name,
                        artifact.name,
                        knob,
                    )


def _train(method, percent):
    from trainables.data.toy import make_toy
    from trainables.fit import TrainingSet, train_artifact

    flat = {"method": method, "data.label_percent": percent, "train.steps": 5,
            "train.steps_per_epoch": 5, "train.batch_size": 16, "model.hidden": 8,
            "model.depth": 1}  # fmt: skip
    config = from_flat(flat, base="toy")
    data = make_toy("gmm2", 64, 8, 0)
    split = TrainingSet.split(data.x, data.y, data.num_classes, percent, 0)
    artifact = get_method(method).artifacts[-1]
    return train_artifact(artifact, config, split).state_dict()


def test_labeled_and_all_variants_share_one_network_at_100_percent_and_only_there():
    for labeled, every in (("CG-SC-labeled", "CG-SC-all"), ("CFG-labeled", "CFG-all")):
        index = len(get_method(labeled).artifacts) - 1
        assert _key(labeled, index) == _key(every, index)  # 100 % is the toy base's default
        five = {"data.label_percent": 5}
        assert _key(labeled, index, **five) != _key(every, index, **five)
        # Sharing is only right if they really train the same network: train both.
        a, b = _train(labeled, 100.0), _train(every, 100.0)
        assert all(torch.equal(a[k], b[k]) for k in a)
        c, d = _train(labeled, 25.0), _train(every, 25.0)
        assert not all(torch.equal(c[k], d[k]) for k in c)


# ---- one trainer per key across processes, without fcntl (KeyLease) -------------------------


def _lease_setup(root, stale_after=60.0):
    from trainables.cache import ArtifactCache
    from trainables.fit import build

    config = from_flat({"method": "CG", "model.hidden": 8, "model.depth": 1}, base="toy")
    artifact = get_method("CG").artifacts[0]
    cache = ArtifactCache(root, stale_after=stale_after)

    def get(train_fn):
        return cache.get_or_train(artifact, config, train_fn, dim=2, num_classes=2)

    return get, lambda: build(artifact, config, 2, 2)


def _compete(root, out, go):
    import os
    import time

    get, make = _lease_setup(root)
    go.wait()

    def train(folder):
        (out / f"trained-{os.getpid()}").touch()
        time.sleep(1.0)  # long enough for the other process to find the lease taken
        return make()

    _, key, reused = get(train)
    (out / f"{os.getpid()}-{'reused' if reused else 'trained'}").touch()


def test_two_processes_asking_for_one_key_train_it_once(tmp_path):
    import multiprocessing as mp

    out = tmp_path / "out"
    out.mkdir()
    ctx = mp.get_context("fork")
    go = ctx.Event()
    procs = [ctx.Process(target=_compete, args=(tmp_path / "store", out, go)) for _ in range(2)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(list(out.glob("trained-*"))) == 1  # one trainer
    assert sorted(p.name.split("-")[1] for p in out.glob("*-*ed") if "trained-" not in p.name) == [
        "reused",
        "trained",
    ]
    assert not list((tmp_path / "store").glob("*/.training*"))  # the lease is gone


def test_a_lease_whose_holder_died_is_taken_over(tmp_path):
    from trainables.cache import KeyLease

    get, make = _lease_setup(tmp_path, stale_after=0.5)
    trained = []
    # A holder that died: its marker exists and nobody refreshes it.
    _, key, _ = get(lambda folder: make())  # find the key's folder
    folder = tmp_path / key
    (folder / "model.pt").unlink()
    (folder / KeyLease.MARKER).write_text("deadhost:1:0")
    import threading

    result = {}
    worker = threading.Thread(
        target=lambda: result.update(reused=get(lambda f: trained.append(1) or make())[2]),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "the dead holder's lease was never taken over"
    assert trained == [1] and result["reused"] is False
    assert not (folder / KeyLease.MARKER).exists()


def test_a_live_lease_is_waited_for_and_its_network_reused(tmp_path):
    import threading
    import time

    from trainables.cache import KeyLease
    from trainables.fit import save_checkpoint

    get, make = _lease_setup(tmp_path, stale_after=0.5)
    _, key, _ = get(lambda folder: make())
    folder = tmp_path / key
    (folder / "model.pt").unlink()
    holder = KeyLease(folder, stale_after=0.5)
    assert holder.acquire(lambda: False)  # alive: its heartbeat refreshes the marker
    result, trained = {}, []
    waiter = threading.Thread(
        target=lambda: result.update(
            zip(("net", "key", "reused"), get(lambda f: trained.append(1)))
        )
    )
    waiter.start()
    time.sleep(2.0)  # four times stale_after: a live holder is never taken over
    assert waiter.is_alive() and trained == []
    net = make()
    save_checkpoint(folder / "model.pt", net.state_dict())
    holder.release()
    waiter.join(timeout=10)
    assert result["reused"] is True and trained == []
    torch.testing.assert_close(
        _weights(result["net"]), _weights(net), rtol=0, atol=0
    )  # what the holder wrote


def _weights(net):
    return torch.cat([p.detach().flatten() for p in net.state_dict().values()])


def test_a_lease_whose_holder_died_on_this_node_is_taken_over_at_once(tmp_path):
    import os
    import subprocess
    import sys
    import time

    from trainables.cache import KeyLease

    get, make = _lease_setup(tmp_path, stale_after=600.0)  # the heartbeat rule would wait 10 min
    _, key, _ = get(lambda folder: make())
    folder = tmp_path / key
    (folder / "model.pt").unlink()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (folder / KeyLease.MARKER).write_text(f"{os.uname().nodename}:{gone.pid}:0")
    import threading

    result = {}
    worker = threading.Thread(target=lambda: result.update(reused=get(lambda f: make())[2]))
    worker.daemon = True
    start = time.monotonic()
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "waited on a holder that is gone"
    assert result["reused"] is False and time.monotonic() - start < 5


# ---- a corrupt stored network is detected, kept aside and trained again ---------------------


def test_a_truncated_network_is_moved_aside_and_trained_again(tmp_path, capsys):
    get, make = _lease_setup(tmp_path / "store")
    trained = []

    def train(folder):
        trained.append(folder)
        return make()

    first, key, reused = get(train)
    model = tmp_path / "store" / key / "model.pt"
    assert not reused and (model.parent / "model.pt.sha256").exists()
    whole = model.read_bytes()
    model.write_bytes(whole[: len(whole) // 2])  # truncated to half, as a failed copy leaves it
    second, _, reused = get(train)
    assert not reused and len(trained) == 2  # detected and trained again, not loaded
    (aside,) = model.parent.glob("model.pt.corrupt-*")  # kept for inspection
    assert aside.read_bytes() == whole[: len(whole) // 2]
    assert "is corrupt (sha256" in capsys.readouterr().err
    assert model.read_bytes() == whole  # the same deterministic network, intact again
    _, _, reused = get(train)  # a later study reuses it
    assert reused and len(trained) == 2


def test_a_corrupt_network_stored_before_checksums_is_trained_again(tmp_path):
    get, make = _lease_setup(tmp_path / "store")
    trained = []

    def train(folder):
        trained.append(folder)
        return make()

    _, key, _ = get(train)
    model = tmp_path / "store" / key / "model.pt"
    (model.parent / "model.pt.sha256").unlink()  # as written by an older version
    _, _, reused = get(train)
    assert reused and len(trained) == 1  # an old network that loads is used
    (model.parent / "model.pt.sha256").unlink(missing_ok=True)
    model.write_bytes(model.read_bytes()[:100])
    _, _, reused = get(train)
    assert not reused and len(trained) == 2 and len(list(model.parent.glob("*.corrupt-*"))) == 1
