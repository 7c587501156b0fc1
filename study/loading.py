"""Reading a spec: a YAML file or a built-in preset, into a mapping; the YAML is parsed safely
(duplicate keys and alias bombs refused, files over 1 MB not read), every problem one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from study.errors import SpecError
from trainables.config import shown

PRESET_DIR = Path(__file__).parent / "presets"
DEFAULT_PRESET = "toy"
MAX_SPEC_BYTES = 1_000_000  # a spec is a page of YAML; beyond this it is not one
MAX_YAML_NODES = 100_000  # nodes after expanding aliases (an alias bomb is refused)


def preset_names() -> list[str]:
    """Built-in study presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                mark = key_node.start_mark
                raise SpecError(
                    f"duplicate key {shown(key)} at line {mark.line + 1}; give each key once"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Nodes of the document with every alias expanded (memoised: an alias bomb is counted
    without being built)."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = 1  # a recursive alias counts once
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = node.value
    else:
        children = []
    total = 1 + sum(_expanded_size(child, sizes) for child in children)
    sizes[id(node)] = min(total, MAX_YAML_NODES + 1)
    return sizes[id(node)]


def parse_yaml(text: str, where: str) -> Any:
    """YAML text as data: duplicate keys and alias bombs refused with one line."""
    try:
        loader = _SpecLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None and _expanded_size(node, {}) > MAX_YAML_NODES:
                raise SpecError(
                    f"{where}: expands to more than {MAX_YAML_NODES:,} YAML nodes (aliases); "
                    "write the values out"
                )
            return None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise SpecError(f"{where}: malformed YAML{_where(exc)}: {_problem(exc)}") from None
    except SpecError as exc:
        raise SpecError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None


def load_raw(source: str | None) -> dict:
    """Read a spec file or a preset name (None = the default preset) into a dict."""
    if source is None:
        source = DEFAULT_PRESET
    path = Path(source)
    if not path.exists():
        if source not in preset_names():
            raise SpecError(
                f"no spec file or preset named {shown(source)}; presets: {preset_names()}"
            )
        path = PRESET_DIR / f"{source}.yaml"
    if not path.is_file():
        raise SpecError(f"{path} is not a file; give a YAML spec file or a preset name")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: {path.stat().st_size:,} bytes is not a spec (at most 1 MB)")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise SpecError(
            f"{path}: cannot be read as a text YAML file ({type(exc).__name__})"
        ) from None
    raw = parse_yaml(text, str(path))
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
    return shown(f"{context}: {problem}" if context else str(problem), 200).strip("'\"")
