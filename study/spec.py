"""Study spec: YAML or built-in preset, validated completely before Ray starts (all errors at once).

Spec keys map onto trial config keys with two documented renames: `dataset` sets `data.name`, and
`label_percents` lists the values of `data.label_percent` (one per table cell). `seed` sets every
seed key (train, data, split, sample) unless `config` sets one. `base_config` names the
trainables.config.BASE_CONFIGS entry the trials start from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from search_spaces import DEFAULT_RANGES, Range
from study import schema
from study.errors import SpecError
from study.loading import load_raw, preset_names
from study.locations import absolute_tracking_uri, check_locations
from trainables import names
from trainables.config import BASE_CONFIGS, TrialConfig, from_flat, shown
from trainables.names import IMAGE_DATASETS, SEED_KEYS, TOY_DATASETS
from trainables.storage import Place, is_uri

__all__ = ["SpecError", "StudySpec", "load_raw", "load_spec", "preset_names", "validate"]

STORE_ENV = "SC_GUIDANCE_ARTIFACT_STORE"  # overrides the user-level default artifact store


class StudySpec(schema.SpecModel):
    """A validated study: the spec's one model (study.schema.SpecModel, its keys, defaults and
    meanings) with what the platform derives from it. validate() makes it: the sections filled
    with their defaults, tracking_uri absolute, address from $RAY_ADDRESS, asha's metric the first
    objective's, num_trials the sum of the cells' budgets when trials_per_cell is given."""

    def study_place(self, study_dir: Path | None = None) -> Place:
        """The study's folder of its storage: in an object store, its URI (whose node-local mirror
        is the study directory); else study_dir when given (where the study was found), else
        <storage or ./studies>/<name>."""
        if self.storage and is_uri(self.storage):
            return Place(self.storage) / self.name
        if study_dir is not None:
            return Place(str(study_dir))
        return Place(self.storage or "studies") / self.name

    def artifact_place(self, study: Place) -> Place:
        """The resolved artifact store of this study (a folder or an object-store URI)."""
        if self.artifact_store == "study":
            return study / "artifacts"
        default = os.environ.get(STORE_ENV) or "~/.cache/sc-guidance/artifacts"
        return Place(self.artifact_store or default)

    def artifact_dir(self, study_dir: Path) -> Path:
        """This machine's folder of the artifact store (an object store's mirror)."""
        return self.artifact_place(self.study_place(study_dir)).local

    def cell_budgets(self) -> dict[tuple[str, float], int]:
        """Trials per (method, label %) cell: trials_per_cell each, or num_trials dealt round
        robin over the cells; a cell with nothing to tune (Cond) trains once."""
        cells = [(m, float(p)) for m in self.methods for p in self.label_percents]
        cap = {c: 1 if not names.TUNED_KEYS[c[0]] else schema.MAX_TRIALS for c in cells}
        if self.trials_per_cell is not None:
            return {c: min(cap[c], self.trials_per_cell) for c in cells}
        budget, left = dict.fromkeys(cells, 0), self.num_trials
        while left > 0 and any(budget[c] < cap[c] for c in cells):
            for c in cells:
                if left > 0 and budget[c] < cap[c]:
                    budget[c], left = budget[c] + 1, left - 1
        return budget

    def base_params(self) -> dict[str, Any]:
        """Flat params shared by every trial: the spec's seed for every seed key (train, data,
        split, sample) unless `config` sets one itself, then `config`, then the dataset."""
        sweep = self.guidance
        cap = sweep.max_scale if sweep.max_scale is not None else 4 * max(sweep.scales)
        guidance: dict[str, Any] = {
            "sample.guidance_grid": tuple(sweep.scales),
            "sample.guidance_cap": cap,
        }
        for key, value in (
            ("eval.val_num_per_class", sweep.val_num_per_class),
            ("eval.val_halving", sweep.halving),
            ("eval.val_num_steps", sweep.val_num_steps),
        ):
            if value is not None:
                guidance[key] = value
        return {
            **dict.fromkeys(SEED_KEYS, self.seed),
            **guidance,
            **self.config,
            "data.name": self.dataset,
        }

    def trial_config(self, point: Mapping[str, Any] | None = None) -> TrialConfig:
        """The one resolver: a trial's complete, typed config from a point of a cell (method,
        label %, tuned knobs, overrides; a stage trial's STAGE_KEY is not a config key) over the
        study's base params and base config. ValueError names a bad value."""
        point = {k: v for k, v in (point or {}).items() if k != names.STAGE_KEY}
        return resolve({**self.base_params(), **point}, self.base_config)

    def ranges(self) -> dict[str, Range]:
        """The search section as the searcher's ranges (search_spaces.Range)."""
        return {
            key: Range(r.low, r.high, r.log, tuple(r.choices) if r.choices is not None else None)
            for key, r in (self.search or {}).items()
        }

    def to_dict(self) -> dict:
        """Plain data, as YAML would hold it (keys left unset omitted)."""
        return self.model_dump(mode="json", exclude_none=True)

    def replace(self, **changes: Any) -> StudySpec:
        """A copy with these keys changed (not validated again: the caller's values are)."""
        return self.model_copy(update=changes)


def resolve(params: Mapping[str, Any], base_config: str | None = None) -> TrialConfig:
    """Flat params over a base config (None: the defaults) as a checked TrialConfig: the one way
    from flat keys to a trial's config (StudySpec.trial_config, the benchmarks)."""
    return from_flat(dict(params), base=base_config)


def _check_images(trial: Any, errors: list[str]) -> None:
    """The image set is where the spec says, and the evaluation can run (weights, checkpoint)."""
    from trainables.data.images import DatasetError
    from trainables.data.sets import check_images
    from trainables.evaluation.fid import EvalError
    from trainables.evaluation.generation import preflight

    try:
        check_images(trial.data)
    except DatasetError as exc:
        errors.append(f"dataset: {exc}")
    try:
        preflight(trial)
    except EvalError as exc:
        errors.append(f"eval: {exc}")


