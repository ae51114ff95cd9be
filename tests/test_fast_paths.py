"""The throughput paths keep the guarantees: a binlog event longer than one protocol packet, a failure found by
the writer thread while the next batch is assembled, and copy chunks too wide to be joined on the source.

Each runs the daemon as a process against real servers; the fast paths are the ones it takes by default.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Env, dump
from servers import MariaDB, Redis

EXIT_DRIFT = 11


def _same(env: Env, table: str, columns: str) -> tuple[object, ...]:
    """Row count and order-independent checksums of ``table`` on both sides, asserted equal."""
    sql = f"SELECT COUNT(*), SUM(CRC32(CONCAT_WS('|', {columns}))), SUM(id) FROM {env.db}.{table}"
    src, dst = env.source.execute(sql), env.target.execute(sql)
    assert src == dst, (src, dst)
    return tuple(src[0])


@pytest.fixture
def big_event_source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    """A source that logs a whole multi-row statement as one rows event of tens of MB."""
    server = MariaDB(
        tmp_path_factory.mktemp("big_events"),
        server_id=411,
        extra=("--binlog-row-event-max-size=67108864", "--max-allowed-packet=128M"),
    )
    server.start()
    server.execute(
        "CREATE USER 'repl'@'%' IDENTIFIED BY 'repl-secret-pw'",
        "GRANT SELECT, RELOAD, REPLICATION SLAVE, REPLICATION CLIENT, LOCK TABLES, SLAVE MONITOR, BINLOG MONITOR, PROCESS"
        " ON *.* TO 'repl'@'%'",
    )
    yield server
    server.stop()


def test_a_rows_event_longer_than_a_protocol_packet_arrives_whole(
    big_event_source: MariaDB, target: MariaDB, redis_server: Redis, tmp_path: Path
) -> None:
    """A payload of 16 MB or more continues in the next packet; the reader joins them before decoding."""
    env = Env(big_event_source, target, redis_server, tmp_path, f"bigevent_{int(time.time() * 1000) % 10**9}")
    env.source.execute(
        f"CREATE DATABASE {env.db}", f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, v VARCHAR(1000) NOT NULL)"
    )
    proc = env.start_daemon()
    try:
        env.wait_caught_up(proc=proc)
        before = env.source_position()
        env.source.execute(
            f"INSERT INTO {env.db}.t SELECT seq, CONCAT(seq, ':', REPEAT(SHA2(seq, 256), 15))"
            f" FROM {env.db}.seq_1_to_30000"
        )
        after = env.source_position()
        assert after[0] == before[0] and after[1] - before[1] > 20 * 1024 * 1024, "one event above 16 MB"
        env.wait_caught_up(proc=proc, timeout=120)
        assert _same(env, "t", "id, v")[0] == 30000
    finally:
        env.stop_all()


def test_drift_met_by_a_batch_of_the_writer_thread_stops_at_the_checkpoint_before_it(env: Env) -> None:
    """Full batches are committed by the applier's writer thread while the next is assembled: a unique-key
    collision it meets still stops the daemon (exit 11) at the checkpoint before that batch, with nothing of it
    written, and every transaction up to that checkpoint on the target."""
    env.extra = {"apply": {"batch_max_rows": 20}}
    env.source.execute(f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, u INT NOT NULL UNIQUE, v VARCHAR(20))")
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    env.target.execute(f"INSERT INTO {env.db}.t VALUES (100000, 777, 'not from the source')")
    conn = env.source.connect()
    ends = {}
    try:
        with conn.cursor() as cur:
            for i in range(1, 301):
                # transaction 240 collides on u with the row written behind austasync's back
                cur.execute(f"INSERT INTO {env.db}.t VALUES ({i}, {777 if i == 240 else i}, 'row {i}')")
                cur.execute("SHOW MASTER STATUS")
                row = cur.fetchone()
                assert row is not None
                ends[i] = (str(row[0]), int(row[1]))
    finally:
        conn.close()
    assert proc.wait(60) == EXIT_DRIFT, env.daemon_log()[-3000:]
    log = env.daemon_log()
    assert "unique-key collision" in log and f"{env.db}.t" in log
    checkpoint = env.checkpoint()
    assert checkpoint is not None
    position = (checkpoint[0], checkpoint[1])
    assert position < ends[240], "the colliding transaction is not committed"
    applied = {i for i, end in ends.items() if end <= position}
    assert position in set(ends.values()) or not applied, "the checkpoint is a transaction boundary"
    on_target = {int(r[0]) for r in env.target.execute(f"SELECT id FROM {env.db}.t WHERE id < 100000")}
    assert on_target == applied, sorted(on_target ^ applied)[:10]


def test_rows_too_wide_to_join_on_the_source_are_copied_exactly(env: Env) -> None:
    """A chunk the source cannot join within its limit is read row by row, and the table's next chunks are
    made small enough to be joined again (``[copy] render = "source"``: the source joins the chunks)."""
    env.extra = {"copy": {"chunk_rows": 200, "render": "source"}}
    env.source.execute(
        f"CREATE TABLE {env.db}.wide (id INT PRIMARY KEY, body MEDIUMBLOB NOT NULL, note VARCHAR(10))",
        f"INSERT INTO {env.db}.wide SELECT seq, RANDOM_BYTES(1000), IF(seq % 7 = 0, NULL, 'n')"
        f" FROM {env.db}.seq_1_to_300",
        f"UPDATE {env.db}.wide SET body = REPEAT(body, 100)",  # 100 kB each: 20 MB for a chunk of 200
    )
    proc = env.start_daemon()
    try:
        env.wait_caught_up(proc=proc, timeout=120)
        assert _same(env, "wide", "id, HEX(body), IFNULL(note, 'NULL')")[0] == 300
    finally:
        env.stop_all()


def _binlogged_maps(server: MariaDB, since: tuple[str, int], table: str) -> int:
    """Table map events naming ``table`` in ``server``'s binlog after ``since`` (one per rows-writing statement)."""
    rows = server.execute(f"SHOW BINLOG EVENTS IN '{since[0]}' FROM {since[1]}")
    return sum(1 for row in rows if row[2] == "Table_map" and f"({table})" in str(row[5]))


