"""The layering rule, from the bottom up:

* ``protocols`` (MLLP codec, SFTP session, backoff) imports none of the other packages;
* ``wrappers`` (intake) and ``legacy`` (legacy delivery) may import ``protocols``, never each
  other, nor ``canonical`` or ``router``;
* ``canonical`` (translation) imports neither ``wrappers`` nor ``legacy`` nor ``router``;
* ``router`` assembles them all; inside it, each kind's input module (``*_pipeline.py``) hands
  its units to the one stage (``router/stage.py``) and imports no other input, and the stage
  imports no input, wrapper or legacy delivery.

Interfaces belong to the consumer: protocol code needed on both sides lives in ``protocols``
instead of being copied (issue 12 item 3).
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("protocols", "wrappers", "legacy", "canonical", "router")
MAY_IMPORT: dict[str, set[str]] = {
    "protocols": set(),
    "wrappers": {"protocols"},
    "legacy": {"protocols"},
    "canonical": {"protocols"},
    "router": set(PACKAGES),
}


def imported_packages(path: Path) -> set[str]:
    """The project packages ``path`` imports (absolute imports; relative ones stay inside)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


def offenders(package: str) -> dict[str, list[str]]:
    """File -> the packages it imports against the rule."""
    allowed = MAY_IMPORT[package] | {package}
    return {
        str(path.relative_to(REPO)): sorted(imported_packages(path) - allowed)
        for path in sorted((REPO / package).rglob("*.py"))
        if imported_packages(path) - allowed
    }


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != "router"])
def test_each_package_imports_only_what_lies_below_it(package: str) -> None:
    assert offenders(package) == {}


def test_the_rule_covers_every_installed_package() -> None:
    # A package added to the distribution without a place in the rule fails here.
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {pattern.rstrip("*") for pattern in include} == set(PACKAGES) == set(MAY_IMPORT)
    assert set(project["tool"]["mypy"]["packages"]) == set(PACKAGES)


def test_protocols_is_used_by_both_sides() -> None:
    # The point of the package: the intake and the legacy side share it instead of copying.
    users = {
        package
        for package in ("wrappers", "legacy")
        for path in (REPO / package).rglob("*.py")
        if "protocols" in imported_packages(path)
    }
    assert users == {"wrappers", "legacy"}


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom legacy.mllp_sender import MllpSender\nimport router.store\nfrom . import x\n")
    assert imported_packages(module) == {"legacy", "router"}


# Inside router: the inputs sit on the one stage (router/stage.py), never on each other.
INPUTS = ("router/mllp_pipeline.py", "router/file_pipeline.py", "router/odbc_pipeline.py")


def imported_modules(path: Path) -> set[str]:
    """Every absolute module ``path`` imports, as dotted names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_each_input_uses_the_stage_and_no_other_input() -> None:
    inputs = {p.removesuffix(".py").replace("/", ".") for p in INPUTS}
    for path in INPUTS:
        modules = imported_modules(REPO / path)
        assert "router.stage" in modules, f"{path} does not hand its units to the stage"
        assert not modules & (inputs - {path.removesuffix('.py').replace('/', '.')}), f"{path} imports another input"
    # The stage knows no kind: it may not import an input, a wrapper or a legacy delivery.
    stage = imported_modules(REPO / "router/stage.py")
    assert not {m for m in stage if m in inputs or m.split(".")[0] in ("wrappers", "legacy")}, stage
