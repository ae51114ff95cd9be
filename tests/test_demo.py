"""The demo: the README's command runs end to end on throwaway servers, and its own comparison can fail."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest

from austasync.demo import portal
from austasync.demo.__main__ import compare
from servers import MariaDB

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MariaDB, MariaDB]]:
    base = tmp_path_factory.mktemp("demo")
    left, right = MariaDB(base / "left", 31), MariaDB(base / "right", 32)
    left.start()
    right.start()
    yield left, right
    left.stop()
    right.stop()


def test_the_demo_command_migrates_the_live_portal_exactly() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo.sh"), "--users", "150", "--rate", "40", "--seconds", "8"],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-5000:]
    assert "preflight: 0 fail" in out
    assert re.search(r"phase (copying|streaming), tables copied \d+/8", out), out[-3000:]
    deletions = re.search(r"workload done: .*delete_account (\d+)", out)
    assert deletions and int(deletions.group(1)) > 0, out[-3000:]  # cascades were exercised
    assert re.search(r"source and target are identical: 8 tables, \d+ rows compared byte for byte", out)


def test_the_comparison_sees_a_byte_that_differs(
    pair: tuple[MariaDB, MariaDB], monkeypatch: pytest.MonkeyPatch
) -> None:
    left, right = pair
    # both loads must produce the same rows: a second boundary between them would change every timestamp
    fixed = portal.now()
    monkeypatch.setattr(portal, "now", lambda: fixed)
    for server in pair:
        server.execute(f"DROP DATABASE IF EXISTS {portal.DATABASE}")
        conn = server.connect(autocommit=False)
        with conn.cursor() as cur:  # and the same server clock, for DEFAULT CURRENT_TIMESTAMP columns
            cur.execute("SET SESSION timestamp = %s", (int(fixed.replace(tzinfo=UTC).timestamp()),))
        portal.load(conn, 20, seed=3)
        conn.close()
    rows, differ = compare(left, right)
    assert rows > 20
    assert differ == []
    # equal under the collation, different bytes: a copy that lost case would pass a collation-aware check
    right.execute(f"UPDATE {portal.DATABASE}.users SET email = UPPER(email) WHERE id = 7")
    assert right.execute(f"SELECT COUNT(*) FROM {portal.DATABASE}.users WHERE email = LOWER(email)")[0][0] == 20
    _, differ = compare(left, right)
    assert differ == ["users: source 20 rows, target 20 rows, contents differ"]


def test_load_and_workload_steps_used_by_the_compose_stack(pair: tuple[MariaDB, MariaDB], tmp_path: Path) -> None:
    server = pair[0]
    server.execute(f"DROP DATABASE IF EXISTS {portal.DATABASE}")
    empty = tmp_path / "pw"
    empty.write_text("\n")
    common = ["--host", "127.0.0.1", "--port", str(server.port), "--user", "root", "--password-file", str(empty)]
    demo = [sys.executable, "-m", "austasync.demo"]
    first = subprocess.run([*demo, "load", *common, "--users", "30"], capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    assert "loaded users 30," in first.stdout
    again = subprocess.run([*demo, "load", *common], capture_output=True, text=True, check=False)
    assert "already loaded" in again.stdout
    before = server.execute("SHOW MASTER STATUS")[0][:2]
    work = subprocess.run(
        [*demo, "workload", *common, "--rate", "50", "--seconds", "2"], capture_output=True, text=True, check=False
    )
    assert work.returncode == 0, work.stderr
    assert "workload: " in work.stdout
    ops = dict(re.findall(r"(\w+) (\d+)", work.stdout.split("workload: ", 1)[1]))
    assert sum(int(v) for v in ops.values()) >= 50
    assert server.execute("SHOW MASTER STATUS")[0][:2] != before  # it committed writes
