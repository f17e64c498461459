"""The import graph of abray/ and api/: imports point down the layers and never form a cycle.

Every import counts, module level or inside a function. A module's layer is that of the longest prefix below that
names it; a module may import its own layer and the layers under it, never one above.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("abray", "api")

LAYERS = [  # bottom first: (module prefix, what lives there)
    ("abray.optim", "the algorithm: ABSGD, kernels, peers, prediction, the method registry, delay and staleness"),
    ("abray.training", "one run: config, data, models, simulator, epochs, parameter server, Ray actors"),
    ("abray.theory", "the quadratic model"),
    ("abray.advisor", "the lr advisor: curvature by Hessian-vector products, stable lrs from the quadratic model"),
    ("abray.results", "the tidy schema, reading experiments, summaries, plots, reports"),
    ("abray.sweeps", "sweep specs and their run on Ray Tune"),
    ("abray.service", "the job service's back end: store, scheduler, job driver, local cluster"),
    ("api", "the HTTP front end (FastAPI)"),
    ("abray.client", "the Python client of the service: HTTP in, DataFrames out"),
    ("abray.cli", "the `abray` command"),
]
ROOT_MODULES = {"abray"}  # the package itself: imports nothing of its own


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project's modules that `name` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import abray.optim.functional` -> that module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def layer_of(name: str) -> int:
    matches = [i for i, (prefix, _) in enumerate(LAYERS) if name == prefix or name.startswith(prefix + ".")]
    assert matches or name in ROOT_MODULES, f"{name} is in no layer: add it to LAYERS"
    return max(matches, key=lambda i: len(LAYERS[i][0])) if matches else -1


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """A cycle of the graph as a list of nodes (first == last), or [] if it has none."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_imports_point_down_the_layers():
    upward = [f"{name} (layer {LAYERS[layer_of(name)][0]}) imports {target} (layer {LAYERS[layer_of(target)][0]})"
              for name, targets in import_graph().items() for target in sorted(targets)
              if layer_of(target) > layer_of(name)]
    assert not upward, "\n".join(upward)


def test_the_checks_find_a_cycle_and_an_upward_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
    assert layer_of("abray.optim.functional") < layer_of("abray.training.run") < layer_of("api.routers.jobs")
    graph = import_graph()
    assert "abray.optim.staleness" in graph["abray.optim.peers"]  # relative imports are resolved
    assert "abray.training.distributed" in graph["abray.training.run"]  # so are imports inside functions


def loaded_by(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(out.stdout.split())


def test_the_optimizer_costs_torch_alone():
    heavy = {"ray", "fastapi", "sqlalchemy", "pandas", "matplotlib", "pydantic"}
    assert not heavy & loaded_by("abray.optim"), heavy & loaded_by("abray.optim")


def test_validating_a_sweep_spec_needs_no_ray():
    assert "ray" not in loaded_by("abray.sweeps.spec")
