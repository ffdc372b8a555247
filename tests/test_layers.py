"""The package's layers import in one direction only: core → run → llm → store → agent → services →
(mcp | gateway) → cli (cli may use both front ends; mcp and gateway never import each other).

Every import counts: module level, inside functions, and under ``TYPE_CHECKING``. ``kit/`` (what
handler processes import) may use core and run, and nothing in the server imports it. The MCP SDK
is imported only under ``mcp/``, LiteLLM only by the LiteLLM adapter and the Anthropic adapter.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "betty_mcp"

# Higher may import lower, never the reverse. Same rank: only within the same layer.
RANKS = {
    "core": 0,
    "run": 1,
    "llm": 2,
    "store": 3,
    "agent": 4,
    "services": 5,
    "mcp": 6,
    "gateway": 6,
    "cli": 7,
    "kit": 8,
}
# Who may import kit/ (nobody in the server: handlers import it by path, the zygote preloads it by name).
KIT_USERS = {"kit"}
ENTRY_POINTS = {"__init__", "__main__"}  # betty_mcp/__init__.py and __main__.py
SDK_HOME = "mcp"
LITELLM_HOMES = {"betty_mcp.llm.litellm_adapter", "betty_mcp.llm.anthropic_adapter"}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "_bundled" in path.parts:
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def imports(module: str, path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (absolute names), wherever the import statement stands."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            # ``from betty_mcp.x import y`` may import the submodule ``betty_mcp.x.y``
            found += [
                (node.lineno, f"{base}.{alias.name}") for alias in node.names if base.startswith("betty_mcp")
            ]
    return found


def internal_edges() -> list[tuple[str, int, str]]:
    mods = modules()
    edges = []
    for module, path in mods.items():
        for line, target in imports(module, path):
            if target in mods and target != module:
                edges.append((module, line, target))
    return edges


def test_no_import_goes_up_a_layer() -> None:
    wrong = []
    for source, line, target in internal_edges():
        src, dst = layer(source), layer(target)
        if src in ENTRY_POINTS or src == dst:
            continue
        if dst in ENTRY_POINTS:
            continue  # betty_mcp/__init__ holds only the version
        if dst == "kit" and src not in KIT_USERS:
            wrong.append(f"{source}:{line} imports {target}: the server never imports kit/")
        elif src != "kit" and RANKS[dst] > RANKS[src]:
            wrong.append(f"{source}:{line} ({src}) imports {target} ({dst}), a higher layer")
        elif src == "kit" and RANKS[dst] > RANKS["run"]:
            wrong.append(f"{source}:{line} (kit) imports {target} ({dst}); kit may use core and run only")
        elif {src, dst} == {"mcp", "cli"} and src == "mcp":
            wrong.append(f"{source}:{line} imports {target}: mcp/ does not use the CLI")
        elif {src, dst} == {"mcp", "gateway"}:
            wrong.append(f"{source}:{line} imports {target}: mcp/ and gateway/ are separate front ends")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_between_modules() -> None:
    graph: dict[str, set[str]] = {}
    for source, _, target in internal_edges():
        if not source.endswith("__init__"):
            graph.setdefault(source, set()).add(target)
    # A package's __init__ re-exporting its modules is not a cycle of behaviour: skip package nodes.
    packages = {m for m, p in modules().items() if p.name == "__init__.py"}
    graph = {m: {t for t in ts if t not in packages} for m, ts in graph.items() if m not in packages}
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize(("library", "home"), [("mcp", SDK_HOME), ("mcp_types", SDK_HOME), ("litellm", None)])
def test_vendor_libraries_have_one_home(library: str, home: str | None) -> None:
    outside = []
    for module, path in modules().items():
        for line, target in imports(module, path):
            if target != library and not target.startswith(library + "."):
                continue
            allowed = layer(module) == home if home else module in LITELLM_HOMES
            if not allowed:
                outside.append(f"{module}:{line} imports {target}")
    assert not outside, "\n".join(outside)


def test_the_checker_sees_function_level_and_type_checking_imports(tmp_path: Path) -> None:
    """The walk must see imports hidden in functions and TYPE_CHECKING blocks, or it proves nothing."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from betty_mcp.services import Services\n"
        "def f():\n    import litellm\n    from . import sibling\n"
    )
    found = {name for _, name in imports("betty_mcp.core.sample", sample)}
    assert {"betty_mcp.services", "litellm", "betty_mcp.core", "betty_mcp.core.sibling"} <= found
