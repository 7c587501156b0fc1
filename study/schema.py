"""The spec's declared schema: every study key with its type, range, default and meaning.

pydantic checks and casts a raw spec (a dict from YAML) against `SpecModel`; `problems` turns its
errors into one line per bad value ("guidance.scales[0]: must be finite, got nan"). The trial
config keys under `config:` have their own schema (trainables.config); docs/spec.md is generated
from both (study.reference). Relations that need the trial config or the machine (objectives the
methods report, the data, a tracking server that answers) are checked in study.spec.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticUseDefault

from search_spaces.spaces import PAPER_GRID
from trainables.config import (
    MAX_COUNT,
    MAX_PER_CLASS,
    NonNegative,
    Percent,
    Positive,
    shown,
)
from trainables.names import METHODS

MAX_TRIALS = 100_000
RANGE_PRESETS = {"paper": PAPER_GRID}
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


def _unique(values: Any) -> Any:
    """A list whose entries are all different (a repeated method or label % is a typo)."""
    seen, repeated = set(), []
    for v in values:
        key = v.metric if isinstance(v, Objective) else v
        if key in seen:
            repeated.append(key)
        seen.add(key)
    if repeated:
        raise ValueError(f"lists {shown(repeated[0])} twice; give each value once")
    return values


def _range_preset(value: Any) -> Any:
    """A named range ('paper': paper 000's grid) as the range it names."""
    if isinstance(value, str):
        if value not in RANGE_PRESETS:
            raise ValueError(f"unknown range preset {shown(value)}; valid: {sorted(RANGE_PRESETS)}")
        return {"choices": list(RANGE_PRESETS[value])}
    return value


def _scheduler_name(value: Any) -> Any:
    """'fifo' / 'asha' as {type: ...}."""
    return {"type": value} if isinstance(value, str) else value


def _unset(value: Any) -> Any:
    """A key written with no value (YAML `config:` with every line under it commented out): its
    default, as if it were absent."""
    if value is None:
        raise PydanticUseDefault()
    return value


Unique = AfterValidator(_unique)
OrDefault = BeforeValidator(_unset)
Int = Annotated[int, Field(strict=True)]  # YAML's true is not 1, 2.0 is not 2
Trials = Annotated[Int, Field(ge=1, le=MAX_TRIALS)]
Text = Annotated[str, Field(strict=True, min_length=1, max_length=4096)]


def doc(meaning: str, shown_default: str | None = None) -> Any:
    """A key's meaning (and its default as docs/spec.md shows it, where the value alone would not
    say it) for the spec reference, which study.reference renders from this model."""
    extra = {"shown_default": shown_default} if shown_default is not None else None
    return Field(description=meaning, json_schema_extra=extra)


def _known_method(value: str) -> str:
    """A method the papers name (trainables.names.METHODS), spelled as they spell it."""
    if value not in METHODS:
        hint = difflib.get_close_matches(value, list(METHODS), n=1)
        close = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ValueError(f"unknown method {shown(value)}{close}; valid: {list(METHODS)}")
    return value


def _study_name(value: str) -> str:
    """A folder name that stays inside storage."""
    if not re.fullmatch(NAME_PATTERN, value):
        raise ValueError(
            f"{shown(value)} is not a study name; use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit (at most 100 characters)"
        )
    return value


Method = Annotated[str, Field(strict=True), AfterValidator(_known_method)]


class _Section(BaseModel):
    """A spec section: unknown keys are refused, values are never coerced from strings."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class SearchRange(_Section):
    """One tuned knob's range: {low, high, log} or {choices} (weights: finite and >= 0)."""

    low: Annotated[NonNegative | None, doc("a continuous range's lower end", "-")] = None
    high: Annotated[NonNegative | None, doc("its upper end (low < high)", "-")] = None
    log: Annotated[StrictBool, doc("a log-uniform range (needs low > 0)")] = True
    choices: Annotated[
        Annotated[list[NonNegative], Field(min_length=1, max_length=1000), Unique] | None,
        doc("a finite set instead of a range, each value once", "-"),
    ] = None

    @model_serializer(mode="wrap")
    def _as_written(self, dump: Any) -> dict:
        """As YAML holds it: {choices} or {low, high, log}."""
        return {"choices": self.choices} if self.choices is not None else dump(self)

    @model_validator(mode="after")
    def _one_kind(self) -> SearchRange:
        """Either choices or a non-empty range low < high (low > 0 on a log scale)."""
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low and high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high, or choices")
        if not self.low < self.high:
            raise ValueError(f"empty range low={self.low} >= high={self.high}; make low < high")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self


class Guidance(_Section):
    """The guidance scales every guided trial sweeps at sampling time, chosen on validation."""

    # > 0: a scale of 0 is no guidance at all (the unguided sampler, not a point of the sweep, which
    # moves past an edge by doubling)
    scales: Annotated[
        list[Positive],
        Field(min_length=1, max_length=100),
        Unique,
        doc("guidance scales swept inside every guided trial, each once; the best on validation "
            "is evaluated in full"),
    ] = [0.5, 1.0, 2.0, 4.0]  # fmt: skip
    val_num_per_class: Annotated[
        Annotated[Int, Field(ge=1, le=MAX_PER_CLASS)] | None,
        doc("validation samples per class at each swept scale",
            "a quarter of sample.num_per_class (>= 8)"),
    ] = None  # fmt: skip
    max_scale: Annotated[
        Annotated[NonNegative, Field(le=1e6)] | None,
        doc("when the validation optimum is the grid's largest scale, the sweep goes on "
            "geometrically up to this cap until the curve turns (and down, halving, at most 3 "
            "times, from an optimum at its smallest); equal to the largest scale: the grid only",
            "4 x the largest scale"),
    ] = None  # fmt: skip
    halving: Annotated[
        bool | None,
        doc("images: successive halving over the scales (a quarter of val_num_per_class for "
            "every scale, twice as many for the better half, ..., all of them for the survivors, "
            "which the choice is made among); false: every scale sampled in full", "true"),
    ] = None  # fmt: skip
    val_num_steps: Annotated[
        Annotated[Int, Field(ge=1, le=MAX_COUNT)] | None,
        doc(
            "sampler steps of the validation samples (at most sample.num_steps)", "sample.num_steps"
        ),
    ] = None

    @model_validator(mode="after")
    def _cap_above_grid(self) -> Guidance:
        """A cap below the grid's largest scale would cut the grid itself."""
        if self.max_scale is not None and self.max_scale < max(self.scales):
            raise ValueError(
                f"max_scale {self.max_scale:g} is below the largest scale {max(self.scales):g}; "
                f"give max_scale >= {max(self.scales):g} (equal: the grid only)"
            )
        return self


class Scheduler(_Section):
    """fifo, or ASHA early stopping on one objective."""

    type: Annotated[Literal["fifo", "asha"], doc("fifo or asha")] = "fifo"
    metric: Annotated[
        Text | None, doc("asha: the objective it compares", "the first objective")
    ] = None
    grace_period: Annotated[
        Int, Field(ge=1, le=10**6), doc("asha: epochs before a trial can be stopped")
    ] = 1
    reduction_factor: Annotated[
        Int, Field(ge=2, le=1000), doc("asha: keep 1 in this many of a cell's trials per rung")
    ] = 2

    @model_serializer(mode="wrap")
    def _as_written(self, dump: Any) -> dict | str:
        """As YAML holds it: 'fifo', or the asha section."""
        return "fifo" if self.type == "fifo" else dump(self)


class Resources(_Section):
    """What one trial holds; cpus_per_trial is also torch's thread count in each process."""

    cpus_per_trial: Annotated[
        Positive,
        Field(le=4096),
        doc("CPUs of a trial (or of each Train worker); also torch's thread count", "1"),
    ] = 1.0
    gpus_per_trial: Annotated[
        NonNegative, Field(le=1024), doc("GPUs of a trial (or of each Train worker)", "0")
    ] = 0.0
    num_workers: Annotated[
        Int,
        Field(ge=0, le=4096),
        doc("Ray Train workers per trial (data parallel); 0 = Train's local mode in the trial's "
            "process"),
    ] = 0  # fmt: skip
    max_concurrent_trials: Annotated[Int, Field(ge=1, le=100_000), doc("trials run at once")] = 2
    max_failures: Annotated[
        Int, Field(ge=0, le=1000), doc("restarts of a trial's worker group from its checkpoint")
    ] = 2
    lend_idle_cpus: Annotated[
        bool,
        Field(strict=True),
        doc(
            "on a local cluster, a trial's evaluation runs on its own CPUs plus its share of "
            "those no trial holds (torch threads); training never does",
            "true",
        ),
    ] = True


class Objective(_Section):
    """A metric the search optimises on the validation split."""

    metric: Annotated[Text, doc("a metric every method's trials report", "-")]
    mode: Annotated[Literal["min", "max"], doc("min or max", "-")]


class SpecModel(_Section):
    """A study spec as written (YAML): every top-level key."""

    name: Annotated[
        str,
        Field(strict=True),
        AfterValidator(_study_name),
        doc("the study's name: its folder under storage and its MLflow experiment"),
    ] = "study"
    dataset: Annotated[
        Text,
        doc("the trials' data.name: gmm2, gmm3, overlap2, moons, tiny-images, shapes, twin, "
            "folder, cifar10, cifar100"),
    ] = "overlap2"  # fmt: skip
    base_config: Annotated[
        Text,
        OrDefault,
        doc("the trial config the trials start from: toy, tiny-images, twin, cifar10, "
            "cifar10-small, cifar100 (trainables.config.BASE_CONFIGS)"),
    ] = "toy"  # fmt: skip
    methods: Annotated[
        list[Method],
        Field(min_length=1),
        Unique,
        doc("the table's rows, each once: the registry's methods (trainables.registry)",
            "every method"),
    ] = list(METHODS)  # fmt: skip
    label_percents: Annotated[
        list[Percent],
        Field(min_length=1, max_length=100),
        Unique,
        doc("the table's column groups, each once: data.label_percent of each cell"),
    ] = [100.0]
    num_trials: Annotated[
        Trials, doc("a total budget dealt round robin over the cells (instead of trials_per_cell)")
    ] = 16
    trials_per_cell: Annotated[
        Trials | None, doc("each cell's search budget (a cell with no knob runs once)", "-")
    ] = None
    objectives: Annotated[
        list[Objective],
        Field(min_length=1, max_length=16),
        Unique,
        doc("what the search optimises, on the validation split; one entry per metric",
            "[{metric: guided_score_cos, mode: max}]"),
    ] = [Objective(metric="guided_score_cos", mode="max")]  # fmt: skip
    scheduler: Annotated[
        Scheduler,
        BeforeValidator(_scheduler_name),
        doc("fifo, asha, or {type: asha, ...}: early stopping (successive halving per cell)",
            "fifo"),
    ] = Scheduler()  # fmt: skip
    search: Annotated[
        dict[Text, Annotated[SearchRange, BeforeValidator(_range_preset)]] | None,
        doc("the range of each tuned knob: loss.lambda_sc, loss.lambda_joint; a range, choices, "
            "or `paper` (0.01, 0.1, 1, 10)", "the papers' grids"),
    ] = None  # fmt: skip
    guidance: Annotated[
        Guidance, OrDefault, doc("the in-trial sweep of the guidance scale", "-")
    ] = Guidance()
    resources: Annotated[Resources, OrDefault, doc("what each trial holds", "-")] = Resources()
    seed: Annotated[
        Int,
        Field(ge=0, lt=2**31),
        doc("every seed key (train, data, split, sample) unless config sets one"),
    ] = 0
    config: Annotated[
        dict[Text, Any], OrDefault, doc("overrides of the trial config (the keys below)")
    ] = {}
    storage: Annotated[
        Text | None,
        doc("the study folder's parent: a folder or an object-store URI", "./studies"),
    ] = None
    artifact_store: Annotated[
        Text | None,
        doc("trained networks shared by every study pointing here: a folder, a URI or `study` "
            "($SC_GUIDANCE_ARTIFACT_STORE)", "~/.cache/sc-guidance/artifacts"),
    ] = None  # fmt: skip
    tracking_uri: Annotated[
        Text | None,
        doc("the MLflow store ($MLFLOW_TRACKING_URI); an http URI for `study server`; a "
            "relative sqlite path is saved absolute", "SQLite in the study folder"),
    ] = None  # fmt: skip
    address: Annotated[
        Text | None, doc("a Ray cluster to run on ($RAY_ADDRESS)", "a local Ray")
    ] = None
    study_id: Annotated[
        Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9a-f]{8,32}$")] | None,
        doc("set by `study run` when it creates the study; tags every run it owns", "-"),
    ] = None


