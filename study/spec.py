"""Study spec: YAML or built-in preset, validated completely before Ray starts (all errors at once).

Spec keys map onto trial config keys with two documented renames: `dataset` sets `data.name`, and
`label_percents` lists the values of `data.label_percent` (one per table cell). `seed` sets every
seed key (train, data, split, sample) unless `config` sets one. `base_config` names the
trainables.config.BASE_CONFIGS entry the trials start from (`preset`, its former name, is read too).
"""

from __future__ import annotations

import math
import os
import re
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from search_spaces import DEFAULT_GUIDANCE_SCALES, DEFAULT_RANGES, Range
from search_spaces.spaces import PRESET_RANGES
from study.errors import SpecError
from trainables import names
from trainables.storage import Place, is_uri

__all__ = ["SpecError", "StudySpec", "load_raw", "load_spec", "preset_names", "validate"]

PRESET_DIR = Path(__file__).parent / "presets"
DEFAULT_PRESET = "toy"
TOP_KEYS = {
    "name", "dataset", "methods", "label_percents", "num_trials", "objectives", "scheduler",
    "search", "resources", "seed", "config", "storage", "tracking_uri", "address", "base_config",
    "preset", "study_id", "trials_per_cell", "guidance", "artifact_store",
}  # fmt: skip
SEED_KEYS = ("train.seed", "data.seed", "data.split_seed", "sample.seed")  # the spec's seed sets
STORE_ENV = "SC_GUIDANCE_ARTIFACT_STORE"  # overrides the user-level default artifact store
GUIDANCE_KEYS = {"scales", "val_num_per_class"}
RESOURCE_KEYS = {
    "cpus_per_trial", "gpus_per_trial", "num_workers", "max_concurrent_trials", "max_failures"
}  # fmt: skip
SCHEDULER_KEYS = {"type", "metric", "grace_period", "reduction_factor"}
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MAX_TRIALS = 100_000
STUDY_ID = re.compile(r"[0-9a-f]{8,32}")
TRACKING_SCHEMES = {"sqlite", "postgresql", "mysql", "mssql", "http", "https"}


@dataclass(frozen=True)
class Objective:
    """A metric the search optimises."""

    metric: str
    mode: str  # min | max


