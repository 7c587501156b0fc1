"""Image data (tiny-images, class folders, CIFAR pre-flight) and image training on CPU."""

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.config import from_flat, override
from trainables.data.images import (
    DatasetError,
    check_cifar,
    check_images,
    image_folder,
    scan_folder,
    tiny_images,
)
from trainables.evaluation.images import evaluate_images
from trainables.fit import (
    CHECKPOINT_FILE,
    TrainingSet,
    _random_flip,
    load_checkpoint,
    train_artifact,
)
from trainables.methods import get_method


def test_tiny_images_are_deterministic_balanced_and_class_distinct():
    a, b = tiny_images(64, 32, size=16, seed=3), tiny_images(64, 32, size=16, seed=3)
    torch.testing.assert_close(a.x, b.x)
    assert a.x.shape == (64, 3, 16, 16) and a.x.min() >= 0 and a.x.max() <= 1
    assert torch.bincount(a.y).tolist() == [16, 16, 16, 16]
    # Each class has its own colour: the brightest channel of the class-mean image differs per class
    # or the classes' mean colours are far apart.
    means = torch.stack([a.x[a.y == k].mean((0, 2, 3)) for k in range(4)])
    gaps = torch.cdist(means, means) + torch.eye(4)
    assert gaps.min() > 0.02
    assert not torch.equal(tiny_images(64, 32, seed=4).x, a.x)


def _write_folder(root, sizes):
    for cls, size_list in sizes.items():
        (root / cls).mkdir(parents=True)
        for i, size in enumerate(size_list):
            Image.fromarray(np.full((size, size, 3), (40 * i) % 256, dtype=np.uint8)).save(
                root / cls / f"{i}.png"
            )


def test_image_folder_loads_classes_and_holds_out_a_stratified_tenth(tmp_path):
    _write_folder(tmp_path, {"cats": [8] * 10, "dogs": [8] * 20})
    data = image_folder(str(tmp_path))
    assert data.class_names == ("cats", "dogs") and data.x.shape[1:] == (3, 8, 8)
    assert torch.bincount(data.test_y).tolist() == [1, 2] and len(data.x) == 27


@pytest.mark.parametrize(
    "layout, needle",
    [
        ({}, "0 class folders"),
        ({"cats": [8] * 10, "dogs": [8] * 9 + [16]}, "mixes image sizes: 8x8"),
        ({"cats": [8], "dogs": []}, "class folders without images: \\['dogs'\\]"),
        ({"cats": [8] * 10, "dogs": [8]}, "class 'dogs' has 1 images, fewer than the 10"),
    ],
)
def test_bad_image_folders_are_refused_with_the_fix(tmp_path, layout, needle):
    _write_folder(tmp_path, layout)
    with pytest.raises(DatasetError, match=needle):
        scan_folder(str(tmp_path))


@pytest.mark.parametrize("keep", [0.8, 0.05])  # PIL fails on the pixels, or on the header
def test_a_truncated_image_is_named_before_any_work(tmp_path, keep):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(10):  # noise: the pixel data is most of the file
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / cls / f"{i}.png")
    broken = tmp_path / "dogs" / "3.png"
    data = broken.read_bytes()
    broken.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DatasetError, match=f"{broken} cannot be read .*; replace or remove it"):
        scan_folder(str(tmp_path))


def test_missing_folder_and_missing_cifar_name_the_fix(tmp_path):
    with pytest.raises(DatasetError, match="does not exist; set data.root"):
        check_images(
            from_flat(
                {"data.name": "folder", "data.root": str(tmp_path / "none")}, base="tiny-images"
            ).data
        )
    with pytest.raises(
        DatasetError, match="cifar100 not found.*cifar-100-python.*data.download: true"
    ):
        check_cifar("cifar100", str(tmp_path), download=False)


def test_random_flip_flips_about_half_and_only_horizontally():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float).reshape(2, 3, 4, 4).repeat(50, 1, 1, 1)
    out = _random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out != x).flatten(1).any(1)
    assert 30 < flipped.sum() < 70
    torch.testing.assert_close(out[flipped], x[flipped].flip(-1))


FAST = {
    "train.steps": 8,
    "train.steps_per_epoch": 4,
    "train.batch_size": 8,
    "data.num_train": 64,
    "data.num_test": 32,
}


def _image_setup(method):
    config = from_flat({"method": method, "data.label_percent": 25, **FAST}, base="tiny-images")
    data = tiny_images(64, 32, 16, 0)
    return config, data, TrainingSet.split(data.x, data.y, 4, 25, 0)


