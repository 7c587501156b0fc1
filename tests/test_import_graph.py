"""The packages' imports run one way: no module imports, even inside a function, a module that
imports it back (directly or around a longer loop)."""

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGES = ("analysis", "search_spaces", "study", "trainables")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package upwards
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(f"{target}."):
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_among_the_packages():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _long_functions(limit: int = 60) -> list[str]:
    """'path:line name (n lines)' of every function longer than limit lines (its docstring
    included), outside the network constructors (trainables/networks, which spell out a paper's
    layers in order)."""
    found = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "networks" in path.relative_to(ROOT).parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    size = node.end_lineno - node.lineno + 1
                    if size > limit:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({size})")
    return found


def test_no_function_is_longer_than_60_lines():
    assert _long_functions() == []
    assert _long_functions(limit=40)  # the measure sees the longer ones (it is not vacuous)


# Dependencies worth loading only when a function needs them (import time on these machines:
# torch about 3 s, the Ray Tune stack 4.5 s, MLflow 1.3 s, pandas + scipy.stats 1.7 s,
# optuna_dashboard 1.6 s, joblib 0.3 s).
HEAVY = {
    "torch", "torchvision", "ray", "mlflow", "matplotlib", "cleanfid", "pyarrow", "prdc",
    "joblib",
    "scipy", "pandas", "optuna", "sqlalchemy", "optuna_dashboard",
}  # fmt: skip


def _imports(path: Path, name: str) -> tuple[set[str], list[tuple[int, list[str]]]]:
    """(targets imported when the module loads, [(line, targets)] of imports inside functions);
    `if TYPE_CHECKING:` blocks are neither."""
    tree = ast.parse(path.read_text())
    skipped, in_functions = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(sub) for sub in ast.walk(node)}
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            in_functions |= {id(sub) for sub in ast.walk(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top, local = set(), []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        if id(node) in in_functions:
            local.append((node.lineno, targets))
        else:
            top |= set(targets)
    return top, local


def _needless_local_imports() -> list[str]:
    """'path:line target' of every import inside a function that loads no heavy dependency the
    module does not already load when it is imported (such an import belongs at the top)."""
    paths = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    parsed = {name: _imports(path, name) for name, path in paths.items()}

    def own(target: str) -> str:
        while target and target not in paths:
            target = target.rpartition(".")[0]
        return target

    @functools.cache
    def heavy(name: str) -> frozenset[str]:
        # The heavy dependencies loaded when the module is imported (its parents', its imports').
        out, stack, visited = set(), [name], {name}
        while stack:
            module = stack.pop()
            parents = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
            for target in parsed[module][0] | parents:
                mine = own(target)
                if mine and mine not in visited:
                    visited.add(mine)
                    stack.append(mine)
                elif not mine and target.split(".")[0] in HEAVY:
                    out.add(target.split(".")[0])
        return frozenset(out)

    found = []
    for name, (_, local) in parsed.items():
        loaded = heavy(name)
        for line, targets in local:
            brings = set()
            for target in targets:
                module = own(target)
                brings |= heavy(module) if module else {target.split(".")[0]} & HEAVY
            if not brings - loaded:
                found.append(f"{paths[name].relative_to(ROOT)}:{line} {targets[0]}")
    return found


def test_imports_inside_functions_only_defer_a_heavy_dependency():
    assert _needless_local_imports() == []
