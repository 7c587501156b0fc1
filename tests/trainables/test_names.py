"""trainables.names states, torch-free, what the registry and the evaluation code do."""

import subprocess
import sys

import torch

from trainables import names
from trainables.config import from_flat
from trainables.data.images import tiny_images
from trainables.data.toy import make_toy
from trainables.evaluation.images import evaluate_images
from trainables.evaluation.toy import evaluate_toy
from trainables.methods import METHODS
from trainables.networks import build_network


def test_method_names_and_tuned_keys_are_the_registrys():
    assert tuple(names.METHODS) == tuple(METHODS)
    assert names.TUNED_KEYS == {name: m.tuned_keys for name, m in METHODS.items()}


def test_classifier_and_score_methods_are_the_registrys():
    kinds = {name: {a.network for a in m.artifacts} for name, m in METHODS.items()}
    with_logits = {n for n, k in kinds.items() if k & {"classifier", "joint"}}
    with_score = {n for n, k in kinds.items() if k & {"score", "joint"}}
    assert names.WITH_CLASSIFIER == with_logits and names.WITH_SCORE == with_score


def _untrained(method, dim, config):
    torch.manual_seed(0)
    kinds = {a.network for a in METHODS[method].artifacts}
    return {
        k: build_network(k, dim=dim, num_classes=2 if dim == 2 else 4, model_config=config.model)
        for k in kinds
    }


def _scalars(metrics):
    per_class = {k for k in metrics if k.rsplit("_class", 1)[-1].isdigit()}
    per_level = {k for k in metrics if k.startswith(("clf_accuracy_sigma", "sc_ratio_"))}
    return set(metrics) - per_class - per_level


def test_toy_trials_report_exactly_the_named_metrics():
    data = make_toy("gmm2", 100, 50, seed=0)
    for method in names.METHODS:
        config = from_flat(
            {
                "method": method,
                "sample.num_steps": 3,
                "sample.num_per_class": 5,
                "eval.num_points": 10,
            },
            base="toy",
        )
        metrics = evaluate_toy(config, _untrained(method, 2, config), data)
        assert _scalars(metrics) == names.reported_metrics(method, images=False), method


def test_image_trials_report_the_named_held_out_metrics():
    data = tiny_images(16, 8, 8, 0)
    for method in ("CG", "Joint-SC", "Cond"):
        flat = {
            "method": method,
            "data.image_size": 8,
            "sample.num_steps": 2,
            "sample.num_per_class": 1,
            "eval.prdc_k": 0,
        }
        config = from_flat(flat, base="tiny-images")
        metrics, _ = evaluate_images(config, _untrained(method, (3, 8, 8), config), data)
        expected = names.reported_metrics(method, images=True, generation=False)
        assert _scalars(metrics) == expected, method


def test_names_search_spaces_and_analysis_import_neither_torch_nor_ray():
    code = (
        "import sys, trainables.names, search_spaces, analysis.tables, analysis.runs;"
        "bad = [m for m in ('torch', 'ray') if m in sys.modules]; assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-500:]


def test_the_dataset_names_are_the_sets_the_loaders_draw():
    from trainables.data.images import IMAGE_DATASETS
    from trainables.data.toy import TOY_MIXTURES
    from trainables.names import TOY_DATASETS

    assert TOY_DATASETS == (*TOY_MIXTURES, "moons")
    assert "tiny-images" in IMAGE_DATASETS and "folder" in IMAGE_DATASETS


def test_the_torch_free_tables_are_the_code_they_describe():
    """The counts `study plan` reads without torch equal what the code draws and runs."""
    from trainables.data.toy import make_toy
    from trainables.methods import TERM_FNS
    from trainables.registry import TERMS
    from trainables.samplers import SAMPLERS

    assert names.TOY_CLASSES == {d: make_toy(d, 4, 4, 0).num_classes for d in names.TOY_DATASETS}
    assert set(TERM_FNS) == set(TERMS)  # every term of the registry has its function
    assert set(names.SAMPLER_SCORE_EVALS) == set(SAMPLERS)
