"""Imports run one way: no circle between modules, `workers/` imports `app/` and never the reverse,
the root of `app/` holds only wiring, and no package of the flow knows anything of HTTP
(docs/ARCHITECTURE.md). Read from the source, no server needed.

The packages are found from the folders: a new module or package is checked without editing this file.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = ("app", "workers", "celeryconfig", "wsgi")
# The root of app/ wires the stages together; everything else lives in a package named for its stage.
WIRING = {
    "__init__.py",
    "cli.py",
    "clock.py",
    "config.py",
    "dispatch.py",
    "extensions.py",
    "factory.py",
    "gunicorn_config.py",
    "py.typed",
    "task_names.py",
    "unit_of_work.py",
}
# The packages of app/ that are not stages of the flow: the HTTP edge and the dev tooling.
EDGES = ("api", "dev")
HTTP_PACKAGES = ("flask", "flask_smorest", "webargs", "werkzeug")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def import_graph(root: Path, top_level: tuple[str, ...]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Every first-party module's imports (also those inside functions and TYPE_CHECKING blocks):
    the first-party modules it names and the top-level names of the other packages it imports."""
    paths = [
        p
        for name in top_level
        for p in (sorted((root / name).rglob("*.py")) if (root / name).is_dir() else [root / f"{name}.py"])
        if p.exists()
    ]
    modules = {module_name(p, root): p for p in paths}
    internal: dict[str, set[str]] = {}
    external: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        internal[name], external[name] = set(), set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: `from . import x` in package a.b names a.b.x
                    parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parents + ([base] if base else []))
                # `from app import outbox` imports the module app.outbox.store; `from app.x import y` imports app.x.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                if _within(target, top_level):
                    while target not in modules and "." in target:
                        target = target.rpartition(".")[0]
                    if target != name:
                        internal[name].add(target)
                else:
                    external[name].add(target.split(".")[0])
    return internal, external


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def loaded_by(module: str, internal: dict[str, set[str]]) -> set[str]:
    """The first-party modules importing `module` runs: its imports, theirs, and every parent package."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # importing a.b.c runs a and a.b
        todo.extend(internal.get(name, ()))
    return {name for name in seen if name in internal}


def stage_packages(root: Path) -> list[str]:
    """The packages of app/ that hold the flow's stages (every folder with an __init__.py but the edges)."""
    return sorted(f"app.{p.parent.name}" for p in (root / "app").glob("*/__init__.py") if p.parent.name not in EDGES)


def http_reached(graph: dict[str, set[str]], external: dict[str, set[str]], modules: list[str]) -> dict[str, list]:
    """For each of `modules` that loads HTTP code (a package of HTTP_PACKAGES, or app.api), what it loads."""
    problems = {}
    for name in modules:
        loaded = loaded_by(name, graph)
        http = sorted(
            {m for m in loaded if _within(m, ("app.api",))}
            | {p for m in loaded for p in external[m] if p in HTTP_PACKAGES}
        )
        if http:
            problems[name] = http
    return problems


GRAPH, EXTERNAL = import_graph(ROOT, FIRST_PARTY)
STAGES = stage_packages(ROOT)
STAGE_MODULES = sorted(name for name in GRAPH if _within(name, tuple(STAGES)))


def test_the_graph_sees_the_code():
    assert {"app.jobs.service", "app.api.jobs", "workers.tasks", "app.dispatch"} <= set(GRAPH)
    assert "app.jobs.states" in GRAPH["app.jobs.service"]
    assert "app.outbox.store" in GRAPH["app.jobs.service"]
    assert "app.operations.metrics" in GRAPH["app.jobs.service"]  # `from app.operations import metrics`
    assert "app.factory" in GRAPH["workers.celery_app"]
    assert "flask" in EXTERNAL["app.api.base"]
    assert {"app.intake", "app.jobs", "app.outbox", "app.operations", "app.accounts", "app.policy"} <= set(STAGES)
    assert {"app.intake.ingest", "app.intake.upload", "app.jobs.service"} <= set(STAGE_MODULES)


def test_the_root_of_app_holds_only_wiring():
    root_files = {p.name for p in (ROOT / "app").iterdir() if p.is_file()}
    assert root_files <= WIRING, f"not wiring, belongs in a package named for its stage: {sorted(root_files - WIRING)}"
    assert len(root_files) <= 14


def test_no_import_circle():
    assert cycles(GRAPH) == []


def test_app_never_imports_workers():
    offenders = {
        name: sorted(t for t in targets if _within(t, ("workers",)))
        for name, targets in GRAPH.items()
        if _within(name, ("app", "celeryconfig"))
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_only_the_factory_imports_the_http_api():
    importers = {
        name
        for name, targets in GRAPH.items()
        if not _within(name, ("app.api",)) and any(_within(t, ("app.api",)) for t in targets)
    }
    assert importers == {"app.factory"}


def test_only_the_cli_imports_the_dev_tooling():
    importers = {
        name
        for name, targets in GRAPH.items()
        if not _within(name, ("app.dev",)) and any(_within(t, ("app.dev",)) for t in targets)
    }
    assert importers <= {"app.cli"}


def test_no_stage_loads_anything_of_http():
    assert http_reached(GRAPH, EXTERNAL, STAGE_MODULES) == {}


def test_importing_every_stage_really_loads_no_http_package():
    # The same rule, checked on the interpreter itself: third-party imports are followed too.
    code = (
        "import importlib, sys\n"
        f"for name in {STAGE_MODULES!r}: importlib.import_module(name)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & %r"
        " | {m for m in sys.modules if m.startswith('app.api')}))" % (set(HTTP_PACKAGES),)
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_new_stage_that_reaches_http_is_found(tmp_path):
    # The checker itself: a package nobody listed, whose module reaches flask through another module.
    (tmp_path / "app" / "api").mkdir(parents=True)
    (tmp_path / "app" / "newstage").mkdir()
    for init in ("app/__init__.py", "app/api/__init__.py", "app/newstage/__init__.py"):
        (tmp_path / init).write_text("")
    (tmp_path / "app" / "helpers.py").write_text("import flask\n")
    (tmp_path / "app" / "newstage" / "thing.py").write_text("def f():\n    from app import helpers\n")
    graph, external = import_graph(tmp_path, ("app",))
    stages = stage_packages(tmp_path)
    modules = [name for name in graph if _within(name, tuple(stages))]
    assert stages == ["app.newstage"]
    assert http_reached(graph, external, modules) == {"app.newstage.thing": ["flask"]}


def test_a_circle_is_found(tmp_path):
    # The checker itself: a circle hidden in function-level and type-only imports is still a circle.
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from pkg.c import g\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n")
    (package / "d.py").write_text("import pkg.a\n")
    graph, _ = import_graph(tmp_path, ("pkg",))
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
