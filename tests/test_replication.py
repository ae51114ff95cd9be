"""`austasync run` copies a live database and streams it exactly (real MariaDB source/target, real Redis)."""

from __future__ import annotations

import signal
import time

from conftest import Env, dump

SCHEMA = [
    "CREATE TABLE users (id BIGINT UNSIGNED PRIMARY KEY AUTO_INCREMENT, email VARCHAR(190) NOT NULL,"
    " name VARCHAR(100) NULL, score DECIMAL(12,2) NOT NULL DEFAULT 0, UNIQUE KEY users_email (email))",
    "CREATE TABLE documents (id BIGINT UNSIGNED PRIMARY KEY AUTO_INCREMENT, user_id BIGINT UNSIGNED NULL,"
    " ocr_text TEXT NULL, sha BINARY(32) NOT NULL, meta JSON NULL,"
    " CONSTRAINT documents_user FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE)",
    "CREATE TABLE sessions (id VARCHAR(64) PRIMARY KEY, user_id BIGINT UNSIGNED NULL, payload LONGTEXT,"
    " last_activity INT NOT NULL,"
    " CONSTRAINT sessions_user FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE SET NULL)",
]


def create_schema(env: Env) -> None:
    env.source.execute(f"USE {env.db}", *SCHEMA)


def assert_same(env: Env, tables: dict[str, str]) -> None:
    for table, key in tables.items():
        src = dump(env.source, env.db, table, key)
        dst = dump(env.target, env.db, table, key)
        assert src == dst, f"{table} differs: {len(src)} source rows, {len(dst)} target rows"


ALL = {"users": "id", "documents": "id", "sessions": "id"}


def test_copies_existing_rows_then_streams_inserts_updates_deletes(env: Env) -> None:
    create_schema(env)
    rows = ",".join(f"('u{i}@x.pt', 'Usuário {i} ção 🎉', {i}.25)" for i in range(1, 701))
    env.source.execute(f"INSERT INTO {env.db}.users (email, name, score) VALUES {rows}")
    env.source.execute(
        f"INSERT INTO {env.db}.documents (user_id, ocr_text, sha, meta) SELECT id, CONCAT('texto ', id),"
        f" UNHEX(SHA2(id, 256)), JSON_OBJECT('n', id) FROM {env.db}.users"
    )
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    assert_same(env, ALL)

    env.source.execute(
        f"UPDATE {env.db}.users SET name = NULL, score = score * 2 WHERE id % 7 = 0",
        f"DELETE FROM {env.db}.documents WHERE id % 5 = 0",
        f"INSERT INTO {env.db}.sessions VALUES ('s1', 3, 'payload', 1), ('s2', NULL, '', 2)",
        f"UPDATE {env.db}.documents SET sha = UNHEX(CONCAT(REPEAT('ab', 30), '0000')) WHERE id = 3",
    )
    env.wait_caught_up(proc=proc)
    assert_same(env, ALL)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0


def test_cascades_missing_from_the_binlog_are_reproduced(env: Env) -> None:
    create_schema(env)
    env.source.execute(
        f"INSERT INTO {env.db}.users (id, email) VALUES (1, 'a@x'), (2, 'b@x'), (3, 'c@x')",
        f"INSERT INTO {env.db}.documents (user_id, sha) VALUES (1, 'a'), (1, 'b'), (2, 'c'), (3, 'd')",
        f"INSERT INTO {env.db}.sessions VALUES ('s1', 1, 'p', 1), ('s2', 2, 'p', 2)",
    )
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    env.source.execute(f"DELETE FROM {env.db}.users WHERE id IN (1, 2)")
    env.wait_caught_up(proc=proc)
    assert env.target.execute(f"SELECT COUNT(*) FROM {env.db}.documents")[0][0] == 1
    assert env.target.execute(f"SELECT user_id FROM {env.db}.sessions ORDER BY id") == [(None,), (None,)]
    assert_same(env, ALL)


def test_unique_key_swap_inside_one_transaction_is_not_drift(env: Env) -> None:
    create_schema(env)
    env.source.execute(f"INSERT INTO {env.db}.users (id, email) VALUES (1, 'a@x'), (2, 'b@x')")
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    conn = env.source.connect(autocommit=False)
    with conn.cursor() as cur:
        cur.execute(f"UPDATE {env.db}.users SET email = 'tmp' WHERE id = 1")
        cur.execute(f"UPDATE {env.db}.users SET email = 'a@x' WHERE id = 2")
        cur.execute(f"UPDATE {env.db}.users SET email = 'b@x' WHERE id = 1")
    conn.commit()
    conn.close()
    env.wait_caught_up(proc=proc)
    assert_same(env, ALL)


def test_sigterm_stops_at_a_clean_checkpoint_and_exits_zero(env: Env) -> None:
    create_schema(env)
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert time.monotonic() - started < 5
