"""Classifier accuracy and expected calibration error."""

from __future__ import annotations

import torch


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows whose argmax logit is the label."""
    return (logits.argmax(1) == y).double().mean().item()


def expected_calibration_error(logits: torch.Tensor, y: torch.Tensor, num_bins: int = 15) -> float:
    """ECE (Guo et al. 2017): sum over equal-width confidence bins of |acc - conf| weighted by bin
    mass."""
    probs = torch.softmax(logits.double(), dim=1)
    conf, pred = probs.max(1)
    correct = (pred == y).double()
    bins = torch.clamp((conf * num_bins).long(), max=num_bins - 1)
    ece = torch.zeros((), dtype=torch.float64)
    for b in range(num_bins):
        mask = bins == b
        if mask.any():
            ece += mask.double().mean() * (correct[mask].mean() - conf[mask].mean()).abs()
    return ece.item()