def _check_objectives(
    trials: dict[str, Any], objectives: list[schema.Objective], errors: list[str]
) -> None:
    """Every objective is a metric every method's trials report on this dataset (one message per
    objective, naming the methods that lack it and the metrics all of them report)."""
    reported = {
        method: names.reported_metrics(
            method,
            images=trial.model.arch == "ncsnpp",
            generation=trial.eval.fid,
            exact=trial.data.name == "twin",
        )
        for method, trial in trials.items()
    }
    common = sorted(frozenset.intersection(*reported.values())) if reported else []
    for o in objectives:
        lacking = [m for m, metrics in reported.items() if o.metric not in metrics]
        if lacking:
            errors.append(
                f"objectives: {o.metric!r} is not reported by {', '.join(lacking)} trials; "
                f"every method here reports {common}"
            )


def _check_trials(spec: StudySpec, errors: list[str], check_data: bool = True) -> None:
    """Resolve one trial config per method: values against the schema, the network for the
    data, the data and evaluation pre-flight, the objectives against what trials report."""

    images = spec.dataset in IMAGE_DATASETS
    trials: dict[str, Any] = {}
    for i, method in enumerate(spec.methods):
        try:
            trial = spec.trial_config({"method": method})
        except ValueError as exc:
            errors.append(f"config: {exc}")
            return
        if images != (trial.model.arch == "ncsnpp"):
            fix = "an image base_config (tiny-images, twin, cifar10, cifar100, cifar10-small)"
            fix = fix if images else "the toy base_config"
            errors.append(
                f"dataset {spec.dataset!r} needs model.arch {'ncsnpp' if images else 'mlp'}, "
                f"got {trial.model.arch!r}; use {fix}"
            )
            return
        if images and i == 0 and check_data:
            _check_images(trial, errors)
        trials[method] = trial
    _check_objectives(trials, list(spec.objectives), errors)
    _check_validation_steps(spec, trial, errors)


def _check_validation_steps(spec: StudySpec, trial: Any, errors: list[str]) -> None:
    """Validation sampler steps the spec writes are at most the study's sampler steps (a base
    config's fewer steps are only capped: trainables.sweep.validation_size)."""
    key = "eval.val_num_steps"
    written = key if key in spec.config else "guidance.val_num_steps"
    if written == key or spec.guidance.val_num_steps is not None:
        steps, most = trial.eval.val_num_steps, trial.sample.num_steps
        if steps > most:
            errors.append(
                f"{written}: {steps} is above sample.num_steps {most}, the steps the study "
                f"samples with; give at most {most}, or leave it out (then {most})"
            )


def _check_names(spec: schema.SpecModel, errors: list[str]) -> None:
    """The dataset, base config and searched keys are ones the platform knows."""

    if spec.dataset not in TOY_DATASETS and spec.dataset not in IMAGE_DATASETS:
        valid = list(TOY_DATASETS) + list(IMAGE_DATASETS)
        errors.append(f"dataset: unknown dataset {shown(spec.dataset)}; valid: {valid}")
    base = spec.base_config
    if base not in BASE_CONFIGS:
        errors.append(f"base_config: unknown {shown(base)}; valid: {sorted(BASE_CONFIGS)}")
    for key in spec.search or {}:
        if key == names.GUIDANCE_SCALE_KEY:
            errors.append(
                f"search.{key}: the guidance scale is swept inside every trial, not searched; "
                "list its values under guidance: {scales: [...]}"
            )
        elif key not in DEFAULT_RANGES:
            errors.append(f"search.{key}: not a searched key; valid: {sorted(DEFAULT_RANGES)}")
    metrics = [o.metric for o in spec.objectives]
    if spec.scheduler.metric is not None and spec.scheduler.metric not in metrics:
        errors.append(
            f"scheduler.metric: {shown(spec.scheduler.metric)} is not one of the objectives "
            f"{metrics}"
        )


def validate(raw: dict, check_data: bool = True) -> StudySpec:
    """Check every value against the schema (study.schema, trainables.config) and the relations
    between them; raise SpecError listing every problem, one line each. check_data=False skips
    the dataset and Inception-weight checks (`study plan` reads a spec without its data)."""
    errors: list[str] = []
    checked, problems = schema.problems(raw, StudySpec)
    errors += problems
    if checked is None:
        _fail(errors)
    _check_names(checked, errors)
    check_locations(checked, errors)
    if errors:
        _fail(errors)
    scheduler = checked.scheduler
    if scheduler.type == "asha" and scheduler.metric is None:
        scheduler = scheduler.model_copy(update={"metric": checked.objectives[0].metric})
    spec = checked.replace(
        scheduler=scheduler,
        tracking_uri=absolute_tracking_uri(checked.tracking_uri),
        address=checked.address or os.environ.get("RAY_ADDRESS") or None,
    )
    _check_trials(spec, errors, check_data=check_data)
    if errors:
        _fail(errors)
    if spec.trials_per_cell is not None:  # the total follows from the cells' budgets
        spec = spec.replace(num_trials=sum(spec.cell_budgets().values()))
    return spec


def _fail(errors: list[str]) -> None:
    """Raise the SpecError of these problems: one line, or one line per problem."""
    if len(errors) == 1:
        raise SpecError(f"invalid study spec: {errors[0]}")
    raise SpecError("invalid study spec:\n  - " + "\n  - ".join(errors))


def load_spec(source: str | None, check_data: bool = True) -> StudySpec:
    """Load and validate a spec file or preset."""
    return validate(load_raw(source), check_data=check_data)
