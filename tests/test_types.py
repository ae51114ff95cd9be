"""Every column type survives the bulk copy and the stream byte for byte (issue 3).

Each case is a row on the source before the daemon starts (bulk copy), and again after it streams: inserted,
updated (every row takes the next case's values, so every case is both a before and an after image), moved to
another primary key, deleted, and changed several times inside one source transaction. Source and target are
compared after each phase by ordered hex dumps through the ``mariadb`` client (conftest.dump), which shares no
code with austasync.

The source and the target of this module run in time zones other than UTC (+05:45 and -03:00), and the stream
phase writes in a third one (-07:00): a session that forgot ``time_zone='+00:00'`` shifts every TIMESTAMP. Rows
are written with ``sql_mode='ALLOW_INVALID_DATES'`` (not strict) so zero, partial-zero and invalid dates exist.

The stop cases show the daemon refusing what cannot be carried exactly: exit 12, a message naming table, column
and binlog position, and the target left at the checkpoint before the offending transaction.
"""

from __future__ import annotations

import itertools
import re
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pymysql
import pytest

from conftest import Env, dump
from servers import MariaDB, Redis

EXIT_UNCARRYABLE = 12
_names = itertools.count(1)


# --- servers in other time zones ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tz_source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    server = MariaDB(tmp_path_factory.mktemp("tz_source"), server_id=311, extra=("--default-time-zone=+05:45",))
    server.start()
    server.execute(
        "CREATE USER 'repl'@'%' IDENTIFIED BY 'repl-secret-pw'",
        "GRANT SELECT, RELOAD, REPLICATION SLAVE, REPLICATION CLIENT, LOCK TABLES, SLAVE MONITOR,"
        " BINLOG MONITOR, PROCESS ON *.* TO 'repl'@'%'",
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    server = MariaDB(tmp_path_factory.mktemp("tz_target"), server_id=312, extra=("--default-time-zone=-03:00",))
    server.start()
    server.execute(
        "CREATE USER 'austasync'@'%' IDENTIFIED BY 'target-secret-pw'",
        "GRANT ALL PRIVILEGES ON *.* TO 'austasync'@'%'",
    )
    yield server
    server.stop()


@pytest.fixture
def tenv(
    tz_source: MariaDB, tz_target: MariaDB, redis_server: Redis, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Env]:
    name = "".join(ch for ch in request.node.name if ch.isalnum() or ch == "_")[:40] + f"_t{next(_names)}"
    environment = Env(tz_source, tz_target, redis_server, tmp_path, name)
    tz_source.execute(f"CREATE DATABASE {environment.db}")
    yield environment
    environment.stop_all()


# --- the matrix ---------------------------------------------------------------------------------------------------

Case = dict[str, str]  # column -> SQL expression; a column left out is NULL


@dataclass
class Family:
    """One table of the matrix: its columns (name, SQL type) and its cases, one row each."""

    table: str
    columns: list[tuple[str, str]]
    cases: list[Case]
    generated: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        known = {n for n, _ in self.columns}
        for case in self.cases:
            assert set(case) <= known, f"{self.table}: unknown columns {set(case) - known}"

    def create(self) -> str:
        cols = ", ".join(f"`{n}` {t}" for n, t in self.columns + self.generated)
        return f"CREATE TABLE `{self.table}` (id INT NOT NULL PRIMARY KEY, {cols})"

    def values(self, case: Case) -> list[str]:
        return [case.get(n, "NULL") for n, _ in self.columns]

    def insert(self, row_id: int, case: Case) -> str:
        names = ",".join(f"`{n}`" for n, _ in self.columns)
        return f"INSERT INTO `{self.table}` (id,{names}) VALUES ({row_id},{','.join(self.values(case))})"

    def update(self, row_id: int, case: Case) -> str:
        sets = ",".join(f"`{n}`={v}" for (n, _), v in zip(self.columns, self.values(case), strict=True))
        return f"UPDATE `{self.table}` SET {sets} WHERE id={row_id}"


D65_MAX = "9" * 35 + "." + "9" * 30
NUMBERS = Family(
    "t_numbers",
    [
        ("ti", "TINYINT"),
        ("tiu", "TINYINT UNSIGNED"),
        ("si", "SMALLINT"),
        ("siu", "SMALLINT UNSIGNED"),
        ("mi", "MEDIUMINT"),
        ("miu", "MEDIUMINT UNSIGNED"),
        ("i", "INT"),
        ("iu", "INT UNSIGNED"),
        ("bi", "BIGINT"),
        ("biu", "BIGINT UNSIGNED"),
        ("bool", "TINYINT(1)"),
        ("d65", "DECIMAL(65,30)"),
        ("d52", "DECIMAL(5,2)"),
        ("d10", "DECIMAL(10,0) UNSIGNED"),
        ("d11", "DECIMAL(1,1)"),
        ("f", "FLOAT"),
        ("f73", "FLOAT(7,3)"),
        ("dbl", "DOUBLE"),
        ("b1", "BIT(1)"),
        ("b13", "BIT(13)"),
        ("b64", "BIT(64)"),
        ("y", "YEAR"),
        ("hidden", "BIGINT INVISIBLE"),  # not in SELECT *, still copied and streamed
    ],
    [
        {  # lower limits
            "ti": "-128",
            "tiu": "0",
            "si": "-32768",
            "siu": "0",
            "mi": "-8388608",
            "miu": "0",
            "i": "-2147483648",
            "iu": "0",
            "bi": "-9223372036854775808",
            "biu": "0",
            "bool": "-128",
            "d65": "-" + D65_MAX,
            "d52": "-999.99",
            "d10": "0",
            "d11": "-0.9",
            "f": "-3.4028234663852886e38",
            "f73": "-9999.999",
            "dbl": "-1.7976931348623157e308",
            "b1": "b'0'",
            "b13": "b'0'",
            "b64": "b'0'",
            "y": "1901",
            "hidden": "-1",
        },
        {  # upper limits
            "ti": "127",
            "tiu": "255",
            "si": "32767",
            "siu": "65535",
            "mi": "8388607",
            "miu": "16777215",
            "i": "2147483647",
            "iu": "4294967295",
            "bi": "9223372036854775807",
            "biu": "18446744073709551615",
            "bool": "1",
            "d65": D65_MAX,
            "d52": "999.99",
            "d10": "9999999999",
            "d11": "0.9",
            "f": "3.4028234663852886e38",
            "f73": "9999.999",
            "dbl": "1.7976931348623157e308",
            "b1": "b'1'",
            "b13": "b'1111111111111'",
            "b64": "0xFFFFFFFFFFFFFFFF",
            "y": "2155",
            "hidden": "42",
        },
        {  # zeros, YEAR 0 (numeric 0 is 0000; the library reads it as 1900)
            "ti": "0",
            "tiu": "0",
            "si": "0",
            "siu": "0",
            "mi": "0",
            "miu": "0",
            "i": "0",
            "iu": "0",
            "bi": "0",
            "biu": "0",
            "bool": "0",
            "d65": "0",
            "d52": "0",
            "d10": "0",
            "d11": "0",
            "f": "0",
            "f73": "0",
            "dbl": "0",
            "b1": "0",
            "b13": "0",
            "b64": "0",
            "y": "0",
        },
        {  # smallest steps; FLOAT 16777216 prints as 16777200; the smallest subnormal double
            "ti": "-1",
            "tiu": "1",
            "si": "-1",
            "siu": "1",
            "mi": "-1",
            "miu": "1",
            "i": "-1",
            "iu": "1",
            "bi": "-1",
            "biu": "9223372036854775808",
            "d65": "0.000000000000000000000000000001",
            "d52": "0.01",
            "d10": "1",
            "d11": "0.1",
            "f": "16777216",
            "f73": "0.001",
            "dbl": "5e-324",
            "b1": "1",
            "b13": "0x1001",
            "b64": "0x8000000000000001",
            "y": "2000",
        },
        {
            "f": "1.0000001",
            "dbl": "2.2250738585072014e-308",
            "d65": "-0.000000000000000000000000000001",
            "f73": "1.234",
        },
        {"f": "1.0000002", "dbl": "0.1", "d65": "12345678901234567890123456789012345.123456789012345678901234567890"},
        {"f": "1.401298464324817e-45", "dbl": "2.225073858507201e-308", "f73": "-0.001"},  # subnormals
        {"f": "1.1754942106924411e-38", "dbl": "0.30000000000000004", "d52": "-0.01"},
        {"f": "0.1", "dbl": "9007199254740993", "d65": "-0.5", "b64": "0x7FFFFFFFFFFFFFFF", "y": "1999"},
        {"f": "16777217", "dbl": "-2.5e-310", "f73": "0.5"},
        {},  # NULL in every column
    ],
)


def _temporal_columns() -> list[tuple[str, str]]:
    cols = [("d", "DATE")]
    cols += [(f"dt{n}", f"DATETIME({n})") for n in range(7)]
    cols += [(f"t{n}", f"TIME({n})") for n in range(7)]
    cols += [(f"ts{n}", f"TIMESTAMP({n}) NULL DEFAULT NULL") for n in range(7)]
    return cols


def _temporal(date: str, datetime: str, time_: str, timestamp: str) -> Case:
    case = {"d": date}
    for n in range(7):
        case[f"dt{n}"] = datetime
        case[f"t{n}"] = time_
        case[f"ts{n}"] = timestamp
    return case


TEMPORAL = Family(
    "t_temporal",
    _temporal_columns(),
    [
        _temporal("'2024-02-29'", "'2024-02-29 23:59:59.123456'", "'12:34:56.123456'", "'2024-02-29 23:59:59.123456'"),
        _temporal("'1000-01-01'", "'1000-01-01 00:00:00'", "'-838:59:59'", "FROM_UNIXTIME(1)"),
        _temporal("'9999-12-31'", "'9999-12-31 23:59:59.999999'", "'838:59:59'", "FROM_UNIXTIME(2147483647.999999)"),
        # zero dates: the library returns None (not NULL) for DATE/DATETIME and the epoch for TIMESTAMP
        _temporal("'0000-00-00'", "'0000-00-00 00:00:00'", "'00:00:00'", "'0000-00-00 00:00:00'"),
        # partial-zero dates; negative TIME with a fraction (the library gets the sign of the fraction wrong)
        _temporal("'2020-00-15'", "'2020-05-00 10:11:12.5'", "'-00:00:01.25'", "FROM_UNIXTIME(1700000000.654321)"),
        _temporal("'0000-01-01'", "'2020-00-00 00:00:00.000001'", "'-00:00:00.01'", "FROM_UNIXTIME(1700000000.000001)"),
        _temporal("'2021-02-31'", "'2021-04-31 01:02:03.999999'", "'-12:34:56.789012'", "'2038-01-19 03:14:07.999999'"),
        _temporal("'2020-01-01'", "'1970-01-01 00:00:00'", "'-00:00:00.000001'", "'1970-01-02 00:00:00.5'"),
        _temporal("'0001-01-01'", "'0000-00-01 00:00:01'", "'-00:00:00.5'", "FROM_UNIXTIME(951782400.1)"),
        _temporal("'1999-12-31'", "'1999-12-31 23:59:59.999999'", "'-838:59:59.999999'", "'2000-02-29 12:00:00'"),
        {},
    ],
)

_SET64 = ",".join(f"'m{i}'" for i in range(64))
_LATIN1_C1 = "_latin1 X'" + "".join(f"{b:02X}" for b in range(0x80, 0xA0)) + "'"
_LATIN1_HIGH = "_latin1 X'" + "".join(f"{b:02X}" for b in range(0xA0, 0x100)) + "'"
STRINGS = Family(
    "t_strings",
    [
        ("u4c", "CHAR(10) CHARACTER SET utf8mb4"),
        ("u4v", "VARCHAR(100) CHARACTER SET utf8mb4"),
        ("u4t", "TEXT CHARACTER SET utf8mb4"),
        ("u4lt", "LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"),
        ("u3v", "VARCHAR(100) CHARACTER SET utf8mb3"),
        ("u3c", "CHAR(100) CHARACTER SET utf8mb3"),  # 300 bytes: a 2-byte length in the binlog
        ("l1c", "CHAR(40) CHARACTER SET latin1"),
        ("l1v", "VARCHAR(100) CHARACTER SET latin1"),
        ("l1t", "TEXT CHARACTER SET latin1"),
        ("bn", "BINARY(8)"),
        ("vb", "VARBINARY(300)"),
        ("tb", "TINYBLOB"),
        ("bl", "BLOB"),
        ("mb", "MEDIUMBLOB"),
        ("lb", "LONGBLOB"),
        ("e", "ENUM('ação','naïve','日本','','x') CHARACTER SET utf8mb4"),
        ("el", "ENUM('ção','b','0','1') CHARACTER SET latin1"),  # labels that are not UTF-8 in the table map
        ("en", "ENUM('2','1','0')"),  # numeric labels: '1' is index 2
        ("s", "SET('a','b','c','d','e','f','g','h','i')"),
        ("sl", "SET('é','ü','x') CHARACTER SET latin1"),
        ("s64", f"SET({_SET64})"),
        # multi-byte charsets whose second byte can be 0x5C, a backslash to a lexer that does not know them
        ("sj", "VARCHAR(20) CHARACTER SET sjis"),
        ("gb", "VARCHAR(20) CHARACTER SET gbk"),
        ("b5", "VARCHAR(20) CHARACTER SET big5"),
        ("u16", "VARCHAR(20) CHARACTER SET utf16"),
        ("u32", "TEXT CHARACTER SET utf32"),
        ("j", "JSON"),
        ("g", "GEOMETRY"),
        ("pt", "POINT"),
    ],
    [
        {
            "u4c": "'🎉ção'",
            "u4v": "'Usuário 😀 ção 日本語 𝄞'",
            "u4t": "REPEAT('ação 🎉 ', 100)",
            "u4lt": "'x'",
            "u3v": "'ção ü ☃'",
            "u3c": "'Ωmega'",
            "l1c": "_latin1 X'80818D8F909D'",
            "l1v": _LATIN1_C1,
            "l1t": _LATIN1_HIGH,
            "bn": "X'010203'",
            "vb": "X'00FF00'",
            "tb": "X''",
            "bl": "'blob'",
            "mb": "X'00'",
            "lb": "'x'",
            "e": "'ação'",
            "el": "'ção'",
            "en": "'0'",
            "s": "'a,c,i'",
            "sl": "'é,ü'",
            "s64": "'m0,m63'",
            "j": """'{"a": [1, 2.5, -0.0, 1e308, 18446744073709551616], "ç": "😀", "n": null}'""",
            "g": "ST_GeomFromText('POLYGON((0 0,10 0,10 10,0 10,0 0))', 4326)",
            "pt": "POINT(1.5, -2.25)",
            "sj": "_sjis X'955C5C27955C'",
            "gb": "_gbk X'815C5C27'",
            "b5": "_big5 X'A55C27A55C'",
            "u16": "_utf16 X'D83DDE00005C0027'",
            "u32": "_utf32 X'0001F6000000005C'",
        },
        {  # trailing spaces and zero bytes
            "u4c": "'a  '",
            "u4v": "'a  '",
            "u4t": "'b \t\n '",
            "u4lt": "' '",
            "u3v": "'c   '",
            "u3c": "' lead'",
            "l1c": "'d  '",
            "l1v": "_latin1 X'E92020'",
            "l1t": "'   '",
            "bn": "'ab'",
            "vb": "X'616200'",
            "tb": "X'20'",
            "bl": "X'000000'",
            "mb": "X'FF'",
            "lb": "X'0000'",
            "e": "'naïve'",
            "el": "'b'",
            "en": "1",
            "s": "''",
            "sl": "''",
            "s64": "''",
            "j": """'  {"b":1,   "a" : 2 }  '""",
            "g": "ST_GeomFromText('POINT(1 2)')",
            "pt": "POINT(0, 0)",
            "sj": "_sjis X'955C'",
            "gb": "_gbk X'815C'",
            "b5": "_big5 X'A55C'",
            "u16": "_utf16 X'00200020'",
            "u32": "_utf32 X'00000020'",
        },
        {  # empty values, full SETs, JSON null (not SQL NULL), BINARY(8) of zeros (empty in the binlog)
            "u4c": "''",
            "u4v": "''",
            "u4t": "''",
            "u4lt": "''",
            "u3v": "''",
            "u3c": "''",
            "l1c": "''",
            "l1v": "''",
            "l1t": "''",
            "bn": "X'0000000000000000'",
            "vb": "''",
            "tb": "''",
            "bl": "''",
            "mb": "''",
            "lb": "''",
            "e": "''",
            "el": "'1'",
            "en": "'2'",
            "s": "'a,b,c,d,e,f,g,h,i'",
            "sl": "'é,ü,x'",
            "s64": "'" + ",".join(f"m{i}" for i in range(64)) + "'",
            "j": "'null'",
            "g": "ST_GeomFromText('LINESTRING(0 0,1 1,2 1)', 3857)",
            "pt": "POINT(-180, 90)",
        },
        {  # several MB; every byte that needs escaping in a literal
            "lb": "REPEAT(X'00FF27225C0A1A0D', 512 * 1024)",
            "mb": "REPEAT(X'E3A7', 300000)",
            "u4lt": "REPEAT('😀', 300000)",
            "e": "'日本'",
            "el": "'0'",
            "en": "'1'",
            "s": "'b'",
            "j": """'{"big": 123456789012345678901234567890, "f": 0.1, "neg": -9223372036854775809,"""
            """ "deep": [[[[{"x": "\\\\u00e7"}]]]]}'""",
        },
        {
            "u4v": "_utf8mb4 X'780079'",
            "l1v": "_latin1 X'00'",
            "bn": "X'00000000000000FF'",
            "vb": "X'00'",
            "j": """'"a \\\\"quoted\\\\" \\\\\\\\ string"'""",
            "e": "'x'",
            "s": "'i'",
            "s64": "'m63'",
        },
        {"j": "'[]'", "u4c": "'日本語日本語日本語日'", "bn": "X'FF'"},
        {"j": "'{}'", "u3c": "REPEAT('☃', 100)", "l1t": "REPEAT(_latin1 X'81', 1000)"},
        {},
    ],
    generated=[
        ("gv", "INT AS (CHAR_LENGTH(u4v)) VIRTUAL"),
        ("gs", "VARCHAR(700) AS (CONCAT(u4v, '/', HEX(vb))) STORED"),
    ],
)

# MariaDB's own fixed-length binary types: the binlog holds their in-memory bytes minus trailing zeros (as for
# BINARY(n)); a version-1 UUID is stored with its segments swapped, which the binlog form does not show
MARIADB_ONLY = Family(
    "t_mariadb",
    [("u", "UUID"), ("i6", "INET6")],
    [
        {"u": "'123e4567-e89b-12d3-a456-426614174000'", "i6": "'2001:db8::ff00:42:8329'"},
        {"u": "'00000000-0000-0000-0000-000000000000'", "i6": "'::'"},
        {"u": "'6ccd780c-baba-1026-9564-5b8c656024db'", "i6": "'ffff:ffff::1:2:3'"},  # text of 16 characters
        {"u": "'12345678-0000-0000-0000-000000000000'", "i6": "'2001:db8::'"},
        {"u": "'ffffffff-ffff-4fff-8fff-ffffffffffff'", "i6": "'::ffff:192.0.2.1'"},
        {},
    ],
)


def families(env: Env) -> list[Family]:
    mariadb = "mariadb" in str(env.source.execute("SELECT VERSION()")[0][0]).lower()
    return [NUMBERS, TEMPORAL, STRINGS, *([MARIADB_ONLY] if mariadb else [])]


def source_session(env: Env, time_zone: str | None = None) -> pymysql.connections.Connection:  # type: ignore[type-arg]
    """A root session on the source that may store zero and invalid dates (not strict)."""
    conn = env.source.connect(database=env.db, autocommit=True, max_allowed_packet=64 * 1024 * 1024)
    with conn.cursor() as cur:
        cur.execute("SET SESSION sql_mode = 'ALLOW_INVALID_DATES'")
        if time_zone is not None:
            cur.execute("SET SESSION time_zone = %s", (time_zone,))
    return conn


def run(conn: pymysql.connections.Connection, statements: Sequence[str], *, one_transaction: bool = False) -> None:  # type: ignore[type-arg]
    with conn.cursor() as cur:
        if one_transaction:
            cur.execute("START TRANSACTION")
        for stmt in statements:
            cur.execute(stmt)
        if one_transaction:
            cur.execute("COMMIT")


def labels(server: MariaDB, db: str, table: str) -> list[str]:
    """The dump's column headers (a FLOAT column has a second, exact one)."""
    out = []
    for name, data_type in server.execute(
        f"SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA='{db}'"
        f" AND TABLE_NAME='{table}' ORDER BY ORDINAL_POSITION"
    ):
        out.append(str(name))
        if str(data_type) == "float":
            out.append(f"{name}+0E0")
    return out


def assert_same(env: Env, table: str, phase: str) -> list[str]:
    src = dump(env.source, env.db, table, "id")
    dst = dump(env.target, env.db, table, "id")
    if src != dst:
        heads = labels(env.source, env.db, table)
        problems = []
        for s_line, d_line in itertools.zip_longest(src, dst, fillvalue=""):
            if s_line != d_line:
                s_cells, d_cells = s_line.split("\t"), d_line.split("\t")
                diff = [
                    f"{h}: source {a[:80]} target {b[:80]}"
                    for h, a, b in itertools.zip_longest(heads, s_cells, d_cells, fillvalue="-")
                    if a != b
                ]
                problems.append(f"row id=0x{s_cells[0] or d_cells[0]}: " + "; ".join(diff))
        raise AssertionError(
            f"{table} after {phase}: {len(src)} source rows, {len(dst)} target rows\n  " + "\n  ".join(problems[:20])
        )
    return src


def test_every_type_survives_copy_and_stream(tenv: Env) -> None:
    env = tenv
    FAMILIES = families(env)
    conn = source_session(env)  # the source's own zone, +05:45
    try:
        run(conn, [f.create() for f in FAMILIES])
        for family in FAMILIES:
            run(conn, [family.insert(i + 1, case) for i, case in enumerate(family.cases)])
        # the dump must tell apart what FLOAT's short text form merges, or it could not catch a lossy copy
        floats = {row.split("\t")[0]: row for row in dump(env.source, env.db, NUMBERS.table, "id")}
        assert floats[b"5".hex().upper()] != floats[b"6".hex().upper()]
        proc = env.start_daemon()
        env.wait_caught_up(proc=proc)
        for family in FAMILIES:
            assert_same(env, family.table, "bulk copy")

        stream = source_session(env, "-07:00")
        try:
            for family in FAMILIES:
                run(stream, [family.insert(100 + i, case) for i, case in enumerate(family.cases)])
            env.wait_caught_up(proc=proc)
            for family in FAMILIES:
                assert_same(env, family.table, "stream inserts")

            for family in FAMILIES:
                n = len(family.cases)
                updates = [family.update(100 + i, family.cases[(i + 1) % n]) for i in range(n)]
                updates += [family.update(i + 1, family.cases[(i + 3) % n]) for i in range(n)]  # copied rows
                run(stream, updates)
            env.wait_caught_up(proc=proc)
            for family in FAMILIES:
                assert_same(env, family.table, "stream updates")

            for family in FAMILIES:
                n = len(family.cases)
                run(
                    stream,
                    [
                        f"UPDATE `{family.table}` SET id = id + 1000 WHERE id <= {n}",  # every value on a new key
                        f"DELETE FROM `{family.table}` WHERE id >= 100 AND id < {100 + n // 2}",
                    ],
                )
                # one source transaction: the net image of each key is what lands
                txn = [family.insert(5000 + i, case) for i, case in enumerate(family.cases)]
                txn += [family.update(5000 + i, family.cases[(i + 5) % n]) for i in range(n)]
                txn += [f"UPDATE `{family.table}` SET id = id + 100 WHERE id >= 5000"]
                txn += [f"DELETE FROM `{family.table}` WHERE id = {5100 + n - 1}"]
                txn += [f"UPDATE `{family.table}` SET id = 6000 WHERE id = 1001"]
                run(stream, txn, one_transaction=True)
            env.wait_caught_up(proc=proc)
            for family in FAMILIES:
                rows = assert_same(env, family.table, "primary-key changes, deletes and one mixed transaction")
                assert len(rows) == 3 * len(family.cases) - len(family.cases) // 2 - 1
        finally:
            stream.close()
    finally:
        conn.close()


@pytest.mark.parametrize("render", ["daemon", "source"])
def test_every_type_survives_a_copy_rendered_by_either_side(tenv: Env, render: str) -> None:
    """``[copy] render``: "daemon" (the default) SELECTs the raw columns and writes the literals and LOAD DATA
    fields in Python; "source" has the source render them. Both must carry quotes, backslashes, NUL, ^Z,
    newlines, NULL and every type exactly."""
    env = tenv
    env.extra["copy"] = {"render": render}
    FAMILIES = families(env)
    conn = source_session(env)
    try:
        run(conn, [f.create() for f in FAMILIES])
        for family in FAMILIES:
            run(conn, [family.insert(i + 1, case) for i, case in enumerate(family.cases)])
        # a plain table goes as LOAD DATA: every byte its fields' escaping must carry
        run(
            conn,
            [
                "CREATE TABLE t_load (id INT PRIMARY KEY, s VARCHAR(60) CHARACTER SET utf8mb4, l VARCHAR(60)"
                " CHARACTER SET latin1, b VARBINARY(300), d DATETIME(6), f DOUBLE, n DECIMAL(12,4), x FLOAT)",
                "INSERT INTO t_load VALUES (1, 'back\\\\slash', 'it''s', X'00FF5C27', '2024-02-29 23:59:59.999999',"
                " 1e300, -12345678.9876, 3.4028234e38)",
                "INSERT INTO t_load VALUES (2, CONCAT('nul', CHAR(0), 'z', CHAR(26)), CONCAT('line', CHAR(10), 'cr',"
                " CHAR(13), 'tab', CHAR(9)), UNHEX(REPEAT('5C4E', 3)), '0000-00-00 00:00:00', -0e0, 0, -1.5)",
                "INSERT INTO t_load VALUES (3, 'NULL', '\\\\N', NULL, NULL, NULL, NULL, NULL)",
                "INSERT INTO t_load VALUES (4, '', '', '', '1970-01-01 00:00:01', 5e-324, 0.0001, 1e-38)",
                "INSERT INTO t_load VALUES (5, 'ünïcødé ✓ 𝄞', CONCAT('caf', CHAR(233)), X'0A0D09', NULL, 2.5e-5, NULL, 0)",
            ],
        )
        proc = env.start_daemon()
        env.wait_caught_up(proc=proc)
        for family in FAMILIES:
            assert_same(env, family.table, "bulk copy rendered by the daemon")
        assert len(assert_same(env, "t_load", "a LOAD DATA copy rendered by the daemon")) == 5
        # and by LOAD DATA indeed: a field the server read otherwise than meant is refused and re-sent as INSERT
        # (which would hide a wrong escape from the comparison above)
        assert "copying with INSERT instead of LOAD DATA" not in env.daemon_log(), env.daemon_log()[-2000:]
    finally:
        conn.close()


# --- collations: equal under the collation, different in bytes ----------------------------------------------------


def test_keys_equal_under_the_collation_stay_apart_through_the_stream(tenv: Env) -> None:
    """'a', 'A' and 'a ' are one key to a case-insensitive PAD SPACE collation but three values.

    Primary-key changes between them must land with the new bytes, in the parent and, through ON UPDATE CASCADE
    (not in the binlog: reproduced by the applier), in the child; several such changes share one batch.
    """
    env = tenv
    conn = source_session(env)
    try:
        run(
            conn,
            [
                "CREATE TABLE ci (k VARCHAR(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci NOT NULL"
                " PRIMARY KEY, v INT)",
                "CREATE TABLE ci_child (id INT PRIMARY KEY, k VARCHAR(20) CHARACTER SET utf8mb4 COLLATE"
                " utf8mb4_general_ci, CONSTRAINT ci_child_k FOREIGN KEY (k) REFERENCES ci (k)"
                " ON UPDATE CASCADE ON DELETE CASCADE)",
                "CREATE TABLE ci2 (a VARCHAR(10) CHARACTER SET latin1 COLLATE latin1_swedish_ci NOT NULL,"
                " b CHAR(5) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL, v INT, PRIMARY KEY (a, b))",
                "INSERT INTO ci VALUES ('a', 1), ('b', 2), ('s', 3), ('q', 4)",
                "INSERT INTO ci_child VALUES (1, 'a'), (2, 'b'), (3, 's'), (4, 's'), (5, 'q')",
                "INSERT INTO ci2 VALUES ('x', 'y', 1), ('ä', 'o', 2)",
            ],
        )
        tables = {"ci": "k", "ci_child": "id", "ci2": "a, b"}

        def same(phase: str) -> None:
            for table, key in tables.items():
                src, dst = dump(env.source, env.db, table, key), dump(env.target, env.db, table, key)
                assert src == dst, f"{table} after {phase}:\n  source {src}\n  target {dst}"

        proc = env.start_daemon()
        env.wait_caught_up(proc=proc)
        same("bulk copy")
        # no wait in between: these transactions share batches
        run(conn, ["UPDATE ci SET k = 'A' WHERE k = 'a'"])
        run(
            conn,
            [
                "UPDATE ci SET k = 'a ' WHERE k = 'A'",
                "UPDATE ci SET k = 'B' WHERE k = 'b'",
                "UPDATE ci SET k = 'ß' WHERE k = 's'",  # equal to 's' under utf8mb4_general_ci
                "UPDATE ci2 SET a = 'X', b = 'Y ' WHERE a = 'x'",
                "UPDATE ci2 SET a = 'Ä' WHERE a = 'ä'",
            ],
            one_transaction=True,
        )
        run(
            conn,
            [
                "UPDATE ci SET k = 'A' WHERE k = 'a'",  # matches 'a ' (PAD SPACE)
                "INSERT INTO ci VALUES ('c', 5)",
                "UPDATE ci SET k = 'C ' WHERE k = 'c'",
                "DELETE FROM ci WHERE k = 'b '",  # matches 'B'; its child goes by ON DELETE CASCADE
                "UPDATE ci SET k = 'Q' WHERE k = 'q'",
                "UPDATE ci SET k = 'q' WHERE k = 'q'",  # finds 'Q' (case-insensitive) and changes it back
            ],
            one_transaction=True,
        )
        env.wait_caught_up(proc=proc)
        same("key changes between collation-equal values")
        # the source really cascaded the new bytes ('A', 'ß' twice, 'q'; 'B' deleted), and so did the target
        expected = [("41",), ("C39F",), ("C39F",), ("71",)]
        assert env.source.execute(f"SELECT HEX(k) FROM {env.db}.ci_child ORDER BY id") == expected
        assert env.target.execute(f"SELECT HEX(k) FROM {env.db}.ci_child ORDER BY id") == expected
    finally:
        conn.close()


# --- what cannot be carried exactly stops the daemon at a clean checkpoint ----------------------------------------

_POSITION = re.compile(r"binlog\.\d+:(\d+)")


def _stopped(env: Env, proc: subprocess.Popen[bytes], *needles: str) -> str:
    """The daemon exited 12 with a message holding every needle; returns the message line."""
    assert proc.wait(60) == EXIT_UNCARRYABLE, env.daemon_log()[-3000:]
    lines = [line for line in env.daemon_log().splitlines() if line.startswith("austasync: ")]
    assert lines, env.daemon_log()[-3000:]
    message = lines[-1]
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def _streaming_with_stop(
    env: Env, create: Sequence[str], good: str, bad: Sequence[str], session: Sequence[str] = ()
) -> tuple[str, list[str], tuple[str, int]]:
    """Start the daemon on ``create``, stream ``good``, then ``bad`` (in a session set up by ``session``) and one
    more good transaction. Returns the stop message, the dump of ``t`` before ``bad`` and the position before it.
    """
    conn = source_session(env)
    try:
        run(conn, create)
        proc = env.start_daemon()
        env.wait_caught_up(proc=proc)
        run(conn, [good])
        env.wait_caught_up(proc=proc)
        before_rows = dump(env.source, env.db, "t", "id")
        before = env.source_position()
        run(conn, [*session, *bad])
        later = source_session(env)  # a fresh session: the bad one may have changed session settings
        try:
            run(later, ["INSERT INTO t (id) VALUES (999)"])
        finally:
            later.close()
        message = _stopped(env, proc)
    finally:
        conn.close()
    return message, before_rows, before


def _assert_untouched_past(env: Env, message: str, before_rows: list[str], before: tuple[str, int]) -> None:
    """The checkpoint is the boundary before the offending transaction, the target exactly as it was there, and
    the message names a position past that boundary (the offending event's)."""
    checkpoint = env.checkpoint()
    assert checkpoint is not None
    assert (checkpoint[0], checkpoint[1]) == before
    assert dump(env.target, env.db, "t", "id") == before_rows
    positions = [int(p) for p in _POSITION.findall(message)]
    assert positions, message
    assert any(p > before[1] for p in positions), message


def test_enum_invalid_value_stops_the_stream(tenv: Env) -> None:
    """A non-strict source stores an unknown ENUM label as index 0 (''); a strict target cannot write it."""
    env = tenv
    message, rows, before = _streaming_with_stop(
        env,
        ["CREATE TABLE t (id INT PRIMARY KEY, pick ENUM('a','b'), n INT)", "INSERT INTO t VALUES (1, 'a', 1)"],
        "INSERT INTO t VALUES (2, 'b', 2)",
        ["INSERT INTO t VALUES (3, 'no such label', 3)"],
    )
    assert env.source.execute(f"SELECT pick + 0 FROM {env.db}.t WHERE id = 3") == [(0,)]
    for needle in (f"{env.db}.t", "column pick", "ENUM", "index 0", "austasync reset"):
        assert needle in message
    _assert_untouched_past(env, message, rows, before)
    # a restart reads the same event again and stops at the same place, writing nothing
    again = _stopped(env, env.start_daemon(), "column pick", "index 0")
    assert _POSITION.findall(again) == _POSITION.findall(message)
    _assert_untouched_past(env, again, rows, before)


def test_enum_invalid_value_stops_the_copy(tenv: Env) -> None:
    env = tenv
    conn = source_session(env)
    try:
        run(
            conn,
            [
                "CREATE TABLE t (id INT PRIMARY KEY, pick ENUM('a','b'))",
                "INSERT INTO t VALUES (1, 'a'), (2, 'no such label'), (3, 'b')",
            ],
        )
    finally:
        conn.close()
    proc = env.start_daemon()
    message = _stopped(env, proc, f"copy of {env.db}.t column pick", "index 0", "source position binlog.")
    checkpoint = env.checkpoint()
    assert checkpoint is not None and checkpoint[2] == "copying"
    assert env.target.execute(f"SELECT COUNT(*) FROM {env.db}.t") == [(0,)], "no row of the refused chunk"
    assert _POSITION.search(message)


def test_row_image_without_every_column_stops_the_stream(tenv: Env) -> None:
    """A session with binlog_row_image=MINIMAL logs only some columns: None there is not NULL."""
    env = tenv
    message, rows, before = _streaming_with_stop(
        env,
        ["CREATE TABLE t (id INT PRIMARY KEY, a INT, b VARCHAR(10))", "INSERT INTO t VALUES (1, 1, 'x')"],
        "INSERT INTO t VALUES (2, 2, 'y')",
        ["UPDATE t SET a = 5 WHERE id = 1"],
        session=["SET SESSION binlog_row_image = 'MINIMAL'"],
    )
    for needle in (f"{env.db}.t", "column a", "cols bitmap", "binlog_row_image"):
        assert needle in message
    _assert_untouched_past(env, message, rows, before)


def test_compressed_binlog_event_stops_the_stream(tenv: Env) -> None:
    """MariaDB's log_bin_compress writes compressed rows events the library cannot read (it would drop them)."""
    env = tenv
    try:
        message, rows, before = _streaming_with_stop(
            env,
            ["CREATE TABLE t (id INT PRIMARY KEY, body TEXT)", "INSERT INTO t VALUES (1, 'x')"],
            "INSERT INTO t VALUES (2, 'y')",
            [
                "SET GLOBAL log_bin_compress = ON",
                "INSERT INTO t VALUES (3, REPEAT('compress me ', 200))",  # above log_bin_compress_min_len
                "SET GLOBAL log_bin_compress = OFF",
            ],
        )
    finally:
        env.source.execute("SET GLOBAL log_bin_compress = OFF")
    for needle in ("MariaDB compressed WRITE_ROWS", f"table map of {env.db}.t", "log_bin_compress"):
        assert needle in message
    _assert_untouched_past(env, message, rows, before)


def test_table_map_without_column_names_stops_the_stream(tenv: Env) -> None:
    """binlog_row_metadata switched to MINIMAL while streaming: no names, no signedness, no charsets."""
    env = tenv
    try:
        message, rows, before = _streaming_with_stop(
            env,
            ["CREATE TABLE t (id INT PRIMARY KEY, n INT UNSIGNED)", "INSERT INTO t VALUES (1, 1)"],
            "INSERT INTO t VALUES (2, 4294967295)",
            [
                "SET GLOBAL binlog_row_metadata = MINIMAL",
                "INSERT INTO t VALUES (3, 4294967295)",
                "SET GLOBAL binlog_row_metadata = FULL",
            ],
        )
    finally:
        env.source.execute("SET GLOBAL binlog_row_metadata = FULL")
    for needle in (f"{env.db}.t", "no column names", "binlog_row_metadata=FULL"):
        assert needle in message
    _assert_untouched_past(env, message, rows, before)


# --- MariaDB's pre-5.6 temporal formats (tables created with mysql56_temporal_format=OFF) --------------------------

OLD_ROWS = [
    "(1, '2020-01-02 03:04:05', '-12:34:56', '2020-01-02 03:04:05', 7)",
    "(2, '0000-00-00 00:00:00', '838:59:59', '0000-00-00 00:00:00', 8)",
    "(3, '2020-00-31 23:59:59', '-00:00:01', FROM_UNIXTIME(1), 9)",
]


def test_old_temporal_format_without_fractions_is_carried(tenv: Env) -> None:
    env = tenv
    conn = source_session(env)
    try:
        try:
            run(
                conn,
                [
                    "SET GLOBAL mysql56_temporal_format = OFF",
                    "CREATE TABLE t (id INT PRIMARY KEY, a DATETIME, b TIME, c TIMESTAMP NULL DEFAULT NULL, n INT)",
                ],
            )
        finally:
            env.source.execute("SET GLOBAL mysql56_temporal_format = ON")
        assert "mariadb-5.3" in str(env.source.execute(f"SHOW CREATE TABLE {env.db}.t")[0][1])
        run(conn, ["INSERT INTO t VALUES " + ",".join(OLD_ROWS)])
        proc = env.start_daemon()
        env.wait_caught_up(proc=proc)
        assert dump(env.source, env.db, "t", "id") == dump(env.target, env.db, "t", "id")
        run(conn, ["INSERT INTO t VALUES " + ",".join(r.replace("(", "(2", 1) for r in OLD_ROWS)])
        run(conn, ["UPDATE t SET id = id + 100, a = '1999-12-31 00:00:00', b = '-00:00:00' WHERE id < 10"])
        env.wait_caught_up(proc=proc)
        assert dump(env.source, env.db, "t", "id") == dump(env.target, env.db, "t", "id")
    finally:
        conn.close()


def test_old_temporal_format_with_fractions_stops_the_stream(tenv: Env) -> None:
    """MariaDB 5.3's DATETIME(n)/TIME(n)/TIMESTAMP(n): the library misreads the whole row after such a column."""
    env = tenv
    try:
        message, rows, before = _streaming_with_stop(
            env,
            [
                "SET GLOBAL mysql56_temporal_format = OFF",
                "CREATE TABLE t (id INT PRIMARY KEY, at DATETIME(3), n INT)",
                "SET GLOBAL mysql56_temporal_format = ON",
                "CREATE TABLE u (id INT PRIMARY KEY)",
                "INSERT INTO t VALUES (1, '2020-01-02 03:04:05.678', 1)",
            ],
            "INSERT INTO u VALUES (1)",  # the copy is exact (text); any rows event of t stops the stream
            ["INSERT INTO t VALUES (3, '2020-01-02 03:04:05.678', 3)"],
        )
    finally:
        env.source.execute("SET GLOBAL mysql56_temporal_format = ON")
    for needle in (f"{env.db}.t", "column at", "mariadb-5.3", "ALTER TABLE", "FORCE"):
        assert needle in message
    _assert_untouched_past(env, message, rows, before)


def test_mariadb_uuid_and_inet6_primary_keys(tenv: Env) -> None:
    """Keys of MariaDB's UUID and INET6 types: matched on the target by their binary form, moved and deleted."""
    env = tenv
    if "mariadb" not in str(env.source.execute("SELECT VERSION()")[0][0]).lower():
        pytest.skip("UUID and INET6 are MariaDB types")
    conn = source_session(env)
    uuids = [
        "00000000-0000-0000-0000-000000000000",
        "6ccd780c-baba-1026-9564-5b8c656024db",
        "12345678-0000-0000-0000-000000000000",
        "123e4567-e89b-12d3-a456-426614174000",
    ]
    try:
        run(
            conn,
            [
                "CREATE TABLE tu (id UUID NOT NULL PRIMARY KEY, n INT)",
                "CREATE TABLE ti (a INET6 NOT NULL, b INT NOT NULL, n INT, PRIMARY KEY (a, b))",
                "INSERT INTO tu VALUES " + ",".join(f"('{u}', {i})" for i, u in enumerate(uuids)),
                "INSERT INTO ti VALUES ('::', 1, 1), ('ffff:ffff::1:2:3', 2, 2), ('2001:db8::', 3, 3)",
            ],
        )
        proc = env.start_daemon()
        env.wait_caught_up(proc=proc)
        for table, key in (("tu", "id"), ("ti", "a, b")):
            assert dump(env.source, env.db, table, key) == dump(env.target, env.db, table, key), table
        run(
            conn,
            [
                "UPDATE tu SET n = n + 10",
                f"UPDATE tu SET id = 'ffffffff-ffff-1fff-8fff-ffffffffffff' WHERE id = '{uuids[0]}'",
                f"DELETE FROM tu WHERE id = '{uuids[1]}'",
                "INSERT INTO tu VALUES ('00000000-0000-0000-0000-000000000001', 9)",
                "UPDATE ti SET a = '::1' WHERE a = '::'",
                "UPDATE ti SET n = 20 WHERE a = 'ffff:ffff::1:2:3'",
                "DELETE FROM ti WHERE a = '2001:db8::'",
            ],
        )
        env.wait_caught_up(proc=proc)
        for table, key in (("tu", "id"), ("ti", "a, b")):
            assert dump(env.source, env.db, table, key) == dump(env.target, env.db, table, key), table
        assert env.target.execute(f"SELECT COUNT(*) FROM {env.db}.tu") == [(4,)]
    finally:
        conn.close()