FIXES = {"study_id": "hex digits, written by 'study run'"}


def _key(loc: tuple) -> str:
    """A pydantic location as the spec's dotted key: ('guidance', 'scales', 0) ->
    'guidance.scales[0]'."""
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts[-1:] = [f"{parts[-1]}[{part}]"] if parts else [f"[{part}]"]
        else:
            parts.append(str(part))
    return ".".join(parts)


def _message(error: dict) -> str:
    """One pydantic error as 'key: must be ..., got VALUE' (the value cut to a short prefix)."""
    key = _key(error["loc"])
    if error["type"] == "extra_forbidden":
        name = str(error["loc"][-1])
        valid = list(SpecModel.model_fields) if len(error["loc"]) == 1 else []
        hint = difflib.get_close_matches(name, valid, n=1)
        if hint:
            return f"{key}: unknown key; did you mean {hint[0]!r}?"
        return f"{key}: unknown key" + (f"; valid: {sorted(valid)}" if valid else "")
    text = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    text = text.replace("String should match pattern", "must match")
    text = text.replace("String should have", "must have").replace("List should have", "must have")
    text = text.replace("Value should", "must").replace(" after validation", "")
    fix = FIXES.get(key)
    quiet = error["type"] in ("missing", "value_error")  # a validator's message names the value
    got = "" if quiet else f", got {shown(error.get('input'))}"
    return f"{key}: {text}{got}" + (f"; {fix}" if fix else "")


def problems(raw: dict, model: type[SpecModel] = SpecModel) -> tuple[Any, list[str]]:
    """(the checked spec, an instance of model, []) or (None, one message per bad value)."""
    try:
        return model.model_validate(raw), []
    except ValidationError as exc:
        messages = list(dict.fromkeys(_message(e) for e in exc.errors(include_url=False)))
        return None, messages
