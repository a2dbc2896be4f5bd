"""The package's layout holds: no import cycles, and a core that does not know its backends.

Read from the source (``ast``) and by importing each module on its own in a fresh
interpreter's state: a cycle shows only when the cycle's module is the first one imported
(``core.config`` -> ``plugin`` -> ``core.config`` did, unseen while the plugin was always
imported first).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_memdb"

CORE_KNOWS_SQLITE = {
    "config": {"sqlite.pragmas", "sqlite.pages"},  # it checks memdb_pragmas, memdb_restore
}
"""What of the SQLite backend each core module still imports, and why; nothing else may."""


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _imported(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:  # ``from pytest_memdb.sqlite import pages``: a module
                module = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / module.replace(".", "/")).with_suffix(".py")
                found.add(module if is_module.exists() else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {
        name.removeprefix("pytest_memdb.") for name in found if name.startswith("pytest_memdb.")
    }


def test_every_module_imports_on_its_own() -> None:
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        f"for name in {_modules()!r}:\n"
        "    for loaded in [m for m in sys.modules if m.startswith('pytest_memdb')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "", out.stdout


def test_the_core_imports_no_backend_but_what_it_is_known_to() -> None:
    for path in sorted((PACKAGE / "core").glob("*.py")):
        backends = {
            name for name in _imported(path) if name.startswith(("sqlite", "postgresql", "plugin"))
        }
        allowed = CORE_KNOWS_SQLITE.get(path.stem, set())
        assert backends <= allowed, f"core/{path.name} imports {sorted(backends - allowed)}"
