"""What the study hands every trial across the Ray boundary: one typed, picklable record (torch-
free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainables.config import TrialConfig


@dataclass(frozen=True)
class TrialContext:
    """A trial's flat params plus where it reads and writes, built by the study's Tune driver."""

    config: TrialConfig  # the trial's resolved config (study.spec.StudySpec.trial_config)
    cache_dir: str  # the artifact cache (absolute)
    record_dir: str  # where the worker writes the trial's records (trainables.names)
    threads: int = 1  # torch threads per process: resources.cpus_per_trial
    local_mode: bool = True  # Train's local mode: the worker runs in the Tune trial's process
    eval_every_epoch: bool = False  # ASHA: evaluate the objective every epoch of the last artifact
    # (metric, "min" | "max") the search optimises, on the validation split; the first one also
    # chooses the guidance scale. A NaN / inf one fails the trial.
    objectives: tuple[tuple[str, str], ...] = ()
    # A stage trial (study.stages): the artifact to train up to, or "evaluation" (the image
    # evaluator); "" for a trial of the search.
    stage: str = ""
    # The study's CoreLender (study.cluster), whose idle CPUs the evaluation borrows; None: none.
    lender: Any = None
