"""The shape of the package: no two modules import each other."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(SRC).with_suffix("").parts)
    return name.removesuffix(".__init__")


def dequant_imports() -> dict[str, set[str]]:
    """Every dequant module and the dequant modules it imports, at the top or inside a function."""
    modules = {_module_name(p): p for p in (SRC / "dequant").rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("dequant"):
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def test_no_two_modules_import_each_other() -> None:
    graph = dequant_imports()
    assert "dequant.models.module" in graph["dequant.export"]  # the scan sees imports inside functions
    # A package's __init__ may re-export from its own modules.
    pairs = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if a in graph[b]
                    and not (a.startswith(b + ".") or b.startswith(a + "."))})
    assert pairs == []


# Channel slices of the 7-channel hint written as numbers; color/hint.py's COLOR, CUE, COLOR_IND and TEX_IND say them.
_HINT_SLICE = re.compile(r"hint\w*\[[^\]]*\b(0:3|3:5|5:6|6:7)\b")


def test_the_hint_layout_is_read_from_hint_constants() -> None:
    offenders = []
    for path in sorted((SRC / "dequant").rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel == "dequant/color/hint.py":
            continue
        offenders += [f"{rel}:{i}: {line.strip()}" for i, line in enumerate(path.read_text().splitlines(), 1)
                      if _HINT_SLICE.search(line)]
    assert offenders == []