@dataclass(frozen=True)
class Scheduler:
    """fifo, or ASHA on one objective (the guard) compared at every epoch of a trial's last
    artifact."""

    type: str = "fifo"
    metric: str | None = None  # asha: the guard objective; default the first objective
    grace_period: int = 1  # asha: epochs before a trial can be stopped
    reduction_factor: float = 2.0

    def to_dict(self) -> dict | str:
        """As YAML holds it."""
        if self.type == "fifo":
            return "fifo"
        keys = ("type", "metric", "grace_period", "reduction_factor")
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True)
class Resources:
    """Per-trial resources; cpus_per_trial is also the torch thread count of each process."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    num_workers: int = 0  # Ray Train workers per trial; 0 = local mode in the trial's process
    max_concurrent_trials: int = 2
    max_failures: int = 2  # Ray Train restarts of a trial's worker group (from its checkpoint)


@dataclass(frozen=True)
class StudySpec:
    """A validated study."""

    name: str
    dataset: str  # the trials' data.name
    methods: tuple[str, ...]
    label_percents: tuple[float, ...]  # the trials' data.label_percent values
    num_trials: int
    objectives: tuple[Objective, ...]
    scheduler: Scheduler
    search: dict[str, Range]
    resources: Resources
    seed: int
    config: dict[str, Any] = field(default_factory=dict)
    base_config: str = "toy"  # trainables.config.BASE_CONFIGS entry the trial configs start from
    storage: str | None = None  # study directory's parent; default ./studies
    tracking_uri: str | None = None
    address: str | None = None
    study_id: str | None = None  # set when the study is created; tags every MLflow run it owns
    trials_per_cell: int | None = None  # each cell's budget (a cell without knobs: 1)
    # Swept inside every guided trial on the validation split (sample.guidance_grid).
    guidance_scales: tuple[float, ...] = DEFAULT_GUIDANCE_SCALES
    val_num_per_class: int | None = None  # eval.val_num_per_class (None: the config's)
    # Trained networks, content-addressed and shared by every study that points here (None: the
    # user-level default, $SC_GUIDANCE_ARTIFACT_STORE or ~/.cache/sc-guidance/artifacts; "study":
    # the study directory's own artifacts/). The saved spec pins the resolved folder.
    artifact_store: str | None = None

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
        cap = {c: 1 if not names.TUNED_KEYS[c[0]] else MAX_TRIALS for c in cells}
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
        guidance: dict[str, Any] = {"sample.guidance_grid": tuple(self.guidance_scales)}
        if self.val_num_per_class is not None:
            guidance["eval.val_num_per_class"] = self.val_num_per_class
        return {
            **dict.fromkeys(SEED_KEYS, self.seed),
            **guidance,
            **self.config,
            "data.name": self.dataset,
        }

    def epochs_per_trial(self) -> int:
        """Epochs of one artifact's training (ASHA's time axis)."""
        from trainables.config import from_flat

        params = {**self.base_params(), "method": self.methods[0]}
        train = from_flat(params, base=self.base_config).train
        steps = max(train.steps, train.classifier_steps)  # the longest artifact's
        return math.ceil(steps / train.steps_per_epoch)

    def to_dict(self) -> dict:
        """Plain data, as YAML would hold it."""
        optional = (
            "storage", "tracking_uri", "address", "study_id", "trials_per_cell", "artifact_store",
        )  # fmt: skip
        return {
            "name": self.name,
            "dataset": self.dataset,
            "methods": list(self.methods),
            "label_percents": list(self.label_percents),
            "num_trials": self.num_trials,
            "objectives": [{"metric": o.metric, "mode": o.mode} for o in self.objectives],
            "scheduler": self.scheduler.to_dict(),
            "search": {k: r.to_dict() for k, r in self.search.items()},
            "resources": vars(self.resources).copy(),
            "seed": self.seed,
            "config": dict(self.config),
            "base_config": self.base_config,
            "guidance": {
                "scales": list(self.guidance_scales),
                **(
                    {"val_num_per_class": self.val_num_per_class}
                    if self.val_num_per_class is not None
                    else {}
                ),
            },
            **{k: getattr(self, k) for k in optional if getattr(self, k) is not None},
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
        if source not in preset_names():
            raise SpecError(f"no spec file or preset named {source!r}; presets: {preset_names()}")
        path = PRESET_DIR / f"{source}.yaml"
    if not path.is_file():
        raise SpecError(f"{path} is not a file; give a YAML spec file or a preset name")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, OSError) as exc:
        raise SpecError(
            f"{path}: cannot be read as a text YAML file ({type(exc).__name__})"
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: malformed YAML{_where(exc)}: {_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec is a YAML mapping, got {type(raw).__name__}")
    return raw


def _where(exc: yaml.YAMLError) -> str:
    """' at line L, column C' of a YAML error (1-based), when PyYAML knows it."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _problem(exc: yaml.YAMLError) -> str:
    """What PyYAML says is wrong, on one line."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    return f"{context}: {problem}" if context else str(problem)


def _is_int(value: Any) -> bool:
    """An integer in the YAML sense (bool is not one, though Python says it is)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_name(name: Any, errors: list[str]) -> str:
    """A study name: letters, digits, '.', '_', '-', starting with a letter or digit."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        errors.append(
            f"name: {name!r} is not a study name; use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit (at most 100 characters)"
        )
        return "study"
    return name


def check_tracking_uri(uri: Any, errors: list[str]) -> None:
    """A tracking URI MLflow can open: sqlite, a SQL database, or an http(s) server that answers."""
    if uri is None:
        return
    if not isinstance(uri, str):
        errors.append(f"tracking_uri: expected a URI string, got {uri!r}")
        return
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    if scheme not in TRACKING_SCHEMES:
        errors.append(
            f"tracking_uri: unsupported scheme in {uri!r}; use one of "
            f"{sorted(TRACKING_SCHEMES)} (e.g. sqlite:////abs/path/mlflow.db or http://host:5000)"
        )
    elif scheme in ("http", "https"):
        port = parsed.port or (443 if scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname or "127.0.0.1", port), timeout=5).close()
        except OSError:
            errors.append(
                f"tracking_uri: no MLflow server answers at {uri!r}; start it "
                "(mlflow server --host 127.0.0.1 --port 5000) or fix the URI"
            )


# ---- one checker per section; each appends its problems to errors
# ---------------------------------
def _range(key: str, value: Any, errors: list[str]) -> Range | None:
    """One search range: a preset name, {low, high, log} or {choices}."""
    if isinstance(value, str):
        if value not in PRESET_RANGES:
            errors.append(
                f"search.{key}: unknown range preset {value!r}; valid: {sorted(PRESET_RANGES)}"
            )
            return None
        return PRESET_RANGES[value]
    if not isinstance(value, dict) or not set(value) <= {"low", "high", "log", "choices"}:
        errors.append(f"search.{key}: expected {{low, high, log}} or {{choices}}, got {value!r}")
        return None
    try:
        choices = value.get("choices")
        low, high = value.get("low"), value.get("high")
        rng = Range(
            None if low is None else float(low),
            None if high is None else float(high),
            bool(value.get("log", True)),
            tuple(float(c) for c in choices) if choices is not None else None,
        )
    except (TypeError, ValueError):
        errors.append(f"search.{key}: low/high/choices must be numbers, got {value!r}")
        return None
    if rng.choices is not None and any(c < 0 for c in rng.choices):
        errors.append(f"search.{key}: weights and scales must be >= 0, got {list(rng.choices)}")
    return rng


def _ranges(raw: Any, errors: list[str]) -> dict[str, Range]:
    """The search section: searched key -> range."""
    if not isinstance(raw, dict):
        errors.append(
            "search: expected a mapping of key -> {low, high, log} / {choices} / preset name"
        )
        return {}
    ranges: dict[str, Range] = {}
    for key, value in raw.items():
        if key not in DEFAULT_RANGES:
            errors.append(f"search.{key}: not a searched key; valid: {sorted(DEFAULT_RANGES)}")
            continue
        rng = _range(key, value, errors)
        if rng is not None:
            errors.extend(rng.check(key))
            ranges[key] = rng
    return ranges


def _guidance(raw: Any, search: Any, errors: list[str]) -> tuple[tuple[float, ...], int | None]:
    """The guidance section: {scales: [...], val_num_per_class: N}. A spec written before the
    sweep (search: sample.guidance_scale) gives its choices, or 5 log-spaced points of its range
    (with 1 when inside), as the scales."""
    legacy = search.pop("sample.guidance_scale", None) if isinstance(search, dict) else None
    if raw is None and legacy is not None:
        rng = _range("sample.guidance_scale", legacy, errors)  # None: _range reported why
        problems = rng.check("sample.guidance_scale") if rng is not None else []
        errors.extend(problems)
        if rng is None or problems:
            return DEFAULT_GUIDANCE_SCALES, None
        if rng.choices is not None:
            return tuple(sorted(set(rng.choices))), None
        points = (
            [rng.low * (rng.high / rng.low) ** (i / 4) for i in range(5)]
            if rng.log
            else [rng.low + (rng.high - rng.low) * i / 4 for i in range(5)]
        )
        inside = [1.0] if rng.low <= 1.0 <= rng.high else []
        return tuple(sorted({round(p, 6) for p in points} | set(inside))), None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict) or set(raw) - GUIDANCE_KEYS:
        errors.append(f"guidance: expected {{scales: [...], val_num_per_class: N}}, got {raw!r}")
        return DEFAULT_GUIDANCE_SCALES, None
    scales = raw.get("scales", list(DEFAULT_GUIDANCE_SCALES))
    if (
        not isinstance(scales, list)
        or not scales
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scales)
    ):
        errors.append(f"guidance.scales: give a non-empty list of numbers, got {scales!r}")
        return DEFAULT_GUIDANCE_SCALES, None
    if any(v < 0 or not math.isfinite(v) for v in scales):
        errors.append(
            f"guidance.scales: guidance scales must be finite and >= 0 (1 = plain conditional), "
            f"got {scales}"
        )
    per_class = raw.get("val_num_per_class")
    if per_class is not None and (not _is_int(per_class) or per_class < 1):
        errors.append(
            f"guidance.val_num_per_class: validation samples per class must be an integer >= 1, "
            f"got {per_class!r}"
        )
    return tuple(dict.fromkeys(float(v) for v in scales)), per_class


def _scheduler(raw: Any, objectives: list[Objective], errors: list[str]) -> Scheduler:
    """fifo or asha, with ASHA's guard metric among the objectives."""
    sched = {"type": raw} if isinstance(raw, str) else raw
    if not isinstance(sched, dict) or set(sched) - SCHEDULER_KEYS:
        errors.append(
            "scheduler: 'fifo', 'asha' or {type: asha, metric, grace_period, reduction_factor}, "
            f"got {raw!r}"
        )
        return Scheduler()
    kind = sched.get("type", "fifo")
    if kind not in ("fifo", "asha"):
        errors.append(f"scheduler: unknown scheduler {kind!r}; valid: ['asha', 'fifo']")
    if kind != "asha":
        return Scheduler()
    metrics = [o.metric for o in objectives]
    metric = sched.get("metric") or (metrics[0] if metrics else None)
    if metrics and metric not in metrics:
        errors.append(f"scheduler.metric: {metric!r} is not one of the objectives {metrics}")
    grace, factor = sched.get("grace_period", 1), sched.get("reduction_factor", 2.0)
    if not isinstance(grace, int) or grace < 1:
        errors.append(f"scheduler.grace_period: a positive number of epochs, got {grace!r}")
        grace = 1
    if not isinstance(factor, (int, float)) or factor <= 1:
        errors.append(f"scheduler.reduction_factor: must be > 1, got {factor!r}")
        factor = 2.0
    return Scheduler("asha", metric, grace, float(factor))


