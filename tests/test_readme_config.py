"""The README's configuration reference names every key the config accepts.

The keys are read from the pydantic model tree itself, so a new key without documentation
fails here; the example config's keys are a subset of them (it is validated by `ficus check`).
"""

from __future__ import annotations

import re
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from router.config import FicusConfig

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    """Every pydantic model inside a type annotation (unions, lists, dicts, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in typing.get_args(annotation):
        yield from _models(arg)


def config_keys() -> dict[str, str]:
    """Key name -> the model that has it, over the whole tree from FicusConfig."""
    keys: dict[str, str] = {}
    todo: list[type[BaseModel]] = [FicusConfig]
    seen: set[type[BaseModel]] = set()
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            keys.setdefault(field.alias or name, model.__name__)
            todo.extend(_models(field.annotation))
    return keys


def documented(key: str) -> bool:
    """The key appears in the README inside backticks (alone or in a key path) or set in a TOML example."""
    k = re.escape(key)
    inline = rf"`[^`\n]*(?<![\w-]){k}(?![\w-])[^`\n]*`"
    toml = rf"(^\s*|[{{,]\s*){k}\s*="
    return re.search(inline, README) is not None or re.search(toml, README, re.M) is not None


def example_keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from example_keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from example_keys(item)


def test_every_config_key_is_in_the_readme() -> None:
    missing = sorted(f"{key} ({model})" for key, model in config_keys().items() if not documented(key))
    assert not missing, f"config keys missing from README.md: {missing}"


def test_every_key_of_the_example_config_is_a_config_key_in_the_readme() -> None:
    example = tomllib.loads((REPO / "router/examples/ficus.toml").read_text(encoding="utf-8"))
    keys = config_keys()
    unknown = sorted({k for k in example_keys(example) if k not in keys})
    assert not unknown, f"example keys the config models do not define: {unknown}"
    assert all(documented(k) for k in example_keys(example))


def test_the_readme_names_every_debian_package_make_installs() -> None:
    bootstrap = (REPO / "scripts/bootstrap.sh").read_text(encoding="utf-8")
    match = re.search(r"^DEB_PKGS=\(([^)]*)\)", bootstrap, re.M)
    assert match is not None
    installs = README[README.index("What `make` installs"):]
    installs = installs[: installs.index("\n\n")]
    missing = [pkg for pkg in match.group(1).split() if f"`{pkg}`" not in installs]
    assert not missing, f"README's 'What make installs' omits {missing}"


def test_the_readme_gives_one_duration_for_make_bench() -> None:
    durations = set(re.findall(r"`make bench` \(about (\d+) minutes", README))
    assert len(durations) == 1, durations
