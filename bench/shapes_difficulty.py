"""Evidence for the `shapes` set's default difficulty: the accuracy a classifier trained with
cross-entropy alone reaches on clean held-out images, at each difficulty and label fraction.

The question needs a set where, at 5 % labels, CE alone is far from perfect (room for SC and for
the conditional model) while all labels still separate the classes. The classifier is the CG
family's noise-conditional one (trainables.methods, the tiny-images base's network and budget),
read at sigma_min on the test split.

    python bench/shapes_difficulty.py [--difficulties 0 0.25 0.5 0.75 1] [--percents 5 100]
"""

from __future__ import annotations

import argparse
import time

import torch

from study.spec import resolve
from trainables.data.images import make_images
from trainables.fit import TrainingSet, train_artifact
from trainables.methods import artifact_config, get_method


def accuracy(difficulty: float, percent: float, args: argparse.Namespace) -> float:
    """Clean test accuracy of a CE classifier trained on percent % labels at a difficulty."""
    config = resolve(
        {
            "method": "CG",
            "data.name": "shapes",
            "data.difficulty": difficulty,
            "data.num_train": args.num_train,
            "data.num_test": 500,
            "data.label_percent": percent,
            "train.classifier_steps": args.steps,
            "train.seed": args.seed,
            "data.seed": args.seed,
            "data.split_seed": args.seed,
        },
        "tiny-images",
    )
    data = make_images(config.data)
    split = TrainingSet.split(data.x, data.y, data.num_classes, percent, config.data.split_seed)
    artifact = get_method("CG").artifacts[-1]
    net = train_artifact(artifact, artifact_config(artifact, config), split).eval()
    sigma = torch.full((len(data.test_x),), config.sde.sigma_min)
    with torch.no_grad():
        predicted = net(data.test_x, sigma).argmax(1)
    return float((predicted == data.test_y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--difficulties", type=float, nargs="+", default=[0, 0.25, 0.5, 0.75, 1])
    parser.add_argument("--percents", type=float, nargs="+", default=[5, 100])
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| difficulty | " + " | ".join(f"CE acc. at {p:g} %" for p in args.percents) + " |")
    print("|---|" + "---|" * len(args.percents))
    for d in args.difficulties:
        start = time.perf_counter()
        cells = [f"{accuracy(d, p, args):.3f}" for p in args.percents]
        print(f"| {d:g} | " + " | ".join(cells) + f" |  ({time.perf_counter() - start:.0f} s)",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
