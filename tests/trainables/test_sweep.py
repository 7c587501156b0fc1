"""The guidance sweep's race (trainables.sweep): successive halving over the scales on
rigged noisy validation curves, whose values at every (scale, samples per class) are fixed in
advance, so the full sweep and the race read the same numbers where they measure the same thing."""

import math
import random

import pytest
import torch

from trainables.sweep import extension_probes, first_round, race, race_samples, survivors

GRID = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def rigged(optimum: float, seed: int, noise: float = 0.3):
    """A validation curve |log2 s - log2 optimum| (lower is better) plus noise of standard
    deviation noise * sqrt(4 / n) at n samples per class, drawn once per (scale, n)."""
    calls: list[tuple[tuple[float, ...], int]] = []

    def value(scale: float, n: int) -> float:
        rng = random.Random(f"{seed}:{scale}:{n}")
        return abs(math.log2(scale / optimum)) + rng.gauss(0, noise * math.sqrt(4 / n))

    def measure(scales, n):
        calls.append((tuple(scales), n))
        return {s: {"fid": value(s, n), "other": 1.0} for s in scales}

    return measure, calls


def samples_drawn(calls) -> int:
    """Samples per class a race drew, summed over its scales: a scale measured again at n draws
    only what it lacks (its earlier blocks are kept)."""
    reached: dict[float, int] = {}
    drawn = 0
    for scales, n in calls:
        for scale in scales:
            drawn += n - reached.get(scale, 0)
            reached[scale] = n
    return drawn


@pytest.mark.parametrize("seed", range(30))
def test_halving_picks_the_scale_the_full_sweep_picks_on_a_noisy_curve(seed):
    optimum = random.Random(seed).choice([0.7, 1.4, 2.9, 5.5, 11.0])
    measure, calls = rigged(optimum, seed)
    full = race(GRID, measure, ("fid", "min"), cap=16.0, n_final=16, n_first=16)
    assert calls == [(GRID, 16)]  # no halving: every scale in full, once
    calls.clear()
    halved = race(GRID, measure, ("fid", "min"), cap=16.0, n_final=16, n_first=4)
    assert halved.scale == full.scale
    assert halved.reached[halved.scale] == 16  # the choice is measured with the full samples
    assert halved.metrics["fid"] == full.curve[full.scale]["fid"]
    assert [n for _, n in calls] == [4, 8, 16]
    assert [len(s) for s, _ in calls] == [6, 3, 2]
    drawn = sum(len(s) * (n - dict(zip((4, 8, 16), (0, 4, 8)))[n]) for s, n in calls)
    assert drawn == race_samples(6, 16, 4) == 52 < 6 * 16


def test_an_edge_optimum_is_bracketed_by_cheap_probes_then_raced():
    """Optimum at 12 beyond the grid's top 4 (cap 64): probes 8, 16, then 32 at the first
    round's samples, the race among grid and probes; the full
    sweep (no halving) goes the same way at full samples and picks the same scale."""
    measure, calls = rigged(12.0, seed=1, noise=0.05)
    grid = (0.5, 1.0, 2.0, 4.0)
    full = race(grid, measure, ("fid", "min"), cap=64.0, n_final=16, n_first=16)
    calls.clear()
    halved = race(grid, measure, ("fid", "min"), cap=64.0, n_final=16, n_first=4)
    assert halved.scale == full.scale == 16.0
    # Probes at the first round's samples until the curve turns (32 is worse than 16), then the
    # race over grid and probes.
    assert calls[:4] == [(grid, 4), ((8.0,), 4), ((16.0,), 4), ((32.0,), 4)]
    assert calls[4:] == [((4.0, 8.0, 16.0, 32.0), 8), ((8.0, 16.0), 16)]
    assert halved.reached[16.0] == 16 and halved.reached[0.5] == 4


def test_an_edge_the_leader_reaches_in_a_later_round_is_probed_on_that_rounds_samples():
    """The first round's few samples per class rank 2 first (noise), more samples rank the grid's
    top, 4, first, and the optimum is 12 (cap 64): the race probes past 4 after the round that
    shows it, each probe drawn through the rounds' sample sizes (its blocks are the survivors'),
    and picks what the full sweep picks; before, it stopped at 4."""
    calls = []

    def measure(scales, n):
        calls.append((tuple(scales), n))
        value = {s: abs(math.log2(s / 12.0)) for s in scales}
        if n == 4:  # the first round's noise puts 2 ahead
            value = {s: -1.0 if s == 2.0 else v for s, v in value.items()}
        return {s: {"fid": v} for s, v in value.items()}

    grid = (0.5, 1.0, 2.0, 4.0)
    full = race(grid, measure, ("fid", "min"), cap=64.0, n_final=16, n_first=16)
    calls.clear()
    halved = race(grid, measure, ("fid", "min"), cap=64.0, n_final=16, n_first=4)
    assert halved.scale == full.scale == 16.0
    assert calls[:2] == [(grid, 4), ((2.0, 4.0), 8)]  # no probe after the first round
    # 4 leads at 8 samples: probes 8, 16 and 32 (where the curve turns), each catching up
    # through 4 and 8 samples; then the better 3 of the 5 at the full samples.
    assert calls[2:8] == [((s,), n) for s in (8.0, 16.0, 32.0) for n in (4, 8)]
    assert calls[8:] == [((8.0, 16.0, 32.0), 16)]
    assert halved.reached[16.0] == 16 and halved.metrics["fid"] == full.curve[16.0]["fid"]


