"""The dependency direction in docs/architecture.md, checked: each part imports only the parts below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Each package and the project packages it may import (itself always allowed).
ALLOWED = {
    "config": set(),
    "scanner": {"core"},
    "core": {"config"},
    "chat": {"core", "config"},
    "attachments": {"chat", "core", "config"},
    "workers": {"attachments", "chat", "core", "config", "scanner"},
    "inbox": {"chat", "core", "config"},
    "messenger": {"attachments", "chat", "core", "config", "inbox", "scanner", "workers"},
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


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_attachments_use_only_the_chat_services_public_interface() -> None:
    reaching_in = {
        str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path) if m.startswith("chat."))
        for path in (ROOT / "attachments").rglob("*.py")
    }
    assert {file: modules for file, modules in reaching_in.items() if modules} == {}


# The store adapters, and the module that opens the database, are the only places that know MongoDB.
DATABASE_DRIVERS = ("pymongo", "mongomock", "mongomock_motor", "bson")


def test_no_mongodb_outside_the_store_adapters() -> None:
    offenders = []
    for package in ALLOWED:
        for path in (ROOT / package).rglob("*.py"):
            if path.name == "mongo.py" or path.relative_to(ROOT).as_posix() == "messenger/database.py":
                continue
            if any(m.split(".")[0] in DATABASE_DRIVERS for m in imported_modules(path)):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_no_sqlite_outside_the_store_adapters() -> None:
    offenders = []
    for package in ALLOWED:
        for path in (ROOT / package).rglob("*.py"):
            if path.name == "sqlite.py" or path.relative_to(ROOT).as_posix() in ("messenger/database.py",):
                continue
            if "sqlite3" in {m.split(".")[0] for m in imported_modules(path)}:
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
