"""The package's layout holds: small modules, no private names across subpackages, no import circles,
and every subpackage imports only what its docstring allows."""

import ast
import re
from pathlib import Path

import pytest

import icon2_lens

PKG = Path(icon2_lens.__file__).parent
MAX_LINES = 600
#: Top-level modules every subpackage may use (they import nothing of icon2_lens themselves, or only
#: each other).
LOW_LEVEL = {
    "_files",
    "_types",
    "_config",
    "_cache",
    "_network",
    "_shard",
    "figures",
    "pages",
    "testing",
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path, *, top_level_only: bool = False) -> list[tuple[str, str, int]]:
    """``(target module, imported name, line)`` for every icon2_lens import of a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("icon2_lens"):
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    out.append((full if full in MODULES else target, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            out += [
                (a.name, "", node.lineno) for a in node.names if a.name.startswith("icon2_lens")
            ]
    return out


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_module_is_too_long():
    long = {
        m: n
        for m, p in MODULES.items()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_private_name_is_imported_across_subpackages():
    bad = [
        f"{m}:{line} imports {n} from {t}"
        for m, p in MODULES.items()
        for t, n, line in _imports(m, p)
        if n.startswith("_") and not n.startswith("__") and _subpackage(t) != _subpackage(m)
    ]
    assert not bad, "\n".join(bad)


def test_no_import_circle():
    # every import counts, also those inside functions: a circle there is a layering error too
    graph = {
        m: {
            t for t, _, _ in _imports(m, p) if t in MODULES and t != m and not m.startswith(t + ".")
        }
        for m, p in MODULES.items()
    }
    graph = {
        m: {t for t in deps if not (MODULES[t].name == "__init__.py" and t == "icon2_lens")}
        for m, deps in graph.items()
    }
    state: dict[str, int] = {}
    circles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                circles.append(" -> ".join(stack[stack.index(t) :] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, "\n".join(circles)


def _allowed(subpackage: str) -> set[str]:
    doc = (
        ast.get_docstring(ast.parse((PKG / subpackage / "__init__.py").read_text(encoding="utf-8")))
        or ""
    )
    match = re.search(r"May import: (.+?)(?:\.|$)", " ".join(doc.split()))
    assert match, (
        f"icon2_lens.{subpackage}'s docstring does not say what it may import ('May import: ...')"
    )
    words = re.findall(r"[a-z_]+", match.group(1))
    if "every" in words:
        return {_subpackage(m) for m in MODULES}
    return {w for w in words if (PKG / w).is_dir()}


SUBPACKAGES = sorted(
    {_subpackage(m) for m, p in MODULES.items() if p.name == "__init__.py" and _subpackage(m)}
)


@pytest.mark.parametrize("subpackage", SUBPACKAGES)
def test_each_subpackage_documents_itself_and_imports_only_what_it_says(subpackage):
    doc = (
        ast.get_docstring(ast.parse((PKG / subpackage / "__init__.py").read_text(encoding="utf-8")))
        or ""
    )
    assert "Reads" in doc and "Writes" in doc, (
        f"icon2_lens.{subpackage}: say what it reads and writes"
    )
    allowed = _allowed(subpackage) | {subpackage}
    bad = []
    for m, p in MODULES.items():
        if _subpackage(m) != subpackage:
            continue
        for target, _, line in _imports(m, p):
            dep = _subpackage(target)
            if dep and dep not in allowed and dep not in LOW_LEVEL:
                bad.append(f"{m}:{line} imports {target}")
    assert not bad, f"icon2_lens.{subpackage} may import {sorted(allowed)} only:\n" + "\n".join(bad)


def test_low_level_modules_import_only_low_level_modules():
    for name in sorted(LOW_LEVEL - {"testing"}):
        deps = {_subpackage(t) for t, _, _ in _imports(f"icon2_lens.{name}", PKG / f"{name}.py")}
        assert deps <= LOW_LEVEL, f"icon2_lens.{name} imports {sorted(deps - LOW_LEVEL)}"


def test_top_level_namespace_is_small_and_lazy():
    import subprocess
    import sys

    assert 15 <= len(icon2_lens.__all__) <= 45
    for name in icon2_lens.__all__:
        assert getattr(icon2_lens, name) is not None
    code = "import sys, icon2_lens; print(sorted(m for m in ('torch', 'trl', 'transformer_lens') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", f"importing icon2_lens loads {out.strip()}"
