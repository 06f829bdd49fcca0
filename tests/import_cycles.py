"""Import cycles between the project's modules (``make lint``; tests/unit/test_import_cycles.py).

A cycle is a set of modules that import each other, directly or through others, at import
time or inside a function (a lazy import still ties the modules together); imports under
``if TYPE_CHECKING:`` do not count (they exist for the type checker only). Run as
``python -m tests.import_cycles``: prints each cycle and exits 1 when there is one.
"""

from __future__ import annotations

import sys

import grimp

PACKAGES = ("stream_app", "agents", "tables")


def find_cycles(packages: tuple[str, ...] = PACKAGES) -> list[list[str]]:
    """Every strongly connected set of two or more modules, each sorted (Tarjan's)."""
    graph = grimp.build_graph(*packages, exclude_type_checking_imports=True, cache_dir=None)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in sorted(graph.modules)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:  # recursion depth <= number of modules (~60)
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in edges.get(module, ()):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in edges:
        if module not in index:
            visit(module)
    return sorted(found)


def main() -> int:
    cycles = find_cycles()
    for cycle in cycles:
        print("import cycle: " + " <-> ".join(cycle))
    print(f"{len(cycles)} import cycle(s) in {', '.join(PACKAGES)}")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
