"""The package's layers: imports run downward only, no cycles, no private names across modules.

Every module of ``code/todi`` has a rank; a module may import (at any depth, including inside
functions) only modules of a lower rank, or of its own rank inside the same package when that
makes no cycle. The divergence math (``todi.objectives``) imports nothing else of the package, and
the kernels import only it, and never the criterion, models, trainer or Hugging Face/DeepSpeed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "code" / "todi"

# Lowest first. A new module must be placed here (the test fails until it is).
RANKS = {
    # 0: conventions and utilities that know nothing of the rest
    "todi": 0, "todi.labels": 0, "todi.plugins": 0, "todi.log": 0, "todi.atomic": 0, "todi.failures": 0,
    "todi.monitor": 5,
    # 1: divergence math and the objective registry
    "todi.objectives": 1, "todi.objectives.math": 1, "todi.objectives.registry": 1, "todi.objectives.builtin": 1,
    # 2: loss kernels
    "todi.kernels": 2, "todi.kernels.chunking": 2, "todi.kernels.spec": 2, "todi.kernels.chunked": 2,
    "todi.kernels.triton_backend": 2, "todi.kernels.per_row_loss": 2, "todi.kernels.fused_linear": 2,
    "todi.kernels.profiling": 2,
    # 3: the public divergence entry and the criterion; 4: AdaKD (a token planner of the criterion)
    "todi.divergences": 3, "todi.criterion": 3, "todi.adakd": 4,
    # 5: infrastructure: processes, files, data, models, generation, metrics, results
    "todi.distributed": 5, "todi.ds_config": 5, "todi.schedule": 5, "todi.batching": 5, "todi.data": 5,
    "todi.metrics": 5, "todi.results": 5, "todi.checkpoint": 6, "todi.models": 5, "todi.generation": 5,
    "todi.fused_head": 5, "todi.prepare": 6, "todi.curves": 6, "todi.teacher_cache": 5,
    "todi.judge_inputs": 6, "todi.judge_stats": 6, "todi.judge": 7,
    # 7: evaluation and the command line; 8: training; 9: what drives whole pipelines
    "todi.step_metrics": 6, "todi.dev_evaluation": 7,
    "todi.evaluation": 7, "todi.args": 7, "todi.cache_run": 7, "todi.run_state": 8, "todi.training_setup": 8, "todi.trainer": 9,
    "todi.study": 9, "todi.demo": 9,
}
FORBIDDEN_BELOW_KERNELS = ("transformers", "peft", "deepspeed")


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
    assert sorted(set(MODULES) - set(RANKS)) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_run_downward(name):
    known = set(MODULES)
    bad = []
    for target, line, names in imports(name, MODULES[name]):
        for dep in todi_targets(target, names, known):
            if dep == name or name.startswith(dep + ".") and dep == "todi":
                continue
            same_package = dep.rsplit(".", 1)[0] == name.rsplit(".", 1)[0] or dep == name.rsplit(".", 1)[0] \
                or name == dep.rsplit(".", 1)[0]
            if RANKS[dep] > RANKS[name] or (RANKS[dep] == RANKS[name] and not same_package):
                bad.append(f"line {line}: {name} (rank {RANKS[name]}) imports {dep} (rank {RANKS[dep]})")
        if RANKS[name] <= RANKS["todi.kernels"] and target.split(".")[0] in FORBIDDEN_BELOW_KERNELS:
            bad.append(f"line {line}: {name} imports {target} (the math and the kernels stay framework-free)")
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
    fake = ast.parse("from todi.trainer import Trainer\nfrom todi.criterion import _private\n")
    found = imports("todi.kernels.chunked", fake)
    assert ("todi.trainer", 1, ["Trainer"]) in found
    assert RANKS["todi.trainer"] > RANKS["todi.kernels.chunked"]
    assert any(n.startswith("_") for _, _, names in found for n in names)