def test_image_training_stopped_after_a_checkpoint_resumes_to_the_same_weights(tmp_path):
    config, _, split = _image_setup("CG-SC-all")
    artifact = get_method("CG-SC-all").artifacts[1]  # the classifier: CE + SC (double backward)
    straight = train_artifact(artifact, config, split)
    train_artifact(artifact, config, split, checkpoint_dir=tmp_path, stop_after=4)
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE)["step"] == 4
    resumed = train_artifact(artifact, config, split, checkpoint_dir=tmp_path)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_checkpoint_every_k_steps(tmp_path, monkeypatch):
    import trainables.fit as fit

    saved = []
    real = fit.save_checkpoint
    monkeypatch.setattr(
        fit, "save_checkpoint", lambda path, state: saved.append(state["step"]) or real(path, state)
    )
    flat = {**FAST, "method": "CG", "train.checkpoint_every": 3, "train.steps_per_epoch": 100}
    config = from_flat(flat, base="tiny-images")
    _, _, split = _image_setup("CG")
    train_artifact(get_method("CG").artifacts[0], config, split, checkpoint_dir=tmp_path)
    # Every 3 steps, then the end of training (the only epoch end): 3, 6, 8.
    assert saved == [3, 6, config.train.steps] and config.train.steps == 8
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE)["step"] == 8


@pytest.mark.parametrize("method", ["CG-SC-all", "Joint-SC", "CFG-all", "CG-DLSM"])
def test_every_family_learns_on_images(method):
    """Each family's networks, trained 8 steps on images, guide better than after 1 step: a lower
    held-out guided DSM (the metric image studies select on; the true conditional score minimises
    it), and finite samples of every class."""
    from trainables.fit import train_method

    config, data, split = _image_setup(method)
    # No warm-up and no weight averaging, so that 8 steps move the weights evaluated; fast sampling.
    config = override(config, {"train.warmup": 0, "train.ema_decay": 0.0, "sample.num_steps": 4,
                               "sample.num_per_class": 2, "eval.prdc_k": 0})  # fmt: skip
    metrics, samples = evaluate_images(config, train_method(config, split), data)
    one_step = override(config, {"train.steps": 1, "train.steps_per_epoch": 1})
    before, _ = evaluate_images(one_step, train_method(one_step, split), data)
    assert metrics["guided_dsm"] < 0.95 * before["guided_dsm"], (metrics, before)
    assert samples.shape == (4 * config.sample.num_per_class, 3, 16, 16)
    assert metrics["sample_finite_fraction"] == 1.0
    if method != "CFG-all":
        assert 0 <= metrics["clf_accuracy"] <= 1 and "clf_accuracy_sigma1" in metrics


def test_guided_dsm_prefers_the_true_score_direction():
    # On held-out images, a score that points from the noisy point back to the clean image has a
    # lower
    # guided_dsm than a zero score: the metric measures what it claims to.
    config, data, _ = _image_setup("Cond")

    means = torch.stack([data.x[data.y == k].mean(0) for k in range(4)])
    variances = torch.stack([data.x[data.y == k].var(0) for k in range(4)]) + 1e-3

    class Oracle(torch.nn.Module):
        def __init__(self, shrink):
            super().__init__()
            self.shrink = shrink

        def forward(self, x, sigma, y):
            # The exact perturbed score of a per-class diagonal Gaussian fit: (mu_y - x) / (v_y +
            # sigma^2).
            return self.shrink * (means[y] - x) / (variances[y] + sigma.reshape(-1, 1, 1, 1) ** 2)

    good = evaluate_images(config, {"conditional": Oracle(1.0)}, data)[0]["guided_dsm"]
    zero = evaluate_images(config, {"conditional": Oracle(0.0)}, data)[0]["guided_dsm"]
    assert good < zero


def test_bf16_autocast_trains_the_sc_classifier_with_finite_losses():
    config, _, split = _image_setup("CG-SC-all")
    config = from_flat(
        {"method": "CG-SC-all", "data.label_percent": 25, **FAST, "train.precision": "bf16"},
        base="tiny-images",
    )
    seen = []
    net = train_artifact(get_method("CG-SC-all").artifacts[1], config, split, callback=seen.append)
    assert all(np.isfinite(m["classifier/loss"]) for m in seen)
    assert all(p.dtype == torch.float32 for p in net.parameters())  # autocast: weights stay fp32


