"""The house rules of the source tree (design.md "The parts", style.md 3): which
package may import which, and no import cycle between modules, not even one
hidden inside a function.

The graph is read from the source with ``ast`` (every ``import`` and ``from …
import``, at module level or inside a function; imports under ``if
TYPE_CHECKING:`` are left out, since they never run).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "drivers", "hashing", "uploader", "receiver")

# Top-level packages: what each may import of the project (design.md, "The parts").
# The receiver is the platform: it reads the wire formats and the integrity core,
# never the dock's code; the dock's uploader never reads the platform's.
ALLOWED_PACKAGES: Mapping[str, frozenset[str]] = {
    "hashing": frozenset({"hashing"}),
    "drivers": frozenset({"drivers", "hashing"}),
    "uploader": frozenset({"uploader", "hashing"}),
    "receiver": frozenset({"receiver", "hashing", "uploader.protocol", "uploader.link"}),
    "agent": frozenset(PACKAGES),
}

# The rooms of agent/ and the rooms each may import (itself always). Arrows point
# one way: the command line and the demo sit on top, configuration at the bottom.
_BASE = frozenset({"agent.config", "agent._text"})
ALLOWED_ROOMS: Mapping[str, frozenset[str]] = {
    "agent.config": frozenset(),
    "agent._text": frozenset(),
    "agent.users": _BASE,
    "agent.records": _BASE | {"agent.users"},
    "agent.offload": _BASE | {"agent.users", "agent.records"},
    "agent.kiosk": _BASE | {"agent.users", "agent.records"},
    "agent.dock": _BASE | {"agent.users", "agent.records", "agent.offload", "agent.kiosk"},
    "agent.demo": _BASE
    | {"agent.users", "agent.records", "agent.offload", "agent.kiosk", "agent.dock"},
    "agent.cli": _BASE
    | {"agent.users", "agent.records", "agent.offload", "agent.kiosk", "agent.dock", "agent.demo"},
}


def modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``packages`` under ``root``."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _runtime_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: those under ``if TYPE_CHECKING:`` cannot."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the project's modules it imports. ``from p import m`` names the
    module ``p.m`` when there is one, else ``p`` itself."""
    known = modules(root, packages)
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*up, base] if base else up)
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
                ]
            for imported in targets:
                target = imported
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges[name].add(target)
    return edges


def cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a
    cycle of imports; sorted for a stable message."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def room(module: str) -> str:
    """The room a module lives in: ``agent.records.holds`` -> ``agent.records``;
    outside agent/, the top-level package."""
    parts = module.split(".")
    if parts[0] != "agent" or len(parts) == 1:
        return parts[0]
    return ".".join(parts[:2])


def _within(target: str, allowed: frozenset[str]) -> bool:
    return any(target == a or target.startswith(a + ".") for a in allowed)


def violations(edges: Mapping[str, set[str]]) -> list[str]:
    """Every import that crosses a boundary it must not, as ``a -> b (why)``."""
    found = []
    for source, targets in sorted(edges.items()):
        top = source.split(".")[0]
        for target in sorted(targets):
            if not _within(target, ALLOWED_PACKAGES[top]):
                allowed = ", ".join(sorted(ALLOWED_PACKAGES[top]))
                found.append(f"{source} -> {target} ({top}/ may import only {allowed})")
                continue
            here, there = room(source), room(target)
            if (
                here in ALLOWED_ROOMS
                and there in ALLOWED_ROOMS
                and here != there
                and there not in ALLOWED_ROOMS[here]
            ):
                found.append(f"{source} -> {target} ({here} may not import {there})")
    return found


@pytest.fixture(scope="module")
def tree() -> dict[str, set[str]]:
    return graph(ROOT)


def test_no_module_imports_itself_in_a_circle(tree: dict[str, set[str]]) -> None:
    assert cycles(tree) == []


def test_each_package_imports_only_what_it_may(tree: dict[str, set[str]]) -> None:
    assert violations(tree) == []


def test_every_room_of_agent_is_known(tree: dict[str, set[str]]) -> None:
    """A new room needs its place in ALLOWED_ROOMS (and a line in the README's
    layout table)."""
    rooms = {room(m) for m in tree if m.startswith("agent.")}
    assert rooms <= set(ALLOWED_ROOMS), sorted(rooms - set(ALLOWED_ROOMS))


def _write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_a_cycle_hidden_in_a_function_is_found(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "agent/__init__.py": "",
            "agent/config.py": "def f():\n    from agent.dock import uplink\n",
            "agent/dock/__init__.py": "",
            "agent/dock/uplink.py": "from agent import config\n",
        },
    )
    edges = graph(tmp_path, ("agent",))
    assert cycles(edges) == [["agent.config", "agent.dock.uplink"]]
    assert violations(edges) == [
        "agent.config -> agent.dock.uplink (agent.config may not import agent.dock)"
    ]


def test_type_checking_imports_and_relative_imports(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "hashing/__init__.py": "",
            "hashing/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from hashing import b\n",
            "hashing/b.py": "from . import a\nfrom .a import x\n",
        },
    )
    assert graph(tmp_path, ("hashing",)) == {
        "hashing": set(),
        "hashing.a": set(),
        "hashing.b": {"hashing.a"},
    }


def test_the_platform_never_imports_the_dock(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "receiver/__init__.py": "",
            "receiver/service.py": "from uploader import protocol\nimport agent.config\n",
            "uploader/__init__.py": "",
            "uploader/protocol.py": "",
            "uploader/sender.py": "from receiver import service\n",
            "agent/__init__.py": "",
            "agent/config.py": "",
        },
    )
    found = violations(graph(tmp_path, ("receiver", "uploader", "agent")))
    assert [f.split(" (")[0] for f in found] == [
        "receiver.service -> agent.config",
        "uploader.sender -> receiver.service",
    ]


def test_the_readme_layout_table_has_a_line_for_each_room(tree: dict[str, set[str]]) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("## Layout\n") : text.index("## Development\n")]
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| `")]
    expected = [f"`{p}/`" for p in PACKAGES if p != "agent"]
    for name in sorted({room(m) for m in tree if m.startswith("agent.")}):
        path = name.replace(".", "/")
        expected.append(f"`{path}.py`" if (ROOT / f"{path}.py").is_file() else f"`{path}/`")
    missing = [e for e in expected if e not in rows]
    assert missing == [], f"README ## Layout has no line for {missing}"
