"""The guidance sweep of a trial's validation: which scales are sampled, with how many samples per
class, in which order.

Successive halving (Jamieson & Talwalkar 2016; Li et al. 2018, Hyperband's inner loop) over the
scales: every candidate is measured with n_first samples per class, then the better half with twice
as many, and so on until the survivors have n_final (eval.val_num_per_class), the samples the full
sweep gives every scale; the choice is made among the survivors at n_final, so a trial's validation
value is always measured with the same number of samples. An optimum at an edge of the measured
scales is bracketed by probes past it (next_scale), which then race like the grid: after every
round whose leader sits at that edge, each probe measured on the round's samples per class (the
first round's: cheap), so it is compared with the survivors on equal samples. After the first
round only, a leader inside the grid read from a few samples per class could hide an edge optimum
that more samples show (seen on tiny-images: CG chose the grid's top, 4, where the full sweep went
on to 16).
The measure function draws every scale of a round from the same initial noise and noise sequence
(common random numbers: trainables.evaluation.sampling.sample_scales), and each further round adds
a block of samples seeded by its position, so every scale that reaches it gets the same draws (a
probe catches up block by block).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainables.config import TrialConfig

Curve = dict[float, dict[str, float]]  # scale -> the scale-dependent validation metrics
# (scales, samples per class) -> every scale's metrics measured on that many samples per class
Measure = Callable[[tuple[float, ...], int], Curve]
MAX_HALVINGS = 3  # how far below the grid's smallest positive scale the sweep may go
MIN_FIRST = 4  # samples per class of the first round, at least (fewer: no halving)


@dataclass
class Sweep:
    """A guidance sweep on the validation split: the chosen scale, the validation metrics at it,
    the curve (scale -> the scale-dependent validation metrics, each at the samples per class it
    reached: reached[scale])."""

    scale: float
    metrics: dict[str, float]
    curve: Curve = field(default_factory=dict)
    reached: dict[float, int] = field(default_factory=dict)


def choose_scale(curve: Curve, metric: str, mode: str) -> float | None:
    """The scale whose finite validation value of metric is best (the first such in grid order);
    None when no scale has a finite value or the metric does not depend on the scale."""
    finite = [(s, m[metric]) for s, m in curve.items() if math.isfinite(m.get(metric, math.nan))]
    if not finite:
        return None
    best = min if mode == "min" else max
    return best(finite, key=lambda item: item[1])[0]


def next_scale(
    curve: dict[float, Any], chosen: float | None, cap: float, grid: tuple[float, ...]
) -> float | None:
    """The scale to measure next when the chosen one is at an edge of the measured scales: above
    the largest, the grid's last ratio (at least 2) times it, bounded by cap; below the smallest
    (above 0), half of it, at most MAX_HALVINGS times below the grid's lowest scale. None when
    the optimum is inside the curve, at the cap, or the cap is 0 or the grid's largest scale (the
    grid only)."""
    scales = sorted(curve)
    if chosen is None or cap <= max(grid) or len(scales) < 2 or chosen <= 0:
        return None
    if chosen == scales[-1]:
        ratio = scales[-1] / scales[-2] if scales[-2] > 0 else 2.0
        return min(cap, chosen * max(2.0, ratio)) if chosen < cap else None
    if chosen == scales[0] and chosen > min(grid) / 2**MAX_HALVINGS:
        return chosen / 2
    return None


def validation_size(config: TrialConfig) -> tuple[int, int]:
    """(samples per class, sampler steps) of the sweep's full validation measurement:
    eval.val_num_per_class (0: a quarter of sample.num_per_class, at least 8) and
    eval.val_num_steps (0: sample.num_steps), at most sample.num_steps: validation is there to
    save sampling, so a base's fewer steps (tiny-images: 25 for PC-100) never exceed the steps a
    study samples with (a quick study's 4 were sampled at 25 for validation)."""
    per_class = config.eval.val_num_per_class or max(8, config.sample.num_per_class // 4)
    steps = config.sample.num_steps
    return per_class, min(config.eval.val_num_steps or steps, steps)


def first_round(n_final: int, halving: bool) -> int:
    """Samples per class of the first round: a quarter of n_final (two halvings), at least
    MIN_FIRST; n_final itself without halving (every scale measured in full)."""
    return min(n_final, max(MIN_FIRST, n_final // 4)) if halving else n_final


def survivors(alive: Sequence[float], curve: Curve, metric: str, mode: str) -> tuple[float, ...]:
    """The better half (rounded up) of alive by metric, in their order; a scale without a finite
    value ranks last, ties keep the grid's order."""
    sign = 1.0 if mode == "min" else -1.0

    def rank(item: tuple[int, float]) -> tuple[int, float, int]:
        position, scale = item
        value = curve.get(scale, {}).get(metric, math.nan)
        return (0, sign * value, position) if math.isfinite(value) else (1, 0.0, position)

    kept = sorted(enumerate(alive), key=rank)[: math.ceil(len(alive) / 2)]
    return tuple(scale for _, scale in sorted(kept))


def race(
    grid: Sequence[float],
    measure: Measure,
    objective: tuple[str, str],
    cap: float,
    n_final: int,
    n_first: int,
    agree: Callable[[Any], Any] = lambda decision: decision,
) -> Sweep:
    """Sweep the grid as the module docstring says and choose by objective (metric, mode).
    agree: every decision of rank 0 to every rank of a data-parallel trial (whose other ranks
    measure nothing but draw their share of every round); metrics of the chosen scale are
    Sweep.metrics (the fixed ones are the caller's)."""
    metric, mode = objective
    curve: Curve = {}
    reached: dict[float, int] = {}

    def run(scales: tuple[float, ...], n: int) -> None:
        curve.update(measure(scales, n))
        reached.update(dict.fromkeys(scales, n))

    def extend(alive: tuple[float, ...], sizes: list[int]) -> tuple[float, ...]:
        """Probes past the edge the leader of alive sits on until the curve turns (or the cap),
        each drawn through the rounds' sample sizes so far (the survivors' blocks)."""
        while True:
            leader = choose_scale({s: curve[s] for s in alive}, metric, mode)
            beyond = agree(next_scale(curve, leader, cap, tuple(grid)))
            if beyond is None:
                return alive
            for n in sizes:
                run((beyond,), n)
            alive += (beyond,)

    alive = tuple(dict.fromkeys(float(s) for s in grid))
    if len(alive) == 1:  # nothing to race (and nothing to extend from one scale)
        n_first = n_final
    run(alive, n_first)
    sizes = [n_first]
    alive = extend(alive, sizes)
    while sizes[-1] < n_final:
        alive = agree(survivors(alive, curve, metric, mode))
        sizes.append(n_final if len(alive) == 1 else min(n_final, 2 * sizes[-1]))
        run(alive, sizes[-1])
        alive = extend(alive, sizes)
    chosen = agree(choose_scale({s: curve[s] for s in alive}, metric, mode))
    if chosen is None:  # nothing to choose on: the plain conditional if swept, else the first
        chosen = 1.0 if 1.0 in alive else alive[0]
    return Sweep(chosen, dict(curve.get(chosen, {})), curve, reached)


def race_samples(num_scales: int, n_final: int, n_first: int, probes: int = 0) -> int:
    """Samples per class a race over num_scales candidates draws (summed over the scales); with
    probes, the most it can draw when the extension adds up to that many (each after any round,
    catching up to that round's samples)."""
    if num_scales == 1:
        return n_final

    def most(alive: int, n: int, left: int) -> int:  # what is still to draw after a round at n
        return max(k * n + later(alive + k, n, left - k) for k in range(left + 1))

    def later(alive: int, n: int, left: int) -> int:
        if n >= n_final:
            return 0
        kept = math.ceil(alive / 2)
        following = n_final if kept == 1 else min(n_final, 2 * n)
        return kept * (following - n) + most(kept, following, left)

    return num_scales * n_first + most(num_scales, n_first, probes)


def extension_probes(grid: Sequence[float], cap: float) -> int:
    """The most probes the extension can add past the grid: up (next_scale's steps from the
    largest scale to the cap) and down (at most MAX_HALVINGS); both, since a later round's leader
    can sit at the other edge from the first round's."""
    scales = sorted(set(float(s) for s in grid))
    if len(scales) < 2 or cap <= scales[-1]:
        return 0
    up, top = 0, scales[-1]
    ratio = max(2.0, top / scales[-2] if scales[-2] > 0 else 2.0)
    while top < cap:
        top, up = min(cap, top * ratio), up + 1
    return up + (MAX_HALVINGS if scales[0] > 0 else 0)
