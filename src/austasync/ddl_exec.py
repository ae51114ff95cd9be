"""Running a source DDL on the target as it ran on the source (``on_ddl = "exec"`` and ``austasync ddl --exec``).

A replica runs a statement under the session state its Query event carries: ``sql_mode``, time zone, clock,
``auto_increment_increment``/``offset``. Two settings change what a DDL builds and are not in the event at all:
``explicit_defaults_for_timestamp`` (``ADD COLUMN ts TIMESTAMP`` is ``NOT NULL DEFAULT CURRENT_TIMESTAMP ON
UPDATE ...`` under OFF, MySQL 5.7's default, and ``NULL`` under ON, filling the existing rows differently) and
``default_storage_engine`` (a ``CREATE TABLE`` without ``ENGINE``). Those are taken from the source's global
values, read at start-up: a session that changed them itself cannot be seen (docs/DESIGN.md#rule-ddl). Whatever
cannot be reproduced exactly refuses the statement before anything is recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from austasync.db import Connection, query, variable
from austasync.errors import UncarryableValueError
from austasync.sql import quote_ident

# the source's global settings a DDL depends on that its binlog event does not carry
SOURCE_SETTINGS = ("explicit_defaults_for_timestamp", "default_storage_engine")


@dataclass(frozen=True)
class DdlSession:
    """The session state a DDL runs under on the target, besides its database."""

    sql_mode: int | None = None
    timestamp: int | None = None
    time_zone: str | None = None
    flavor: str = "mariadb"  # the source's, whose bits ``sql_mode`` holds
    settings: Mapping[str, str] = field(default_factory=dict)  # session variables to set as on the source


def source_ddl_session(source: Connection) -> dict[str, str]:
    """The source's global values of :data:`SOURCE_SETTINGS` (those the server has)."""
    found = {name: variable(source, name) for name in SOURCE_SETTINGS}
    return {name: value for name, value in found.items() if value is not None}


# The binlog's Q_SQL_MODE status variable is the session's sql_mode bitmask. MariaDB's bits, read back from a
# 10.11 server one bit at a time (SET sql_mode = 1 << n; SELECT @@sql_mode), as in its sql_class.h. The
# combination modes (POSTGRESQL, ORACLE, MSSQL, DB2, MAXDB, MYSQL323, MYSQL40, ANSI, TRADITIONAL) have bits of
# their own besides their parts, and the bit matters: ORACLE switches the parser (DATE is a DATETIME there)
_MARIADB_SQL_MODE_BITS = {
    1 << 0: "REAL_AS_FLOAT",
    1 << 1: "PIPES_AS_CONCAT",
    1 << 2: "ANSI_QUOTES",
    1 << 3: "IGNORE_SPACE",
    1 << 4: "IGNORE_BAD_TABLE_OPTIONS",
    1 << 5: "ONLY_FULL_GROUP_BY",
    1 << 6: "NO_UNSIGNED_SUBTRACTION",
    1 << 7: "NO_DIR_IN_CREATE",
    1 << 8: "POSTGRESQL",
    1 << 9: "ORACLE",
    1 << 10: "MSSQL",
    1 << 11: "DB2",
    1 << 12: "MAXDB",
    1 << 13: "NO_KEY_OPTIONS",
    1 << 14: "NO_TABLE_OPTIONS",
    1 << 15: "NO_FIELD_OPTIONS",
    1 << 16: "MYSQL323",
    1 << 17: "MYSQL40",
    1 << 18: "ANSI",
    1 << 19: "NO_AUTO_VALUE_ON_ZERO",
    1 << 20: "NO_BACKSLASH_ESCAPES",
    1 << 21: "STRICT_TRANS_TABLES",
    1 << 22: "STRICT_ALL_TABLES",
    1 << 23: "NO_ZERO_IN_DATE",
    1 << 24: "NO_ZERO_DATE",
    1 << 25: "ALLOW_INVALID_DATES",
    1 << 26: "ERROR_FOR_DIVISION_BY_ZERO",
    1 << 27: "TRADITIONAL",
    1 << 28: "NO_AUTO_CREATE_USER",
    1 << 29: "HIGH_NOT_PRECEDENCE",
    1 << 30: "NO_ENGINE_SUBSTITUTION",
    1 << 31: "PAD_CHAR_TO_FULL_LENGTH",
    1 << 32: "EMPTY_STRING_IS_NULL",
    1 << 33: "SIMULTANEOUS_ASSIGNMENT",
    1 << 34: "TIME_ROUND_FRACTIONAL",
}
# MySQL 8.0's (sql/system_variables.h): bit 32 is TIME_TRUNCATE_FRACTIONAL there, and the 5.7 modes it removed
# (bits 8-17 and 28, its MODE_IGNORED_MASK) are dropped the way MySQL's own replica drops them: they do nothing
_MYSQL_IGNORED_SQL_MODE_BITS = sum(1 << n for n in (*range(8, 18), 28))
_MYSQL_SQL_MODE_BITS = {
    **{
        bit: name
        for bit, name in _MARIADB_SQL_MODE_BITS.items()
        if bit < 1 << 32 and bit != 1 << 4 and not bit & _MYSQL_IGNORED_SQL_MODE_BITS
    },
    1 << 32: "TIME_TRUNCATE_FRACTIONAL",
}