@pytest.mark.parametrize("seed", range(40))
def test_what_a_race_draws_is_at_most_what_the_plan_counts(seed):
    """The plan's count (race_samples with the most probes the cap allows) bounds every race, the
    probes added after any round; noisy rigged curves with optima inside and past the grid."""
    rng = random.Random(seed)
    grid = (0.5, 1.0, 2.0, 4.0)
    cap, n_final, n_first = rng.choice([8.0, 16.0, 64.0]), rng.choice([8, 16, 32]), 4
    measure, calls = rigged(rng.choice([0.3, 1.4, 5.5, 12.0, 40.0]), seed, noise=1.0)
    race(grid, measure, ("fid", "min"), cap=cap, n_final=n_final, n_first=n_first)
    drawn = samples_drawn(calls)
    assert drawn <= race_samples(len(grid), n_final, n_first, extension_probes(grid, cap))


def test_a_race_that_turns_to_the_other_edge_stays_within_the_plans_count():
    """The first round leads at the top (probes 8 and 16), the second at the bottom (probes 0.25,
    0.125, 0.0625): both edges' probes, 84 samples per class, which the plan counts (it counted
    one edge's, 80)."""
    calls = []

    def measure(scales, n):
        calls.append((tuple(scales), n))
        first = {4.0: 0.2, 8.0: 0.0, 16.0: 0.5, 0.5: 0.3}
        return {s: {"fid": first.get(s, 1.0) if n == 4 else math.log2(s)} for s in scales}

    grid = (0.5, 1.0, 2.0, 4.0)
    chosen = race(grid, measure, ("fid", "min"), cap=16.0, n_final=16, n_first=4)
    probed = [s for s, _ in calls[1:] if len(s) == 1]
    assert list(dict.fromkeys(probed)) == [(8.0,), (16.0,), (0.25,), (0.125,), (0.0625,)]
    assert chosen.scale == 0.0625
    drawn = samples_drawn(calls)
    assert extension_probes(grid, 16.0) == 2 + 3
    assert drawn == 84 <= race_samples(len(grid), 16, 4, extension_probes(grid, 16.0))


def test_survivors_keep_the_better_half_with_unmeasured_scales_last():
    curve = {1.0: {"m": 3.0}, 2.0: {"m": 1.0}, 4.0: {"m": math.nan}, 8.0: {"m": 2.0}}
    assert survivors((1.0, 2.0, 4.0, 8.0), curve, "m", "min") == (2.0, 8.0)
    assert survivors((1.0, 2.0, 4.0, 8.0), curve, "m", "max") == (1.0, 8.0)
    assert survivors((1.0, 2.0, 4.0), curve, "m", "min") == (1.0, 2.0)  # ceil(3 / 2), in order


def test_first_round_and_its_cost():
    assert first_round(16, True) == 4 and first_round(16, False) == 16
    assert first_round(6, True) == 4 and first_round(3, True) == 3  # at least 4, at most n_final
    assert race_samples(4, 16, 4) == 4 * 4 + 2 * 4 + 1 * 8
    assert race_samples(5, 16, 16) == 80
    assert race_samples(1, 16, 4) == 16 and race_samples(2, 32, 4) == 2 * 4 + 28
    # Probes: all after the first round (a race over 6), or later on more samples each; the
    # most is both after the last round, at 16 each: 4 * 4 + 2 * 4 + 1 * 8 + 2 * 16.
    assert race_samples(4, 16, 4, probes=2) == 64 > race_samples(6, 16, 4) == 52
    assert race_samples(4, 16, 16, probes=2) == 6 * 16  # no halving: every probe in full


def test_one_scale_is_measured_once_in_full():
    measure, calls = rigged(2.0, seed=0)
    sweep = race((1.0,), measure, ("fid", "min"), cap=4.0, n_final=16, n_first=4)
    assert calls == [((1.0,), 16)] and sweep.scale == 1.0


def test_a_metric_no_scale_has_keeps_the_plain_conditional():
    measure, _ = rigged(2.0, seed=0)
    sweep = race(GRID, measure, ("absent", "min"), cap=16.0, n_final=16, n_first=4)
    assert sweep.scale == 1.0 and sweep.reached[1.0] == 16


def test_the_choice_is_made_among_the_survivors_at_full_samples():
    """A metric biased by the sample count (here lower at fewer samples): an eliminated scale's
    early value (1.0 at 4 samples: 1.585 - 2.5) is never compared with the survivors'
    full-sample values (4.0 at 16: 0.415 - 0.625)."""

    def measure(scales, n):
        return {s: {"fid": abs(math.log2(s / 3.0)) - 10.0 / n} for s in scales}

    sweep = race(GRID, measure, ("fid", "min"), cap=16.0, n_final=16, n_first=4)
    assert sweep.scale == 4.0
    assert sweep.reached == {0.5: 4, 1.0: 4, 2.0: 16, 4.0: 16, 8.0: 8, 16.0: 4}


