"""Connections and session set-up for the three kinds of sessions austasync opens.

Every connection, on either side (copy reads, verifier, repair, cutover, preflight, the binlog library's dump
and control connections, the target watcher), is pinned when it connects, in :meth:`DriverConnection.connect`
(and again on a reconnect): ``sql_mode`` = :data:`SESSION_SQL_MODE`, ``time_zone='+00:00'`` and its character
set, each read back and checked. Nothing depends on a server's global settings: under a global
``NO_BACKSLASH_ESCAPES``, ``ANSI_QUOTES``, ``PAD_CHAR_TO_FULL_LENGTH`` or ``ORACLE`` a session that inherited
them would read key literals, identifiers, CHAR values and ``SHOW CREATE TABLE`` differently on the two sides.
On top of that:

- snapshot sessions also pin REPEATABLE READ and check it, because under READ COMMITTED
  ``START TRANSACTION WITH CONSISTENT SNAPSHOT`` silently gives no snapshot;
- target write sessions run READ COMMITTED without foreign key checks, checked (docs/DESIGN.md#rule-sessions);
- raw sessions (bulk copy) receive every value as the bytes the server rendered, with no driver conversion.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Sequence
from typing import Any, TypeAlias

import pymysql
import pymysql.connections
import pymysql.cursors

from austasync.config import DatabaseConfig
from austasync.errors import SetupError, UnavailableError
from austasync.position import Position

# every session's character_set_client/connection: a literal in it needs no introducer
CONNECTION_CHARSET = "utf8mb4"
Connection: TypeAlias = "pymysql.connections.Connection[Any]"  # generic only in the stubs

# every session's sql_mode, source and target alike (docs/DESIGN.md#rule-sessions): id 0 stays 0, zero and invalid
# dates the source accepted are accepted (and compare the same on both sides in key bounds), no escape, quoting,
# padding, empty-string or dialect mode
SESSION_SQL_MODE = "NO_AUTO_VALUE_ON_ZERO,STRICT_ALL_TABLES,ALLOW_INVALID_DATES,NO_ENGINE_SUBSTITUTION"
SESSION_TIME_ZONE = "+00:00"
ER_LOCK_DEADLOCK = 1213
ER_LOCK_WAIT_TIMEOUT = 1205
ER_DUP_ENTRY = 1062
ER_ACCESS_DENIED = 1045
# 1698: access denied without a password (MariaDB unix_socket users)
ACCESS_DENIED = {ER_ACCESS_DENIED, 1698}
# client-side codes: can't connect, server gone, lost connection
CONNECTION_LOST = {2003, 2006, 2013, 2055}


def connect(cfg: DatabaseConfig, role: str, *, raw: bool = False, autocommit: bool = True, **extra: Any) -> Connection:
    """Open a connection; ``role`` names it in errors ("source", "target"). Never mentions the password."""
    kwargs: dict[str, Any] = {
        "host": cfg.host,
        "port": cfg.port,
        "user": cfg.user,
        "password": cfg.password.reveal(),
        "charset": CONNECTION_CHARSET,
        "autocommit": autocommit,
        "connect_timeout": cfg.connect_timeout_seconds,
        "binary_prefix": True,
        "local_infile": True,  # served from memory only (DriverConnection): the copy's LOAD DATA chunks
        **tls_options(cfg),
    }
    if raw:
        # no decoders: every value arrives as the server's bytes (None for NULL) and is written back as such
        kwargs["conv"] = {}
        kwargs["use_unicode"] = False
    kwargs.update(extra)
    try:
        return _located(DriverConnection(**kwargs), f"{role} {cfg.host}:{cfg.port}")
    except pymysql.err.OperationalError as exc:
        denied = bool(exc.args) and exc.args[0] in ACCESS_DENIED
        # a rotated password: fetch it again from its source (file, credential, AWS) and try once more
        if not (denied and cfg.password.refresh()):
            raise UnavailableError(
                f"cannot connect to the {role} ({cfg.describe()}): {_message(exc)}{_tls_hint(cfg, denied)}",
                **_where(cfg, role, exc),
            ) from None
    kwargs["password"] = cfg.password.reveal()
    try:
        return _located(DriverConnection(**kwargs), f"{role} {cfg.host}:{cfg.port}")
    except pymysql.err.OperationalError as exc:
        raise UnavailableError(
            f"cannot connect to the {role} ({cfg.describe()}) with the password fetched again from"
            f" {cfg.password.source}: {_message(exc)}",
            **_where(cfg, role, exc),
        ) from None


def _where(cfg: DatabaseConfig, role: str, exc: BaseException) -> dict[str, str]:
    """The structured part of a refused connection (:class:`UnavailableError`), for the reconnect log."""
    return {"server": role, "address": f"{cfg.host}:{cfg.port}", "operation": "connect", "detail": _message(exc)}


def _tls_hint(cfg: DatabaseConfig, denied: bool) -> str:
    # MariaDB answers an unencrypted connection to a server with require_secure_transport by "access denied"
    if denied and cfg.tls == "disabled":
        return ". If the server requires encrypted connections (require_secure_transport), set tls (not disabled)"
    return ""


class DriverConnection(pymysql.connections.Connection):
    """PyMySQL's connection with two changes.

    - One TLS context for PyMySQL's opportunistic TLS ("preferred": encrypted when the server offers it,
      unverified), shared: PyMySQL builds one per connection, loading the system CA store, 32 ms of CPU each
      (measured), about a tenth of the daemon's start.
    - ``LOAD DATA LOCAL`` is served from memory only (:meth:`load_local`): PyMySQL would open whatever file
      the server names, which lets a hostile server read this host's files.
    """

    _local_name: bytes = b""
    _local_data: bytes | None = None
    # which server this is in an error: "target 10.0.0.5:3306" (set by :func:`connect`), else host:port
    where: str = ""

    def _read_packet(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._read_packet(*args, **kwargs)  # type: ignore[no-untyped-call]  # (untyped in the stubs)
        except pymysql.err.MySQLError as exc:
            self._locate(exc)
            raise

    def _execute_command(self, command: int, sql: Any) -> Any:
        # the statement's head, for what an error was doing (:func:`_verb`): a slice, never a copy of a
        # whole batch, and parsed only when an error needs it
        self._last_sql = sql[:32] if isinstance(sql, str | bytes) else b""
        try:
            return super()._execute_command(command, sql)  # type: ignore[misc]  # (private: not in the stubs)
        except pymysql.err.MySQLError as exc:
            self._locate(exc)
            raise

    _last_sql: str | bytes = b""

    def _locate(self, exc: BaseException) -> None:
        """Note on the driver's error which server it came from and what it was doing, for :func:`describe_error`
        and the reconnect log."""
        if not getattr(exc, "austasync_where", ""):
            exc.austasync_where = self.where or f"{self.host}:{self.port}"  # type: ignore[attr-defined]
            exc.austasync_operation = _verb(self._last_sql)  # type: ignore[attr-defined]

    def connect(self, sock: Any = None) -> None:
        """Connect (or reconnect), then pin the session (:func:`pin_session`) before anything else runs on it."""
        super().connect(sock)
        try:
            pin_session(self)
        except BaseException:
            self.close()
            raise

    def _create_ssl_ctx(self, sslp: Any) -> ssl.SSLContext:
        if isinstance(sslp, dict) and not sslp:
            return _preferred_tls_context()
        return super()._create_ssl_ctx(sslp)  # type: ignore[misc,no-any-return]  # (private: not in the stubs)

    def load_local(self, name: str, data: bytes, statement: str) -> tuple[int, int]:
        """Run ``statement`` (``LOAD DATA LOCAL INFILE '<name>' ...``) with ``data`` as that file's content.

        Returns (rows loaded, warnings). A server asking for another file gets an empty one.
        """
        self._local_name, self._local_data = name.encode(), data
        try:
            with self.cursor() as cur:
                rows = int(cur.execute(statement))
            result = self._result
            return rows, int(getattr(result, "warning_count", 0) or 0)
        finally:
            self._local_name, self._local_data = b"", None

    def _read_query_result(self, unbuffered: bool = False) -> int:
        self._result = None
        result = _MemoryFileResult(self)  # unbuffered too: no path may serve a file from disk
        if unbuffered:
            result.init_unbuffered_query()
        else:
            result.read()
        self._result = result
        if result.server_status is not None:
            self.server_status = result.server_status
        return int(result.affected_rows or 0)


class _MemoryFileResult(pymysql.connections.MySQLResult):
    def _read_load_local_packet(self, first_packet: Any) -> None:
        conn: Any = self.connection  # a DriverConnection; its packet methods are not in the stubs
        name = first_packet.get_all_data()[1:]
        data = conn._local_data if name == conn._local_name else None
        try:
            step = 1 << 20
            for start in range(0, len(data or b""), step):
                conn.write_packet((data or b"")[start : start + step])
        finally:
            conn.write_packet(b"")  # the end of the file
            ok_packet = conn._read_packet()
        if not ok_packet.is_ok_packet():
            raise pymysql.err.OperationalError(2014, "Commands out of sync after LOAD DATA LOCAL")
        self._read_ok_packet(ok_packet)  # type: ignore[attr-defined]  # (private: not in the stubs)


def tls_options(cfg: DatabaseConfig) -> dict[str, Any]:
    """PyMySQL's connection options for the configured TLS mode (the binlog connections take them too)."""
    if cfg.tls == "disabled":
        return {"ssl_disabled": True}
    if cfg.tls == "preferred":
        return {}  # DriverConnection shares one context for PyMySQL's opportunistic TLS
    return {"ssl": _tls_context(cfg.tls, cfg.tls_ca)}