def _methods(raw: Any, errors: list[str]) -> list[str]:
    """Method names, exactly as the papers name them."""
    if not isinstance(raw, list) or not raw:
        errors.append("methods: give a non-empty list of method names")
        return []
    for m in raw:
        if m not in names.METHODS:
            errors.append(f"methods: unknown method {m!r}; valid: {list(names.METHODS)}")
    return [m for m in raw if m in names.METHODS]


def _label_percents(raw: Any, errors: list[str]) -> list[float]:
    """Label percentages in (0, 100]."""
    if not isinstance(raw, list) or not raw:
        errors.append("label_percents: give a non-empty list of percentages in (0, 100]")
        return []
    for p in raw:
        if not _is_number(p) or not 0 < p <= 100:
            errors.append(f"label_percents: {p!r} is outside (0, 100]")
    return [float(p) for p in raw if _is_number(p) and 0 < p <= 100]


def _objectives(raw: Any, errors: list[str]) -> list[Objective]:
    """{metric, mode} pairs (metric names are checked against the trials in _check_trials)."""
    objectives = []
    for o in raw or []:
        if not isinstance(o, dict) or not isinstance(o.get("metric"), str):
            errors.append(f"objectives: each is {{metric: NAME, mode: min|max}}, got {o!r}")
        elif o.get("mode") not in ("min", "max"):
            errors.append(f"objectives: each is {{metric: NAME, mode: min|max}}, got {o!r}")
        else:
            objectives.append(Objective(o["metric"], o["mode"]))
    if not objectives:
        errors.append("objectives: give at least one {metric, mode}")
    return objectives


