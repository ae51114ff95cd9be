"""`austasync verify` on real servers: every pitfall of docs/DESIGN.md#verify-pitfalls, by table, key and kind.

One daemon copies every table of the module once and is stopped (SIGTERM); each test then changes one table
on the target behind its back and verifies that table alone, so a difference elsewhere can never make a test
pass. The two-row pitfalls also show pt-table-checksum's CRC32 + BIT_XOR missing the same change.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pymysql
import pytest
import redis
from moto.server import ThreadedMotoServer

from austasync import config as configmod
from austasync import verifier
from austasync.control import Control
from austasync.errors import UnavailableError
from austasync.scheduler import VerificationScheduler
from austasync.touched import TouchedKeys
from conftest import Env, dump
from servers import MariaDB, Redis, free_port

ROWS = 300  # two chunks at the tests' chunk_rows = 200: the second one open-ended
WIDE_ROWS = 6000  # its last chunk holds more rows than verify compares one by one: narrowing splits it

TABLES = {
    "t_swap": "id INT PRIMARY KEY, v VARCHAR(32) NOT NULL",
    "t_ts": "id INT PRIMARY KEY, ts TIMESTAMP NOT NULL DEFAULT '2024-01-01 00:00:00'",
    "t_case": "id INT PRIMARY KEY, name VARCHAR(20) COLLATE utf8mb4_general_ci NOT NULL",
    "t_space": "id INT PRIMARY KEY, name VARCHAR(20) NOT NULL",
    "t_null": "id INT PRIMARY KEY, note VARCHAR(20) NULL, note2 VARCHAR(20) NULL",
    "t_sep": (
        "id INT PRIMARY KEY, u1 VARCHAR(10) NOT NULL, u2 VARCHAR(10) NOT NULL,"
        " l1 VARCHAR(10) CHARACTER SET latin1 NOT NULL, l2 VARCHAR(10) CHARACTER SET latin1 NOT NULL"
    ),
    "t_double": "id INT PRIMARY KEY, d DOUBLE NOT NULL, f FLOAT NOT NULL",
    "t_binary": "id INT PRIMARY KEY, b BINARY(8) NOT NULL",
    "t_bit": "id INT PRIMARY KEY, flags BIT(16) NOT NULL",
    "t_missing": "id INT PRIMARY KEY, v VARCHAR(20) NOT NULL",
    "t_extra": "id INT PRIMARY KEY, v VARCHAR(20) NOT NULL",
    "t_capped": "id INT PRIMARY KEY, v VARCHAR(20) NOT NULL",
    "t_schema": "id INT PRIMARY KEY, v VARCHAR(20) NOT NULL",
    "t_unfinished": "id INT PRIMARY KEY, v VARCHAR(20) NOT NULL",
    "t_repair": "id INT PRIMARY KEY, v VARCHAR(20) NOT NULL, n INT NULL",
    "t_composite": "a VARCHAR(10) NOT NULL, b INT NOT NULL, v TEXT NULL, PRIMARY KEY (a, b)",
    "t_wide": "a INT NOT NULL, b VARCHAR(8) NOT NULL, v INT NOT NULL, PRIMARY KEY (a, b)",
    "t_clean": (
        "id BIGINT PRIMARY KEY, s VARCHAR(40) CHARACTER SET latin1 NULL, u VARCHAR(40) NULL, j JSON NULL,"
        " blob_col BLOB NULL, dec_col DECIMAL(12,3) NULL, dt DATETIME(6) NULL, e ENUM('x','y','z') NULL,"
        " st SET('a','b') NULL, y YEAR NULL, tm TIME(3) NULL, g INT AS (id * 2) VIRTUAL"
    ),
}

FILL = {
    "t_swap": "(id, v) SELECT seq, CONCAT('value-', LPAD(seq, 4, '0')) FROM seq_rows",
    # rows 20 and 21 hold the same instant, so shifting both by the same amount is the same edit twice
    "t_ts": "(id, ts) SELECT seq, IF(seq IN (20, 21), '2024-03-01 10:00:00',"
    " '2024-01-01 00:00:00' + INTERVAL seq HOUR) FROM seq_rows",
    "t_case": "(id, name) SELECT seq, CONCAT('name', seq) FROM seq_rows",
    "t_space": "(id, name) SELECT seq, CONCAT('name', seq) FROM seq_rows",
    "t_null": "(id, note, note2) SELECT seq, CASE WHEN seq = 50 THEN NULL WHEN seq = 51 THEN '' ELSE CONCAT('n', seq)"
    " END, NULL FROM seq_rows",
    "t_sep": "(id, u1, u2, l1, l2) SELECT seq, IF(seq = 5, 'a#', 'u'), 'c', IF(seq = 6, 'aÿ', 'l'), 'c' FROM seq_rows",
    "t_double": "(id, d, f) SELECT seq, IF(seq = 60, 0.1e0, seq / 7e0), IF(seq = 61, 1.0000001e0, seq) FROM seq_rows",
    "t_binary": "(id, b) SELECT seq, UNHEX(LPAD(HEX(seq), 16, '0')) FROM seq_rows",
    "t_bit": "(id, flags) SELECT seq, seq * 3 FROM seq_rows",
    "t_missing": "(id, v) SELECT seq, CONCAT('v', seq) FROM seq_rows",
    "t_extra": "(id, v) SELECT seq * 2, CONCAT('v', seq) FROM seq_rows",
    "t_capped": "(id, v) SELECT seq, CONCAT('v', seq) FROM seq_rows",
    "t_schema": "(id, v) SELECT seq, CONCAT('v', seq) FROM seq_rows",
    "t_unfinished": "(id, v) SELECT seq, CONCAT('v', seq) FROM seq_rows",
    "t_repair": "(id, v, n) SELECT seq, CONCAT('v', seq), IF(seq % 3 = 0, NULL, seq) FROM seq_rows",
    "t_composite": "(a, b, v) SELECT CHAR(65 + seq % 5), seq, IF(seq % 4 = 0, NULL, REPEAT('t', seq)) FROM seq_rows",
    "t_wide": "(a, b, v) SELECT seq DIV 10, CONCAT('k', seq MOD 10), seq FROM seq_rows",
    "t_clean": (
        "(id, s, u, j, blob_col, dec_col, dt, e, st, y, tm)"
        " SELECT seq - 150, IF(seq % 5 = 0, NULL, CONCAT('ção ', seq)), IF(seq % 7 = 0, '', CONCAT('ü', seq)),"
        " JSON_OBJECT('n', seq), IF(seq % 2 = 0, NULL, UNHEX(REPEAT('00ff', seq % 9))), seq / 8,"
        " '2024-02-29 23:59:59.123456' - INTERVAL seq MINUTE, ELT(1 + seq % 3, 'x', 'y', 'z'),"
        " IF(seq % 2 = 0, 'a,b', 'b'), 1901 + seq % 200, SEC_TO_TIME(seq * 61.5 - 5000) FROM seq_rows"
    ),
}


def _with_rows(fill: str, rows: int) -> str:
    """``(cols) SELECT ... FROM seq_rows`` with seq_rows = 1..rows (at most 10,000): recursive CTEs of 100 steps,
    under the servers' recursion limits, in MariaDB and MySQL 8 alike."""
    columns, select = fill.split(" SELECT ", 1)
    cte = (
        "WITH RECURSIVE d (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM d WHERE n < 100),"
        f" seq_rows (seq) AS (SELECT (x.n - 1) * 100 + y.n FROM d AS x, d AS y WHERE (x.n - 1) * 100 + y.n <= {rows})"
    )
    return f"{columns} {cte} SELECT {select}"