@functools.cache
def _tls_context(mode: str, ca: str | None) -> ssl.SSLContext:
    """One context per (mode, CA) for the process: building one loads the CA store."""
    ctx = ssl.create_default_context(cafile=ca)
    if mode == "required":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif mode == "verify_ca":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx  # verify_identity: the default context checks the chain and the host name


@functools.cache
def _preferred_tls_context() -> ssl.SSLContext:
    """What PyMySQL builds for an empty ``ssl`` option: default CA store, no hostname check, no verification."""
    ctx = ssl.create_default_context()
    ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _located(conn: DriverConnection, where: str) -> DriverConnection:
    conn.where = where
    return conn


# driver errors that come without a text, and what they mean
_SILENT: dict[tuple[str, int | None], str] = {
    ("InterfaceError", 0): "the connection was already closed (lost earlier, or closed after an error)",
}


def _verb(sql: str | bytes) -> str:
    """A statement's first word (``INSERT``, ``COMMIT``, ``SHOW``): what a failed query was doing, without data."""
    text = sql.decode("latin1") if isinstance(sql, bytes) else sql
    words = text.split(None, 1)
    word = words[0].upper() if words else ""
    return word if word.isalpha() else "query"


def describe_error(exc: BaseException) -> str:
    """The driver's error as a sentence that is never empty: code, text (or what a silent one means) and the
    server it came from (``on target 10.0.0.5:3306``) when the connection noted it."""
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    code = args[0] if args and isinstance(args[0], int) else None
    # (code, text) from the server or the driver; a bare text from anything else
    text = str(args[1]).strip() if len(args) >= 2 else ("" if code is not None else str(exc).strip())
    if not text:
        text = _SILENT.get((type(exc).__name__, code), f"{type(exc).__name__} without a message from the driver")
    head = f"error {code}: {text}" if code else text
    where = getattr(exc, "austasync_where", "")
    return f"{head} (on {where})" if where else head


