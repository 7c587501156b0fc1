"""Do fewer sampler steps rank the guidance scales as the full sampler does? (issue 41, item 3)

Trains one trial's networks of a preset (a method at a label %), then measures its validation curve
(the first objective at every scale, every scale in full: no halving, no extension) at the full
sampler steps and at fewer, for several sample seeds. Printed per seed and step count: the curve,
Spearman's rank correlation with the full-step curve of the same seed, whether the best scale is the
same, and the seed-to-seed spread of the full-step curve (the sweep's own noise).

    python bench/val_steps_agreement.py tiny-images --method CG --steps 100 50 25 --seeds 2
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from study.spec import load_spec
from trainables.evaluation import TrialEvaluator
from trainables.fit import TrainingSet, train_method
from trainables.methods import get_method
from trainables.ray_worker import load_data


def _spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation of two curves (no ties expected)."""
    ra = {i: r for r, i in enumerate(sorted(range(len(a)), key=a.__getitem__))}
    rb = {i: r for r, i in enumerate(sorted(range(len(b)), key=b.__getitem__))}
    n = len(a)
    return 1 - 6 * sum((ra[i] - rb[i]) ** 2 for i in range(n)) / (n * (n * n - 1))


def _networks(config, data, cache: Path) -> dict[str, torch.nn.Module]:
    """The trial's networks, trained once and kept in cache (state dicts)."""
    path = cache / f"{config.data.name}-{config.method}-{config.data.label_percent:g}.pt"
    split = TrainingSet.split(
        data.x, data.y, data.num_classes, config.data.label_percent, config.data.split_seed
    )
    if path.exists():
        from trainables.fit import build

        states = torch.load(path)
        nets = {}
        for artifact in get_method(config.method).artifacts:
            net = build(artifact, config, tuple(data.x.shape[1:]), data.num_classes)
            net.load_state_dict(states[artifact.network])
            nets[artifact.network] = net.eval()
        return nets
    started = time.perf_counter()
    nets = train_method(config, split)
    print(f"trained {sorted(nets)} in {time.perf_counter() - started:.0f} s", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.state_dict() for k, v in nets.items()}, path)
    return {k: v.eval() for k, v in nets.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset")
    parser.add_argument("--method", default="CG")
    parser.add_argument("--label-percent", type=float, default=20)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 1, 2, 4, 8, 16])
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 50, 25])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default="bench-cache/val-steps")
    parser.add_argument("--json", default="", help="write the curves here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_spec(args.preset)
    metric, mode = spec.objectives[0].metric, spec.objectives[0].mode
    config = spec.trial_config({"method": args.method, "data.label_percent": args.label_percent})
    data = load_data(config)
    nets = _networks(config, data, Path(args.cache))
    shared = TrialEvaluator(config, data)
    shared.prepare()  # the evaluation classifier and reference statistics, once
    curves: dict[str, list[float]] = {}
    per_class = config.eval.val_num_per_class
    print(f"{args.preset} {args.method} {args.label_percent:g} %: validation {metric} ({mode}), "
          f"{per_class} per class, scales {args.scales}", flush=True)  # fmt: skip
    for seed in range(args.seeds):
        for steps in args.steps:
            trial = replace(
                config,
                sample=replace(config.sample, seed=config.sample.seed + 1000 * seed,
                               guidance_cap=max(args.scales)),
                eval=replace(config.eval, val_halving=False, val_num_steps=steps),
            )  # fmt: skip
            evaluator = TrialEvaluator(trial, data)
            evaluator._evaluator = shared._evaluator
            started = time.perf_counter()
            sweep = evaluator.validate(nets, tuple(args.scales), ((metric, mode),))
            curve = [sweep.curve[float(s)][metric] for s in args.scales]
            curves[f"seed{seed}/steps{steps}"] = curve
            full = curves[f"seed{seed}/steps{args.steps[0]}"]
            best = min if mode == "min" else max
            same = args.scales[curve.index(best(curve))] == args.scales[full.index(best(full))]
            took = time.perf_counter() - started
            chosen = args.scales[curve.index(best(curve))]
            values = " ".join(f"{v:7.3f}" for v in curve)
            rho = _spearman(curve, full)
            print(f"seed {seed} steps {steps:4d}: {values} | best {chosen:g} (same: {same}) | "
                  f"spearman {rho:+.2f} | {took:.0f} s", flush=True)  # fmt: skip
    if args.seeds > 1:
        a, b = curves[f"seed0/steps{args.steps[0]}"], curves[f"seed1/steps{args.steps[0]}"]
        spread = [abs(x - y) / 2**0.5 for x, y in zip(a, b)]  # one seed's sd from a pair's gap
        print("full-step seed spread (sd):  " + " ".join(f"{v:7.3f}" for v in spread))
        print(f"spearman seed 0 vs seed 1 at full steps: {_spearman(a, b):+.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "curves": curves}, indent=1))


if __name__ == "__main__":
    main()
