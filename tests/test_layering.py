"""Interfaces belong to the consumer: wrappers, legacy and canonical never import router or
each other; only router assembles them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("wrappers", "legacy", "canonical", "router")


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


@pytest.mark.parametrize("package", ["wrappers", "legacy", "canonical"])
def test_leaf_packages_import_only_themselves(package: str) -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) - {package})
        for path in (REPO / package).rglob("*.py")
        if imported_packages(path) - {package}
    }
    assert offenders == {}