def sql_mode_names(bits: int | None, flavor: str = "mariadb") -> str | None:
    """The ``sql_mode`` text for a binlog bitmask of a ``flavor`` ("mariadb" | "mysql") source, or None when the
    event carried none.

    Every bit is named or refused: an unknown bit (a newer server's mode) raises :class:`UncarryableValueError`
    naming it, since running the DDL without it could build another table than the source's.
    """
    if bits is None:
        return None
    table = _MYSQL_SQL_MODE_BITS if flavor == "mysql" else _MARIADB_SQL_MODE_BITS
    if flavor == "mysql":
        bits &= ~_MYSQL_IGNORED_SQL_MODE_BITS
    unknown = bits & ~sum(table)
    if unknown:
        numbers = ", ".join(str(n) for n in range(unknown.bit_length()) if unknown >> n & 1)
        raise UncarryableValueError(
            f"the statement's sql_mode 0x{bits:x} has bits austasync does not know for a {flavor} source (bit"
            f" {numbers}): running it without them could change what it does"
        )
    return ",".join(name for bit, name in sorted(table.items()) if bits & bit)


def _set_sql_mode(conn: Connection, mode: str) -> None:
    """Set the session's sql_mode and check the server kept exactly those modes (a combination mode set by name
    also sets its parts, so a bitmask holding ORACLE without one of them cannot be reproduced by name)."""
    query(conn, "SET SESSION sql_mode = %s", (mode,))
    got = str(query(conn, "SELECT @@SESSION.sql_mode")[0][0])
    if set(filter(None, got.split(","))) != set(filter(None, mode.split(","))):
        raise UncarryableValueError(
            f"the target does not take the statement's sql_mode exactly: asked for {mode!r}, it has {got!r}"
        )


def check_ddl_sql_mode(conn: Connection, bits: int | None, flavor: str, where: str) -> None:
    """Refuse, before anything is recorded, a DDL whose sql_mode the target cannot run it under exactly."""
    try:
        mode = sql_mode_names(bits, flavor)
        if mode is None:
            return
        previous = str(query(conn, "SELECT @@SESSION.sql_mode")[0][0])
        try:
            _set_sql_mode(conn, mode)
        finally:
            query(conn, "SET SESSION sql_mode = %s", (previous,))
    except UncarryableValueError as exc:
        raise UncarryableValueError(
            f'DDL at {where}: {exc}. Nothing was run; use on_ddl = "stop" and apply it to the target by hand'
            " (then `austasync ddl --skip`)"
        ) from None


def execute_ddl(conn: Connection, statement: str, database: str | None, session: DdlSession) -> None:
    """Run a DDL on the target as it ran on the source: its database, sql_mode, clock, time zone and settings.

    The clock matters: ``ADD COLUMN ... DEFAULT CURRENT_TIMESTAMP`` (Laravel's ``useCurrent()``) fills every
    existing row with "now", which must be the source's moment, as a replica does with ``SET TIMESTAMP``.
    An unknown ``sql_mode`` bit, or a setting the target refuses, refuses the statement.
    """
    mode = sql_mode_names(session.sql_mode, session.flavor)
    if database:
        query(conn, f"USE {quote_ident(database)}")
    previous = query(conn, "SELECT @@SESSION.sql_mode, @@SESSION.time_zone")[0]
    settings: dict[str, str] = {}
    try:
        if mode is not None:
            _set_sql_mode(conn, mode)
        if session.time_zone:
            query(conn, "SET SESSION time_zone = %s", (session.time_zone,))
        if session.timestamp:
            query(conn, "SET SESSION timestamp = %s", (session.timestamp,))
        settings = _set_settings(conn, session.settings)
        query(conn, statement)
    finally:
        query(conn, "SET SESSION sql_mode = %s, time_zone = %s, timestamp = DEFAULT", (previous[0], previous[1]))
        _restore(conn, settings)


def _set_settings(conn: Connection, settings: Mapping[str, str]) -> dict[str, str]:
    """Set the session variables that differ from ``settings``; the previous values of those set."""
    previous: dict[str, str] = {}
    for name, value in settings.items():
        current = str(query(conn, f"SELECT @@SESSION.{name}")[0][0])
        if current.upper() in (value.upper(), {"ON": "1", "OFF": "0"}.get(value.upper(), "")):
            continue
        try:
            query(conn, f"SET SESSION {name} = %s", (_typed(value),))
        except Exception as exc:  # noqa: BLE001 (any refusal means the DDL cannot run as on the source)
            _restore(conn, previous)
            raise UncarryableValueError(
                f"the target refuses SET SESSION {name} = {value!r} (the source's value; the target session has"
                f" {current!r}): {exc}. Give the target user SESSION_VARIABLES_ADMIN (MySQL 8) or set the"
                f" target's global {name} to {value!r}"
            ) from None
        previous[name] = current
    return previous


def _restore(conn: Connection, previous: Mapping[str, str]) -> None:
    for name, value in previous.items():
        query(conn, f"SET SESSION {name} = %s", (_typed(value),))


def _typed(value: str) -> str | int:
    """A number as a number: ``@@SESSION`` reads booleans as 0/1, which ``SET`` takes only unquoted."""
    return int(value) if value.isdigit() else value


def check_ddl_session(conn: Connection, session: DdlSession, where: str) -> None:
    """Refuse, before anything is recorded, a DDL whose session the target cannot reproduce exactly."""
    check_ddl_sql_mode(conn, session.sql_mode, session.flavor, where)
    try:
        _restore(conn, _set_settings(conn, session.settings))
    except UncarryableValueError as exc:
        raise UncarryableValueError(
            f'DDL at {where}: {exc}. Nothing was run; use on_ddl = "stop" and apply it to the target by hand'
            " (then `austasync ddl --skip`)"
        ) from None