def test_a_copy_kept_out_of_the_target_binlog_is_exact_and_only_the_stream_is_logged(env: Env) -> None:
    env.extra = {"copy": {"target_binlog": False}}
    env.source.execute(
        f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, v VARCHAR(40) NOT NULL)",
        f"INSERT INTO {env.db}.t SELECT seq, CONCAT('row ', seq) FROM {env.db}.seq_1_to_3000",
    )
    since = tuple(env.target.execute("SHOW MASTER STATUS")[0][:2])
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    assert _same(env, "t", "id, v")[0] == 3000
    assert _binlogged_maps(env.target, since, f"{env.db}.t") == 0  # 15 chunks copied, none logged
    env.source.execute(f"UPDATE {env.db}.t SET v = 'streamed' WHERE id <= 10")
    env.wait_caught_up(proc=proc)
    _same(env, "t", "id, v")
    assert _binlogged_maps(env.target, since, f"{env.db}.t") >= 1  # the stream's writes are logged as always
    assert "copied rows are not written to the target's binlog" in env.daemon_log()


def test_a_copy_out_of_the_target_binlog_without_the_privilege_stops_before_writing_a_row(env: Env) -> None:
    env.target.execute(
        "CREATE USER IF NOT EXISTS 'nobinlogadmin'@'%' IDENTIFIED BY 'nba-secret-pw'",
        f"GRANT ALL PRIVILEGES ON {env.db}.* TO 'nobinlogadmin'@'%'",
        "GRANT ALL PRIVILEGES ON _austasync.* TO 'nobinlogadmin'@'%'",
        "GRANT REPLICATION SLAVE, BINLOG MONITOR, CONNECTION ADMIN ON *.* TO 'nobinlogadmin'@'%'",
    )
    env.extra = {"copy": {"target_binlog": False}, "target": {"user": "nobinlogadmin", "password": "nba-secret-pw"}}
    env.source.execute(
        f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, v INT)",
        f"INSERT INTO {env.db}.t SELECT seq, seq FROM {env.db}.seq_1_to_500",
    )
    proc = env.start_daemon()
    assert proc.wait(60) == 4, env.daemon_log()
    log = env.daemon_log()
    assert "copy.target_binlog = false" in log and "BINLOG ADMIN" in log, log
    assert "nba-secret-pw" not in log
    # refused before anything was created or fenced on the target
    assert env.target.execute(f"SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{env.db}'") == [
        (0,)
    ]


