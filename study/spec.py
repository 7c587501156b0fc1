"""Study spec: YAML or built-in preset, validated completely before Ray starts (all errors at once)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from search_spaces import DEFAULT_RANGES, METHOD_KEYS, Range
from search_spaces.spaces import PRESET_RANGES

PRESET_DIR = Path(__file__).parent / "presets"
DEFAULT_PRESET = "toy"
TOP_KEYS = {
    "name",
    "dataset",
    "methods",
    "label_percents",
    "num_trials",
    "objectives",
    "scheduler",
    "search",
    "resources",
    "seed",
    "config",
    "storage",
    "tracking_uri",
    "address",
    "preset",
}
RESOURCE_KEYS = {
    "cpus_per_trial",
    "gpus_per_trial",
    "num_workers",
    "max_concurrent_trials",
    "max_failures",
}


class SpecError(ValueError):
    """A spec that cannot run; the message lists every problem."""


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str  # min | max


@dataclass(frozen=True)
class Scheduler:
    """fifo, or ASHA on one objective (the guard) compared at every epoch of a trial's last artifact."""

    type: str = "fifo"
    metric: str | None = None  # asha: the guard objective; default the first objective
    grace_period: int = 1  # asha: epochs before a trial can be stopped
    reduction_factor: float = 2.0

    def to_dict(self) -> dict | str:
        return (
            "fifo"
            if self.type == "fifo"
            else {
                "type": self.type,
                "metric": self.metric,
                "grace_period": self.grace_period,
                "reduction_factor": self.reduction_factor,
            }
        )


SCHEDULER_KEYS = {"type", "metric", "grace_period", "reduction_factor"}


@dataclass(frozen=True)
class Resources:
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    num_workers: int = 0  # Ray Train workers per trial; 0 = local mode in the trial's process
    max_concurrent_trials: int = 2
    max_failures: int = (
        2  # Ray Train restarts of a trial's worker group (resumes from its checkpoint)
    )


@dataclass(frozen=True)
class StudySpec:
    """A validated study."""

    name: str
    dataset: str
    methods: tuple[str, ...]
    label_percents: tuple[float, ...]
    num_trials: int
    objectives: tuple[Objective, ...]
    scheduler: Scheduler
    search: dict[str, Range]
    resources: Resources
    seed: int
    config: dict[str, Any] = field(default_factory=dict)
    preset: str = "toy"  # trainables.config preset the trial configs start from
    storage: str | None = None  # study directory's parent; default ./studies
    tracking_uri: str | None = None
    address: str | None = None

    def to_dict(self) -> dict:
        """Plain data, as YAML would hold it."""
        return {
            "name": self.name,
            "dataset": self.dataset,
            "methods": list(self.methods),
            "label_percents": list(self.label_percents),
            "num_trials": self.num_trials,
            "objectives": [{"metric": o.metric, "mode": o.mode} for o in self.objectives],
            "scheduler": self.scheduler.to_dict(),
            "search": {
                k: (
                    {"choices": list(r.choices)}
                    if r.choices is not None
                    else {"low": r.low, "high": r.high, "log": r.log}
                )
                for k, r in self.search.items()
            },
            "resources": vars(self.resources).copy(),
            "seed": self.seed,
            "config": dict(self.config),
            "preset": self.preset,
            **{
                k: getattr(self, k)
                for k in ("storage", "tracking_uri", "address")
                if getattr(self, k) is not None
            },
        }


