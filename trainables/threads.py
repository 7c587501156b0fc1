"""Idle CPUs lent to a trial's evaluation (torch threads), on a local cluster.

When fewer trials run than the machine has CPUs for (a study's last trials, or slots waiting for
a shared network's stage trial), the CPUs no trial holds sit idle. A trial's evaluation borrows
them: inside `lent()`, at most every EVERY seconds between sampler steps, it asks the study's
lender (study.cluster.CoreLender, a Ray actor of the driver) how many torch threads it may run:
its own CPUs plus its share of the cluster's free ones among the trials evaluating now
(study.cluster.CoreShares). A trial that starts takes its CPUs from Ray as always, and the
others give the borrowed ones back at their next ask. At the scope's end the trial returns to its
own threads.

Only evaluation borrows. Sampling and the evaluation classifier's features give the same bits
at any thread count (tests/trainables/test_threads.py), where a training step's weight gradients
do not (a convolution's weight gradient is reduced over the batch in per-thread parts: 1 and 2
threads differ by about 1e-2 in one step), and trained networks are shared by identity across
trials and studies, so they must not depend on how busy the machine was.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

EVERY = 2.0  # seconds between two asks of one trial


@dataclass
class _Borrowing:
    """This process's lending scope: whom to ask, its own threads, the most it ran with."""

    ask: Callable[[], int]
    own: int
    last: float = float("-inf")
    most: int = 0


_scope: _Borrowing | None = None


def refresh() -> None:
    """Inside lent(): ask again when EVERY seconds have passed and set the threads granted
    (a no-op elsewhere, so sampling code calls it unconditionally)."""
    scope = _scope
    if scope is None or time.monotonic() - scope.last < EVERY:
        return
    scope.last = time.monotonic()
    threads = max(scope.own, int(scope.ask()))
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    scope.most = max(scope.most, threads)


@contextmanager
def lent(ask: Callable[[], int] | None, release: Callable[[], None] | None = None) -> Iterator:
    """Borrow idle CPUs for the enclosed evaluation (ask() -> the threads granted; None: run on
    this process's own threads). Yields a callable giving the most threads the scope ran with."""
    global _scope
    own = torch.get_num_threads()
    if ask is None:
        yield lambda: own
        return
    _scope = scope = _Borrowing(ask, own)
    try:
        refresh()
        yield lambda: max(scope.most, own)
    finally:
        _scope = None
        torch.set_num_threads(own)
        if release is not None:
            release()
