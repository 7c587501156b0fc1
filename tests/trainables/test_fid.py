"""FID / intra-FID / IS / generation accuracy, reference statistics, the evaluation classifier."""

import numpy as np
import pytest
import torch

from trainables.config import from_flat
from trainables.data.images import tiny_images
from trainables.evaluation.fid import (
    EvalError,
    FeatureExtractor,
    Stats,
    check_inception,
    class_stats,
    fid,
    generation_metrics,
    inception_extractor,
    inception_score,
    reference_stats,
)


def test_fid_of_a_set_against_its_own_statistics_is_zero_and_a_shift_adds_its_squared_norm():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(4000, 8)) @ rng.normal(size=(8, 8))
    assert abs(fid(Stats.of(feats), Stats.of(feats))) < 1e-6
    # Same covariance, mean moved by delta: FID = ||delta||^2 exactly.
    delta = np.array([1.0, -2.0, 0.5, 0, 0, 0, 0, 3.0])
    assert fid(Stats.of(feats + delta), Stats.of(feats)) == pytest.approx(
        float(delta @ delta), rel=1e-6
    )
    # A larger shift gives a larger FID.
    assert fid(Stats.of(feats + 2 * delta), Stats.of(feats)) > fid(
        Stats.of(feats + delta), Stats.of(feats)
    )


def test_inception_score_bounds():
    k = 5
    assert inception_score(np.full((100, k), 1.0 / k), splits=10)[0] == pytest.approx(1.0)
    assert inception_score(np.eye(k)[np.arange(100) % k], splits=10)[0] == pytest.approx(
        k, rel=1e-6
    )


class _Counting(FeatureExtractor):
    """Features = per-channel means and a few pixels: a small custom extractor (no Inception
    here)."""

    def __init__(self):
        self.calls = 0

        def features(images):
            self.calls += 1
            x = images.flatten(2)
            return torch.cat([x.mean(2), x[:, :, ::37].flatten(1)], 1).double().numpy()

        super().__init__(
            "test extractor",
            features,
            lambda images: torch.softmax(images.flatten(1)[:, :4] * 5, 1).double().numpy(),
            "test-v1",
        )


def test_intra_fid_is_the_mean_of_per_class_fids_and_accuracy_counts_the_intended_class():
    data = tiny_images(400, 200, size=8, seed=0)
    extractor = _Counting()
    reference = class_stats(extractor.features(data.x), data.y.numpy(), 4)
    labels = data.test_y
    predicted = labels.numpy().copy()
    predicted[:50] = (predicted[:50] + 1) % 4  # 50 of 200 misclassified
    metrics, warnings = generation_metrics(
        data.test_x, labels, 4, extractor, reference, lambda x: predicted
    )
    per_class = [metrics[f"intra_fid_class{k}"] for k in range(4)]
    assert metrics["intra_fid"] == pytest.approx(np.mean(per_class))
    assert metrics["gen_accuracy"] == pytest.approx(0.75)
    assert np.mean([metrics[f"gen_accuracy_class{k}"] for k in range(4)]) == pytest.approx(
        0.75, abs=0.02
    )
    assert 1.0 <= metrics["inception_score"] <= 4.0
    # Held-out real images are close to the training statistics; noise images are far.
    noise = torch.rand_like(data.test_x)
    assert (
        metrics["fid"]
        < generation_metrics(noise, labels, 4, extractor, reference, lambda x: predicted)[0]["fid"]
    )
    assert warnings == [] and metrics["fid_warning"] == 0


def test_too_few_samples_for_the_feature_dimension_is_a_warning_not_a_silent_number():
    data = tiny_images(400, 16, size=8, seed=0)
    extractor = _Counting()
    reference = class_stats(extractor.features(data.x), data.y.numpy(), 4)
    metrics, warnings = generation_metrics(
        data.test_x, data.test_y, 4, extractor, reference, lambda x: data.test_y.numpy()
    )
    assert metrics["fid_warning"] == 1 and any("biased high" in w for w in warnings)