def _message(exc: BaseException) -> str:
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    if len(args) >= 2:
        return f"error {args[0]}: {args[1]}"
    return str(exc)


def set_read_timeout(conn: Connection, seconds: float | None) -> None:
    """From now on a read that waits longer than ``seconds`` fails as a lost connection (error 2013): a server
    that stalls is noticed instead of waited for (PyMySQL applies ``_read_timeout`` at its next read)."""
    conn._read_timeout = seconds  # type: ignore[attr-defined]  # (private: not in the stubs)


def query(conn: Connection, sql: str | bytes, args: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    """Run one statement and return all its rows (an empty list for statements without a result)."""
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


def execute_raw(conn: Connection, sql: str) -> int:
    """Run a statement whose text holds raw bytes as latin1 characters (see :mod:`austasync.sql`)."""
    with conn.cursor() as cur:
        return int(cur.execute(sql.encode("latin1")))


def _same_charset(name: str) -> str:
    """One name for utf8/utf8mb3: MySQL before 8.0.30 and MariaDB before 10.6 report utf8, newer ones utf8mb3."""
    return "utf8mb3" if name == "utf8" else name


def pin_session(conn: Connection) -> None:
    """Set the session's sql_mode, time zone and character set, and check the server took them.

    The charset is the connection's own (utf8mb4 for austasync's connections, the binlog library's choice for its
    own). A server or proxy that does not keep them (an ``init_connect`` cannot override a later SET, but a
    connection-multiplexing proxy can hand over another session) is refused instead of read under other rules.
    """
    charset = str(conn.charset)
    with conn.cursor(pymysql.cursors.Cursor) as cur:
        cur.execute(
            f"SET SESSION sql_mode = '{SESSION_SQL_MODE}', time_zone = '{SESSION_TIME_ZONE}',"
            f" character_set_client = {charset}, character_set_connection = {charset},"
            f" character_set_results = {charset}"
        )
        cur.execute(
            "SELECT @@SESSION.sql_mode, @@SESSION.time_zone, @@SESSION.character_set_client,"
            " @@SESSION.character_set_connection, @@SESSION.character_set_results"
        )
        row = cur.fetchone()
    got = tuple(_text(v) for v in (row or ()))
    wanted = (SESSION_SQL_MODE, SESSION_TIME_ZONE, charset, charset, charset)
    kept = (
        len(got) == len(wanted)
        and set(got[0].split(",")) == set(SESSION_SQL_MODE.split(","))
        and got[1] == SESSION_TIME_ZONE
        and all(_same_charset(g) == _same_charset(charset) for g in got[2:])
    )
    if not kept:
        raise UnavailableError(
            f"the server did not keep the session settings austasync relies on: asked for sql_mode, time_zone and"
            f" character sets {wanted}, the session has {got}; check init_connect and any proxy in between"
        )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check(conn: Connection, expressions: str, wanted: tuple[str, ...], what: str) -> None:
    row = query(conn, f"SELECT {expressions}")[0]
    got = tuple(_text(v) for v in row)
    if got != wanted:
        raise UnavailableError(f"{what} session settings not kept: wanted {wanted}, the session has {got}")


def setup_source_session(conn: Connection) -> None:
    """A plain source session: what every connection pins (sql_mode, ``time_zone='+00:00'``), checked again."""
    _check(conn, "@@SESSION.time_zone", (SESSION_TIME_ZONE,), "source")


def setup_raw_copy_session(conn: Connection) -> None:
    """A session whose text results carry each column's bytes unconverted."""
    query(conn, "SET SESSION character_set_results = binary")
    _check(conn, "@@SESSION.time_zone, @@SESSION.character_set_results", (SESSION_TIME_ZONE, "binary"), "raw read")


def setup_target_session(conn: Connection) -> None:
    """The target write session of docs/DESIGN.md#rule-sessions (sql_mode and time zone are pinned by every
    connection)."""
    query(conn, "SET SESSION foreign_key_checks = 0, unique_checks = 1, autocommit = 0")
    query(conn, "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    _check(
        conn,
        f"@@SESSION.foreign_key_checks, @@SESSION.autocommit, @@SESSION.{isolation_variable(conn)}",
        ("0", "0", "READ-COMMITTED"),
        "target write",
    )


def start_snapshot(conn: Connection) -> None:
    """Open a consistent snapshot in REPEATABLE READ and check the level really is that."""
    query(conn, "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    query(conn, "START TRANSACTION WITH CONSISTENT SNAPSHOT")
    level = query(conn, f"SELECT @@session.{isolation_variable(conn)}")
    value = level[0][0]
    text = value.decode() if isinstance(value, bytes) else str(value)
    if text != "REPEATABLE-READ":
        query(conn, "ROLLBACK")
        raise UnavailableError(f"snapshot session runs in {text}, not REPEATABLE-READ; refusing to read")


def isolation_variable(conn: Connection) -> str:
    """``tx_isolation`` before MariaDB 11.1, ``transaction_isolation`` on MySQL 8 and newer MariaDB."""
    flavor, version = server_flavor(conn)
    return "tx_isolation" if flavor == "mariadb" and version < (11, 1) else "transaction_isolation"


def server_flavor(conn: Connection) -> tuple[str, tuple[int, ...]]:
    """("mariadb" | "mysql", version tuple)."""
    raw = query(conn, "SELECT VERSION()")[0][0]
    version = raw.decode() if isinstance(raw, bytes) else str(raw)
    numbers = tuple(int(p) for p in version.split("-")[0].split(".")[:3] if p.isdigit())
    return ("mariadb" if "mariadb" in version.lower() else "mysql"), numbers


def variable(conn: Connection, name: str) -> str | None:
    rows = query(conn, "SHOW GLOBAL VARIABLES LIKE %s", (name,))
    if not rows:
        return None
    value = rows[0][1]
    return value.decode() if isinstance(value, bytes) else str(value)


def status(conn: Connection, name: str) -> str | None:
    rows = query(conn, "SHOW GLOBAL STATUS LIKE %s", (name,))
    if not rows:
        return None
    value = rows[0][1]
    return value.decode() if isinstance(value, bytes) else str(value)


def binlog_end(conn: Connection) -> Position:
    """The server's binlog end (``SHOW BINARY LOG STATUS``, or ``SHOW MASTER STATUS`` before MySQL 8.2 and on
    MariaDB)."""
    try:
        rows = query(conn, "SHOW BINARY LOG STATUS")
    except Exception:  # noqa: BLE001 (before MySQL 8.2 / on MariaDB the statement is SHOW MASTER STATUS)
        rows = query(conn, "SHOW MASTER STATUS")
    if not rows:
        raise SetupError("the server's binlog is off (SHOW MASTER STATUS is empty); set log_bin in its my.cnf")
    return Position(str(rows[0][0]), int(rows[0][1]))


def binlog_end_or_none(conn: Connection) -> Position | None:
    """The server's binlog end, or None without the privilege to read it (the watcher then reports a DDL of
    austasync's as a foreign write: a false alarm, never a missed one)."""
    try:
        return binlog_end(conn)
    except (pymysql.err.MySQLError, SetupError):
        return None