def preset_names() -> list[str]:
    """Built-in study presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_raw(source: str | None) -> dict:
    """Read a spec file or a preset name (None = the default preset) into a dict."""
    if source is None:
        source = DEFAULT_PRESET
    path = Path(source)
    if not path.exists():
        if source in preset_names():
            path = PRESET_DIR / f"{source}.yaml"
        else:
            raise SpecError(f"no spec file or preset named {source!r}; presets: {preset_names()}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: malformed YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec is a YAML mapping, got {type(raw).__name__}")
    return raw


def _ranges(raw: Any, errors: list[str]) -> dict[str, Range]:
    ranges: dict[str, Range] = {}
    if not isinstance(raw, dict):
        errors.append(
            "search: expected a mapping of key -> {low, high, log} / {choices} / preset name"
        )
        return ranges
    for key, value in raw.items():
        if key not in DEFAULT_RANGES:
            errors.append(f"search.{key}: not a searched key; valid: {sorted(DEFAULT_RANGES)}")
            continue
        if isinstance(value, str):
            if value not in PRESET_RANGES:
                errors.append(
                    f"search.{key}: unknown range preset {value!r}; valid: {sorted(PRESET_RANGES)}"
                )
                continue
            rng = PRESET_RANGES[value]
        elif isinstance(value, dict) and set(value) <= {"low", "high", "log", "choices"}:
            try:
                choices = value.get("choices")
                rng = Range(
                    None if value.get("low") is None else float(value["low"]),
                    None if value.get("high") is None else float(value["high"]),
                    bool(value.get("log", True)),
                    tuple(float(c) for c in choices) if choices is not None else None,
                )
            except (TypeError, ValueError):
                errors.append(f"search.{key}: low/high/choices must be numbers, got {value!r}")
                continue
            if rng.choices is not None and any(c < 0 for c in rng.choices):
                errors.append(
                    f"search.{key}: weights and scales must be >= 0, got {list(rng.choices)}"
                )
        else:
            errors.append(
                f"search.{key}: expected {{low, high, log}} or {{choices}}, got {value!r}"
            )
            continue
        errors.extend(rng.check(key))
        ranges[key] = rng
    return ranges


def _scheduler(raw: Any, objectives: list[Objective], errors: list[str]) -> Scheduler:
    sched = {"type": raw} if isinstance(raw, str) else raw
    if not isinstance(sched, dict) or set(sched) - SCHEDULER_KEYS:
        errors.append(
            f"scheduler: 'fifo', 'asha' or {{type: asha, metric, grace_period, reduction_factor}}, got {raw!r}"
        )
        return Scheduler()
    kind = sched.get("type", "fifo")
    if kind not in ("fifo", "asha"):
        errors.append(f"scheduler: unknown scheduler {kind!r}; valid: ['asha', 'fifo']")
        return Scheduler()
    if kind == "fifo":
        return Scheduler()
    names = [o.metric for o in objectives]
    metric = sched.get("metric") or (names[0] if names else None)
    if names and metric not in names:
        errors.append(f"scheduler.metric: {metric!r} is not one of the objectives {names}")
    grace, factor = sched.get("grace_period", 1), sched.get("reduction_factor", 2.0)
    if not isinstance(grace, int) or grace < 1:
        errors.append(f"scheduler.grace_period: a positive number of epochs, got {grace!r}")
        grace = 1
    if not isinstance(factor, (int, float)) or factor <= 1:
        errors.append(f"scheduler.reduction_factor: must be > 1, got {factor!r}")
        factor = 2.0
    return Scheduler("asha", metric, grace, float(factor))


def validate(raw: dict) -> StudySpec:
    """Check every field; raise SpecError listing all problems at once."""
    from trainables.config import PRESETS, from_flat
    from trainables.data.images import IMAGE_DATASETS, DatasetError, check_images
    from trainables.data.toy import TOY_DATASETS

    errors: list[str] = []
    for key in sorted(set(raw) - TOP_KEYS):
        errors.append(f"unknown spec key {key!r}; valid: {sorted(TOP_KEYS)}")
    name = str(raw.get("name", "study"))
    if not name or "/" in name:
        errors.append(f"name: {name!r} must be a non-empty name without '/'")
    dataset = raw.get("dataset", "overlap2")
    if dataset not in TOY_DATASETS and dataset not in IMAGE_DATASETS:
        errors.append(
            f"dataset: unknown dataset {dataset!r}; valid: {list(TOY_DATASETS) + list(IMAGE_DATASETS)}"
        )
    methods = raw.get("methods", list(METHOD_KEYS))
    if not isinstance(methods, list) or not methods:
        errors.append("methods: give a non-empty list of method names")
        methods = []
    for m in methods:
        if m not in METHOD_KEYS:
            errors.append(f"methods: unknown method {m!r}; valid: {list(METHOD_KEYS)}")
    percents = raw.get("label_percents", [100])
    if not isinstance(percents, list) or not percents:
        errors.append("label_percents: give a non-empty list of percentages in (0, 100]")
        percents = []
    for p in percents:
        if not isinstance(p, (int, float)) or not 0 < p <= 100:
            errors.append(f"label_percents: {p!r} is outside (0, 100]")
    num_trials = raw.get("num_trials", 16)
    if not isinstance(num_trials, int) or num_trials < 1:
        errors.append(f"num_trials: must be a positive integer, got {num_trials!r}")
    objectives = []
    for o in raw.get("objectives", [{"metric": "guided_score_cos", "mode": "max"}]) or []:
        if (
            not isinstance(o, dict)
            or not isinstance(o.get("metric"), str)
            or o.get("mode") not in ("min", "max")
        ):
            errors.append(f"objectives: each is {{metric: NAME, mode: min|max}}, got {o!r}")
        else:
            objectives.append(Objective(o["metric"], o["mode"]))
    if not objectives:
        errors.append("objectives: give at least one {metric, mode}")
    scheduler = _scheduler(raw.get("scheduler", "fifo"), objectives, errors)
    search = _ranges(raw.get("search", {}), errors)
    res_raw = raw.get("resources", {}) or {}
    resources = Resources()
    if not isinstance(res_raw, dict) or set(res_raw) - RESOURCE_KEYS:
        errors.append(f"resources: keys must be among {sorted(RESOURCE_KEYS)}, got {res_raw!r}")
    else:
        try:
            resources = Resources(**{k: type(getattr(Resources, k))(v) for k, v in res_raw.items()})
        except (TypeError, ValueError):
            errors.append(f"resources: values must be numbers, got {res_raw!r}")
        if (
            resources.cpus_per_trial <= 0
            or resources.gpus_per_trial < 0
            or resources.num_workers < 0
            or resources.max_concurrent_trials < 1
            or resources.max_failures < 0
        ):
            errors.append(
                f"resources: need cpus_per_trial > 0, gpus_per_trial >= 0, num_workers >= 0, max_concurrent_trials >= 1; got {vars(resources)}"
            )
    seed = raw.get("seed", 0)
    if not isinstance(seed, int):
        errors.append(f"seed: must be an integer, got {seed!r}")
    preset = raw.get("preset", "toy")
    if preset not in PRESETS:
        errors.append(f"preset: unknown config preset {preset!r}; valid: {sorted(PRESETS)}")
    config = raw.get("config", {}) or {}
    if not isinstance(config, dict):
        errors.append("config: expected a mapping of flat config keys")
        config = {}
    if not errors:
        # Build one trial config per method to check the flat overrides against the schema.
        trial = None
        for m in methods:
            try:
                trial = from_flat({**config, "method": m, "data.name": dataset}, preset=preset)
            except ValueError as exc:
                errors.append(f"config: {exc}")
                break
        if trial is not None:
            images = dataset in IMAGE_DATASETS
            if images != (trial.model.arch == "ncsnpp"):
                fix = (
                    "an image preset (tiny-images, cifar10, cifar100, cifar10-small)"
                    if images
                    else "the toy preset"
                )
                errors.append(
                    f"dataset {dataset!r} needs model.arch {'ncsnpp' if images else 'mlp'}, got {trial.model.arch!r}; use {fix}"
                )
            elif images:
                from trainables.image_eval import preflight
                from trainables.metrics.fid import EvalError

                try:
                    check_images(trial.data)
                except DatasetError as exc:
                    errors.append(f"dataset: {exc}")
                try:
                    preflight(trial)
                except EvalError as exc:
                    errors.append(f"eval: {exc}")
    address = raw.get("address") or os.environ.get("RAY_ADDRESS") or None
    if errors:
        raise SpecError("invalid study spec:\n  - " + "\n  - ".join(errors))
    return StudySpec(
        name=name,
        dataset=dataset,
        methods=tuple(methods),
        label_percents=tuple(float(p) for p in percents),
        num_trials=num_trials,
        objectives=tuple(objectives),
        scheduler=scheduler,
        search=search,
        resources=resources,
        seed=seed,
        config=dict(config),
        preset=preset,
        storage=raw.get("storage"),
        tracking_uri=raw.get("tracking_uri"),
        address=address,
    )


def load_spec(source: str | None) -> StudySpec:
    """Load and validate a spec file or preset."""
    return validate(load_raw(source))
