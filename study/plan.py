"""`study plan SPEC`: the study's stage graph and its compute, planned vs naive, without running.

Planned: every distinct network the trials need, found with the artifact cache's own keys
(trainables.identity.artifact_identity; a searched cell's trials get distinct knob values, so each
trains its own classifier), trained once: shared ones (study.stages: the score model, networks the
"labeled" and "all" variants share at 100 % labels, the image evaluation classifier) as the first
stage, by stage trials the scheduler runs before the trials that need them, then each cell's own.
Sampling: per guided trial the validation sweep as it runs (trainables.sweep: the race over the grid
and the most probes its extension can add, at guidance.val_num_steps) plus one full evaluation.
Naive: every trial retrains every network it uses, and every guidance scale is its own trial
sampled in full. Counts
are training steps and score-network evaluations of sampling (device-seconds depend on the machine:
bench/ measures throughput).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from search_spaces import cell_points
from study.errors import StudyError
from study.progress import work_units
from study.spec import StudySpec
from study.stages import artifact_folders, knob_dependent, plan_stages
from trainables.config import TrialConfig
from trainables.names import GUIDED, SAMPLER_SCORE_EVALS, TOY_CLASSES, cell_label
from trainables.registry import EVAL_CLASSIFIER, TERMS, artifact_config, get_method
from trainables.sweep import extension_probes, first_round, race_samples, validation_size


def _sweep_evals(config: TrialConfig, scales: int, classes: int) -> float:
    """Score evaluations of a trial's validation sweep as it runs (trainables.sweep): the race
    over the grid and the most probes the extension can add (an upper bound: the probes stop
    where the curve turns), at eval.val_num_steps; images race by successive halving."""
    n_final, steps = validation_size(config)
    images = config.model.arch == "ncsnpp"
    n_first = first_round(n_final, config.eval.val_halving) if images else n_final
    probes = 0
    if scales > 1:
        probes = extension_probes(config.sample.guidance_grid, config.sample.guidance_cap)
    per = SAMPLER_SCORE_EVALS[config.sample.sampler] * steps * classes
    return float(per * race_samples(scales, n_final, n_first, probes))


def _num_classes(dataset: str, config: object) -> int:
    """Classes of the study's dataset without reading its images (a folder set: its class
    folders, which must exist; the CIFAR sets: known; the twin: its source's)."""
    fixed = {"cifar10": 10, "cifar100": 100, "tiny-images": 4}
    if dataset == "twin":
        dataset = config.data.twin_source
    if dataset in fixed:
        return fixed[dataset]
    if dataset == "shapes":
        return config.data.num_classes
    if dataset == "folder":
        from trainables.data.images import DatasetError, class_folders

        try:
            return len(class_folders(config.data.root))
        except DatasetError as exc:
            raise StudyError(f"study plan counts the folder's classes: {exc}") from None
    return TOY_CLASSES[dataset]


@dataclass
class Plan:
    """Stages with their networks, and the totals."""

    shared: Counter = field(default_factory=Counter)  # network name -> how many (stage 1)
    cells: dict[tuple[str, float], dict] = field(default_factory=dict)  # per cell: trials, nets
    train_steps: int = 0
    train_steps_naive: int = 0
    score_evals: float = 0.0
    score_evals_naive: float = 0.0
    # Work units (study.progress.work_units) of one search trial per cell, and of each stage trial:
    # what the progress's time-left estimate weighs the trials by.
    work: dict[tuple[str, float], float] = field(default_factory=dict)
    shared_work: list[float] = field(default_factory=list)
    stored: int = 0  # networks the artifact store holds already (reused, not trained again)


def _training_work(artifact: object, config: object, train: object) -> float:
    """Work units of training one network (study.progress.work_units): its steps and batch, a
    double backward where a weighted term has one."""
    double = any(
        TERMS[t.term].double_backward and t.weight(config.loss) != 0 for t in artifact.terms
    )
    return work_units(train.steps, train.batch_size, 0.0, double_backward=double)


def _store_check(spec: StudySpec):
    """folder -> whether the study's artifact store holds that network already (reused)."""
    store = spec.artifact_place(spec.study_place())
    return lambda folder: store.exists(store.local / folder / "model.pt")


