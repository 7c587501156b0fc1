"""Evidence for the twin's default overlap (data.twin_shared): the Bayes accuracy of the fitted
twin, its exact posterior's accuracy on its own samples, at sigma 0 and in each noise band, for a
few shares of mass on the components common to all classes.

The twin should leave generation accuracy room below its ceiling (like the toy overlap2, 0.8975):
with no shared mass the classes of `shapes` are told apart by their covariances almost perfectly.

    python bench/twin_overlap.py [--source shapes] [--shares 0 0.15 0.3] [--points 4000]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from study.spec import resolve
from trainables.data.twin_images import twin_of
from trainables.evaluation.images import save_sample_grid
from trainables.evaluation.twin import noise_bands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="shapes", choices=["shapes", "tiny-images"])
    parser.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.15, 0.3])
    parser.add_argument("--points", type=int, default=4000, help="samples per accuracy")
    parser.add_argument("--cache", default="", help="where fits are stored (eval.cache_dir)")
    parser.add_argument("--grid", default="", help="also save the default twin's samples here")
    args = parser.parse_args()
    base = resolve({"data.twin_source": args.source, "data.num_classes": 10}, "twin")
    if args.source == "tiny-images":
        base = resolve({"data.twin_source": "tiny-images"}, "twin")
    bands = noise_bands(base)
    header = ["share", "K", "formula", "sigma 0"] + [f"[{a:g}, {b:g})" for a, b in bands]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for share in args.shares:
        config = resolve(
            {"data.twin_source": args.source, "data.twin_shared": share,
             **({"data.num_classes": 10} if args.source == "shapes" else {})},
            "twin",
        )  # fmt: skip
        start = time.perf_counter()
        twin, _ = twin_of(config.data, args.cache)
        fitted = time.perf_counter() - start
        gen = torch.Generator().manual_seed(0)
        k = twin.num_classes
        row = [f"{share:g}", str(k), f"{1 - share * (1 - 1 / k):.3f}"]
        row.append(f"{twin.bayes_accuracy(args.points, 0.0, generator=gen):.3f}")
        for a, b in bands:  # sigma log-uniform in the band, as the exact metrics draw it
            x, y = twin.sample(args.points, generator=gen)
            u = torch.rand(args.points, generator=gen, dtype=torch.float64)
            sigma = torch.exp(math.log(a) + u * (math.log(b) - math.log(a)))
            noisy = x + sigma.float().reshape(-1, 1, 1, 1) * torch.randn(x.shape, generator=gen)
            post = twin.posterior(noisy, sigma)
            row.append(f"{(post.argmax(1) == y).double().mean().item():.3f}")
        print("| " + " | ".join(row) + f" |   (fit or load {fitted:.1f} s)")
    if args.grid:  # the twin at the default share, 12 exact samples per class
        config = resolve({"data.twin_source": args.source}, "twin")
        twin, names = twin_of(config.data, args.cache)
        y = torch.arange(twin.num_classes).repeat_interleave(12)
        x, _ = twin.sample(len(y), y=y, generator=torch.Generator().manual_seed(0))
        title = f"exact samples of the twin of {args.source} (share {config.data.twin_shared:g})"
        save_sample_grid(x, names, args.grid, title)
        print(f"grid: {args.grid}")


if __name__ == "__main__":
    main()
