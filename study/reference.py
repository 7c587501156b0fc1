"""The spec reference (docs/spec.md): every key a spec may hold, its type, default and meaning.

The study keys are declared here beside the validator's key sets (study.spec: a test fails when
the two disagree); the trial config keys (`config:` in a spec) are read from the trial config's
dataclasses (trainables.config): their types and ranges from its schema, their defaults and the
comment on or above each field. Write it with `python -m study.reference > docs/spec.md`; a
test fails when the file is stale.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import sys
import tokenize

from study import schema
from trainables import config as trial_config

# (key, default, meaning) of the study keys, in the order a spec is usually written; the types
# and ranges come from the spec's schema (study.schema), and a test keeps the keys equal to it.
STUDY_KEYS: tuple[tuple[str, str, str], ...] = (
    ("name", "study", "the study's name: its folder under storage and its MLflow experiment"),
    ("dataset", "overlap2", "the trials' data.name: gmm2, gmm3, overlap2, moons, tiny-images, "
     "folder, cifar10, cifar100"),
    ("base_config", "toy", "the trial config the trials start from: toy, tiny-images, cifar10, "
     "cifar10-small, cifar100 (trainables.config.BASE_CONFIGS)"),
    ("methods", "every method", "the table's rows, each once: CG, CG-SC-labeled, CG-SC-all, "
     "CG-DLSM, Joint-SC, Cond, CFG-labeled, CFG-all"),
    ("label_percents", "[100]", "the table's column groups, each once: data.label_percent of "
     "each cell"),
    ("trials_per_cell", "-", "each cell's search budget (a cell with no knob runs once)"),
    ("num_trials", "16", "a total budget dealt round robin over the cells (instead of "
     "trials_per_cell)"),
    ("objectives", "[{metric: guided_score_cos, mode: max}]", "what the search optimises, on the "
     "validation split; one entry per metric"),
    ("objectives[].metric", "-", "a metric every method's trials report"),
    ("objectives[].mode", "-", "min or max"),
    ("search", "the papers' grids", "the range of each tuned knob: loss.lambda_sc, "
     "loss.lambda_joint; a range, choices, or `paper` (0.01, 0.1, 1, 10)"),
    ("search.<key>.low", "-", "a continuous range's lower end"),
    ("search.<key>.high", "-", "its upper end (low < high)"),
    ("search.<key>.log", "true", "a log-uniform range (needs low > 0)"),
    ("search.<key>.choices", "-", "a finite set instead of a range, each value once"),
    ("guidance.scales", "[0.5, 1, 2, 4]", "guidance scales swept inside every guided trial, each "
     "once; the best on validation is evaluated in full"),
    ("guidance.val_num_per_class", "a quarter of sample.num_per_class (>= 8)",
     "validation samples per class at each swept scale"),
    ("guidance.halving", "true", "images: successive halving over the scales (a quarter of "
     "val_num_per_class for every scale, twice as many for the better half, ..., all of them for "
     "the survivors, which the choice is made among); false: every scale sampled in full"),
    ("guidance.val_num_steps", "sample.num_steps", "sampler steps of the validation samples"),
    ("guidance", "-", "the in-trial sweep of the guidance scale"),
    ("resources", "-", "what each trial holds"),
    ("guidance.max_scale", "4 x the largest scale", "when the validation optimum is the grid's "
     "largest scale, the sweep goes on geometrically up to this cap until the curve turns (and "
     "down, halving, at most 3 times, from an optimum at its smallest); equal to the largest "
     "scale: the grid only"),
    ("scheduler", "fifo", "fifo, asha, or {type: asha, ...}: ASHA early stopping"),
    ("scheduler.type", "fifo", "fifo or asha"),
    ("scheduler.metric", "the first objective", "asha: the objective it compares"),
    ("scheduler.grace_period", "1", "asha: epochs before a trial can be stopped"),
    ("scheduler.reduction_factor", "2", "asha: keep 1 in this many per rung"),
    ("resources.cpus_per_trial", "1", "CPUs of a trial (or of each Train worker); also torch's "
     "thread count"),
    ("resources.gpus_per_trial", "0", "GPUs of a trial (or of each Train worker)"),
    ("resources.num_workers", "0", "Ray Train workers per trial (data parallel); 0 = Train's "
     "local mode in the trial's process"),
    ("resources.max_concurrent_trials", "2", "trials run at once"),
    ("resources.max_failures", "2", "restarts of a trial's worker group from its checkpoint"),
    ("seed", "0", "every seed key (train, data, split, sample) unless config sets one"),
    ("config", "{}", "overrides of the trial config (the keys below)"),
    ("storage", "./studies", "the study folder's parent: a folder or an object-store URI"),
    ("artifact_store", "~/.cache/sc-guidance/artifacts", "trained networks shared by every "
     "study pointing here: a folder, a URI or `study` ($SC_GUIDANCE_ARTIFACT_STORE)"),
    ("tracking_uri", "SQLite in the study folder", "the MLflow store ($MLFLOW_TRACKING_URI); an "
     "http URI for `study server`; a relative sqlite path is saved absolute"),
    ("address", "a local Ray", "a Ray cluster to run on ($RAY_ADDRESS)"),
)  # fmt: skip
# Kept for folders saved by older versions (read, never needed in a new spec).
LEGACY_KEYS = {"preset": "the former name of base_config", "study_id": "set by `study run`"}


def spec_types() -> dict[str, str]:
    """Every study key (sections' keys dotted) -> its type and range, from study.schema."""

    js = schema.SpecModel.model_json_schema()
    defs = js.get("$defs", {})
    out: dict[str, str] = {}

    def resolve(prop: dict) -> dict:
        """A property with its $ref and 'X or null' unwrapped."""
        options = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
        prop = options[0] if len(options) == 1 else prop
        return defs[prop["$ref"].split("/")[-1]] if "$ref" in prop else prop

    def walk(prefix: str, model: dict) -> None:
        for name, prop in model["properties"].items():
            key, target = f"{prefix}{name}", resolve(prop)
            if target.get("type") == "array" and "$ref" in target.get("items", {}):
                out[key] = "list of {" + ", ".join(resolve(target["items"])["properties"]) + "}"
                walk(f"{key}[].", resolve(target["items"]))
            elif target.get("type") == "object" and "properties" in target:
                out[key] = "{" + ", ".join(target["properties"]) + "}"
                walk(f"{key}.", target)
            elif target.get("type") == "object" and "$ref" in str(
                target.get("additionalProperties")
            ):
                inner = resolve(target["additionalProperties"])
                out[key] = "{key: {" + ", ".join(inner["properties"]) + "}}"
                walk(f"{key}.<key>.", inner)
            else:
                out[key] = schema_type(target)

    walk("", js)
    return {k: v for k, v in out.items() if k.split(".")[0].split("[")[0] not in LEGACY_KEYS}


def field_comments(cls: type) -> dict[str, str]:
    """A dataclass's field -> its comment (on the field's line, else the lines just above)."""
    source = inspect.getsource(cls)
    comments: dict[int, str] = {}
    alone: set[int] = set()  # lines holding only a comment
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
            if token.line.strip().startswith("#"):
                alone.add(token.start[0])
    out = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            lines = range(node.lineno, (node.end_lineno or node.lineno) + 1)
            text = " ".join(comments[i] for i in lines if i in comments)
            above, i = [], node.lineno - 1
            while not text and i in alone:
                above.insert(0, comments[i])
                i -= 1
            out[node.target.id] = text or " ".join(above)
    return out


def schema_type(prop: dict) -> str:
    """A JSON-schema property of the trial config as 'int >= 1, <= 65536', 'number > 0',
    'pc / em / ode', 'list of (number > 0)'."""
    if "enum" in prop or "const" in prop:
        return " / ".join(str(v) for v in prop.get("enum", [prop.get("const")]))
    if prop.get("type") == "array":
        return f"list of ({schema_type(prop.get('items', {}))})"
    kind = {"integer": "int", "number": "number", "boolean": "bool", "string": "str"}.get(
        prop.get("type", ""), prop.get("type", "any")
    )
    bound = {"minimum": ">=", "ge": ">=", "exclusiveMinimum": ">", "gt": ">"}
    bound |= {"maximum": "<=", "le": "<=", "exclusiveMaximum": "<", "lt": "<"}
    parts = [f"{sign} {_number(prop[key])}" for key, sign in bound.items() if key in prop]
    bounds = ", ".join(parts)
    even = 2 in (prop.get("multipleOf"), prop.get("multiple_of"))
    return f"{kind} {bounds}".strip() + (", even" if even else "")


def _number(value: float) -> str:
    """A bound as written: 2147483648 (not 2.14748e+09), 0.5, 1e-05."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def config_keys() -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) of every trial config key, section by section."""
    rows = [("method", "str", "CG", "set by the study for each cell")]
    for section in dataclasses.fields(trial_config.TrialConfig):
        if section.name == "method":
            continue
        cls = type(getattr(trial_config.TrialConfig(), section.name))
        schema = trial_config.SECTION_ADAPTERS[section.name].json_schema()["properties"]
        comments = field_comments(cls)
        for f in dataclasses.fields(cls):
            default = getattr(cls(), f.name)
            kind = schema_type(schema[f.name])
            rows.append((f"{section.name}.{f.name}", kind, repr(default), comments.get(f.name, "")))
    return rows


def render() -> str:
    """docs/spec.md."""
    out = [
        "# Spec reference",
        "",
        "Generated by `python -m study.reference > docs/spec.md` from the spec's schema "
        "(study.schema) and the trial config's (trainables.config); do not edit by hand. A spec "
        "is YAML; `study plan SPEC` validates it and prints the compute without running anything.",
        "",
        "## Study keys",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    types = spec_types()
    out += [f"| `{k}` | {types[k]} | {d} | {m} |" for k, d, m in STUDY_KEYS]
    out += [
        "",
        "## Trial config keys (`config:`)",
        "",
        "Defaults are the trial config's; each `base_config` overrides some of them "
        "(trainables.config.BASE_CONFIGS) and `config:` overrides those.",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    out += [f"| `{k}` | {t} | `{d}` | {m.replace('|', '/')} |" for k, t, d, m in config_keys()]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