def test_reference_statistics_are_computed_once(tmp_path):
    data = tiny_images(100, 10, size=8, seed=0)
    extractor = _Counting()
    identity = {"name": "tiny-images", "num_train": 100}
    first, cached_first = reference_stats(data.x, data.y, 4, extractor, identity, tmp_path)
    second, cached_second = reference_stats(data.x, data.y, 4, extractor, identity, tmp_path)
    assert (cached_first, cached_second, extractor.calls) == (False, True, 1)
    np.testing.assert_array_equal(first["2"].sigma, second["2"].sigma)
    # Another dataset identity is another file.
    reference_stats(data.x, data.y, 4, extractor, {**identity, "num_train": 99}, tmp_path)
    assert extractor.calls == 2


def test_trials_writing_the_same_reference_statistics_at_once_all_succeed(tmp_path, monkeypatch):
    # Seen in a tiny-images study: two trials computed the statistics together, shared one
    # temporary file, and the second rename failed (FileNotFoundError), losing a table cell.
    import threading

    import trainables.evaluation.fid as fid_module

    data = tiny_images(40, 8, size=8, seed=0)
    barrier, real_savez = threading.Barrier(2, timeout=10), np.savez

    def savez_then_wait(path, **arrays):
        real_savez(path, **arrays)
        barrier.wait()  # both writers have written their temporary file before either renames

    monkeypatch.setattr(fid_module.np, "savez", savez_then_wait)
    errors = []

    def compute():
        try:
            reference_stats(data.x, data.y, 4, _Counting(), {"name": "t"}, tmp_path)
        except Exception as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)

    threads = [threading.Thread(target=compute) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(list(tmp_path.glob("*.npz"))) == 1


def test_inception_weights_writable_by_others_are_refused(tmp_path):
    from trainables.evaluation.fid import INCEPTION_FILE, EvalError, check_inception

    weights = tmp_path / INCEPTION_FILE
    weights.write_bytes(b"not loaded")
    weights.chmod(0o644)
    assert check_inception(str(weights)) == weights
    weights.chmod(0o666)  # anyone could have replaced it with code that runs when loaded
    with pytest.raises(EvalError, match="writable by others"):
        check_inception(str(weights))


def test_missing_inception_weights_name_the_fix(tmp_path):
    with pytest.raises(
        EvalError,
        match="Inception weights not found at .*nope.pt.*eval.inception_weights.*eval_classifier",
    ):
        check_inception(str(tmp_path / "nope.pt"))


def test_inception_path_resizes_to_299_and_uses_the_detector(tmp_path):
    """clean-fid's preparation before the detector: pixels quantised to 0..255 and resized cleanly
    to 299; (x - 128) / 128 into its layers for the features, the pixels into the detector for the
    IS probabilities, without the output bias. The stand-in TorchScript detector (the StyleGAN2
    interface; the real weights cannot be downloaded here) answers each channel's mean, so a
    constant-colour image has known features and probabilities."""

    class Layers(torch.nn.Module):
        def forward(self, x):
            assert x.shape[-2:] == (299, 299)
            return x.mean((2, 3), keepdim=True).repeat(1, 683, 1, 1)[:, :2048]

    class Detector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = Layers()

        def forward(self, x, no_output_bias: bool = False):
            logits = x.mean((2, 3)) / 100.0  # it takes pixels in 0..255
            if not no_output_bias:  # a bias the IS mode leaves out
                logits = logits + torch.tensor([5.0, 0.0, 0.0])
            return torch.softmax(logits, 1)

    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(Detector()).save(str(path))
    extractor = inception_extractor(str(path))
    colour = torch.tensor([0.2, 0.6, 0.8])  # 51, 153, 204 of 255
    images = colour[None, :, None, None].expand(3, 3, 16, 16)
    expected = (torch.tensor([51.0, 153.0, 204.0]) - 128) / 128
    feats = extractor.features(images)
    assert feats.shape == (3, 2048) and extractor.identity.startswith("inception-")
    np.testing.assert_allclose(feats, expected.repeat(683)[:2048].expand(3, 2048), atol=1e-5)
    probs = extractor.probs(images)
    pixels = torch.tensor([51.0, 153.0, 204.0])  # the detector's IS mode reads them unnormalised
    np.testing.assert_allclose(probs, torch.softmax(pixels / 100, 0).expand(3, 3), atol=1e-5)


def test_eval_classifier_accuracy_on_real_held_out_images_equals_its_test_accuracy(tmp_path):
    from trainables import names
    from trainables.evaluation.generation import build_evaluator, evaluate_generation

    config = from_flat(
        {
            "data.num_train": 128,
            "data.num_test": 64,
            "eval.classifier_steps": 100,
            "eval.cache_dir": str(tmp_path),
        },
        base="tiny-images",
    )
    data = tiny_images(128, 64, 16, 0)
    evaluator = build_evaluator(config, data, log=lambda *a: None)
    metrics, _ = evaluate_generation(data.test_x, data.test_y, 4, evaluator)
    # Real test images as "samples": generation accuracy is the classifier's test accuracy ...
    assert metrics["gen_accuracy"] == pytest.approx(evaluator.classifier_test_accuracy)
    # ... which is the argmax of its logits at sigma_min, computed here independently,
    with torch.no_grad():
        sigma = torch.full((len(data.test_x),), config.sde.sigma_min)
        logits = evaluator.classifier(data.test_x, sigma)
    direct = (logits.argmax(1) == data.test_y).double().mean().item()
    assert evaluator.classifier_test_accuracy == pytest.approx(direct)
    # ... and far above chance (4 classes of distinct colours and shapes).
    assert direct >= 0.9
    per_class = {k for k in metrics if k.rsplit("_class", 1)[-1].isdigit()}
    assert set(metrics) - per_class == names.GENERATION_METRICS
    again = build_evaluator(config, data, log=lambda *a: None)
    assert again.reference_cached and again.classifier_key == evaluator.classifier_key


def test_feature_batches_halve_on_out_of_memory_until_one_fits():
    """eval.feature_batch_size is a ceiling: a batch that runs out of device memory is halved
    until one fits, and the features come back complete and in order."""
    from trainables.evaluation.fid import batched

    images = torch.arange(10.0)[:, None]
    seen = []

    def read(batch):
        seen.append(len(batch))
        if len(batch) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return batch.numpy() * 2

    out = batched(read, images, 8)
    np.testing.assert_array_equal(out, images.numpy() * 2)
    assert seen == [8, 4, 2, 2, 2, 2, 2]  # 8 and 4 fail; 2 fits and stays for the rest

    def never(batch):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        batched(never, images, 4)


# ---- precision, recall, density, coverage (Naeem et al. 2020, the prdc package) ---------------


def test_prdc_of_identical_and_of_disjoint_feature_sets():
    import numpy as np

    from trainables.evaluation.fid import prdc

    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 8)).astype(np.float32)
    same = prdc(real, real.copy(), nearest_k=5)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    far = prdc(real, real + 100.0, nearest_k=5)  # the same shape, far away: nothing overlaps
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    assert prdc(real, real[:6], nearest_k=5) is None  # a k-th neighbour needs k + 2 points
    assert prdc(real, real[:7], nearest_k=5) is not None


