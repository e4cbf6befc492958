"""The import graph of vlmq_core: each module's vlmq_core imports (top level, and any inside functions), its line
count, and whether the graph has a cycle. ``python scripts/diagnostics/import_graph.py`` (issue 30's module map)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "vlmq_core"


def _targets(node: ast.AST) -> set[str]:
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("vlmq_core"):
            out |= {f"vlmq_core.{a.name}" for a in n.names} if n.module == "vlmq_core" else {n.module}
    return out


def graph() -> dict[str, tuple[set[str], set[str], int]]:
    """{module: (imported when it runs: top level, (imported inside a function), lines)}; imports under
    ``if TYPE_CHECKING:`` are for annotations only and left out."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        top, local = set(), set()
        for stmt in tree.body:
            if isinstance(stmt, ast.If) and getattr(stmt.test, "id", None) == "TYPE_CHECKING":
                continue
            if isinstance(stmt, ast.ImportFrom):
                top |= _targets(stmt)
            else:
                local |= _targets(stmt)
        out[name] = (top, local - top, len(path.read_text().splitlines()))
    return out


def cycle(g: dict[str, tuple[set[str], set[str], int]]) -> list[str] | None:
    """A cycle among the imports made when the code runs (top level and inside functions), or None."""
    edges = {m: {t for t in top | local if t in g and t != m} for m, (top, local, _) in g.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                return stack[stack.index(t) :] + [t]
            if t not in state and (found := visit(t)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


if __name__ == "__main__":
    g = graph()
    short = lambda names: ", ".join(sorted(n.removeprefix("vlmq_core.") for n in names))  # noqa: E731
    for name, (top, local, lines) in g.items():
        extra = f"  [inside functions: {short(local)}]" if local else ""
        print(f"{name.removeprefix('vlmq_core.'):<22} {lines:>4}  {short(top)}{extra}")
    print(f"{sum(v[2] for v in g.values())} lines in {len(g)} modules")
    found = cycle(g)
    print("cycle: " + " -> ".join(found) if found else "no cycle")
    sys.exit(1 if found else 0)
