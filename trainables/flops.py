"""FLOPs of a training step and the device's peak, for the per-epoch TFLOP/s and MFU (issue 13).

`count_flops` counts what `torch.utils.flop_counter` counts (convolutions, matmuls, attention;
elementwise ops are not counted, as in every MFU figure) with its own formulas, at dispatch. It
does not use `FlopCounterMode` itself: that mode's module hooks raise under
`torch.autograd.grad`, which self-calibration's double backward calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

T = TypeVar("T")

# Dense peak TFLOP/s per device name fragment: (bf16, fp32 as TF32), tensor cores, NVIDIA's data
# sheets (SXM parts). fp32 is measured against TF32 because cuDNN runs fp32 convolutions in TF32
# by default (torch.backends.cudnn.allow_tf32), and the image networks' FLOPs are convolutions. An
# unlisted device gets an MFU only when train.peak_tflops is set.
GPU_PEAK_TFLOPS: dict[str, tuple[float, float]] = {
    "H200": (989.4, 494.7),
    "H100": (989.4, 494.7),
    "A100": (312.0, 156.0),
}


class _FlopCount(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def count_flops(fn: Callable[[], T]) -> tuple[T, int]:
    """Run fn() once and return its result with the FLOPs it dispatched (every op it runs,
    forward, backward and double backward alike)."""
    counter = _FlopCount()
    with counter:
        result = fn()
    return result, counter.total


def peak_tflops(device: torch.device, precision: str, configured: float) -> float | None:
    """The peak an MFU is measured against: train.peak_tflops when set (> 0), else the listed
    GPU's dense peak for the precision; None (no MFU) on CPUs and unlisted GPUs."""
    if configured > 0:
        return configured
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, (bf16, fp32) in GPU_PEAK_TFLOPS.items():
        if fragment in name:
            return bf16 if precision == "bf16" else fp32
    return None


def throughput_metrics(
    prefix: str, flops_per_step: int, steps: int, seconds: float, peak: float | None
) -> dict[str, Any]:
    """TFLOP per step, achieved TFLOP/s and (with a peak) MFU, keyed "<prefix>/...". The FLOPs
    are one rank's: MFU is per device."""
    tflops = flops_per_step * steps / seconds / 1e12
    metrics = {f"{prefix}/tflop_per_step": flops_per_step / 1e12, f"{prefix}/tflops": tflops}
    if peak:
        metrics[f"{prefix}/mfu"] = tflops / peak
    return metrics
