"""Evaluation sharded over a trial's data-parallel ranks (issue 13, item 4): 2 gloo ranks draw the
samples a single process draws, each reads the features of half of them, and rank 0 measures the
same metrics."""

import multiprocessing as mp
import os

import pytest
import torch
from cli_helpers import free_port

from trainables.config import from_flat
from trainables.data.images import make_images
from trainables.evaluation import TrialEvaluator
from trainables.fit import Distributed, build
from trainables.methods import get_method

SCALES = (1.0, 2.0)
OBJECTIVES = (("fid", "min"),)


def _setup(cache_dir):
    flat = {
        "method": "CG",
        "data.num_train": 64,
        "data.num_test": 64,
        "sample.num_per_class": 8,
        "sample.batch_size": 8,  # 4 chunks of 8: 2 per rank
        "sample.num_steps": 6,
        "eval.num_points": 32,
        "eval.val_num_per_class": 8,  # validation races: 4 per class (2 chunks), then 8 for one
        "eval.classifier_steps": 20,
        "eval.cache_dir": cache_dir,
    }
    config = from_flat(flat, base="tiny-images")
    data = make_images(config.data)
    networks = {
        a.network: build(a, config, tuple(data.x.shape[1:]), data.num_classes).eval()
        for a in get_method("CG").artifacts
    }
    return config, data, networks


def _evaluate(cache_dir, distributed=None):
    config, data, networks = _setup(cache_dir)
    evaluator = TrialEvaluator(config, data)
    sweep = evaluator.validate(networks, SCALES, OBJECTIVES, distributed=distributed)
    metrics, samples = evaluator(networks, scale=sweep.scale, distributed=distributed)
    return sweep, metrics, samples, evaluator.samples_read


def _rank(rank, port, cache_dir, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        sweep, metrics, samples, read = _evaluate(cache_dir, Distributed.from_torch())
        torch.save(
            {
                "scale": sweep.scale,
                "curve": sweep.curve,
                "metrics": metrics,
                "samples": samples,
                "read": read,
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # over 10 s: `make test` only
def test_two_ranks_draw_the_samples_and_measure_the_metrics_of_one_process(tmp_path):
    cache_dir = str(tmp_path / "evaluation")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: the same reduction order, the same rounding
    try:
        sweep, metrics, samples, read = _evaluate(cache_dir)  # also trains the eval classifier
    finally:
        torch.set_num_threads(threads)
    port = free_port()
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_rank, args=(r, port, cache_dir, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r in ranks:  # every rank holds every sample, and they are one process's samples
        torch.testing.assert_close(r["samples"], samples, rtol=0, atol=1e-6)
        assert r["scale"] == sweep.scale
    lead = ranks[0]
    assert lead["metrics"].keys() == metrics.keys() and "fid" in metrics
    for key, value in metrics.items():
        if key == "reference_stats_reused":  # the first run computed them, the ranks reuse them
            assert lead["metrics"][key] == 1.0 and value == 0.0
            continue
        assert lead["metrics"][key] == pytest_approx(value), key
    assert lead["curve"].keys() == sweep.curve.keys()
    for scale, curve in sweep.curve.items():
        for key, value in curve.items():
            if key == "reference_stats_reused":
                continue
            assert lead["curve"][scale][key] == pytest_approx(value), (scale, key)
    assert ranks[1]["metrics"] == {}  # the other rank samples and reads features, rank 0 measures
    # Feature extraction is sharded too: each rank read the features of half the samples.
    # The race: both scales at 4 per class (2 x 16 samples), the survivor's 8 per class (32), test
    # 8 per class (32).
    assert [r["read"] for r in ranks] == [read // 2, read // 2] and read == 2 * 16 + 32 + 32


def pytest_approx(value):
    import pytest

    return pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True)
