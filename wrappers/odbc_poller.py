"""ODBC poller: read new rows of a legacy database in batches, behind a watermark.

The poller holds no durable state. The caller passes a :class:`Checkpoint` to
:meth:`OdbcPoller.next_batch`, stores the batch's events, persists
``batch.checkpoint_after`` and only then asks for the next batch with it. A batch that is
not acknowledged is simply read again from the old checkpoint, so a crash or a reconnect
can neither skip nor repeat rows (rows are re-read only if their checkpoint was not
stored). The query contract and the safety lag are described in :mod:`wrappers.watermark`.

pyodbc is blocking and its connections are not safe for concurrent use: every driver
call of one poller runs on that poller's own single-thread executor, bounded from outside
by ``asyncio.wait_for``. On a timeout the statement is cancelled (``SQLCancel``, the one
ODBC call meant for another thread), the connection is abandoned to its old thread to
close, and a fresh thread and connection are used next time. At most ``batch_size`` rows
are fetched per statement (``fetchmany``, plus ``OFFSET 0 ROWS FETCH NEXT n ROWS ONLY``
by default) so memory stays flat whatever the backlog. With ``limit_clause="none"`` the
driver may still buffer the whole result: psqlodbc does unless the connection string
says ``UseDeclareFetch=1;Fetch=<batch_size>`` (measured at 200k rows: 13k rows/s and
120 MiB RSS without it, 230k rows/s and 33 MiB with it or with OFFSET/FETCH).

Nothing here logs or raises row data: errors carry the SQLSTATE and the driver's
message, except for data errors (SQLSTATE class 22) whose messages may quote values.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Literal, Protocol, Self, TypeVar

import pyodbc

from protocols.backoff import Backoff
from wrappers.watermark import (
    Checkpoint,
    GapTracker,
    Key,
    LimitClause,
    Mode,
    check_identifier,
    normalise_key,
    probe_sql,
    repeats_checkpoint,
    select_incrementing,
    select_timestamp,
    timestamp_text,
)

logger = logging.getLogger("ficus.odbc")

T = TypeVar("T")

_FIRST_BACKOFF = 0.5
_GIVE_UP_CLASSES = ("42", "22", "21", "0A", "IM")
"""SQLSTATE classes meaning the statement or the configuration is wrong: retrying won't help."""


@dataclass(frozen=True, slots=True)
class OdbcSettings:
    """One polled query. ``connection_string`` may hold a password: never log it."""

    connection_string: str
    query: str
    mode: Mode
    key_column: str
    timestamp_column: str | None = None
    safety_lag_seconds: float = 5.0
    batch_size: int = 1000
    poll_seconds: float = 2.0
    query_timeout: float = 30.0
    reconnect_max_backoff: float = 60.0
    mark_statement: str | None = None
    """E.g. ``UPDATE usage SET exported = 1 WHERE id = ?``, run per key by mark_exported."""
    limit_clause: LimitClause = "offset-fetch"
    """"none" for databases without SQL:2008 OFFSET/FETCH (MySQL, SQL Server 2008)."""
    now_query: str = "SELECT CURRENT_TIMESTAMP"
    """The database's clock, for timestamp+key ("SELECT CURRENT_TIMESTAMP FROM DUAL" on Oracle)."""
    timestamp_binding: Literal["auto", "datetime", "text"] = "auto"
    """How timestamp watermarks are bound: "text" (``YYYY-MM-DD HH:MM:SS.ffffff``) for drivers
    that drop fractional seconds of datetime parameters; "auto" picks text for MariaDB/MySQL."""

    def __post_init__(self) -> None:
        if self.mode not in ("incrementing", "timestamp+key"):
            raise ValueError(f"unknown mode {self.mode!r}")
        check_identifier(self.key_column)
        if self.mode == "timestamp+key":
            if self.timestamp_column is None:
                raise ValueError("mode timestamp+key needs timestamp_column")
            check_identifier(self.timestamp_column)
        if self.batch_size < 1 or self.query_timeout <= 0 or self.safety_lag_seconds < 0:
            raise ValueError("batch_size and query_timeout must be positive, safety_lag_seconds >= 0")