@pytest.fixture(scope="module")
def copied(
    source: MariaDB, target: MariaDB, redis_server: Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    """Every table copied by a real daemon, which is then stopped: the target holds exactly the source."""
    env = Env(source, target, redis_server, tmp_path_factory.mktemp("verify"), "verify_module")
    source.execute(f"CREATE DATABASE {env.db}")
    for table, ddl in TABLES.items():
        source.execute(
            f"USE {env.db}",
            f"CREATE TABLE {table} ({ddl})",
            f"INSERT INTO {table} {_with_rows(FILL[table], WIDE_ROWS if table == 't_wide' else ROWS)}",
        )
    proc = env.start_daemon()
    try:
        env.wait_caught_up(proc=proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        yield env
    finally:
        env.stop_all()


def verify(env: Env, *args: str, extra_env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "austasync", "verify", "--json", *args, "--config", str(env.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(extra_env or {})},
    )
    assert proc.stdout, f"exit {proc.returncode}, no report:\n{proc.stderr}"
    return proc.returncode, json.loads(proc.stdout)


def verify_table(env: Env, table: str) -> tuple[int, dict[str, Any]]:
    code, doc = verify(env, "--tables", f"{env.db}.{table}")
    assert [t["table"] for t in doc["tables"]] == [f"{env.db}.{table}"]
    return code, doc["tables"][0]


def found(table_doc: dict[str, Any]) -> set[tuple[str, tuple[Any, ...]]]:
    return {(d["kind"], tuple(d["key"].values())) for d in table_doc["differences"]}


def on_target(env: Env, *statements: str) -> None:
    env.target.execute(f"USE {env.db}", *statements)


def naive_checksums_equal(env: Env, table: str, columns: str) -> bool:
    """pt-table-checksum's default: BIT_XOR of CRC32 over CONCAT_WS('#', ...)."""
    sql = f"SELECT COUNT(*), BIT_XOR(CRC32(CONCAT_WS('#', {columns}))) FROM {env.db}.{table}"
    return env.source.execute(sql) == env.target.execute(sql)


def test_clean_tables_are_consistent_and_the_report_follows_the_format(copied: Env) -> None:
    code, doc = verify(copied, "--tables", f"{copied.db}.t_clean,{copied.db}.t_composite")
    assert code == 0, doc
    assert doc["consistent"] is True and doc["aligned"] is False
    assert doc["source_position"] == "{}:{}".format(*copied.source_position())
    assert doc["migration"] == copied.name and doc["duration_seconds"] > 0 and doc["started_at"].endswith("Z")
    clean, composite = doc["tables"]
    assert clean["table"] == f"{copied.db}.t_clean" and clean["rows_checked"] == ROWS and clean["chunks"] >= 2
    assert clean["consistent"] is True and clean["differences"] == [] and clean["differences_total"] == 0
    assert clean["generated_columns_not_compared"] == ["g"]
    assert composite["rows_checked"] == ROWS and composite["consistent"] is True


def test_a_value_swapped_between_two_rows(copied: Env) -> None:
    on_target(
        copied,
        "UPDATE t_swap SET v = CASE id WHEN 10 THEN 'value-0011' ELSE 'value-0010' END WHERE id IN (10, 11)",
    )
    assert naive_checksums_equal(copied, "t_swap", "id, v")  # the linear checksum cannot see it
    code, table = verify_table(copied, "t_swap")
    assert code == 1 and table["consistent"] is False
    assert found(table) == {("changed", (10,)), ("changed", (11,))}


def test_the_same_timestamp_shift_on_two_rows_of_a_chunk(copied: Env) -> None:
    on_target(copied, "UPDATE t_ts SET ts = ts + INTERVAL 1 HOUR WHERE id IN (20, 21)")
    assert naive_checksums_equal(copied, "t_ts", "id, ts")
    code, table = verify_table(copied, "t_ts")
    assert code == 1 and found(table) == {("changed", (20,)), ("changed", (21,))}


def test_case_of_a_letter_under_a_case_insensitive_collation(copied: Env) -> None:
    on_target(copied, "UPDATE t_case SET name = 'NAME30' WHERE id = 30")
    code, table = verify_table(copied, "t_case")
    assert code == 1 and found(table) == {("changed", (30,))}


def test_a_trailing_space(copied: Env) -> None:
    on_target(copied, "UPDATE t_space SET name = 'name40 ' WHERE id = 40")
    code, table = verify_table(copied, "t_space")
    assert code == 1 and found(table) == {("changed", (40,))}


def test_null_against_empty_string_and_a_value_moved_between_nullable_columns(copied: Env) -> None:
    on_target(
        copied,
        "UPDATE t_null SET note = IF(id = 50, '', NULL) WHERE id IN (50, 51)",
        "UPDATE t_null SET note2 = note, note = NULL WHERE id = 52",  # left to right: note2 gets the old note
    )
    code, table = verify_table(copied, "t_null")
    assert code == 1 and found(table) == {("changed", (50,)), ("changed", (51,)), ("changed", (52,))}


def test_a_separator_moved_between_two_columns(copied: Env) -> None:
    # 'a#' + 'c' against 'a' + '#c' (utf8mb4), 'aÿ' + 'c' against 'a' + 'ÿc' (latin1, where 0xFF is a letter)
    on_target(
        copied,
        "UPDATE t_sep SET u1 = 'a', u2 = '#c' WHERE id = 5",
        "UPDATE t_sep SET l1 = 'a', l2 = 'ÿc' WHERE id = 6",
    )
    assert naive_checksums_equal(copied, "t_sep", "id, u1, u2")
    code, table = verify_table(copied, "t_sep")
    assert code == 1 and found(table) == {("changed", (5,)), ("changed", (6,))}


def test_the_last_bit_of_a_double_and_of_a_float(copied: Env) -> None:
    # 0.1 and the next double up; 1.0000001 and 1.0000002 both print as 1 for a FLOAT
    on_target(
        copied,
        "UPDATE t_double SET d = 0.10000000000000002e0 WHERE id = 60",
        "UPDATE t_double SET f = 1.0000002e0 WHERE id = 61",
    )
    assert copied.target.execute(f"SELECT CONCAT(f) FROM {copied.db}.t_double WHERE id = 61") == [("1",)]
    code, table = verify_table(copied, "t_double")
    assert code == 1 and found(table) == {("changed", (60,)), ("changed", (61,))}


def test_one_byte_of_a_binary(copied: Env) -> None:
    on_target(copied, "UPDATE t_binary SET b = CONCAT(LEFT(b, 3), 'X', SUBSTRING(b, 5)) WHERE id = 70")
    code, table = verify_table(copied, "t_binary")
    assert code == 1 and found(table) == {("changed", (70,))}


def test_a_bit_flip(copied: Env) -> None:
    on_target(copied, "UPDATE t_bit SET flags = flags ^ 1 WHERE id = 80")
    code, table = verify_table(copied, "t_bit")
    assert code == 1 and found(table) == {("changed", (80,))}


def test_a_missing_row(copied: Env) -> None:
    on_target(copied, "DELETE FROM t_missing WHERE id = 90")
    code, table = verify_table(copied, "t_missing")
    assert code == 1 and found(table) == {("missing_in_target", (90,))}


def test_extra_rows_before_between_and_beyond_the_source_keys(copied: Env) -> None:
    last = ROWS * 2
    on_target(copied, f"INSERT INTO t_extra VALUES (-5, 'before'), (301, 'between'), ({last + 1000}, 'beyond')")
    code, table = verify_table(copied, "t_extra")
    assert code == 1
    assert found(table) == {("extra_in_target", (-5,)), ("extra_in_target", (301,)), ("extra_in_target", (1600,))}


def test_a_composite_key_row_changed_in_a_text_column(copied: Env) -> None:
    on_target(copied, "UPDATE t_composite SET v = CONCAT(v, '.') WHERE a = 'C' AND b = 7")
    code, table = verify_table(copied, "t_composite")
    assert code == 1 and found(table) == {("changed", ("C", 7))}


def test_a_large_mismatched_chunk_is_split_until_rows_are_named(copied: Env) -> None:
    on_target(
        copied,
        "UPDATE t_wide SET v = -v WHERE a = 500 AND b = 'k0'",
        "INSERT INTO t_wide VALUES (450, 'k5x', 0), (9999, 'z', 0)",
    )
    code, table = verify_table(copied, "t_wide")
    assert code == 1 and table["rows_checked"] == WIDE_ROWS
    assert found(table) == {
        ("changed", (500, "k0")),
        ("extra_in_target", (450, "k5x")),
        ("extra_in_target", (9999, "z")),
    }


def test_the_listed_keys_are_capped_and_all_counted(copied: Env) -> None:
    on_target(copied, "DELETE FROM t_capped WHERE id <= 150")
    code, table = verify_table(copied, "t_capped")
    assert code == 1
    assert len(table["differences"]) == 100 and table["differences_capped"] is True
    assert table["differences_total"] == 150
    assert table["counts"] == {"changed": 0, "missing_in_target": 150, "extra_in_target": 0}


def test_a_target_table_of_another_shape_is_a_difference(copied: Env) -> None:
    on_target(copied, "ALTER TABLE t_schema ADD COLUMN extra INT NULL")
    code, table = verify_table(copied, "t_schema")
    assert code == 1 and table["consistent"] is False
    assert table["schema_differences"] == ["column extra exists only on the target"]


def test_a_table_whose_copy_is_not_complete_is_not_verified(copied: Env) -> None:
    cursor = f"WHERE migration = '{copied.name}' AND tbl = 't_unfinished'"
    copied.target.execute(f"UPDATE _austasync.copy_cursor SET done = 0 {cursor}")
    try:
        code, table = verify_table(copied, "t_unfinished")
    finally:
        copied.target.execute(f"UPDATE _austasync.copy_cursor SET done = 1 {cursor}")
    assert code == 3 and table["consistent"] is False and "copy not complete" in table["unverified"]


def test_usage_errors_exit_2(copied: Env) -> None:
    unknown = copied.run_cli("verify", "--tables", f"{copied.db}.nope")
    assert unknown.returncode == 2 and "not replicated" in unknown.stderr
    malformed = copied.run_cli("verify", "--tables", "nodot")
    assert malformed.returncode == 2
    no_bucket = copied.run_cli("verify", "--tables", f"{copied.db}.t_clean", "--report", "s3://")
    assert no_bucket.returncode == 2 and "bucket" in no_bucket.stderr


def test_report_to_a_file(copied: Env, tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    code, doc = verify(copied, "--tables", f"{copied.db}.t_clean", "--report", str(path))
    assert code == 0 and json.loads(path.read_text()) == doc


@pytest.fixture
def s3() -> Iterator[dict[str, str]]:
    """moto's S3 API in server mode on loopback: real HTTP requests, as a real S3 endpoint gets them."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    settings = {
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        yield settings
    finally:
        server.stop()


def test_report_to_s3_is_encrypted_and_named_by_migration_and_time(copied: Env, s3: dict[str, str]) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=s3["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="evidence")
    code, doc = verify(copied, "--tables", f"{copied.db}.t_clean", "--report", "s3://evidence/lgpd/", extra_env=s3)
    assert code == 0
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="evidence")["Contents"]]
    assert len(keys) == 1 and keys[0].startswith(f"lgpd/{copied.name}/verify-") and keys[0].endswith("Z.json")
    stored = client.get_object(Bucket="evidence", Key=keys[0])
    assert stored["ServerSideEncryption"] == "AES256"
    assert json.loads(stored["Body"].read()) == doc


def test_s3_unreachable_is_could_not_complete(copied: Env) -> None:
    dead = {
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{free_port()}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1",
    }
    code, _doc = verify(copied, "--tables", f"{copied.db}.t_clean", "--report", "s3://evidence/x/", extra_env=dead)
    assert code == 3


def test_repair_recopies_the_differing_keys_and_verifies_again(copied: Env) -> None:
    on_target(
        copied,
        "UPDATE t_repair SET v = 'drift', n = NULL WHERE id = 5",
        "DELETE FROM t_repair WHERE id IN (6, 250)",
        "INSERT INTO t_repair VALUES (9999, 'extra', 1)",
    )
    code, doc = verify(copied, "--repair", "--tables", f"{copied.db}.t_repair")
    assert code == 0, doc
    assert doc["repair"]["differences_before"] == {f"{copied.db}.t_repair": 4}
    assert doc["repair"]["tables"][f"{copied.db}.t_repair"] == {"keys": 4, "rows_deleted": 2, "rows_written": 3}
    assert doc["tables"][0]["consistent"] is True
    assert dump(copied.source, copied.db, "t_repair", "id") == dump(copied.target, copied.db, "t_repair", "id")
    code, _doc = verify(copied, "--tables", f"{copied.db}.t_repair")
    assert code == 0


def test_a_lease_holder_without_a_reachable_barrier_is_could_not_complete(copied: Env) -> None:
    """Comparing as is while some daemon may be streaming would invent or hide differences: refuse instead."""
    client = redis.Redis.from_url(copied.redis.url)
    client.set(f"t:{copied.name}:lease", json.dumps({"token": "x", "holder": "elsewhere:1"}), px=60_000)
    try:
        # [http] listen port 0: the address is unknown, or the one a stopped daemon published is unreachable
        unknown = copied.run_cli("verify", "--tables", f"{copied.db}.t_clean")
        assert unknown.returncode == 3
        assert "control address is not known" in unknown.stderr or "cannot reach the daemon's" in unknown.stderr
        copied.extra["http"] = {"listen": f"127.0.0.1:{free_port()}"}
        unreachable = copied.run_cli("verify", "--tables", f"{copied.db}.t_clean")
        assert unreachable.returncode == 3 and "cannot reach the daemon's control interface" in unreachable.stderr
        repair = copied.run_cli("verify", "--repair", "--tables", f"{copied.db}.t_clean")
        assert repair.returncode == 3 and "cannot reach the daemon's control interface" in repair.stderr
    finally:
        copied.extra.pop("http", None)
        client.delete(f"t:{copied.name}:lease")


# --- with the daemon streaming: aligned through its barrier ----------------------------------------------------


def published(env: Env) -> dict[str, Any]:
    raw = redis.Redis.from_url(env.redis.url).get(f"t:{env.name}:verify")
    assert raw, "no verification published to Redis"
    return dict(json.loads(raw))


def _writer(env: Env, stop: threading.Event, errors: list[BaseException]) -> None:
    """About 100 transactions a second: a steady stream the daemon keeps up with, even on a busy machine."""
    conn = env.source.connect()
    try:
        n = 0
        with conn.cursor() as cur:
            while not stop.wait(0.03):
                n += 1
                cur.execute(f"UPDATE {env.db}.hot SET v = v + 1, s = CONCAT('s', v) WHERE id = {n % 200 + 1}")
                cur.execute(f"INSERT INTO {env.db}.hot (id, v, s) VALUES ({1000 + n}, {n}, 'new')")
                cur.execute(f"DELETE FROM {env.db}.hot WHERE id = {1000 + n - 5}")
    except pymysql.err.MySQLError as exc:
        errors.append(exc)
    finally:
        conn.close()


def _streaming_hot_table(env: Env) -> subprocess.Popen[bytes]:
    """A daemon caught up on a 400-row table ``hot``, its control interface on a fixed port."""
    env.extra["http"] = {"listen": f"127.0.0.1:{free_port()}"}
    env.source.execute(
        f"USE {env.db}",
        "CREATE TABLE hot (id INT PRIMARY KEY, v INT NOT NULL, s VARCHAR(20) NULL)",
        f"INSERT INTO hot {_with_rows('(id, v, s) SELECT seq, seq, NULL FROM seq_rows', 400)}",
    )
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    return proc


@contextlib.contextmanager
def _source_writer(env: Env) -> Iterator[list[BaseException]]:
    """:func:`_writer` running for the block; its errors, checked after."""
    stop, errors = threading.Event(), []
    writer = threading.Thread(target=_writer, args=(env, stop, errors), daemon=True)
    writer.start()
    try:
        yield errors
    finally:
        stop.set()
        writer.join(10)


def test_aligned_verifications_while_the_source_takes_writes(env: Env) -> None:
    proc = _streaming_hot_table(env)
    with _source_writer(env) as errors:
        for _ in range(5):
            code, doc = verify(env)
            assert code == 0 and doc["aligned"] is True, doc
            assert doc["tables"][0]["rows_checked"] > 300
        assert published(env)["consistent"] is True
        # behind the daemon's back, on a row the writer never touches
        env.target.execute(f"UPDATE {env.db}.hot SET s = 'drift' WHERE id = 300")
        code, doc = verify(env)
        assert code == 1 and doc["aligned"] is True
        assert found(doc["tables"][0]) == {("changed", (300,))}
        gate = published(env)  # what `austasync ready` and the drift metrics read
        assert gate["consistent"] is False and gate["drift_rows"] == 1 and gate["tables"] == {f"{env.db}.hot": 1}
    assert not errors and proc.poll() is None


def test_repair_goes_through_the_running_daemon_at_its_barrier_while_the_source_takes_writes(env: Env) -> None:
    proc = _streaming_hot_table(env)
    with _source_writer(env) as errors:
        # behind the daemon's back, on rows the writer never touches
        env.target.execute(
            f"UPDATE {env.db}.hot SET s = 'drift' WHERE id = 300",
            f"DELETE FROM {env.db}.hot WHERE id = 301",
            f"INSERT INTO {env.db}.hot VALUES (999999, 1, 'extra')",
        )
        code, doc = verify(env, "--repair")
        assert code == 0 and doc["aligned"] is True, doc
        assert doc["repair"]["tables"] == {f"{env.db}.hot": {"keys": 3, "rows_deleted": 2, "rows_written": 2}}
        # the stream goes on over the repaired rows
        env.source.execute(f"UPDATE {env.db}.hot SET s = 'after repair' WHERE id IN (300, 301)")
    assert not errors and proc.poll() is None
    env.wait_caught_up(proc=proc)
    assert dump(env.source, env.db, "hot", "id") == dump(env.target, env.db, "hot", "id")
    assert "repaired keys at the barrier" in env.daemon_log()


def test_the_repair_endpoint_refuses_a_body_it_cannot_use_and_says_why(env: Env) -> None:
    port = free_port()
    env.extra["http"] = {"listen": f"127.0.0.1:{port}"}
    env.source.execute(f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, v INT)", f"INSERT INTO {env.db}.t VALUES (1, 1)")
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    for body, says in (
        ({}, 'body must be {"tables"'),
        ({"tables": {"nope.t": [["01"]]}}, "nope.t is not a replicated table"),
        ({"tables": {f"{env.db}.t": [["01", "02"]]}}, "each key is a list of 1 hex values (id)"),
    ):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/control/repair", data=json.dumps(body).encode(), method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)  # noqa: S310 (loopback)
        assert refused.value.code == 400 and says in json.loads(refused.value.read())["error"]
    assert proc.poll() is None


@pytest.mark.parametrize("pace", [1.0, 0.25])
def test_a_paced_verification_idles_three_times_as_long_as_it_queries_at_a_quarter(copied: Env, pace: float) -> None:
    """The daemon's scheduled passes keep the servers busy only ``verify.pace`` of the time."""
    config = configmod.load(copied.config_path)
    slept: list[float] = []
    ticks = iter(range(10**6))

    def clock() -> float:  # a fake clock: each reading advances it by 0.01 s, so busy time is deterministic
        return next(ticks) * 0.01

    result = verifier.verify(
        config, verifier.NoDaemonAligner(), [f"{copied.db}.t_clean"], clock=clock, pace=pace, sleep=slept.append
    )
    assert result.consistent and result.tables[0].chunks >= 1
    if pace == 1.0:
        assert slept == []
    else:
        # each rest is 3x the time the chunk before it took, a whole number of the clock's 0.01 s steps
        busy = [s / 3 for s in slept]
        assert slept and all(b >= 0.01 and abs(b / 0.01 - round(b / 0.01)) < 1e-6 for b in busy), slept
        assert sum(busy) <= result.duration_seconds


# --- between full passes: the keys the stream wrote -------------------------------------------------------------


def test_a_pass_over_the_written_keys_finds_drift_at_those_keys_only_and_keeps_keys_it_could_not_check(
    copied: Env,
) -> None:
    on_target(
        copied,
        "UPDATE t_repair SET v = 'drift here' WHERE id = 11",
        "UPDATE t_repair SET v = 'drift 12' WHERE id = 12",  # not written since the last full pass
    )
    try:
        config = configmod.load(copied.config_path)
        touched = TouchedKeys()
        touched.add((copied.db, "t_repair"), [("10",), ("11",)])
        results: list[verifier.Result] = []
        failing = [False, True]  # popped from the end: the first run fails, the second runs

        def run(config: configmod.Config, _aligner: object, *args: Any, **kwargs: Any) -> verifier.Result:
            if failing.pop():
                raise UnavailableError("the source went away")
            return verifier.verify(config, verifier.NoDaemonAligner(), *args, **kwargs)

        scheduler = VerificationScheduler(config, Control(), results.append, touched=touched, run=run)
        scheduler._touched_pass()  # could not complete: the keys wait for the next pass
        assert not results and touched.take().keys == {(copied.db, "t_repair"): frozenset({("10",), ("11",)})}
        touched.add((copied.db, "t_repair"), [("10",), ("11",)])
        scheduler._touched_pass()
        assert len(results) == 1 and results[0].differs  # drift is published, so the gate closes
        (table,) = results[0].tables
        assert {(d.kind, d.key) for d in table.differences} == {("changed", (b"11",))}
        assert table.rows_checked == 2 and touched.take().empty
    finally:
        on_target(copied, "UPDATE t_repair SET v = CONCAT('v', id) WHERE id IN (11, 12)")


def test_the_daemon_checks_the_keys_it_wrote_between_full_passes(env: Env) -> None:
    env.extra["verify"] = {"interval_seconds": 3600, "touched_interval_seconds": 1}
    env.source.execute(
        f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, v INT NOT NULL)",
        f"INSERT INTO {env.db}.t SELECT seq, seq FROM {env.db}.seq_1_to_100",
    )
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    deadline = time.monotonic() + 30
    while "scheduled verification done" not in env.daemon_log() and time.monotonic() < deadline:
        time.sleep(0.2)
    env.source.execute(f"UPDATE {env.db}.t SET v = v + 1 WHERE id <= 10")
    env.wait_caught_up(proc=proc)
    while '"keys": 10' not in env.daemon_log() and time.monotonic() < deadline + 10:
        time.sleep(0.2)
    line = next(x for x in env.daemon_log().splitlines() if "written keys verified" in x)
    assert json.loads(line)["keys"] == 10 and json.loads(line)["consistent"] is True, line


def test_keys_a_running_pass_took_still_count_for_a_final_check_until_it_ends_clean(copied: Env) -> None:
    """A cutover asking while a pass runs must still get the keys that pass took: they are not proven yet."""
    config = configmod.load(copied.config_path)
    touched = TouchedKeys()
    touched.add((copied.db, "t_repair"), [("10",)])
    seen: list[dict[str, Any]] = []

    def run(config: configmod.Config, _aligner: object, *args: Any, **kwargs: Any) -> verifier.Result:
        seen.append(scheduler.written_since_baseline())  # what a cutover would get right now
        return verifier.verify(config, verifier.NoDaemonAligner(), *args, **kwargs)

    scheduler = VerificationScheduler(config, Control(), lambda _result: None, touched=touched, run=run)
    scheduler.baseline = 1.0  # a clean full pass happened
    scheduler._touched_pass()
    assert seen == [{"baseline": 1.0, "keys": {f"{copied.db}.t_repair": [["10"]]}, "whole": []}]
    assert scheduler.written_since_baseline() == {"baseline": 1.0, "keys": {}, "whole": []}  # checked clean
    scheduler.invalidate("a test")
    assert scheduler.written_since_baseline() == {"baseline": None}
