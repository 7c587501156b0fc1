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


def test_mixed_batches_keep_score_rows_uniform_over_all_data():
    # 5 % labels: half of a mixed batch comes from the labeled rows, the other half uniformly
    # from all rows, so the uniform half holds labeled rows at the data's rate, not 50 %.
    y = torch.as_tensor(_labels())
    idx = labeled_subset(y, 5, seed=0)
    hidden = hide_labels(y, idx)
    sampler = BatchSampler(idx, len(y), 64, "mixed", seed=0)
    uniform_labeled, uniform_rows = 0, 0
    for step in range(200):
        rows = sampler.batch(step)
        mask = sampler.uniform_mask(len(rows))
        assert mask.sum() == 32 and (hidden[rows[:32]] >= 0).all()  # the labeled half
        uniform_labeled += int((hidden[rows[mask.numpy()]] >= 0).sum())
        uniform_rows += int(mask.sum())
    assert abs(uniform_labeled / uniform_rows - len(idx) / len(y)) < 0.01
    # At 100 % labels every row is labeled: one uniform pool, every row a score row.
    full = BatchSampler(np.arange(10), 10, 8, "mixed", seed=0)
    assert len(full.pools) == 1 and full.uniform_mask(8).all()
    assert BatchSampler(np.arange(10), 100, 8, "half", seed=0).uniform_mask(8) is None


def test_half_labeled_batches_are_for_label_reading_terms_only():
    from trainables.methods import EVAL_CLASSIFIER, SCORE_MODEL, get_method

    usage = {m: [a.row_usage for a in get_method(m).artifacts] for m in
             ("CG-SC-all", "Joint-SC", "Cond", "CFG-labeled", "CFG-all", "CG-DLSM")}  # fmt: skip
    assert usage["CG-SC-all"] == ["all", "half"]  # score model uniform, classifier CE/SC half
    assert usage["Joint-SC"] == ["mixed"]  # its DSM rows are the uniform half
    assert usage["CFG-all"] == ["mixed"]  # conditional rows half, unconditional rows uniform
    assert usage["Cond"] == usage["CFG-labeled"] == ["labeled"]
    assert SCORE_MODEL.row_usage == "all" and EVAL_CLASSIFIER.row_usage == "labeled"


def test_joint_dsm_reads_only_the_uniform_rows_and_ce_every_labeled_row():
    from trainables.config import LossConfig
    from trainables.data.batches import Batch, Noise
    from trainables.methods import ModelFns, artifact_loss, get_method

    torch.manual_seed(0)
    x = torch.randn(8, 2)
    y = torch.tensor([0, 1, 1, 0, -1, 1, -1, -1])  # rows 0-3: labeled half; 4-7: uniform half
    uniform = torch.arange(8) >= 4
    noise = Noise(torch.full((8,), 0.5), torch.randn(8, 2), torch.rand(8), torch.ones(8, 2))
    fns = ModelFns(num_classes=2, score_fn=lambda x, s: -x, logits_fn=lambda x, s: x)
    joint = get_method("Joint-SC").artifacts[0]
    _, terms = artifact_loss(joint, fns, Batch(x, y, uniform), noise, LossConfig())
    assert len(terms["joint_dsm_all"]) == 4  # the uniform half only
    assert len(terms["ce_labeled"]) == 5  # the labeled half and the labeled uniform row
    assert len(terms["joint_sc_all"]) == 8  # SC on every row of the batch
