"""The database server itself going away and coming back (not just one connection killed):
a PostgreSQL cluster of the test's own, stopped and started again, while Ficus polls it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from router import names
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, make_config, stream_count, wait_for
from tests.odbc_db import UsageTable, pyodbc
from tests.test_odbc_service import expected_keys, record_keys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _pg_bin() -> Path | None:
    roots = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    return roots[-1] if roots and (roots[-1] / "pg_ctl").exists() else None


class OwnPostgres:
    """A throwaway cluster run as the `postgres` user on a free loopback port."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.base = Path(tempfile.mkdtemp(prefix="ficus-pg-", dir="/tmp"))
        self.data = self.base / "data"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        shutil.chown(self.base, "postgres")
        self.base.chmod(0o755)
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "log"), "-w",
                          "-o", f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1", "start")

    def stop(self) -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    @property
    def connection_string(self) -> str:
        return f"DRIVER={{PostgreSQL Unicode}};SERVER=127.0.0.1;PORT={self.port};DATABASE=postgres;UID=postgres;"


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    bin_dir = _pg_bin()
    if bin_dir is None or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL server binaries (/usr/lib/postgresql/*/bin) or runuser not available")
    pg = OwnPostgres(bin_dir)
    try:
        pg.init()
        pg.start()
    except (subprocess.CalledProcessError, KeyError, LookupError) as exc:
        pytest.skip(f"could not start a PostgreSQL cluster of our own: {exc}")
    try:
        yield pg
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped by the test
            pg.stop()
        shutil.rmtree(pg.base, ignore_errors=True)


async def test_database_server_down_and_back_resumes_from_the_checkpoint(
    own_postgres: OwnPostgres, nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    db = UsageTable("postgresql", "ficus_usage_outage", own_postgres.connection_string, "pg_backend_pid()")
    try:
        db.execute("SELECT 1")
    except pyodbc.Error as exc:
        pytest.skip(f"PostgreSQL ODBC driver unavailable: {exc.args}")
    db.execute(
        f"CREATE TABLE {db.table} (id BIGSERIAL PRIMARY KEY, item_id VARCHAR(20), qty VARCHAR(20), uom VARCHAR(8), "
        "unit_cost NUMERIC(10, 2), dept VARCHAR(20), facility VARCHAR(20), used_at TIMESTAMP NULL, "
        "exported INT NOT NULL DEFAULT 0, ts TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP)"
    )
    cfg = make_config(nats_server.url, [db.interface("usage", batch_size=100)], state_dir=str(tmp_path))
    async with service_factory(cfg) as svc:
        running = svc.interfaces["usage"]
        db.insert(500)
        await wait_for(lambda: running.stats.published == 500, timeout=30)

        await asyncio.to_thread(own_postgres.stop)
        await wait_for(lambda: running.details()["poller"]["connected"] is False, timeout=30)
        await asyncio.sleep(1.5)  # several failed reconnects with backoff
        assert running.stats.published == 500

        await asyncio.to_thread(own_postgres.start)
        db.insert(500)
        await wait_for(lambda: running.stats.published == 1000, timeout=60)
        details = running.details()
        assert details["poller"]["reconnects"] >= 1
    keys, ids = await record_keys(nats_server.url)
    assert keys == expected_keys(db, range(1, 1001)), "every row once, in order, none lost across the outage"
    assert len(ids) == 1000
    assert await stream_count(nats_server.url, names.STREAM_DLQ) == 0
