"""Training throughput of the NCSN++ networks: score (DSM), classifier with CE alone and with CE +
SC.

    python bench/train_throughput.py --size tiny --image-size 16 --batch 32            # CPU
    python bench/train_throughput.py --size paper --batch 128 --device cuda --precision fp32 bf16 \
        --channels-last --compile

Reports images/s per step type (eager, and with --compile compiled), the SC / CE cost ratio
(target: at most 2x) and, from the FLOPs training logs (trainables.flops: convolutions, matmuls,
attention), the achieved TFLOP/s, as a fraction of the device's peak (--peak-tflops, or the listed
GPU peak: H200 dense bf16 989.4). Results are printed as Markdown rows and optionally as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.config import (  # noqa: E402
    NCSNPP_SIZES,
    LossConfig,  # noqa: E402
    ModelConfig,
)
from trainables.data.batches import Batch, Noise  # noqa: E402
from trainables.flops import peak_tflops as device_peak  # noqa: E402
from trainables.losses import ce_loss, dsm_loss, sc_loss  # noqa: E402
from trainables.methods import ModelFns, artifact_loss, get_method  # noqa: E402

CLASSIFIER = get_method("CG-SC-all").artifacts[1]  # CE on labeled rows + lambda_SC * SC on all rows
from trainables.networks import build_network  # noqa: E402


def step_fn(
    kind: str, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str
) -> Callable[[], None]:
    """One optimisation step (forward, backward, Adam) of a step type on fixed inputs."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    sigma = torch.exp(torch.empty(len(x), device=x.device).uniform_(-4.6, 3.9))
    z = torch.randn_like(x)
    autocast = torch.autocast(
        device_type=x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"
    )

    def step() -> None:
        with autocast:
            if kind == "score":
                loss = dsm_loss(net, x, sigma, z).mean()
            elif kind == "classifier CE":
                loss = ce_loss(net, x, sigma, z, y).mean()
            elif kind == "classifier CE+SC separate":
                # Two classifier forwards, as written in the papers.
                loss = ce_loss(net, x, sigma, z, y).mean() + sc_loss(net, x, sigma, z).mean()
            else:
                # Classifier CE + SC as the platform trains it: one shared forward, double backward.
                loss, _ = artifact_loss(
                    CLASSIFIER,
                    ModelFns(logits_fn=net, num_classes=int(y.max()) + 1),
                    Batch(x, y),
                    Noise(sigma, z, sigma, z),
                    LossConfig(),
                )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def measure(step, device: torch.device, steps: int, warmup: int) -> float:
    """Seconds per step after warmup."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def count_flops(step) -> float:
    """FLOPs of one step (convolutions, matmuls, attention), counted as training logs them
    (trainables.flops: the SC double backward included)."""
    from trainables.flops import count_flops as count

    return float(count(step)[1])


def time_step(
    kind: str,
    network: str,
    mode: str,
    precision: str,
    args: argparse.Namespace,
    config: ModelConfig,
    x: torch.Tensor,
    y: torch.Tensor,
) -> dict:
    """One step kind's row: seconds per step (eager or compiled), warm-up seconds (the compile
    included), images/s, and the FLOPs, counted eagerly (inside a compiled graph the ops are fused
    kernels)."""
    device = x.device
    torch.manual_seed(0)
    memory = torch.channels_last if args.channels_last else torch.contiguous_format
    net = build_network(
        network, dim=tuple(x.shape[1:]), num_classes=args.classes, model_config=config
    ).to(device, memory_format=memory)
    flops = count_flops(step_fn(kind, net, x, y, precision))
    step = step_fn(kind, torch.compile(net) if mode == "compiled" else net, x, y, precision)
    start = time.perf_counter()
    seconds = measure(step, device, args.steps, args.warmup)
    return {
        "step": kind,
        "precision": precision,
        "mode": mode,
        "seconds": seconds,
        "warmup_seconds": time.perf_counter() - start - seconds * args.steps,
        "images_per_s": args.batch / seconds,
        "tflop_per_step": flops / 1e12,
        "tflops": flops / seconds / 1e12,
    }


def parse_args() -> argparse.Namespace:
    """The benchmark's options."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", default="tiny", choices=sorted(NCSNPP_SIZES))
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time the score and CE steps with torch.compile (SC has a double backward, "
        "which compiled graphs do not support: its rows stay eager)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=0.0,
        help="dense peak of the device for the precision (0 = the listed GPU peak of "
        "trainables.flops; none on a CPU)",
    )
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args()


def print_sc_ratios(rows: list[dict], precisions: list[str]) -> None:
    """The eager CE+SC step's time over the CE step's, per precision (target: at most 2x)."""
    for precision in precisions:
        by = {
            r["step"]: r["seconds"]
            for r in rows
            if r["precision"] == precision and r["mode"] == "eager"
        }
        shared = by["classifier CE+SC"] / by["classifier CE"]
        separate = by["classifier CE+SC separate"] / by["classifier CE"]
        print(
            f"\n{precision}: CE+SC step / CE step = {shared:.2f}x (target <= 2x); "
            f"with separate forwards {separate:.2f}x"
        )


def main() -> None:
    """Time every step kind at every precision; print a Markdown table and the CE+SC / CE ratio."""
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = ModelConfig(**NCSNPP_SIZES[args.size], arch="ncsnpp", dropout=0.0)
    shape = (3, args.image_size, args.image_size)
    memory = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.rand(args.batch, *shape, device=device).contiguous(memory_format=memory)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    rows = []
    print(
        f"# NCSN++ {args.size}, {args.image_size}x{args.image_size}, batch {args.batch}, "
        f"{device} ({torch.get_num_threads()} threads), torch {torch.__version__}"
    )
    print("| step | precision | mode | s/step | images/s | TFLOP/step | TFLOP/s | of peak |")
    print("|---|---|---|---|---|---|---|---|")
    modes = ("eager", "compiled") if args.compile else ("eager",)
    for precision in args.precision:
        peak_tflops = device_peak(device, precision, args.peak_tflops)
        for kind, network in (
            ("score", "score"),
            ("classifier CE", "classifier"),
            ("classifier CE+SC", "classifier"),
            ("classifier CE+SC separate", "classifier"),
        ):
            for mode in modes:
                if mode == "compiled" and "SC" in kind:
                    continue
                row = time_step(kind, network, mode, precision, args, config, x, y)
                rows.append(row)
                tflops = row["tflops"]
                peak = f"{tflops / peak_tflops:.1%}" if peak_tflops else ""
                print(
                    f"| {kind} | {precision} | {mode} | {row['seconds']:.4f} | "
                    f"{row['images_per_s']:.1f} | {row['tflop_per_step']:.4f} | {tflops:.3f} | "
                    f"{peak} |",
                    flush=True,
                )
    print_sc_ratios(rows, args.precision)
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