def _image_sweep(tmp_path, halving):
    from trainables.config import from_flat
    from trainables.data.images import make_images
    from trainables.evaluation import TrialEvaluator
    from trainables.fit import build
    from trainables.methods import get_method

    flat = {
        "method": "CG", "data.num_train": 64, "data.num_test": 64, "sample.num_per_class": 8,
        "sample.batch_size": 64, "sample.num_steps": 6, "eval.num_points": 32,
        "eval.val_num_per_class": 16, "eval.val_halving": halving, "eval.val_num_steps": 3,
        "eval.classifier_steps": 20, "eval.cache_dir": str(tmp_path), "eval.prdc_k": 0,
        "sample.guidance_grid": (0.5, 1.0, 2.0, 4.0), "sample.guidance_cap": 4.0,
    }  # fmt: skip
    config = from_flat(flat, base="tiny-images")
    data = make_images(config.data)
    torch.manual_seed(0)
    networks = {
        a.network: build(a, config, tuple(data.x.shape[1:]), data.num_classes).eval()
        for a in get_method("CG").artifacts
    }
    evaluator = TrialEvaluator(config, data)
    sweep = evaluator.validate(networks, (0.5, 1.0, 2.0, 4.0), (("intra_fid", "min"),))
    return sweep, evaluator.val_sampling_score_evals, config


def test_an_image_sweep_races_the_scales_and_counts_what_it_sampled(tmp_path):
    """tiny-images, CG: the race samples 4 + 2 x 4 + 1 x 8 = 32 per class summed over the scales
    instead of 4 x 16, at eval.val_num_steps (3 PC steps: 2 score evaluations each); the chosen
    scale is measured on 16 per class, and its validation metrics are the curve's. study plan
    counts what it sampled."""
    from study.plan import _sweep_evals

    sweep, evals, config = _image_sweep(tmp_path, halving=True)
    assert _sweep_evals(config, 4, 4) == evals
    assert evals == race_samples(4, 16, 4) * 4 * 3 * 2 == 32 * 24
    assert sweep.reached[sweep.scale] == 16 and sorted(sweep.reached.values()) == [4, 4, 8, 16]
    assert sweep.metrics["intra_fid"] == sweep.curve[sweep.scale]["intra_fid"]
    assert {"clf_accuracy", "guided_dsm", "fid", "sample_finite_fraction"} <= set(sweep.metrics)
    full, full_evals, config = _image_sweep(tmp_path, halving=False)
    assert _sweep_evals(config, 4, 4) == full_evals == 4 * 16 * 4 * 3 * 2
    assert set(full.reached.values()) == {16}
    # guided_dsm needs no samples: the same in both, measured (it does not select here) only at
    # the scales that reached the full samples.
    assert full.curve[sweep.scale]["guided_dsm"] == sweep.metrics["guided_dsm"]
    assert {s for s, m in sweep.curve.items() if "guided_dsm" in m} == {
        s for s, n in sweep.reached.items() if n == 16
    }


def test_the_trials_curve_keeps_the_samples_each_scale_was_measured_on(tmp_path):
    """The run's curve metrics hold, beside the objective's values, the samples per class each
    scale reached, and the trial's curve plot marks the scales the race dropped early."""
    from trainables import names
    from trainables.ray_worker import _curve_metrics, _plot_curve
    from trainables.sweep import Sweep

    sweep = Sweep(
        4.0, {"intra_fid": 1.0},
        {1.0: {"intra_fid": 9.0}, 2.0: {"intra_fid": 3.0}, 4.0: {"intra_fid": 1.0}},
        {1.0: 4, 2.0: 8, 4.0: 16},
    )  # fmt: skip
    curve = _curve_metrics(sweep, (("intra_fid", "min"),))
    samples = names.CURVE_SAMPLES
    assert curve[names.curve_key(samples, 1.0)] == 4.0
    assert curve[names.curve_key(samples, 4.0)] == 16.0
    assert curve[names.curve_key("intra_fid", 2.0)] == 3.0
    assert all(names.is_diagnostic(key) for key in curve)  # in diagnostics.json, not the metrics
    _plot_curve(sweep, (("intra_fid", "min"),), tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("steps", "val_steps", "expected"),
    [(100, 0, 100), (100, 25, 25), (4, 25, 4), (4, 0, 4), (30, 25, 25)],
)
def test_validation_samples_with_the_bases_fewer_steps_never_with_more(steps, val_steps, expected):
    from trainables.config import from_flat
    from trainables.sweep import validation_size

    # The tiny-images base validates with PC-25 of its PC-100; a quick study's 4 steps stay 4.
    flat = {"sample.num_steps": steps, "eval.val_num_steps": val_steps}
    config = from_flat(flat, base="tiny-images")
    assert validation_size(config) == (8, expected)
