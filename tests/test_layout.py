"""The package's rooms and the one direction imports take between them (README, "Architecture").

Reads every module of src/wavkan with ``ast`` (nothing is imported) and checks its imports,
module-level and lazy ones alike:

- the library (wavelets, reference, reference_conv, ops, ops_conv, nn, kernels/ and the
  package's ``__init__``) never imports the training application (app/) or the benchmark (bench/);
- inside the library nothing imports upward: wavelets and kernels/ at the bottom, then the
  reference, the conv reference, the op, the conv op, the modules, the package face; the
  references and the kernels never import each other (the oracle stays independent of what it
  checks);
- the application and the benchmark sit side by side on the library and never import each other;
- files.py and cli.py import nothing of the project when they are imported;
- Triton is imported at module level only in kernels/ and in the benchmark's exp-ceiling kernel,
  so the package imports on a machine without it;
- the import graph has no cycle.

The checker takes the sources as a mapping, so the last tests feed it a broken layout and
check that it says so.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Library modules by height: a module may import only modules strictly below it (or, inside
# kernels/, its siblings: the kernels package is one room).
LIBRARY_RANK = {
    "wavkan.wavelets": 0,  # the catalogue: the kernels read each wavelet's traits from it
    "wavkan.kernels": 1,
    "wavkan.reference": 1,
    "wavkan.reference_conv": 2,  # builds on the linear reference's chunking
    "wavkan.cpu": 2,  # the compiled CPU backend: the reference's passes under torch.compile
    "wavkan.ops": 3,
    "wavkan.ops_conv": 4,  # shares the op's backends
    "wavkan.nn": 5,
    "wavkan.plot": 6,  # draws the modules' edges
    "wavkan": 7,  # the package face, __init__.py
}
# The oracles: they and kernels/ never import each other.
REFERENCES = ("wavkan.reference", "wavkan.reference_conv")
HELPERS = ("wavkan.files", "wavkan.cli")
# Entry points kept at the package top for short commands (``python -m wavkan``,
# ``python -m wavkan.train``): they only hand over to cli / app.
ENTRY_POINTS = ("wavkan.__main__", "wavkan.train")
TRITON_ALLOWED = ("wavkan.kernels", "wavkan.bench.ceiling")


def module_sources(root: Path = SRC) -> dict:
    """{dotted module name: source text} for every .py file of the package under ``root``."""
    out = {}
    for path in sorted((root / "wavkan").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path.read_text(), is_package)
    return out


def imports_of(name: str, source: str, is_package: bool, modules) -> list:
    """(imported project-or-other module, at module level?) for every import statement in
    ``source``, relative imports resolved against ``name``. ``from X import y`` counts as X.y
    where X.y is one of ``modules``, else as X."""
    package = name if is_package else name.rpartition(".")[0]
    found = []

    def visit(node, top_level):
        for child in ast.iter_child_nodes(node):
            nested = top_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.If) and _is_main_guard(child):
                nested = False  # ``if __name__ == "__main__":`` runs only as a script
            if isinstance(child, ast.Import):
                found.extend((alias.name, top_level) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module
                for alias in child.names:
                    sub = f"{target}.{alias.name}"
                    found.append((sub if sub in modules else target, top_level))
            visit(child, nested)

    visit(ast.parse(source), True)
    return found


def _is_main_guard(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def room(name: str) -> str:
    if _within(name, "wavkan.app"):
        return "app"
    if _within(name, "wavkan.bench"):
        return "bench"
    if name in HELPERS:
        return "helpers"
    if name in ENTRY_POINTS:
        return "entry"
    if _within(name, "wavkan.kernels") or name in LIBRARY_RANK:
        return "library"
    raise AssertionError(f"{name} belongs to no room: add it to the layout (README, Architecture) and here")


def library_rank(name: str) -> int:
    return LIBRARY_RANK["wavkan.kernels" if _within(name, "wavkan.kernels") else name]


def layout_violations(sources: dict) -> list:
    """Every import in ``sources`` ({module: (source, is_package)}) that breaks the layout, as
    readable strings; an empty list when the layout holds."""
    modules = set(sources)
    problems = []
    graph = {name: set() for name in modules}
    for name, (source, is_package) in sources.items():
        own = room(name)
        for target, top_level in imports_of(name, source, is_package, modules):
            if target.split(".")[0] == "triton" and top_level and not any(_within(name, p) for p in TRITON_ALLOWED):
                problems.append(f"{name} imports {target} at module level (Triton belongs in kernels/)")
            if not _within(target, "wavkan"):
                continue  # torch, triton, the standard library
            if top_level and target != name:
                graph[name].add(target)
            other = room(target)
            if own == "library" and other in ("app", "bench"):
                problems.append(f"{name} (library) imports {target} ({other})")
            elif own == "library" and other == "library":
                same_room = _within(name, "wavkan.kernels") and _within(target, "wavkan.kernels")
                if not same_room and library_rank(target) >= library_rank(name):
                    problems.append(f"{name} imports upward: {target}")
                if (name in REFERENCES and _within(target, "wavkan.kernels")) or (
                        target in REFERENCES and _within(name, "wavkan.kernels")):
                    problems.append(f"{name} imports {target}: the reference and the kernels stay apart")
            elif own == "library" and other == "entry":
                problems.append(f"{name} (library) imports the entry point {target}")
            elif {own, other} == {"app", "bench"}:
                problems.append(f"{name} ({own}) imports {target} ({other})")
            elif own == "helpers" and top_level:
                problems.append(f"{name} (helper) imports {target} at import time")
    problems.extend(f"import cycle: {' -> '.join(c)}" for c in _cycles(graph))
    return problems


def _cycles(graph: dict) -> list:
    """One cycle per strongly connected group of the module-level import graph, if any."""
    state, stack, found = {}, [], []

    def walk(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            walk(node)
    return found


# --- the package as it is -------------------------------------------------------------------


def test_every_module_has_a_room():
    sources = module_sources()
    assert {"wavkan.ops", "wavkan.kernels.forward", "wavkan.app.train", "wavkan.bench.run", "wavkan.ops_conv",
            "wavkan.reference_conv", "wavkan.kernels.conv_forward", "wavkan.app.cifar", "wavkan.app.models"} <= set(sources)
    for name in sources:
        room(name)


def test_the_package_keeps_its_layout():
    assert layout_violations(module_sources()) == []


def test_the_library_imports_nothing_of_the_application_or_the_benchmark():
    sources = module_sources()
    library = [n for n in sources if room(n) == "library"]
    assert "wavkan.ops" in library and "wavkan.kernels.launch" in library
    for name in library:
        source, is_package = sources[name]
        targets = [t for t, _ in imports_of(name, source, is_package, set(sources))]
        assert not [t for t in targets if _within(t, "wavkan.app") or _within(t, "wavkan.bench")], name


# --- the checker itself: a broken layout must be reported -----------------------------------


def _with(module: str, extra: str) -> dict:
    sources = dict(module_sources())
    source, is_package = sources[module]
    sources[module] = (source + "\n" + extra + "\n", is_package)
    return sources


@pytest.mark.parametrize("module, extra, expected", [
    ("wavkan.ops", "from .app.train import main", "wavkan.ops (library) imports wavkan.app.train (app)"),
    ("wavkan.ops", "import wavkan.app", "wavkan.ops (library) imports wavkan.app (app)"),
    ("wavkan.nn", "def f():\n    from .bench import run", "wavkan.nn (library) imports wavkan.bench.run (bench)"),
    ("wavkan.kernels.forward", "from ..ops import wavkan_linear", "wavkan.kernels.forward imports upward: wavkan.ops"),
    ("wavkan.reference", "from .kernels import wavkan_fwd", "the reference and the kernels stay apart"),
    ("wavkan.reference_conv", "def f():\n    from .kernels.conv_forward import wavkan_conv_fwd",
     "the reference and the kernels stay apart"),
    ("wavkan.reference", "from .reference_conv import conv_reference_forward",
     "wavkan.reference imports upward: wavkan.reference_conv"),
    ("wavkan.ops", "from .ops_conv import wavkan_conv", "wavkan.ops imports upward: wavkan.ops_conv"),
    ("wavkan.wavelets", "from .reference import wavkan_linear_ref", "wavkan.wavelets imports upward: wavkan.reference"),
    ("wavkan.bench.run", "from ..app import train", "wavkan.bench.run (bench) imports wavkan.app.train (app)"),
    ("wavkan.app.metrics", "from ..bench import report", "wavkan.app.metrics (app) imports wavkan.bench.report (bench)"),
    ("wavkan.files", "from .nn import WavKAN", "wavkan.files (helper) imports wavkan.nn at import time"),
    ("wavkan.nn", "import triton", "wavkan.nn imports triton at module level"),
    ("wavkan.kernels.tuning", "from .forward import wavkan_fwd", "import cycle"),
], ids=["ops->app", "ops->app-absolute", "nn->bench-lazy", "kernels->ops", "reference->kernels",
        "reference_conv->kernels-lazy", "reference->reference_conv", "ops->ops_conv",
        "wavelets->reference", "bench->app", "app->bench", "files->nn", "nn->triton", "cycle"])
def test_the_checker_reports_a_broken_layout(module, extra, expected):
    problems = layout_violations(_with(module, extra))
    assert any(expected in p for p in problems), problems
