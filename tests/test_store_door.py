"""JetStream behind one door (issue 12 item 5): only the store package and the publisher it
drives import nats-py; everything else uses `router.store` and its errors.

router/embedded_nats.py runs the nats-server binary and talks to it over a plain socket
only, so it needs no exemption. Tests may import nats-py to inspect streams.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("router", "canonical", "wrappers", "legacy", "protocols")
ALLOWED = {"router/store", "router/publisher.py", "router/fast_ingest.py"}


def imports_nats(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "nats" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "nats":
            return True
    return False


def _allowed(rel: str) -> bool:
    return any(rel == a or rel.startswith(a + "/") for a in ALLOWED)


def test_only_the_store_imports_nats() -> None:
    offenders = sorted(
        rel
        for package in PACKAGES
        if (REPO / package).is_dir()
        for path in (REPO / package).rglob("*.py")
        if not _allowed(rel := str(path.relative_to(REPO))) and imports_nats(path)
    )
    assert offenders == []


def test_the_check_sees_both_import_forms(tmp_path: Path) -> None:
    for text in ("import nats\n", "import nats.js.errors as e\n", "from nats.js.kv import KeyValue\n",
                 "def f():\n    from nats.aio.msg import Msg\n"):
        (tmp_path / "m.py").write_text(text)
        assert imports_nats(tmp_path / "m.py"), text
    (tmp_path / "m.py").write_text("import natsort\nfrom .nats import x\nfrom router.store import Store\n")
    assert not imports_nats(tmp_path / "m.py")