def make_plan(spec: StudySpec, check_store: bool = False, classes: int = 0) -> Plan:
    """The plan of a validated spec (its first seed). check_store (`study plan`): a network the
    artifact store holds already is reused, not trained (the live status and `study status` plan
    the whole study, what its own trials trained included). classes: the data set's, when known
    (0: counted from the spec's data set)."""
    plan, seen = Plan(), set()
    base = spec.trial_config({"method": spec.methods[0]})
    classes = classes or _num_classes(spec.dataset, base)
    budgets = spec.cell_budgets()
    cells = [{"method": m, "data.label_percent": p} for m, p in budgets]
    stages, _ = plan_stages(cells, spec.trial_config, None)
    staged = {s.key for s in stages}
    in_store = _store_check(spec) if check_store else lambda _: False
    for (method, pct), budget in budgets.items():
        cell = {"trials": budget, "networks": Counter()}
        work = 0.0
        # A cell's first trial is its default point (the paper's knobs), as the searcher asks.
        config = spec.trial_config(cell_points([method], [pct], spec.ranges())[0])
        scales = len(config.sample.guidance_grid) if method in GUIDED else 1
        moves = knob_dependent(config)
        for artifact, key in artifact_folders(config):
            train = artifact_config(artifact, config).train
            # A network is trained once for the study, at the first configuration that needs it;
            # one the knobs shape also by each further trial of the cell (no configuration of a
            # cell runs twice, and the cells' searches draw their knobs apart).
            count = int(key not in seen) + (budget - 1 if moves[artifact.name] else 0)
            plan.train_steps_naive += train.steps * max(1, scales) * budget
            if key not in seen and in_store(key):  # trained before: every later one is new
                count -= 1
                plan.stored += 1
            seen.add(key)
            if not count:
                continue
            plan.train_steps += train.steps * count
            shared = key in staged
            (plan.shared if shared else cell["networks"])[artifact.name] += count
            units = _training_work(artifact, config, train)
            if shared:
                plan.shared_work.append(units)
            else:
                work += units * count
        per = SAMPLER_SCORE_EVALS[config.sample.sampler] * config.sample.num_steps * classes
        full = per * config.sample.num_per_class
        val = _sweep_evals(config, scales if method in GUIDED else 1, classes)
        plan.score_evals += budget * (full + val)
        plan.score_evals_naive += budget * scales * full
        guidance = get_method(method).guidance
        work += budget * work_units(0, 0, full + val, guidance=guidance)
        plan.cells[(method, pct)] = cell
        plan.work[(method, pct)] = work / max(1, budget)
    config = base
    if config.model.arch == "ncsnpp":  # images: the evaluation classifier, unless one is given
        if config.eval.fid and not config.eval.classifier_checkpoint:
            plan.shared[EVAL_CLASSIFIER.name] += 1  # a stage trial of its own (study.stages)
            plan.train_steps += config.eval.classifier_steps
            plan.shared_work.append(
                work_units(config.eval.classifier_steps, config.train.batch_size, 0.0)
            )
            plan.train_steps_naive += config.eval.classifier_steps * spec.num_trials
    return plan


def to_text(spec: StudySpec, plan: Plan) -> str:
    """The stage graph and both costs, for the terminal."""
    lines = [f"study {spec.name!r}: {len(plan.cells)} cells, {spec.num_trials} trials"]
    shared = ", ".join(f"{n} x{c}" for n, c in sorted(plan.shared.items())) or "none"
    lines.append(f"stage 1 (shared, trained once before the trials that need them): {shared}")
    lines.append("stage 2 (per cell: trials -> networks of its own):")
    for (method, pct), cell in plan.cells.items():
        own = ", ".join(f"{n} x{c}" for n, c in sorted(cell["networks"].items())) or "none"
        lines.append(f"  {cell_label(method, pct)}: {cell['trials']} trial(s) -> {own}")

    def ratio(naive: float, planned: float) -> str:
        if not planned or not naive:
            return "-"
        if naive >= planned:
            return f"{naive / planned:.1f}x less"
        return f"{planned / naive:.1f}x more"

    lines += [
        "",
        "| compute | planned | naive | |",
        "|---|---|---|---|",
        f"| training steps | {plan.train_steps:,} | {plan.train_steps_naive:,} | "
        f"{ratio(plan.train_steps_naive, plan.train_steps)} |",
        f"| sampling score evaluations | {plan.score_evals:.3g} | {plan.score_evals_naive:.3g} | "
        f"{ratio(plan.score_evals_naive, plan.score_evals)} |",
        "",
        "naive: every trial retrains every network it uses; every guidance scale is its own trial.",
        *(
            [
                f"planned counts no step for the {plan.stored} network(s) the artifact store holds "
                "already (they are reused)."
            ]
            if plan.stored
            else []
        ),  # fmt: skip
        "stage 1 runs as stage trials before the trials that need them (study.stages); "
        "the other slots meanwhile run trials that need none.",
    ]
    return "\n".join(lines) + "\n"
