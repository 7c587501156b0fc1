import pytest
import torch

from trainables.config import from_flat
from trainables.data.toy import make_toy
from trainables.evaluation.toy import evaluate_toy
from trainables.fit import (
    CHECKPOINT_FILE,
    TrainingSet,
    load_checkpoint,
    train_artifact,
    train_method,
)
from trainables.methods import get_method

FAST = {
    "train.steps": 40,
    "train.steps_per_epoch": 10,
    "train.batch_size": 32,
    "model.hidden": 16,
    "model.depth": 1,
}


def _setup(method="CG-SC-all"):
    data = make_toy("gmm2", 200, 100, seed=0)
    config = from_flat({"method": method, "data.label_percent": 20, **FAST}, base="toy")
    return data, config, TrainingSet.split(data.x, data.y, 2, 20, 0)


def _weights(net):
    return torch.cat([p.detach().flatten() for p in net.state_dict().values()])


def test_callback_gets_per_epoch_metrics():
    _, config, split = _setup()
    seen = []
    train_artifact(get_method("CG-SC-all").artifacts[1], config, split, callback=seen.append)
    assert [m["epoch"] for m in seen] == [1, 2, 3, 4]
    assert {
        "classifier/loss",
        "classifier/ce_labeled",
        "classifier/sc_all",
        "classifier/grad_norm",
    } <= set(seen[0])


def test_resumed_run_reaches_the_same_weights(tmp_path):
    _, config, split = _setup()
    artifact = get_method("CG-SC-all").artifacts[1]
    straight = train_artifact(artifact, config, split)
    # Stop after two epochs (a checkpoint is written), then resume in a fresh call.
    train_artifact(artifact, config, split, checkpoint_dir=tmp_path, stop_after=20)
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE)["step"] == 20
    resumed = train_artifact(artifact, config, split, checkpoint_dir=tmp_path)
    torch.testing.assert_close(_weights(resumed), _weights(straight), rtol=0, atol=0)