def test_prdc_measures_its_distances_in_the_calling_thread(monkeypatch):
    """The prdc package asks scikit-learn for 8 jobs: 8 threads and ~50 ms per set in a trial of
    one CPU. Its distances must run in the thread that asked, with the library's values."""
    import contextlib
    import io
    import threading

    import numpy as np
    from prdc import compute_prdc
    from sklearn.metrics import pairwise

    from trainables.evaluation.fid import prdc

    rng = np.random.default_rng(2)
    real = rng.normal(size=(300, 8)).astype(np.float32)
    fake = rng.normal(size=(200, 8)).astype(np.float32) + 0.5
    with contextlib.redirect_stdout(io.StringIO()):
        expected = compute_prdc(real_features=real, fake_features=fake, nearest_k=5)
    euclidean, seen = pairwise.PAIRWISE_DISTANCE_FUNCTIONS["euclidean"], set()

    def traced(*args, **kwargs):
        seen.add(threading.get_ident())
        return euclidean(*args, **kwargs)

    monkeypatch.setitem(pairwise.PAIRWISE_DISTANCE_FUNCTIONS, "euclidean", traced)
    values = prdc(real, fake, nearest_k=5)
    assert seen == {threading.get_ident()}
    assert values == {name: float(v) for name, v in expected.items()}
    assert 0.0 < values["precision"] < 1.0 and 0.0 < values["coverage"] < 1.0  # not a corner


