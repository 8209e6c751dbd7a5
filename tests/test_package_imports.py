"""The packages of aimet_tf import one another in one direction only.

Every import statement counts, also those inside functions: a function-level import hides a cycle
from Python's import machinery, not from the design. The units are aimet_tf's subpackages and
top-level modules (``aimet_tf.files`` ...); ``aimet_tf/__init__.py`` is the public facade.
"""

import ast
import pathlib

import aimet_tf

_ROOT = pathlib.Path(aimet_tf.__file__).resolve().parent


def _unit(module: str) -> str:
    """The package or top-level module of aimet_tf that ``module`` belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "aimet_tf"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, module) for every aimet_tf module ``path`` imports, anywhere in the file."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # "from aimet_tf import files" imports the module aimet_tf.files.
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                is_module = (_ROOT.parent / sub.replace(".", "/")).with_suffix(".py").exists() or (
                    _ROOT.parent / sub.replace(".", "/") / "__init__.py"
                ).exists()
                found.append((node.lineno, sub if is_module else base))
    return [(line, name) for line, name in found if name == "aimet_tf" or name.startswith("aimet_tf.")]


def _unit_imports() -> dict[str, dict[str, list[str]]]:
    """unit -> imported unit -> "file:line" of each import."""
    edges: dict[str, dict[str, list[str]]] = {}
    for path in sorted(_ROOT.rglob("*.py")):
        source = _unit(_module_name(path))
        for line, name in _imported_modules(path):
            target = _unit(name)
            if target != source:
                edges.setdefault(source, {}).setdefault(target, []).append(f"{path.relative_to(_ROOT)}:{line}")
    return edges


def _cycle(edges: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One import cycle between units, as the list of units along it, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(unit: str) -> list[str] | None:
        state[unit] = "open"
        stack.append(unit)
        for target in edges.get(unit, {}):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        state[unit] = "done"
        stack.pop()
        return None

    for unit in sorted(edges):
        if unit not in state:
            found = visit(unit)
            if found:
                return found
    return None


def test_no_ptq_module_imports_export():
    offenders = [
        f"{path.relative_to(_ROOT)}:{line}: {name}"
        for path in sorted((_ROOT / "ptq").rglob("*.py"))
        for line, name in _imported_modules(path)
        if _unit(name) == "export"
    ]
    assert offenders == []


def test_the_packages_import_one_another_without_cycles():
    edges = _unit_imports()
    cycle = _cycle(edges)
    where = [f"{a} -> {b}: {', '.join(edges[a][b][:3])}" for a, b in zip(cycle, cycle[1:])] if cycle else []
    assert cycle is None, f"Expected no import cycle between aimet_tf's packages. Received: {where}"
    # The scan sees "from aimet_tf import <module>" and function-level imports (the sim is
    # imported inside fold_all_batch_norms_to_scale).
    assert "files" in edges["quantization"] and "ptq" in edges["export"]
    inside = _imported_modules(_ROOT / "ptq" / "batch_norm_fold.py")
    assert "aimet_tf.quantization.sim" in [name for _, name in inside]


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b": []}, "b": {"c": []}}) is None
