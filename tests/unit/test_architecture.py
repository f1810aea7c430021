"""The dependency direction in docs/architecture.md, checked: each part imports only the parts below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Each package and the project packages it may import (itself always allowed).
ALLOWED = {
    "config": set(),
    "scanner": set(),
    "core": {"config"},
    "chat": {"core", "config"},
    "attachments": {"chat", "core", "config"},
    "workers": {"attachments", "chat", "core", "config", "scanner"},
    "messenger": {"attachments", "chat", "core", "config", "scanner", "workers"},
}


def project_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_part_imports_only_what_lies_below_it(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(project_imports(path) - ALLOWED[package] - {package})
        for path in (ROOT / package).rglob("*.py")
    }
    assert {file: bad for file, bad in offenders.items() if bad} == {}
