"""Payer enrichment of 835 remittances: ERP customer on every event of a transaction, and an
unmapped payer dead-letters the whole transaction with its context."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _config(tmp_path: Path, payers: str) -> Path:
    tables = tmp_path / "tables"
    shutil.copytree(REPO / "fixtures/reference", tables)
    (tables / "payers.csv").write_text(payers)
    conf = tmp_path / "ficus.toml"
    conf.write_text("""
[reference]
payers = "tables/payers.csv"
[[interfaces]]
name = "payer-835"
kind = "hl7-mllp"
listen = "127.0.0.1:0"
route = "modern"
""")
    return conf


def _translate(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", "translate", "--format", "x12-835", "-c", str(conf),
         "--interface", "payer-835", str(REPO / "fixtures/x12/balanced_2claims_plb.835")],
        capture_output=True, text=True, timeout=60, cwd=REPO)


def _payer_id() -> str:
    result = subprocess.run([sys.executable, "-m", "router.cli", "translate",
                             str(REPO / "fixtures/x12/balanced_2claims_plb.835")],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    remit = next(json.loads(x) for x in result.stdout.splitlines() if "remittance.received" in x)
    return str(remit["data"]["payer_id"])


def test_payer_enrichment_and_unmapped_payer(tmp_path: Path) -> None:
    payer = _payer_id()
    mapped = _translate(_config(tmp_path / "a", f"payer_id,erp_customer_id,payer_group\n{payer},C-1,COMMERCIAL\n"))
    assert mapped.returncode == 0, mapped.stderr
    events = [json.loads(x) for x in mapped.stdout.splitlines()]
    assert events and all(e["data"]["erp_payer"]["erp_customer_id"] == "C-1" for e in events)

    unmapped = _translate(_config(tmp_path / "b", "payer_id,erp_customer_id,payer_group\nOTHER,C-2,X\n"))
    assert unmapped.returncode == 1 and unmapped.stdout == "", "nothing of the transaction is published"
    (letter,) = [json.loads(x) for x in unmapped.stderr.splitlines()]
    assert letter["reason"].endswith("unmapped payer: not in reference table payers")
    assert letter["amount"] and letter["st_control"] == "0001"
