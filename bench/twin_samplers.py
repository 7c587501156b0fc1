"""The samplers on the twin with its exact conditional score: what accuracy, likelihood and
spread each sampler reaches when the score is perfect (the evidence for the twin preset's sampler).

Sampling with grad log p_sigma(x | y) itself, the samples should match the twin: Bayes generation
accuracy near the ceiling (the twin's Bayes accuracy), sample_var_ratio near 1. A sampler that
falls short here falls short for every network.

    python bench/twin_samplers.py [--per-class 16] [--cache DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from study.spec import resolve
from trainables.data.twin_images import twin_of
from trainables.evaluation.twin import sample_metrics
from trainables.samplers import get_sampler, sampler_options
from trainables.sde import VESDE

RUNS = (("pc", 50), ("pc", 100), ("em", 100), ("ode", 50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=16)
    parser.add_argument("--cache", default="", help="where fits are stored (eval.cache_dir)")
    args = parser.parse_args()
    config = resolve({"data.num_classes": 10}, "twin")
    twin, _ = twin_of(config.data, args.cache)
    sde = VESDE.from_config(config.sde)
    y = torch.arange(twin.num_classes).repeat_interleave(args.per_class)
    exact, _ = twin.sample(len(y), y=y, generator=torch.Generator().manual_seed(1))
    ceiling = sample_metrics(exact, y, twin, config.sde.sigma_min)
    print(f"exact samples: {ceiling}")
    print("| sampler | steps | score evals | Bayes gen acc | log-lik / dim | var ratio | s |")
    print("|---|---|---|---|---|---|---|")
    for name, steps in RUNS:
        gen = torch.Generator().manual_seed(0)
        x0 = sde.prior_sample((len(y), *twin.shape), generator=gen)
        options = sampler_options(name, dataclasses.replace(config.sample, sampler=name))
        start = time.perf_counter()
        out = get_sampler(name)(
            lambda x, s: twin.cond_score(x, s, y).float(), x0, sde.discretize(steps),
            generator=gen, **options,
        )  # fmt: skip
        m = sample_metrics(out, y, twin, config.sde.sigma_min)
        evals = {"pc": 2, "em": 1, "ode": 2}[name] * steps
        print(f"| {name} | {steps} | {evals} | {m['bayes_gen_accuracy']:.3f} | "
              f"{m['cond_log_likelihood']:.3f} | {m['sample_var_ratio']:.3f} | "
              f"{time.perf_counter() - start:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