def test_checkpoint_holds_step_rng_optimizer_and_loads_weights_only(tmp_path):
    _, config, split = _setup()
    train_artifact(get_method("CG").artifacts[0], config, split, checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert set(state) == {"network", "ema", "optimizer", "step", "rng"}
    assert state["step"] == 40


def test_cg_dlsm_trains_against_the_frozen_score_model():
    data, config, split = _setup("CG-DLSM")
    nets = train_method(config, split)
    assert set(nets) == {"score", "classifier"}
    assert all(not p.requires_grad for p in nets["score"].parameters())


def test_every_family_learns_the_toy_mixture_with_training():
    # Each family (classifier guidance, joint, conditional, free guidance): 400 steps against 40
    # (where nothing is learned yet) bring the samples toward the data (energy distance) and the
    # guided score toward the mixture's exact conditional score (cosine, 0 = unrelated).
    data = make_toy("gmm2", 200, 100, seed=0)
    split = TrainingSet.split(data.x, data.y, 2, 20, 0)
    for name in ("CG", "Joint-SC", "Cond", "CFG-all"):
        metrics = {}
        for steps in (40, 400):
            flat = {"method": name, "data.label_percent": 20, "sample.num_steps": 10,
                    "sample.num_per_class": 20, "eval.num_points": 50, **FAST,
                    "train.steps": steps}  # fmt: skip
            config = from_flat(flat, base="toy")
            metrics[steps] = evaluate_toy(config, train_method(config, split), data)
        assert metrics[40]["energy_distance"] > 3 * metrics[400]["energy_distance"], name
        assert metrics[400]["guided_score_cos"] > 0.25 > metrics[40]["guided_score_cos"], name
        assert metrics[400]["sample_finite_fraction"] == 1.0
        assert metrics[400]["gen_accuracy_exact"] == 1.0  # the exact score separates the classes


def test_a_non_finite_loss_is_caught_by_its_step_before_any_checkpoint(tmp_path, monkeypatch):
    """The loop does not sync per step: the first bad step is kept on the device, read at the
    epoch end (or before a checkpoint), and named in the error; nothing diverged is written."""
    import pytest

    import trainables.fit as fit

    real = fit.artifact_loss
    calls = []

    def loss_going_bad(*args, **kwargs):
        loss, terms = real(*args, **kwargs)
        calls.append(1)
        return (loss * float("inf") if len(calls) in (4, 7) else loss), terms

    monkeypatch.setattr(fit, "artifact_loss", loss_going_bad)
    _, config, split = _setup()
    artifact = get_method("CG").artifacts[0]
    with pytest.raises(FloatingPointError, match=r"score: loss is (inf|nan) at step 3$") as error:
        train_artifact(artifact, config, split, checkpoint_dir=tmp_path)
    assert error.value.step == 3 and len(calls) == 10  # found at the first epoch's end
    assert not (tmp_path / CHECKPOINT_FILE).exists()


def test_reported_flops_are_the_analytic_matmul_count_of_a_dsm_step():
    """The toy score MLP (hidden 16, depth 1, embedding 32, data 2-D): one DSM step does, per
    Linear(in, out) layer, 2 B in out FLOPs forward, as many for its weight gradient, and as many
    again for its input gradient where its input needs one (not the Fourier features of sigma,
    not the noisy data)."""
    _, config, split = _setup("CG")
    seen = []
    train_artifact(get_method("CG").artifacts[0], config, split, callback=seen.append)
    layers = {  # (in, out): input needs a gradient
        "embed.mlp.0": (32, 32, False),
        "embed.mlp.2": (32, 32, True),
        "trunk.inp": (2, 16, False),
        "trunk.layers.0": (16, 16, True),
        "trunk.cond.0": (32, 16, True),
        "trunk.cond.1": (32, 16, True),
        "head": (16, 2, True),
    }
    batch = config.train.batch_size
    expected = sum(2 * batch * i * o * (3 if grad else 2) for i, o, grad in layers.values())
    assert seen[0]["score/tflop_per_step"] * 1e12 == expected
    assert seen[0]["score/tflops"] > 0
    assert "score/mfu" not in seen[0]  # no peak is known for a CPU


def test_mfu_is_measured_against_the_configured_peak_and_a_negative_peak_is_refused():
    import pytest

    _, _, split = _setup("CG")
    config = from_flat(
        {"method": "CG", "data.label_percent": 20, **FAST, "train.peak_tflops": 0.5}, base="toy"
    )
    seen = []
    train_artifact(get_method("CG").artifacts[0], config, split, callback=seen.append)
    for m in seen:
        assert m["score/mfu"] == pytest.approx(m["score/tflops"] / 0.5)
    with pytest.raises(ValueError, match="train.peak_tflops must be greater than or equal to 0"):
        from_flat({"method": "CG", "train.peak_tflops": -1.0}, base="toy")


@pytest.mark.slow  # over 10 s: `make test` only
def test_compiled_training_matches_eager_and_sc_stays_eager():
    """train.compile: a DSM score model trains compiled to the eager weights (float rounding
    apart); a CE+SC classifier, whose SC has a double backward, trains eagerly, bit for bit, and
    says so."""
    import pytest
    from torch._dynamo.utils import counters

    _, _, split = _setup("CG")
    short = {**FAST, "train.steps": 10, "train.steps_per_epoch": 10}
    flat = {"method": "CG-SC-all", "data.label_percent": 20, **short}
    eager_config = from_flat(flat, base="toy")
    compiled_config = from_flat({**flat, "train.compile": True}, base="toy")
    score, classifier = get_method("CG-SC-all").artifacts
    eager = train_artifact(score, eager_config, split)
    counters.clear()
    compiled = train_artifact(score, compiled_config, split)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo really compiled the score network
    torch.testing.assert_close(_weights(compiled), _weights(eager), rtol=1e-4, atol=1e-5)
    eager = train_artifact(classifier, eager_config, split)
    with pytest.warns(UserWarning, match="classifier trains eagerly; its term.* sc"):
        kept = train_artifact(classifier, compiled_config, split)
    torch.testing.assert_close(_weights(kept), _weights(eager), rtol=0, atol=0)


class _HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the ops whose CUDA kernels copy a device value to the host, so that the host waits
    for the GPU: .item() / bool(), torch.nonzero, masked_select and boolean-mask indexing."""

    SYNCING = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select"}

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        masks = name == "aten::index" and any(
            t is not None and t.dtype == torch.bool for t in args[1]
        )
        if name in self.SYNCING or masks:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def test_a_training_step_reads_nothing_back_from_the_device():
    # Item 1 of issue 13: no host sync in the step. The labeled / unlabeled / uniform rows are found
    # where the batch is drawn (the host); on the device the loss and its backward index by them.
    # Every family's artifacts, half-labeled batches included (CE on the labeled rows, SC on all).
    from trainables import fit
    from trainables.data.batches import BatchSampler
    from trainables.methods import artifact_config, artifact_loss
    from trainables.sde import VESDE

    for method in ("CG-SC-all", "CG-SC-labeled", "CG-DLSM", "Joint-SC", "CFG-all", "Cond"):
        _, method_config, split = _setup(method)
        frozen = {}
        for artifact in get_method(method).artifacts:
            config = artifact_config(artifact, method_config)
            state = fit._setup(artifact, config, split, frozen, torch.device("cpu"))
            sampler = BatchSampler(split.labeled_idx, len(split.x), 32, artifact.row_usage, 0)
            rows = sampler.batch(0)
            batch, noise = fit._draw_batch(
                state, config, split, rows, VESDE.from_config(config.sde), fit.Distributed(),
                torch.device("cpu"), sampler.uniform_mask(len(rows)),
            )  # fmt: skip
            with _HostReads() as reads:
                loss, _ = artifact_loss(artifact, state.fns, batch, noise, config.loss)
                loss.backward()
            assert reads.seen == [], (method, artifact.name, reads.seen)
            frozen[artifact.network] = state.net


def test_channels_last_is_the_gpu_layout_of_image_networks_only():
    # Training and a network loaded from the cache for sampling share this decision: channels-last
    # for images on a GPU when train.channels_last is set (it does not pay on the CPU).
    from trainables.fit import memory_format

    on = from_flat({"method": "CG", "train.channels_last": True}, base="tiny-images")
    off = from_flat({"method": "CG", "train.channels_last": False}, base="tiny-images")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert memory_format(on, cuda, images=True) is torch.channels_last
    assert memory_format(on, cpu, images=True) is torch.contiguous_format
    assert memory_format(on, cuda, images=False) is torch.contiguous_format
    assert memory_format(off, cuda, images=True) is torch.contiguous_format
