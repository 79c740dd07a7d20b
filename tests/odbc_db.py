"""A materials-usage table on the PostgreSQL or MariaDB server of this machine, over ODBC.

Each `UsageTable` has a unique name and is dropped afterwards; `usage_table()` skips the
test with the reason when the server or its Debian ODBC driver is unavailable. Rows go in
as multi-row INSERTs so that 100,000 of them take a few seconds.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

pyodbc = pytest.importorskip("pyodbc")

SERVERS: dict[str, dict[str, str]] = {
    "postgresql": {
        "connection_string": "DRIVER={PostgreSQL Unicode};SERVER=127.0.0.1;PORT=5432;DATABASE=test;UID=postgres;",
        "serial": "BIGSERIAL PRIMARY KEY",
        "ts_type": "TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP",
        "conn_id": "pg_backend_pid()",
    },
    "mariadb": {
        "connection_string": "DRIVER={MariaDB Unicode};SERVER=127.0.0.1;PORT=3306;DATABASE=test;UID=root;PWD=;",
        "serial": "BIGINT AUTO_INCREMENT PRIMARY KEY",
        "ts_type": "DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)",
        "conn_id": "CONNECTION_ID()",
    },
}

# What a materials job exports; qty is text, as in many legacy schemas, so a bad value can exist.
COLUMNS = "item_id, qty, uom, unit_cost, dept, facility, used_at"
GOOD = "'ITM-1', '2', 'EA', 3.50, 'OR', 'NORTH', TIMESTAMP '2024-05-01 10:00:00'"


@dataclass
class UsageTable:
    kind: str
    table: str
    connection_string: str
    conn_id: str

    def connect(self, autocommit: bool = True) -> Any:
        return pyodbc.connect(self.connection_string, autocommit=autocommit, timeout=5)

    def execute(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            cur = conn.cursor()
            cur.execute(sql, *params)
            return [tuple(row) for row in cur.fetchall()] if cur.description else []

    def insert(self, count: int, qty: str = "2") -> None:
        """``count`` rows in one multi-row statement (one transaction).

        A VALUES list, not INSERT ... SELECT: MariaDB reserves auto-increment values for
        the latter in growing blocks and leaves gaps, each costing the poller one safety lag.
        """
        values = "(" + GOOD.replace("'2'", f"'{qty}'") + ")"
        self.execute(f"INSERT INTO {self.table} ({COLUMNS}) VALUES " + ",".join([values] * count))

    def insert_many(self, total: int, per_statement: int) -> None:
        for start in range(0, total, per_statement):
            self.insert(min(per_statement, total - start))

    def kill(self, conn_id: int) -> None:
        if self.kind == "postgresql":
            self.execute("SELECT pg_terminate_backend(?)", conn_id)
        else:
            self.execute(f"KILL {int(conn_id)}")

    def interface(self, name: str, **extra: Any) -> dict[str, Any]:
        """An odbc interface reading this table into supply usage events."""
        return {
            "name": name, "kind": "odbc", "connection_string": self.connection_string,
            "query": f"SELECT u.*, {self.conn_id} AS conn_id FROM {self.table} u",
            "table": self.table, "key_column": "id", "safety_lag_seconds": 0.5, "batch_size": 1000,
            "poll_seconds": 0.05, "query_timeout_seconds": 10, "reconnect_max_backoff_seconds": 1,
            "route": "modern", "mapping": usage_mapping(), **extra,
        }


def usage_mapping() -> dict[str, Any]:
    return {
        "target": "supply_usage", "facility_field": "facility", "timezone": "America/Chicago",
        "fields": [
            {"field": "item_id", "column": "item_id"},
            {"field": "quantity", "column": "qty"},
            {"field": "unit_of_measure", "column": "uom"},
            {"field": "unit_cost", "column": "unit_cost"},
            {"field": "department", "column": "dept"},
            {"field": "facility", "column": "facility"},
            {"field": "used_at", "column": "used_at", "type": "datetime"},
        ],
    }


@contextmanager
def usage_table(kind: str) -> Iterator[UsageTable]:
    spec = SERVERS[kind]
    db = UsageTable(kind, f"ficus_usage_{uuid.uuid4().hex[:12]}", spec["connection_string"], spec["conn_id"])
    try:
        db.execute("SELECT 1")
    except pyodbc.Error as exc:
        pytest.skip(f"{kind} unavailable through ODBC ({spec['connection_string'].split(';')[0]}): {exc.args}")
    db.execute(
        f"CREATE TABLE {db.table} (id {spec['serial']}, item_id VARCHAR(20), qty VARCHAR(20), uom VARCHAR(8), "
        f"unit_cost NUMERIC(10, 2), dept VARCHAR(20), facility VARCHAR(20), used_at TIMESTAMP NULL, "
        f"exported INT NOT NULL DEFAULT 0, ts {spec['ts_type']})"
    )
    try:
        yield db
    finally:
        db.execute(f"DROP TABLE {db.table}")
