"""The spec reference (docs/spec.md): every key a spec may hold, its type, default and meaning.

The study keys come from the spec's one model (study.schema.SpecModel: types, constraints,
defaults and each field's description); the trial config keys (`config:` in a spec) from the trial
config's dataclasses (trainables.config): their types and ranges from its schema, their defaults
and the comment on or above each field. Write it with `python -m study.reference > docs/spec.md`;
a test fails when the file is stale.
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

HIDDEN = {"study_id"}  # written by `study run`, never by hand


def _default(prop: dict) -> str:
    """A key's default as the reference shows it: its shown_default, else its value."""
    if "shown_default" in prop:
        return str(prop["shown_default"])
    value = prop.get("default")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_number(v) if isinstance(v, float) else str(v) for v in value) + "]"
    return _number(value) if isinstance(value, float) else str(value)


def study_keys() -> list[tuple[str, str, str, str]]:
    """(key, type and range, default, meaning) of every study key (sections' keys dotted), in the
    model's order, from study.schema.SpecModel: its types, constraints and descriptions."""

    js = schema.SpecModel.model_json_schema()
    defs = js.get("$defs", {})
    rows: list[tuple[str, str, str, str]] = []

    def resolve(prop: dict) -> dict:
        """A property with its $ref and 'X or null' unwrapped."""
        options = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
        prop = options[0] if len(options) == 1 else prop
        return defs[prop["$ref"].split("/")[-1]] if "$ref" in prop else prop

    def walk(prefix: str, model: dict) -> None:
        for name, prop in model["properties"].items():
            key, target = f"{prefix}{name}", resolve(prop)
            if name in HIDDEN:
                continue
            nested: tuple[str, dict] | None = None
            if target.get("type") == "array" and "$ref" in target.get("items", {}):
                kind = "list of {" + ", ".join(resolve(target["items"])["properties"]) + "}"
                nested = (f"{key}[].", resolve(target["items"]))
            elif target.get("type") == "object" and "properties" in target:
                kind, nested = "{" + ", ".join(target["properties"]) + "}", (f"{key}.", target)
            elif target.get("type") == "object" and "$ref" in str(
                target.get("additionalProperties")
            ):
                inner = resolve(target["additionalProperties"])
                kind = "{key: {" + ", ".join(inner["properties"]) + "}}"
                nested = (f"{key}.<key>.", inner)
            else:
                kind = schema_type(target)
            rows.append((key, kind, _default(prop), prop.get("description", "")))
            if nested is not None:
                walk(*nested)

    walk("", js)
    return rows


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
    out += [f"| `{k}` | {t} | {d} | {m} |" for k, t, d, m in study_keys()]
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