def test_class_conditional_sampling_is_batched_across_classes_and_deterministic():
    from trainables.evaluation.sampling import sample_classes
    from trainables.fit import train_method

    config, data, split = _image_setup("Cond")
    nets = train_method(config, split)
    small = from_flat(
        {
            "method": "Cond",
            "sample.num_per_class": 3,
            "eval.prdc_k": 0,
            "sample.num_steps": 4,
            "sample.batch_size": 5,
        },
        base="tiny-images",
    )
    a, y = sample_classes(small, nets, 4, (3, 16, 16))
    b, _ = sample_classes(small, nets, 4, (3, 16, 16))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.bincount(y).tolist() == [3, 3, 3, 3] and torch.isfinite(a).all()
    # Another seed gives other samples.
    other = from_flat(
        {
            "method": "Cond",
            "sample.num_per_class": 3,
            "eval.prdc_k": 0,
            "sample.num_steps": 4,
            "sample.batch_size": 5,
            "sample.seed": 1,
        },
        base="tiny-images",
    )
    assert not torch.equal(sample_classes(other, nets, 4, (3, 16, 16))[0], a)


# ---- shapes: a harder built-in set with a difficulty knob -----------------------------------


def _linear_probe_accuracy(difficulty, num_classes=10):
    # The same classifier each time (logistic regression on the pixels, 60 images per class):
    # its held-out accuracy is what the difficulty should move.
    from sklearn.linear_model import LogisticRegression

    from trainables.data.images import shapes

    data = shapes(60 * num_classes, 300, 16, seed=3, difficulty=difficulty, num_classes=num_classes)
    probe = LogisticRegression(max_iter=300, C=0.5)
    probe.fit(data.x.flatten(1).numpy(), data.y.numpy())
    return probe.score(data.test_x.flatten(1).numpy(), data.test_y.numpy())


def test_a_classifier_trained_the_same_way_is_less_accurate_at_a_higher_difficulty():
    easy, middle, hard = (_linear_probe_accuracy(d) for d in (0.0, 0.5, 1.0))
    assert easy > middle + 0.05 and middle > hard + 0.05, (easy, middle, hard)
    assert hard > 0.1 + 0.03  # still above chance (10 classes): harder, not noise


def test_shapes_classes_share_their_cues_and_the_draw_is_deterministic():
    import torch

    from trainables.data.images import SHAPE_CLASSES, shapes

    colours = [c[1] for c in SHAPE_CLASSES]
    kinds = [c[2] for c in SHAPE_CLASSES]
    assert all(colours.count(c) >= 2 for c in colours)  # no colour names a class alone
    assert all(kinds.count(k) >= 2 for k in kinds)  # nor does a shape
    a, b = shapes(40, 10, 16, seed=5, num_classes=4), shapes(40, 10, 16, seed=5, num_classes=4)
    assert torch.equal(a.x, b.x) and a.num_classes == 4 and set(a.y.tolist()) == {0, 1, 2, 3}
    assert a.x.shape == (40, 3, 16, 16) and 0.0 <= a.x.min() and a.x.max() <= 1.0


def test_the_sample_grid_has_a_labelled_row_per_class(tmp_path):
    import matplotlib.pyplot as plt

    from trainables.evaluation.images import save_sample_grid

    labels = []
    original = plt.Figure.savefig

    def spy(fig, path, **kw):
        labels.extend(ax.get_ylabel() for ax in fig.axes)
        return original(fig, path, **kw)

    plt.Figure.savefig = spy
    try:
        save_sample_grid(torch.rand(3 * 5, 3, 8, 8), ("cat", "dog", "owl"), tmp_path / "s.png")
    finally:
        plt.Figure.savefig = original
    assert labels == ["cat", "dog", "owl"] and (tmp_path / "s.png").stat().st_size > 0


def test_a_scale_only_evaluation_reads_the_score_network_once_per_point():
    # The guidance race measures guided_dsm at several scales: the unconditional score_dsm (a
    # fixed metric) is not measured again at each, and guided_dsm is the same either way.
    config, data, _ = _image_setup("CG")

    class Score(torch.nn.Module):
        points = 0

        def forward(self, x, sigma):
            self.points += len(x)
            return -x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 4)

        def forward(self, x, sigma):
            return self.linear(x.mean((2, 3)))

    torch.manual_seed(0)
    score, classifier = Score(), Classifier()
    networks = {"score": score, "classifier": classifier}
    scaled, _ = evaluate_images(config, networks, data, fixed=False, draw=False)
    rows = min(config.eval.num_points, len(data.test_x) // 2)
    assert score.points == rows * len(config.eval.sigmas)  # the guided score's reads only
    both, _ = evaluate_images(config, networks, data, fixed=True, draw=False)
    assert scaled == {"guided_dsm": both["guided_dsm"]} and "score_dsm" in both
