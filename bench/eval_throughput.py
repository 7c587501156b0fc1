"""Evaluation throughput: feature extraction (images/s) and guided sampling (images x steps / s).

    python bench/eval_throughput.py --size tiny --image-size 16 --batch 128               # CPU
    python bench/eval_throughput.py --size paper --image-size 32 --batch 500 --device cuda \
        --inception /tmp/inception-2015-12-05.pt

Feature extraction: the evaluation-classifier extractor (pooled encoder features) and, when the
weights file exists, clean-fid's Inception (clean resize to 299 included). Guided sampling: one
predictor-corrector step (two score evaluations) for each guidance kind: classifier guidance (score
+
grad of the classifier's log posterior), classifier-free guidance (conditional and null-label pass),
and the plain conditional model.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.config import NCSNPP_SIZES, ModelConfig  # noqa: E402
from trainables.evaluation.fid import classifier_extractor, inception_extractor  # noqa: E402
from trainables.methods import get_method, guided_score_fn, model_fns  # noqa: E402
from trainables.networks import build_network  # noqa: E402
from trainables.samplers import pc_sampler  # noqa: E402


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def parse_args() -> argparse.Namespace:
    """The benchmark's options."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", default="tiny", choices=sorted(NCSNPP_SIZES))
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument(
        "--guidance-precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
        help="sample.guidance_precision of the classifier-guided rows",
    )  # fmt: skip
    p.add_argument("--compile", action="store_true", help="also time compiled networks")
    p.add_argument(
        "--inception", default="", help="path of inception-2015-12-05.pt (skipped when missing)"
    )
    return p.parse_args()


def build_networks(args: argparse.Namespace, device: torch.device) -> dict:
    """Untrained score, classifier and conditional NCSN++ networks of the size, frozen, in eval
    mode on the device (seeded)."""
    model = ModelConfig(**NCSNPP_SIZES[args.size], arch="ncsnpp", dropout=0.0)
    shape = (3, args.image_size, args.image_size)
    torch.manual_seed(0)
    return {
        k: build_network(k, dim=shape, num_classes=args.classes, model_config=model)
        .to(device)
        .eval()
        .requires_grad_(False)
        for k in ("score", "classifier", "conditional")
    }


def feature_rows(nets: dict, x: torch.Tensor, args: argparse.Namespace, device) -> None:
    """Feature extraction: the evaluation-classifier extractor and, when its weights file exists,
    clean-fid's Inception."""
    extractors = [
        (
            "features: eval classifier",
            classifier_extractor(nets["classifier"], 0.01, "bench", device),
        )
    ]
    if args.inception and Path(args.inception).is_file():
        extractors.append(
            (
                "features: clean-fid Inception (resize to 299 incl.)",
                inception_extractor(args.inception, device),
            )
        )
    elif args.inception:
        print(f"(Inception weights not at {args.inception}: skipped)")
    for name, extractor in extractors:
        seconds = timed(lambda e=extractor: e.features(x), device, args.repeats)
        print(f"| {name} | {seconds:.4f} | {args.batch / seconds:.1f} | |", flush=True)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    nets = build_networks(args, device)
    x = torch.rand(args.batch, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    print(
        f"# NCSN++ {args.size}, {args.image_size}x{args.image_size}, batch {args.batch}, "
        f"{device} ({torch.get_num_threads()} threads), torch {torch.__version__}"
    )
    print("| what | s/batch | images/s | over unguided |")
    print("|---|---|---|---|")
    feature_rows(nets, x, args, device)
    sampler_rows(nets, x, y, args, device)


def sampler_rows(nets: dict, x: torch.Tensor, y: torch.Tensor, args, device) -> None:
    """One PC step per guidance kind, eager and (--compile) compiled; the unguided score model's
    step first, and each classifier-guided step's time over it (target: at most 1.5x)."""
    sigmas = torch.tensor([1.0, 0.5], dtype=torch.float64)  # two levels: two PC steps
    modes = [False, True] if args.compile else [False]
    for compiled in modes:
        use = {k: torch.compile(n) if compiled else n for k, n in nets.items()}
        mode = "compiled" if compiled else "eager"
        rows = [("unguided: score model alone", use["score"])]
        fns = model_fns({k: use[k] for k in ("score", "classifier")}, num_classes=args.classes)
        for precision in args.guidance_precision:
            fn = guided_score_fn(get_method("CG-SC-all"), fns, y, 2.0, precision)
            rows.append((f"guided: classifier, gradient in {precision} (CG-SC-all)", fn))
        for method in ("CFG-all", "Cond"):
            fns = model_fns({"conditional": use["conditional"]}, num_classes=args.classes)
            rows.append((f"guided: {get_method(method).guidance} ({method})",
                         guided_score_fn(get_method(method), fns, y, 2.0)))  # fmt: skip
        unguided = None
        for name, fn in rows:
            step = partial(pc_sampler, fn, x, sigmas, generator=None)
            seconds = timed(step, device, args.repeats) / 2
            unguided = unguided or seconds
            ratio = f"{seconds / unguided:.2f}x"
            print(
                f"| PC step, {mode}: {name} | {seconds:.4f} | {args.batch / seconds:.1f} | "
                f"{ratio} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
