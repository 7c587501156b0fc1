"""Host-to-device copies that do not make the host wait for the GPU."""

from __future__ import annotations

import torch


def to_device(
    t: torch.Tensor, device: torch.device, memory: torch.memory_format = torch.preserve_format
) -> torch.Tensor:
    """A CPU tensor on the device. To a GPU through pinned memory without blocking: a copy from
    pageable memory waits for the GPU's queue, so the host could not prepare the next batch (or
    the sampler's next noise) while the GPU runs this step."""
    if device.type != "cuda":
        return t.to(device, memory_format=memory)
    return t.pin_memory().to(device, memory_format=memory, non_blocking=True)
