import numpy as np
import pytest
import torch

from trainables.data.batches import BatchSampler, hide_labels, labeled_subset


def _labels():
    rng = np.random.default_rng(0)
    return rng.integers(0, 5, size=1003)


@pytest.mark.parametrize("percent", [5, 20, 33.3, 100])
def test_labeled_subset_is_stratified_within_one_per_class(percent):
    y = _labels()
    idx = labeled_subset(y, percent, seed=1)
    for k in range(5):
        n_k = (y == k).sum()
        assert abs((y[idx] == k).sum() - n_k * percent / 100) <= 1


def test_labeled_subset_is_identical_for_a_seed_and_differs_across_seeds():
    y = _labels()
    np.testing.assert_array_equal(labeled_subset(y, 5, seed=7), labeled_subset(y, 5, seed=7))
    assert not np.array_equal(labeled_subset(y, 5, seed=7), labeled_subset(y, 5, seed=8))


def test_hundred_percent_labels_every_row():
    y = _labels()
    assert len(labeled_subset(y, 100, seed=0)) == len(y)


@pytest.mark.parametrize("percent", [0, -5, 100.5, 250])
def test_label_percent_outside_range_raises(percent):
    with pytest.raises(ValueError, match=r"label percentage must be in \(0, 100\]"):
        labeled_subset(_labels(), percent, seed=0)


def test_half_labeled_batches():
    y = torch.as_tensor(_labels())
    idx = labeled_subset(y, 5, seed=0)
    hidden = hide_labels(y, idx)
    sampler = BatchSampler(idx, len(y), 64, "half", seed=0)
    for step in range(20):
        rows = sampler.batch(step)
        assert len(rows) == 64
        assert (hidden[rows] >= 0).sum().item() == 32


def test_batches_depend_only_on_seed_and_step():
    a = BatchSampler(np.arange(50), 200, 16, "half", seed=3)
    b = BatchSampler(np.arange(50), 200, 16, "half", seed=3)
    np.testing.assert_array_equal(a.batch(11), b.batch(11))
    assert not np.array_equal(a.batch(11), a.batch(12))


def test_labeled_and_all_usages():
    labeled = BatchSampler(np.array([3, 5, 7]), 100, 8, "labeled", seed=0).batch(0)
    assert set(labeled.tolist()) <= {3, 5, 7}
    # At 100 % labels a "half" batch is simply all labeled.
    full = BatchSampler(np.arange(10), 10, 8, "half", seed=0)
    assert len(full.pools) == 1