# bytes that would break a naive file format: quotes before separators, newlines, escapes, NUL, Ctrl-Z, the word
# NULL, \N, and UTF-8 / latin1 high bytes
_AWKWARD = [
    b"a',b",
    b"x'\nNULL",
    b"\\N",
    b"NULL",
    b"",
    b"tab\there\r\n",
    b"back\\slash\\'",
    b"\x00\x1a\x00",
    b"'",
    b",",
    b"''",
    b"trailing  ",
    "emoji \U0001f600 ç".encode(),
    b"\\n is not a newline",
]


@pytest.mark.parametrize("render", ["daemon", "source"])
def test_chunks_loaded_as_files_carry_every_byte_and_every_kind_exactly(env: Env, render: str) -> None:
    """Tables of plain columns are copied by LOAD DATA from memory; the bytes must be those an INSERT writes,
    whoever renders the file's fields (``[copy] render``)."""
    env.extra = {"copy": {"render": render}}
    env.source.execute(
        f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, s VARCHAR(100) CHARACTER SET utf8mb4 NULL,"
        " l VARCHAR(60) CHARACTER SET latin1 NULL, sj VARCHAR(20) CHARACTER SET sjis NULL, b VARBINARY(64) NULL,"
        " bl BLOB NULL, bc BINARY(4) NULL, d DECIMAL(30,10) NULL, f FLOAT NULL, g DOUBLE NULL,"
        " dt DATETIME(6) NULL, ts TIMESTAMP(3) NULL, tm TIME(2) NULL, y YEAR NULL, u BIGINT UNSIGNED NULL)"
    )
    rows = []
    for i, text in enumerate(_AWKWARD, start=1):
        raw = text + bytes([i, 0x27, 0x5C, 0x2C, 0x0A])
        rows.append(
            f"({i}, X'{text.hex()}', X'{(text + bytes([0x81, 0xFF])).hex()}', X'{'835c'}',"  # sjis 0x835C ends in '\'
            f" X'{raw.hex()}', X'{(raw * 3).hex()}', X'{raw[:4].hex()}', -{i}.0000000001, 1.17549e-38, {i}.25e300,"
            f" '2024-02-29 23:59:59.{i:06d}', '2038-01-19 03:14:07.{i % 1000:03d}', '-838:59:59.{i % 100:02d}', {1901 + i},"
            f" 18446744073709551615)"
        )
    rows.append("(100, " + ", ".join(["NULL"] * 14) + ")")
    rows.append("(101, 'NULL', 'NULL', NULL, 'NULL', '', '', 0, 0, -0.0, '1000-01-01', NULL, '00:00:00', 0, 0)")
    env.source.execute(f"INSERT INTO {env.db}.t VALUES " + ",".join(rows))
    loads = int(env.target.execute("SHOW GLOBAL STATUS LIKE 'Com_load'")[0][1])
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    assert int(env.target.execute("SHOW GLOBAL STATUS LIKE 'Com_load'")[0][1]) > loads  # the LOAD path was taken
    assert dump(env.source, env.db, "t", "id") == dump(env.target, env.db, "t", "id")
    assert "instead of LOAD DATA" not in env.daemon_log()


@pytest.fixture
def no_local_infile_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    """A target that refuses LOAD DATA LOCAL (MySQL 8's default)."""
    server = MariaDB(tmp_path_factory.mktemp("no_local_infile"), server_id=412, extra=("--local-infile=0",))
    server.start()
    server.execute(
        "CREATE USER 'austasync'@'%' IDENTIFIED BY 'target-secret-pw'", "GRANT ALL PRIVILEGES ON *.* TO 'austasync'@'%'"
    )
    yield server
    server.stop()


def test_a_target_that_refuses_load_data_gets_every_chunk_as_an_insert(
    source: MariaDB, no_local_infile_target: MariaDB, redis_server: Redis, tmp_path: Path
) -> None:
    env = Env(source, no_local_infile_target, redis_server, tmp_path, f"noload_{int(time.time() * 1000) % 10**9}")
    env.source.execute(
        f"CREATE DATABASE {env.db}",
        f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, v VARCHAR(40) NOT NULL)",
        f"INSERT INTO {env.db}.t SELECT seq, CONCAT('row '', ', seq) FROM {env.db}.seq_1_to_2000",
    )
    proc = env.start_daemon()
    try:
        env.wait_caught_up(proc=proc)
        assert dump(env.source, env.db, "t", "id") == dump(env.target, env.db, "t", "id")
        log = env.daemon_log()
        assert "copying with INSERT instead of LOAD DATA" in log and '"every_table": true' in log
    finally:
        env.stop_all()
