"""Idle CPUs lent to a trial's evaluation (trainables.threads, study.cluster.CoreShares): the
lender's arithmetic, and the promise that makes lending safe: samples are the same bits whatever
threads the sampler ran with, also when they change between its steps."""

import pytest
import torch

from study.cluster import WINDOW, CoreShares
from trainables import threads
from trainables.config import from_flat
from trainables.evaluation.sampling import sample_scales
from trainables.fit import build
from trainables.methods import get_method


def test_the_free_cpus_are_split_among_the_trials_asking_now():
    shares = CoreShares()
    assert shares.grant("a", 1, free=3, now=0.0) == 4  # alone: every free CPU
    assert shares.grant("b", 1, free=3, now=1.0) == 2  # two askers: 3 = 2 + 1, b second
    assert shares.grant("a", 1, free=3, now=2.0) == 3  # the remainder to the first asker
    assert shares.grant("b", 2, free=0, now=3.0) == 2  # nothing free: its own CPUs only
    shares.release("b")
    assert shares.grant("a", 1, free=1, now=4.0) == 2
    # An asker silent for longer than WINDOW has stopped evaluating: no share is kept for it.
    shares.grant("c", 1, free=2, now=5.0)
    assert shares.grant("a", 1, free=2, now=5.0 + WINDOW + 1) == 3


def test_outside_a_lending_scope_nothing_is_asked(monkeypatch):
    """Once a scope has ended, the sampler's refresh asks nobody (the process keeps its own
    threads); a scope without a lender runs on its own threads."""
    monkeypatch.setattr(threads, "EVERY", 0.0)
    own, asked = torch.get_num_threads(), []
    with threads.lent(lambda: asked.append(1) or own):
        threads.refresh()
    assert len(asked) == 2  # on entry and at the refresh inside
    threads.refresh()
    assert len(asked) == 2
    with threads.lent(None) as most:
        threads.refresh()
    assert most() == own == torch.get_num_threads()


def test_the_evaluation_classifiers_features_are_the_same_bits_at_any_thread_count():
    """Feature extraction (FID's features, the evaluation classifier's) runs inside the lending
    scope too: 1 and 3 threads give identical features."""
    from trainables.evaluation.fid import classifier_extractor

    _, nets = _image_networks("CG-SC-all")
    extractor = classifier_extractor(nets["classifier"], 0.01, "test")
    images = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    own = torch.get_num_threads()
    try:
        features = []
        for count in (1, 3):
            torch.set_num_threads(count)
            features.append(extractor.features(images))
    finally:
        torch.set_num_threads(own)
    assert (features[0] == features[1]).all()


def _image_networks(method: str):
    flat = {
        "method": method, "data.label_percent": 20, "sample.num_steps": 6,
        "sample.num_per_class": 3, "sample.batch_size": 16, "eval.prdc_k": 0,
    }  # fmt: skip
    config = from_flat(flat, base="tiny-images")
    nets = {
        a.network: build(a, config, (3, 16, 16), 10).eval().requires_grad_(False)
        for a in get_method(method).artifacts
    }
    return config, nets


@pytest.mark.parametrize("method", ["CG-SC-all", "CFG-all"])
def test_samples_are_the_same_bits_when_the_lent_threads_change_between_steps(method, monkeypatch):
    """NCSN++ networks on 16x16 images, three scales in one batch: sampling at 1 thread and
    sampling while the lender's grant changes every step (1, 2, 3, ...) give identical tensors,
    and the scope ends on the process's own threads."""
    config, nets = _image_networks(method)
    own = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone, _ = sample_scales(config, nets, 10, (3, 16, 16), (0.5, 1.0, 4.0))
        grants = iter(range(100))
        monkeypatch.setattr(threads, "EVERY", 0.0)
        with threads.lent(lambda: 1 + next(grants) % 3) as most:
            lent, _ = sample_scales(config, nets, 10, (3, 16, 16), (0.5, 1.0, 4.0))
        assert most() == 3 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(own)
    assert torch.equal(alone, lent)


def test_a_lost_lender_leaves_the_evaluation_on_its_own_cpus():
    """The trial's ask (trainables.ray_worker._lent_cpus) when the lender actor is gone: its
    own threads, not a failed trial."""
    from types import SimpleNamespace

    import ray.exceptions

    from trainables.context import TrialContext
    from trainables.ray_worker import _lent_cpus

    def gone(*args):
        raise ray.exceptions.RayActorError()

    lender = SimpleNamespace(ask=SimpleNamespace(remote=gone), release=SimpleNamespace(remote=gone))
    config = from_flat({"method": "CG"}, base="toy")
    context = TrialContext(config=config, cache_dir="c", record_dir="r", threads=3, lender=lender)
    ask, _ = _lent_cpus(context)
    assert ask() == 3
    assert _lent_cpus(TrialContext(config=config, cache_dir="c", record_dir="r")) == (None, None)
