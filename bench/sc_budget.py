"""Does the self-calibration term learn when the classifier trains longer? (issue 29 item 3)

On the `shapes` set (default difficulty 0.5, 10 classes, 2,000 training images, 5 % labels) the CG
family's noise-conditional classifier is trained with cross-entropy alone (CG) and with CE plus
lambda_SC * SC on all rows (CG-SC-all, lambda_SC = 1, the papers' weight, SC's mean reduction),
for each head and classifier budget; each row reports the held-out SC ratio in the lowest noise
band (`sc_ratio_band0`: 1.0 = SC's target not approached at all; trainables.evaluation.calibration)
and in the second, and the clean test accuracy at sigma_min. Everything else is the tiny-images
base's (its NCSN++, batch 32, Adam 2e-4).

    python bench/sc_budget.py [--steps 600 2000 6000] [--heads plain denoiser]
"""

from __future__ import annotations

import argparse
import time

import torch

from study.spec import resolve
from trainables.data.images import make_images
from trainables.evaluation.calibration import sc_ratios
from trainables.fit import TrainingSet, train_artifact
from trainables.methods import artifact_config, get_method


def measure(method: str, head: str, steps: int, args: argparse.Namespace) -> dict[str, float]:
    """Train one classifier and read its SC ratios and clean accuracy on held-out images."""
    config = resolve(
        {
            "method": method,
            "data.name": "shapes",
            "data.num_train": args.num_train,
            "data.num_test": 500,
            "data.label_percent": args.percent,
            "model.classifier_head": head,
            "train.classifier_steps": steps,
            "loss.lambda_sc": args.lambda_sc,
            "train.seed": args.seed,
            "data.seed": args.seed,
            "data.split_seed": args.seed,
        },
        "tiny-images",
    )
    data = make_images(config.data)
    split = TrainingSet.split(data.x, data.y, data.num_classes, args.percent, args.seed)
    artifact = get_method(method).artifacts[-1]
    net = train_artifact(artifact, artifact_config(artifact, config), split).eval()
    sigma = torch.full((len(data.test_x),), config.sde.sigma_min)
    with torch.no_grad():
        accuracy = float((net(data.test_x, sigma).argmax(1) == data.test_y).float().mean())
    sigma_range = (config.sde.sigma_min, config.sde.sigma_max)
    gen = torch.Generator().manual_seed(args.seed + 1)
    ratios = sc_ratios(net, data.test_x[:256], config.eval.sc_bands, sigma_range, gen)
    return {"accuracy": accuracy, **ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[600, 2000, 6000])
    parser.add_argument("--heads", nargs="+", default=["plain", "denoiser"])
    parser.add_argument("--percent", type=float, default=5.0)
    parser.add_argument("--lambda-sc", type=float, default=1.0)
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| head | classifier steps | loss | sc_ratio_band0 | sc_ratio_band1 | accuracy | time |")
    print("|---|---|---|---|---|---|---|")
    for head in args.heads:
        for steps in args.steps:
            for method, loss in (("CG", "CE"), ("CG-SC-all", f"CE + {args.lambda_sc:g} SC")):
                start = time.perf_counter()
                m = measure(method, head, steps, args)
                print(
                    f"| {head} | {steps} | {loss} | {m['sc_ratio_band0']:.4f} | "
                    f"{m['sc_ratio_band1']:.4f} | {m['accuracy']:.3f} | "
                    f"{time.perf_counter() - start:.0f} s |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