class OdbcError(Exception):
    """Root of the poller's errors: ``source`` names the poller, ``reason`` says what failed."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class DatabaseUnavailable(OdbcError, ConnectionError):
    """The database could not be reached or the connection broke: retried with backoff."""


class QueryError(OdbcError, ValueError):
    """The query, a column or the driver configuration is wrong: polling gives up."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Rows in watermark order; ``keys[i]`` is the key of ``rows[i]``.

    Values keep pyodbc's types (int, Decimal, str, date, datetime, None); column names
    are lowercased.
    """

    rows: list[dict[str, object]]
    keys: list[Key]
    checkpoint_after: Checkpoint


@dataclass(frozen=True, slots=True)
class PollerStatus:
    """For the API: never holds row data."""

    connected: bool
    last_error: str | None
    """The most recent error (SQLSTATE and driver message), kept after recovery."""
    reconnects: int
    last_poll_at: datetime | None


class BatchSource(Protocol):
    """A polled source of row batches, as the router uses it.

    ``next_batch(checkpoint)`` returns the next rows after ``checkpoint`` or None when
    nothing is ready; it waits through outages (reconnecting with backoff) and raises
    :class:`QueryError` only. The caller stores the events, then persists
    ``checkpoint_after``, then calls again with it. ``mark_exported(batch)`` is optional
    write-back, called after the batch is stored; it is idempotent.
    """

    async def next_batch(self, checkpoint: Checkpoint) -> Batch | None:
        """The next batch after ``checkpoint``, or None when nothing is ready yet."""
        ...

    async def mark_exported(self, batch: Batch) -> None:
        """Run the configured mark statement for every key of ``batch``."""
        ...


class _Session:
    """One connection and the one thread allowed to use it. Methods run on that thread."""

    def __init__(self, settings: OdbcSettings) -> None:
        self.settings = settings
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ficus-odbc")
        self.conn: pyodbc.Connection | None = None
        self.cursor: pyodbc.Cursor | None = None  # the running statement, for cancel()
        self.abandoned = False

    def open(self) -> tuple[list[str], str]:
        """Connect; return the query's output columns (lowercased) and the DBMS name."""
        login_timeout = max(1, round(self.settings.query_timeout))
        self.conn = pyodbc.connect(self.settings.connection_string, autocommit=True, timeout=login_timeout)
        # Not every driver supports a query timeout (psqlodbc refuses it): wait_for is the bound.
        with contextlib.suppress(pyodbc.Error):
            self.conn.timeout = login_timeout
        dbms = str(self.conn.getinfo(pyodbc.SQL_DBMS_NAME))
        return self._run(probe_sql(self.settings.query), [], 0)[0], dbms

    def fetch(self, sql: str, params: list[object], limit: int) -> list[dict[str, object]]:
        names, rows = self._run(sql, params, limit)
        return [dict(zip(names, row, strict=True)) for row in rows]

    def now(self) -> datetime:
        _, rows = self._run(self.settings.now_query, [], 1)
        value = rows[0][0] if rows else None
        if not isinstance(value, datetime):
            raise TypeError("now_query did not return a timestamp")
        return value

    def mark(self, statement: str, keys: list[Key]) -> None:
        """Run ``statement`` once per key in one transaction."""
        assert self.conn is not None
        self.conn.autocommit = False
        try:
            with self.conn.cursor() as cur:
                cur.executemany(statement, [(key,) for key in keys])
            self.conn.commit()
        except BaseException:
            with contextlib.suppress(pyodbc.Error):
                self.conn.rollback()
            raise
        finally:
            with contextlib.suppress(pyodbc.Error):
                self.conn.autocommit = True

    def _run(self, sql: str, params: list[object], limit: int) -> tuple[list[str], list[tuple[object, ...]]]:
        assert self.conn is not None
        cur = self.conn.cursor()
        self.cursor = cur
        try:
            cur.execute(sql, *params)
            names = [str(column[0]).lower() for column in cur.description]
            rows = [tuple(row) for row in cur.fetchmany(limit)] if limit else []
            return names, rows
        finally:
            self.cursor = None
            with contextlib.suppress(pyodbc.Error):
                cur.close()

    def close_connection(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(pyodbc.Error):
                conn.close()

    def abandon(self) -> None:
        """From the event loop: cancel any running statement, close on the old thread.

        Idempotent: a failed connect is abandoned where the error is translated and again by
        the caller that gives the session up; a second submit to a shut-down executor raises.
        """
        if self.abandoned:
            return
        self.abandoned = True
        cursor = self.cursor
        if cursor is not None:
            with contextlib.suppress(pyodbc.Error):
                cursor.cancel()
        self.executor.submit(self.close_connection)
        self.executor.shutdown(wait=False)


class OdbcPoller:
    """Polls one query through ODBC; use as an async context manager or call close()."""

    def __init__(self, name: str, settings: OdbcSettings) -> None:
        """Configure the poller; the connection is opened on the first call."""
        self.name = name
        self.settings = settings
        self._session: _Session | None = None
        self._ts_as_text = settings.timestamp_binding == "text"
        self._gaps = GapTracker()
        cap = settings.reconnect_max_backoff
        self._backoff = Backoff(min(_FIRST_BACKOFF, cap), cap)  # full jitter: pollers of one database spread out
        self._connects = 0
        self._last_error: str | None = None
        self._last_poll_at: datetime | None = None

    @property
    def status(self) -> PollerStatus:
        """Connection state, last error (no row data), reconnect count, last good poll."""
        return PollerStatus(
            connected=self._session is not None,
            last_error=self._last_error,
            reconnects=max(0, self._connects - 1),
            last_poll_at=self._last_poll_at,
        )

    async def next_batch(self, checkpoint: Checkpoint) -> Batch | None:
        """Up to ``batch_size`` rows after ``checkpoint``, or None when none is ready.

        Waits through lost connections, reconnecting with exponential backoff (full jitter) up to
        ``reconnect_max_backoff``; raises :class:`QueryError` when the query or a
        column is wrong. Cancelling the call is safe: nothing has moved.
        """
        return await self._retrying(lambda: self._poll(checkpoint))

    async def wait_batch(self, checkpoint: Checkpoint) -> Batch:
        """Like :meth:`next_batch` but polls every ``poll_seconds`` until a batch is ready."""
        while True:
            batch = await self.next_batch(checkpoint)
            if batch is not None:
                return batch
            await asyncio.sleep(self.settings.poll_seconds)

    async def mark_exported(self, batch: Batch) -> None:
        """Run ``mark_statement`` for every key of ``batch`` in one transaction (retried)."""
        statement = self.settings.mark_statement
        if statement is None:
            raise QueryError(self.name, "mark_exported called but no mark_statement is configured")
        if batch.keys:
            await self._retrying(lambda: self._mark(statement, batch.keys))

    async def close(self) -> None:
        """Close the connection and its thread."""
        session, self._session = self._session, None
        if session is None:
            return
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(session.executor, session.close_connection),
                self.settings.query_timeout,
            )
        except TimeoutError:
            session.abandon()
        session.executor.shutdown(wait=False)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        while True:
            try:
                result = await attempt()
            except DatabaseUnavailable as exc:
                delay = self._backoff.next_delay()
                logger.warning("odbc %s: %s; retrying in %.1fs", self.name, exc.reason, delay)
                await asyncio.sleep(delay)
                continue
            self._backoff.reset()
            return result

    async def _poll(self, checkpoint: Checkpoint) -> Batch | None:
        session = await self._ready()
        s = self.settings
        if s.mode == "incrementing":
            sql, params = select_incrementing(s.query, s.key_column, checkpoint, s.batch_size, s.limit_clause)
        else:
            assert s.timestamp_column is not None
            upper = await self._call(session, session.now) - timedelta(seconds=s.safety_lag_seconds)
            sql, params = select_timestamp(
                s.query,
                s.key_column,
                s.timestamp_column,
                checkpoint,
                upper,
                s.batch_size,
                s.limit_clause,
                self._ts_as_text,
            )
        rows = await self._call(session, session.fetch, sql, params, s.batch_size)
        self._last_poll_at = datetime.now(UTC)
        return self._batch(rows, checkpoint)

    def _batch(self, rows: list[dict[str, object]], checkpoint: Checkpoint) -> Batch | None:
        s = self.settings
        try:
            keys = [normalise_key(row[s.key_column.lower()]) for row in rows]
            self._check_progress(keys, rows, checkpoint)
            if s.mode == "incrementing":
                count = self._gaps.admit(keys, checkpoint.last_key, time.monotonic(), s.safety_lag_seconds)
                rows, keys = rows[:count], keys[:count]
        except TypeError as exc:
            raise QueryError(self.name, f"column {s.key_column!r}: {exc}") from None
        if not rows:
            return None
        last_ts = checkpoint.last_ts
        if s.timestamp_column is not None and s.mode == "timestamp+key":
            try:
                last_ts = timestamp_text(rows[-1][s.timestamp_column.lower()])
            except TypeError as exc:
                raise QueryError(self.name, f"column {s.timestamp_column!r}: {exc}") from None
        return Batch(rows=rows, keys=keys, checkpoint_after=Checkpoint(last_key=keys[-1], last_ts=last_ts))

    def _check_progress(self, keys: list[Key], rows: list[dict[str, object]], checkpoint: Checkpoint) -> None:
        """Refuse to go round in circles when the database returns the checkpoint's rows again."""
        if not rows:
            return
        ts_column = self.settings.timestamp_column if self.settings.mode == "timestamp+key" else None
        ts = rows[0][ts_column.lower()] if ts_column else None
        if repeats_checkpoint(keys[0], ts, checkpoint):
            raise QueryError(
                self.name,
                "rows at or before the checkpoint came back: a watermark parameter lost precision "
                "on its way to the server (try timestamp_binding='text')",
            )

    async def _mark(self, statement: str, keys: list[Key]) -> None:
        session = await self._ready()
        await self._call(session, session.mark, statement, keys)

    async def _ready(self) -> _Session:
        """The open session, connecting (and checking the query's columns) if needed."""
        if self._session is not None:
            return self._session
        session = _Session(self.settings)
        try:
            columns, dbms = await self._call(session, session.open)
            self._check_columns(columns)
        except OdbcError:
            session.abandon()
            raise
        self._session = session
        if self.settings.timestamp_binding == "auto":
            self._ts_as_text = dbms.lower().startswith(("mariadb", "mysql"))
        self._connects += 1
        logger.info("odbc %s: connected (connection %d)", self.name, self._connects)
        return session

    def _check_columns(self, columns: list[str]) -> None:
        wanted = [self.settings.key_column, self.settings.timestamp_column]
        for column in filter(None, wanted):
            if column.lower() not in columns:
                raise QueryError(self.name, f"column {column!r} is not among the query's output columns {columns}")

    async def _call(self, session: _Session, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn`` on the session's thread within query_timeout; translate driver errors."""
        future = asyncio.get_running_loop().run_in_executor(session.executor, fn, *args)
        try:
            return await asyncio.wait_for(future, self.settings.query_timeout)
        except TimeoutError:
            raise self._lost(session, f"no answer within {self.settings.query_timeout:g}s") from None
        except pyodbc.Error as exc:
            raise self._translate(session, exc) from exc
        except TypeError as exc:
            raise QueryError(self.name, str(exc)) from None

    def _translate(self, session: _Session, exc: pyodbc.Error) -> OdbcError:
        state = str(exc.args[0]) if exc.args else "?????"
        message = str(exc.args[1]) if len(exc.args) > 1 else ""
        if state.startswith("22"):
            message = "data error (message withheld: it may quote row values)"
        reason = f"SQLSTATE {state}: {message.strip()[:300]}"
        gives_up = isinstance(exc, pyodbc.ProgrammingError | pyodbc.DataError | pyodbc.NotSupportedError)
        if gives_up or state.startswith(_GIVE_UP_CLASSES) or "Can't open lib" in message:
            self._last_error = reason
            return QueryError(self.name, reason)
        return self._lost(session, reason)

    def _lost(self, session: _Session, reason: str) -> DatabaseUnavailable:
        """Drop the session (its thread may be stuck in the driver) and record why."""
        if self._session is session:
            self._session = None
        session.abandon()
        self._last_error = reason
        return DatabaseUnavailable(self.name, reason)
