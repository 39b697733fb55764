"""Structure rules the code must keep (read from the source, not from a running process):
one front door into the router, imports that run one way, no module import cycle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "llmlb_fast"
WIRE = ROOT / "grpc_server"
# The transports: they parse and translate, and reach the router only through the service.
TRANSPORTS = [*sorted((PACKAGE / "transports").rglob("*.py")), PACKAGE / "server.py"]


def module_name(path: Path) -> str:
    base = PACKAGE.parent if path.is_relative_to(PACKAGE) else ROOT
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py")) + sorted(WIRE.rglob("*.py"))


def imported_modules(path: Path) -> Iterator[str]:
    """Every module an ``import`` names, function-local imports included."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in source_files()}
    return {
        name: {target for target in imported_modules(path) if target in modules and target != name}
        for name, path in modules.items()
    }


def core_router_calls(path: Path) -> list[str]:
    """``x.route(...)`` / ``x.complete(...)`` where x names a core router, and imports of
    the core ``Router`` class."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module in ("llmlb_fast", "llmlb_fast._core"):
            found += [f"imports {a.name}" for a in node.names if a.name == "Router"]
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in ("route", "complete"):
            continue
        receiver = ast.unparse(node.func.value)
        if "router" in receiver.lower():
            found.append(f"line {node.lineno}: {ast.unparse(node.func)}")
    return found


def test_the_scan_sees_the_transports_and_a_planted_call(tmp_path: Path) -> None:
    names = {path.name for path in TRANSPORTS}
    assert {"grpc_api.py", "routing_key.py", "app.py", "server.py"} <= names
    planted = tmp_path / "planted.py"
    planted.write_text(
        "from llmlb_fast import Router\n"
        "def f(self):\n    self._router.route('x')\n    self.router.complete('r', 'ok')\n"
    )
    assert core_router_calls(planted) == [
        "imports Router",
        "line 3: self._router.route",
        "line 4: self.router.complete",
    ]


def test_no_transport_calls_the_core_router_directly() -> None:
    offenders = {
        str(path.relative_to(ROOT)): calls
        for path in TRANSPORTS
        if (calls := core_router_calls(path))
    }
    assert offenders == {}


def test_grpc_server_imports_nothing_from_llmlb_fast() -> None:
    """grpc_server is the wire package (proto, stubs, clients): llmlb_fast depends on it,
    never the other way round."""
    graph = import_graph()
    wire = {name: deps for name, deps in graph.items() if name.startswith("grpc_server")}
    assert wire, "no grpc_server modules found"
    offenders = {
        name: sorted(d for d in deps if d.startswith("llmlb_fast")) for name, deps in wire.items()
    }
    assert {name: deps for name, deps in offenders.items() if deps} == {}


def test_the_service_does_not_import_its_transports() -> None:
    graph = import_graph()
    service = {name: deps for name, deps in graph.items() if name.startswith("llmlb_fast.service")}
    assert service
    upward = {
        name: sorted(
            d for d in deps if d.startswith(("llmlb_fast.transports", "llmlb_fast.server"))
        )
        for name, deps in service.items()
    }
    assert {name: deps for name, deps in upward.items() if deps} == {}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; returns the components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]


def test_no_module_import_cycle() -> None:
    """Package ``__init__`` re-exports are edges like any other import."""
    assert strongly_connected(import_graph()) == []
