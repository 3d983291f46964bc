"""The package's layers: imports run downward only, no cycles, no private names across modules.

Every sub-package of ``code/todi`` has a rank; a module may import (at any depth, including inside
functions) modules of its own sub-package, or of sub-packages of a lower rank. The divergence math
(``todi.objectives``), the kernels and the loss never import Hugging Face, peft or DeepSpeed; the
utilities only inside functions (the process group, a config's validation). ``todi`` itself is the
public surface on top (it loads the loss and evaluation lazily, on first use).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "code" / "todi"

# Lowest first. A new sub-package must be placed here (the test fails until it is).
PACKAGE_RANKS = {
    "util": 0,          # labels, atomic writes, logging, failures, plug-ins, process group, JSONL, DS configs
    "objectives": 1,    # the divergence math and the registry
    "kernels": 2,       # memory-efficient loss implementations
    "loss": 3,          # divergence(), the criterion, AdaKD
    "models": 4,        # tokenizers, loading, vocabulary rule, fused student head
    "data": 5, "generation": 5,  # instruction data and batching; sampling
    "cache": 6,         # the teacher cache (reads data, runs a teacher)
    "evaluation": 7,    # ROUGE-L, eval sets, dev evaluation, results, curves
    "training": 8, "judge": 8,
    "tools": 9,         # whole pipelines: demo, study
}
TOP = len(PACKAGE_RANKS) + 1  # ``todi`` itself: the public surface over everything
FRAMEWORKS = ("transformers", "peft", "deepspeed")
FRAMEWORK_FREE = ("objectives", "kernels", "loss")  # never import a framework
FRAMEWORK_LAZY = ("util",)                          # only inside functions


def package_of(module: str) -> str:
    """``todi.kernels.triton.launch`` -> ``kernels``; ``todi`` -> ``todi``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "todi"


def rank(module: str) -> int:
    package = package_of(module)
    return TOP if package == "todi" else PACKAGE_RANKS[package]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, tree: ast.Module) -> list[tuple[str, int, list[str]]]:
    """(imported module, line, names taken from it) for every import in the module, at any depth."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno, [a.name for a in node.names]))
    return found


def todi_targets(target: str, names: list[str], known: set[str]) -> list[str]:
    """The package modules an import statement loads (``from todi import kernels`` loads todi.kernels)."""
    subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
    whole = target in known and (not names or len(subs) < len(names))
    return ([target] if whole else []) + subs


MODULES = modules()


def test_every_module_has_a_rank():
    assert sorted({package_of(m) for m in MODULES} - set(PACKAGE_RANKS) - {"todi"}) == []


def top_level_imports(tree: ast.Module) -> set[str]:
    return {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names} | {
        n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_run_downward(name):
    known = set(MODULES)
    bad = []
    top = top_level_imports(MODULES[name])
    for target, line, names in imports(name, MODULES[name]):
        for dep in todi_targets(target, names, known):
            if dep == name or dep == "todi" or package_of(dep) == package_of(name):
                continue  # a package's own modules (cycles are the next test's), or the top package's __init__
            if rank(dep) >= rank(name):
                bad.append(f"line {line}: {name} (rank {rank(name)}) imports {dep} (rank {rank(dep)})")
        framework = target.split(".")[0] in FRAMEWORKS
        if framework and (package_of(name) in FRAMEWORK_FREE or package_of(name) in FRAMEWORK_LAZY and target in top):
            bad.append(f"line {line}: {name} imports {target} (the math, kernels and loss stay framework-free)")
    assert bad == []


def test_no_import_cycles():
    known = set(MODULES)
    graph = {n: {d for t, _, names in imports(n, tree) for d in todi_targets(t, names, known) if d != n}
             for n, tree in MODULES.items()}
    graph["todi"] = set()  # the package's own __init__ (importing a submodule runs it first, by design)
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1 and not cycle:
                cycle.extend(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycle == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_name_crosses_modules(name):
    known = set(MODULES)
    tree = MODULES[name]
    bad = [f"line {line}: from {t} import {n}" for t, line, names in imports(name, tree) if t in known
           for n in names if n.startswith("_") and not n.startswith("__")]
    aliases = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
               for a in node.names
               if (isinstance(node, ast.Import) and a.name in known)
               or (isinstance(node, ast.ImportFrom) and f"{node.module}.{a.name}" in known)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                bad.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    assert bad == []


def test_the_checks_catch_violations():
    """The checks above can fail: an upward import, a cycle and a private name, on made-up code."""
    fake = ast.parse("from todi.training.trainer import Trainer\nfrom todi.loss.criterion import _private\n")
    found = imports("todi.kernels.chunked", fake)
    assert ("todi.training.trainer", 1, ["Trainer"]) in found
    assert rank("todi.training.trainer") > rank("todi.kernels.chunked")
    assert rank("todi.models.vocab") == rank("todi.models.fused_head") > rank("todi.loss.criterion")
    assert any(n.startswith("_") for _, _, names in found for n in names)
