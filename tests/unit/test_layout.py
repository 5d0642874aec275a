"""The code's own shape: no import cycles in shared/, sandbox/ or bench/ (module-level and imports
inside functions alike: a lazy import hides a cycle, it does not remove it); no module in shared/ above
500 lines and no function in shared/, sandbox/ or bench/ above 80, each exception listed with its reason."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "sandbox", "bench")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the checked packages and function_app.py."""
    found = {"function_app": ROOT / "function_app.py"}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(node: ast.AST, module: str, is_package: bool, known: dict[str, Path]) -> list[str]:
    """The project modules one import statement loads (the most specific name that is a module)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[:len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        # "from package import module" loads the module; "from module import name" the module
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    else:
        return []
    out = []
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.append(name)
    return out


def import_graph() -> dict[str, set[str]]:
    known = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        graph[module] = {target for node in ast.walk(tree) for target in _imported(node, module, is_package, known)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path that starts and ends on the same module, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_graph_sees_module_level_function_level_and_relative_imports():
    graph = import_graph()
    assert "shared.bootstrap" in graph["shared.entrypoints.functions"]  # module level
    assert "shared.service_layer.reconcile" in graph["shared.entrypoints.functions"]  # inside a function
    assert "sandbox.dataverse.seed" in graph["sandbox.dataverse.store"]  # relative
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_there_is_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# Size limits: a module in shared/ holds one job, a function one step. Each exception names its reason;
# an entry that no longer applies fails the test too, so the list only shrinks.
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
MODULE_EXCEPTIONS: dict[str, str] = {}
FUNCTION_EXCEPTIONS: dict[str, str] = {}


def _sources(packages: tuple[str, ...]) -> list[Path]:
    return sorted(path for package in packages for path in (ROOT / package).rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.as_posix()


def module_sizes(paths: list[Path]) -> dict[str, int]:
    """Lines of each module, by path relative to the repository."""
    return {_name(path): len(path.read_text().splitlines()) for path in paths}


def function_sizes(paths: list[Path]) -> dict[str, int]:
    """Lines (def line to last line, decorators aside) of every def and async def, as path::name;
    a nested function counts on its own and inside its parent; same-named ones keep the largest."""
    sizes: dict[str, int] = {}
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                key = f"{_name(path)}::{node.name}"
                sizes[key] = max(sizes.get(key, 0), node.end_lineno - node.lineno + 1)
    return sizes


def _over(sizes: dict[str, int], limit: int, exceptions: dict[str, str]) -> tuple[list[str], list[str]]:
    """Offenders not excepted ("name (N lines)") and exceptions that no longer apply."""
    offenders = [f"{name} ({size} lines)" for name, size in sorted(sizes.items())
                 if size > limit and name not in exceptions]
    stale = [name for name in sorted(exceptions) if sizes.get(name, 0) <= limit]
    return offenders, stale


def test_the_size_checks_measure_what_they_claim(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text("import os\n\n\n@staticmethod\ndef outer():\n    async def inner():\n        pass\n"
                      "    return inner\n")
    assert module_sizes([source]) == {source.as_posix(): 8}
    assert function_sizes([source]) == {f"{source.as_posix()}::outer": 4, f"{source.as_posix()}::inner": 2}
    assert _over({"a": 81, "b": 80}, 80, {}) == (["a (81 lines)"], [])
    assert _over({"a": 81, "b": 80}, 80, {"a": "why", "b": "why", "c": "why"}) == ([], ["b", "c"])


def test_no_module_in_shared_is_above_the_limit():
    offenders, stale = _over(module_sizes(_sources(("shared",))), MAX_MODULE_LINES, MODULE_EXCEPTIONS)
    assert not offenders, f"modules above {MAX_MODULE_LINES} lines: " + ", ".join(offenders)
    assert not stale, "module exceptions that no longer apply (remove them): " + ", ".join(stale)


def test_no_function_is_above_the_limit():
    offenders, stale = _over(function_sizes(_sources(PACKAGES)), MAX_FUNCTION_LINES, FUNCTION_EXCEPTIONS)
    assert not offenders, f"functions above {MAX_FUNCTION_LINES} lines: " + ", ".join(offenders)
    assert not stale, "function exceptions that no longer apply (remove them): " + ", ".join(stale)
