"""The package's layers: each imports only the ones below it, and no import cycle anywhere (docs/architecture.md).

Every import counts, also those inside functions (a lazy import is still a dependency). The layers, lowest first:

    base         errors, options, version, testing      (no MyNoSQL import but each other)
    records      records/* (codec, revision trees, ids), net/* (URLs, CouchDB wire shapes)      pure, no I/O
    storage      storage/*                               files, no network
    database     database, config, credentials, query, live    knows no HTTP
    services     replication/*, server/*                 replication and the server never import each other
    composition  node, shared, handle, aio, cli, demo, __init__, __main__
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = SRC / "MyNoSQL"

LAYERS = [
    ("base", ["errors", "options", "version", "testing"]),
    ("records", ["records", "net"]),
    ("storage", ["storage"]),
    ("database", ["database", "config", "credentials", "query", "live"]),
    ("services", ["replication", "server"]),
    ("composition", ["node", "shared", "service", "handle", "aio", "cli", "demo", "__init__", "__main__"]),
]
RANK = {part: i for i, (_, parts) in enumerate(LAYERS) for part in parts}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every MyNoSQL module ``path`` imports, at any depth of its code."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "MyNoSQL")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "MyNoSQL":
                continue
            for a in node.names:  # "from . import wire" imports a module; "from .x import y" imports x
                sub = f"{target}.{a.name}"
                found.add(sub if (SRC / (sub.replace(".", "/") + ".py")).exists() else target)
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) - {_module_name(p)} for p in PKG.rglob("*.py")}


def _layer_part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_is_in_a_layer() -> None:
    unplaced = sorted({_layer_part(m) for m in _graph()} - set(RANK))
    assert not unplaced, f"modules in no layer (add them to LAYERS and docs/architecture.md): {unplaced}"


def test_each_layer_imports_only_the_ones_below_it() -> None:
    wrong = []
    for module, deps in _graph().items():
        mine = _layer_part(module)
        for dep in deps:
            theirs = _layer_part(dep)
            if dep == "MyNoSQL" and mine != "__init__":
                wrong.append(f"{module} imports the package itself")
            elif RANK[theirs] > RANK[mine]:
                wrong.append(f"{module} ({LAYERS[RANK[mine]][0]}) imports {dep} ({LAYERS[RANK[theirs]][0]})")
            elif RANK[theirs] == RANK[mine] and mine != theirs and LAYERS[RANK[mine]][0] == "services":
                wrong.append(f"{module} imports {dep}: replication and the server never import each other")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_core_imports_nothing_of_replication_the_server_or_the_command_line() -> None:
    graph = _graph()
    core = [m for m in graph if RANK[_layer_part(m)] <= RANK["database"]]
    bad = [(m, d) for m in core for d in graph[m] if _layer_part(d) in ("replication", "server", "cli", "node")]
    assert core and not bad, bad


def test_there_is_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if d not in graph:
                continue
            if state.get(d) == 1:
                cycles.append([*path[path.index(d):], d] if d in path else [m, d])
            elif d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_graph_sees_imports_inside_functions() -> None:
    """The test above would be blind without this: a lazy import in node.py must be in its graph."""
    assert "MyNoSQL.replication.peer" in _graph()["MyNoSQL.node"]


@pytest.mark.process
def test_a_local_database_imports_nothing_of_the_network(tmp_path: Path) -> None:
    code = """if True:
        import sys, MyNoSQL
        with MyNoSQL.MyNoSQL(sys.argv[1]) as h:
            h.opendb("local")
            r = h.savedoc({"t": 1})
            assert h.readdoc(r["id"])["t"] == 1
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("aiohttp", "yarl", "multidict")
                        or m.startswith(("MyNoSQL.replication", "MyNoSQL.server")))
        print(loaded)
    """
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
