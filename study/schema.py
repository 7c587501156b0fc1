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
    model_validator,
)

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


Unique = AfterValidator(_unique)
Int = Annotated[int, Field(strict=True)]  # YAML's true is not 1, 2.0 is not 2
Trials = Annotated[Int, Field(ge=1, le=MAX_TRIALS)]
Text = Annotated[str, Field(strict=True, min_length=1, max_length=4096)]


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

    low: NonNegative | None = None
    high: NonNegative | None = None
    log: StrictBool = True  # a log-uniform range (needs low > 0)
    choices: Annotated[list[NonNegative], Field(min_length=1, max_length=1000), Unique] | None = (
        None
    )

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
    scales: Annotated[list[Positive], Field(min_length=1, max_length=100), Unique] = [
        0.5, 1.0, 2.0, 4.0
    ]  # fmt: skip
    # validation samples per class at each swept scale (default: a quarter of
    # sample.num_per_class, at least 8)
    val_num_per_class: Annotated[Int, Field(ge=1, le=MAX_PER_CLASS)] | None = None
    # the sweep goes on past an optimum at the grid's largest scale up to this cap (default: 4 x
    # the largest scale; equal to it: the grid only)
    max_scale: Annotated[NonNegative, Field(le=1e6)] | None = None
    # successive halving over the scales on images (default true): a quarter of val_num_per_class
    # per class for every scale, twice as many for the better half, ..., all for the survivors
    halving: bool | None = None
    # validation sampler steps (default: the sampler's steps, sample.num_steps)
    val_num_steps: Annotated[Int, Field(ge=1, le=MAX_COUNT)] | None = None

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

    type: Literal["fifo", "asha"] = "fifo"
    metric: Text | None = None  # asha: the objective it compares (default the first)
    grace_period: Annotated[Int, Field(ge=1, le=10**6)] = 1  # asha: epochs before a stop
    reduction_factor: Annotated[Int, Field(ge=2, le=1000)] = 2  # asha: keep 1 in this many

    def to_dict(self) -> dict | str:
        """As YAML holds it."""
        return "fifo" if self.type == "fifo" else self.model_dump()


class Resources(_Section):
    """What one trial holds; cpus_per_trial is also torch's thread count in each process."""

    cpus_per_trial: Annotated[Positive, Field(le=4096)] = 1.0
    gpus_per_trial: Annotated[NonNegative, Field(le=1024)] = 0.0
    num_workers: Annotated[Int, Field(ge=0, le=4096)] = 0  # Ray Train workers; 0 = local mode
    max_concurrent_trials: Annotated[Int, Field(ge=1, le=100_000)] = 2
    max_failures: Annotated[Int, Field(ge=0, le=1000)] = 2  # restarts from the last checkpoint


class Objective(_Section):
    """A metric the search optimises on the validation split."""

    metric: Text
    mode: Literal["min", "max"]


class SpecModel(_Section):
    """A study spec as written (YAML): every top-level key."""

    name: Annotated[str, Field(strict=True), AfterValidator(_study_name)] = "study"
    dataset: Text = "overlap2"
    base_config: Text | None = None  # default "toy" (`preset` is its former name)
    preset: Text | None = None
    methods: Annotated[list[Method], Field(min_length=1), Unique] = list(METHODS)
    label_percents: Annotated[list[Percent], Field(min_length=1, max_length=100), Unique] = [100.0]
    num_trials: Trials = 16
    trials_per_cell: Trials | None = None
    objectives: Annotated[list[Objective], Field(min_length=1, max_length=16), Unique] = [
        Objective(metric="guided_score_cos", mode="max")
    ]
    scheduler: Annotated[Scheduler, BeforeValidator(_scheduler_name)] = Scheduler()
    search: dict[Text, Annotated[SearchRange, BeforeValidator(_range_preset)]] | None = None
    guidance: Guidance | None = None
    resources: Resources | None = None
    seed: Annotated[Int, Field(ge=0, lt=2**31)] = 0  # every seed key unless config sets one
    config: dict[Text, Any] | None = None
    storage: Text | None = None
    artifact_store: Text | None = None
    tracking_uri: Text | None = None
    address: Text | None = None
    study_id: Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9a-f]{8,32}$")] | None = (
        None
    )


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


def problems(raw: dict) -> tuple[SpecModel | None, list[str]]:
    """(the checked spec, []) or (None, one message per bad value)."""
    try:
        return SpecModel.model_validate(raw), []
    except ValidationError as exc:
        messages = list(dict.fromkeys(_message(e) for e in exc.errors(include_url=False)))
        return None, messages