def _resources(raw: Any, errors: list[str]) -> Resources:
    """cpus / gpus per trial (per worker), workers, concurrency, restarts."""
    raw = raw or {}
    if not isinstance(raw, dict) or set(raw) - RESOURCE_KEYS:
        errors.append(f"resources: keys must be among {sorted(RESOURCE_KEYS)}, got {raw!r}")
        return Resources()
    ints = {"num_workers", "max_concurrent_trials", "max_failures"}
    bad = {k: v for k, v in raw.items() if not (_is_int(v) if k in ints else _is_number(v))}
    if bad:
        errors.append(f"resources: values must be numbers ({sorted(ints)} integers), got {bad}")
        return Resources()
    resources = Resources(**{k: type(getattr(Resources, k))(v) for k, v in raw.items()})
    r = resources
    if (
        r.cpus_per_trial <= 0
        or r.gpus_per_trial < 0
        or r.num_workers < 0
        or r.max_concurrent_trials < 1
        or r.max_failures < 0
    ):
        errors.append(
            "resources: need cpus_per_trial > 0, gpus_per_trial >= 0, num_workers >= 0, "
            f"max_concurrent_trials >= 1, max_failures >= 0; got {vars(r)}"
        )
    return resources


def _check_images(trial: Any, errors: list[str]) -> None:
    """The image set is where the spec says, and the evaluation can run (weights, checkpoint)."""
    from trainables.data.images import DatasetError, check_images
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
    trials: dict[str, Any], objectives: list[Objective], errors: list[str]
) -> None:
    """Every objective is a metric every method's trials report on this dataset (one message per
    objective, naming the methods that lack it and the metrics all of them report)."""
    reported = {
        method: names.reported_metrics(
            method, images=trial.model.arch == "ncsnpp", generation=trial.eval.fid
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


def _check_trials(
    dataset: str,
    methods: list[str],
    config: dict,
    base: str,
    objectives: list[Objective],
    errors: list[str],
    check_data: bool = True,
) -> None:
    """Build one trial config per method: flat overrides against the schema, the network for the
    data, the data and evaluation pre-flight, the objectives against what trials report."""
    from trainables.config import from_flat
    from trainables.data.images import IMAGE_DATASETS

    images = dataset in IMAGE_DATASETS
    trials: dict[str, Any] = {}
    for i, method in enumerate(methods):
        try:
            trial = from_flat({**config, "method": method, "data.name": dataset}, base=base)
        except ValueError as exc:
            errors.append(f"config: {exc}")
            return
        if images != (trial.model.arch == "ncsnpp"):
            fix = "an image base_config (tiny-images, cifar10, cifar100, cifar10-small)"
            fix = fix if images else "the toy base_config"
            errors.append(
                f"dataset {dataset!r} needs model.arch {'ncsnpp' if images else 'mlp'}, "
                f"got {trial.model.arch!r}; use {fix}"
            )
            return
        if images and i == 0 and check_data:
            _check_images(trial, errors)
        trials[method] = trial
    _check_objectives(trials, objectives, errors)


def _budget(raw: dict, errors: list[str]) -> tuple[Any, Any]:
    """(num_trials, trials_per_cell), each within 1..MAX_TRIALS."""
    num_trials = raw.get("num_trials", 16)
    if not _is_int(num_trials) or not 1 <= num_trials <= MAX_TRIALS:
        errors.append(f"num_trials: must be an integer from 1 to {MAX_TRIALS}, got {num_trials!r}")
    per_cell = raw.get("trials_per_cell")
    if per_cell is not None and (not _is_int(per_cell) or not 1 <= per_cell <= MAX_TRIALS):
        errors.append(
            f"trials_per_cell: must be an integer from 1 to {MAX_TRIALS} (every cell's budget), "
            f"got {per_cell!r}"
        )
    return num_trials, per_cell


OBJECT_STORES = ("s3", "gs", "abfs", "hdfs")  # pyarrow.fs.FileSystem.from_uri's schemes


def _check_locations(raw: dict, errors: list[str]) -> None:
    """storage, address, tracking_uri, study_id and artifact_store: where a study lives."""
    for key in ("storage", "address"):
        if raw.get(key) is not None and not isinstance(raw.get(key), str):
            errors.append(f"{key}: expected a string, got {raw.get(key)!r}")
    for key in ("storage", "artifact_store"):
        value = raw.get(key)
        scheme = value.partition("://")[0] if isinstance(value, str) and is_uri(value) else None
        if scheme is not None and (scheme not in OBJECT_STORES or not value.partition("://")[2]):
            errors.append(
                f"{key}: {value!r} is not an object-store URI pyarrow opens; use "
                f"{' or '.join(f'{s}://BUCKET/PREFIX' for s in OBJECT_STORES)}, or a folder "
                "mounted at the same path on every node"
            )
    address = raw.get("address") or os.environ.get("RAY_ADDRESS") or ""
    if isinstance(address, str) and address.startswith("ray://"):
        errors.append(
            f"address: {address!r} is a Ray Client address, whose Tune driver would run on the "
            "head node with this machine's paths; submit the study as a job instead: ray job "
            "submit --address http://HEAD:8265 --working-dir . -- study run SPEC"
        )
    check_tracking_uri(raw.get("tracking_uri"), errors)
    study_id = raw.get("study_id")
    if study_id is not None and not (isinstance(study_id, str) and STUDY_ID.fullmatch(study_id)):
        errors.append(
            f"study_id: {study_id!r} is not a study id (hex digits, written by 'study run')"
        )
    store = raw.get("artifact_store")
    if store is not None and (not isinstance(store, str) or not store.strip()):
        errors.append(f"artifact_store: expected a folder path or 'study', got {store!r}")


def _dataset_base_seed(raw: dict, errors: list[str]) -> tuple[Any, Any, Any]:
    """(dataset, base_config, seed): a known dataset and base config, a seed in [0, 2**31)."""
    from trainables.config import BASE_CONFIGS
    from trainables.data.images import IMAGE_DATASETS
    from trainables.data.toy import TOY_DATASETS

    dataset = raw.get("dataset", "overlap2")
    if dataset not in TOY_DATASETS and dataset not in IMAGE_DATASETS:
        valid = list(TOY_DATASETS) + list(IMAGE_DATASETS)
        errors.append(f"dataset: unknown dataset {dataset!r}; valid: {valid}")
    base = raw.get("base_config", raw.get("preset", "toy"))
    if base not in BASE_CONFIGS:
        errors.append(f"base_config: unknown {base!r}; valid: {sorted(BASE_CONFIGS)}")
    seed = raw.get("seed", 0)
    if not _is_int(seed) or not 0 <= seed < 2**31:
        errors.append(f"seed: must be an integer from 0 to 2**31 - 1, got {seed!r}")
    return dataset, base, seed


def validate(raw: dict, check_data: bool = True) -> StudySpec:
    """Check every field; raise SpecError listing all problems at once. check_data=False skips
    the dataset and Inception-weight checks (`study plan` reads a spec without its data)."""
    errors = [
        f"unknown spec key {k!r}; valid: {sorted(TOP_KEYS)}" for k in sorted(set(raw) - TOP_KEYS)
    ]
    name = _check_name(raw.get("name", "study"), errors)
    dataset, base, seed = _dataset_base_seed(raw, errors)
    methods = _methods(raw.get("methods", list(names.METHODS)), errors)
    percents = _label_percents(raw.get("label_percents", [100]), errors)
    num_trials, per_cell = _budget(raw, errors)
    default_objectives = [{"metric": "guided_score_cos", "mode": "max"}]
    objectives = _objectives(raw.get("objectives", default_objectives), errors)
    scheduler = _scheduler(raw.get("scheduler", "fifo"), objectives, errors)
    raw_search = raw.get("search") or {}
    raw_search = dict(raw_search) if isinstance(raw_search, dict) else raw_search
    scales, val_per_class = _guidance(raw.get("guidance"), raw_search, errors)
    search = _ranges(raw_search, errors)
    resources = _resources(raw.get("resources", {}), errors)
    _check_locations(raw, errors)
    config = raw.get("config", {}) or {}
    if not isinstance(config, dict):
        errors.append("config: expected a mapping of flat config keys")
    if not errors:
        _check_trials(dataset, methods, config, base, objectives, errors, check_data=check_data)
    if len(errors) == 1:
        raise SpecError(f"invalid study spec: {errors[0]}")
    if errors:
        raise SpecError("invalid study spec:\n  - " + "\n  - ".join(errors))
    spec = StudySpec(
        name=name,
        dataset=dataset,
        methods=tuple(methods),
        label_percents=tuple(percents),
        num_trials=num_trials,
        objectives=tuple(objectives),
        scheduler=scheduler,
        search=search,
        resources=resources,
        seed=seed,
        config=dict(config),
        base_config=base,
        storage=raw.get("storage"),
        tracking_uri=raw.get("tracking_uri"),
        address=raw.get("address") or os.environ.get("RAY_ADDRESS") or None,
        study_id=raw.get("study_id"),
        trials_per_cell=per_cell,
        guidance_scales=scales,
        val_num_per_class=val_per_class,
        artifact_store=raw.get("artifact_store"),
    )
    if per_cell is not None:  # the total follows from the cells' budgets
        spec = replace(spec, num_trials=sum(spec.cell_budgets().values()))
    return spec


def load_spec(source: str | None, check_data: bool = True) -> StudySpec:
    """Load and validate a spec file or preset."""
    return validate(load_raw(source), check_data=check_data)