def test_generation_metrics_report_prdc_overall_and_per_class():
    import numpy as np
    import torch

    from trainables.evaluation.fid import Measured, class_stats, generation_metrics

    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 60)
    feats = rng.normal(size=(120, 4)).astype(np.float32) + labels[:, None] * 10.0
    reference = class_stats(feats, labels, 2)
    # Samples: class 0 drawn where class 0 lives; "class 1" samples drawn where class 0 lives too.
    fake = rng.normal(size=(120, 4)).astype(np.float32)
    measured = Measured(fake, None, labels.copy())
    metrics, _ = generation_metrics(
        torch.zeros(120, 1), torch.as_tensor(labels), 2, None, reference, None, measured,
        nearest_k=5,
    )  # fmt: skip
    assert metrics["precision_class1"] == 0.0 and metrics["precision_class0"] > 0.8
    assert metrics["recall_class1"] == 0.0 and 0.8 < metrics["precision"]  # all near real data
    assert metrics["coverage"] < 0.6  # but half the reference (class 1) is never covered
    assert (
        metrics["intra_precision"]
        == (metrics["precision_class0"] + metrics["precision_class1"]) / 2
    )


def test_a_study_owns_its_yardstick_seeded_from_and_published_to_the_shared_store(
    tmp_path, monkeypatch
):
    """Study A trains the evaluation classifier into its own evaluation/ and publishes it; study
    B copies it from the shared store instead of training; A moved elsewhere with the shared store
    gone still measures with its own copy (nothing trained, the same classifier, cached
    statistics)."""
    import shutil

    from trainables.evaluation import generation

    data = tiny_images(128, 64, 16, 0)

    def config(study, shared):
        flat = {"data.num_train": 128, "data.num_test": 64, "eval.classifier_steps": 50}
        flat |= {"eval.cache_dir": str(study / "evaluation"), "eval.shared_cache_dir": str(shared)}
        return from_flat(flat, base="tiny-images")

    quiet = {"log": lambda *a: None}
    shared = tmp_path / "store" / "evaluation"
    first = generation.build_evaluator(config(tmp_path / "a", shared), data, **quiet)
    assert not first.reference_cached
    assert len(list(shared.glob("eval-classifiers/*/model.pt"))) == 1
    assert len(list(shared.glob("fid-stats/*.npz"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("the evaluation classifier was trained again")

    monkeypatch.setattr(generation, "train_artifact", no_training)
    second = generation.build_evaluator(config(tmp_path / "b", shared), data, **quiet)
    assert second.reference_cached and second.classifier_key == first.classifier_key
    assert len(list((tmp_path / "b").glob("evaluation/eval-classifiers/*/model.pt"))) == 1
    (tmp_path / "a").rename(tmp_path / "moved")
    shutil.rmtree(tmp_path / "store")
    moved = generation.build_evaluator(config(tmp_path / "moved", shared), data, **quiet)
    assert moved.reference_cached and moved.classifier_key == first.classifier_key
    assert moved.classifier_test_accuracy == first.classifier_test_accuracy
