"""Query events decoded from their bytes (no servers): the status variables a real MariaDB 10.11 wrote for a
two-phase ALTER, read by their lengths; an unknown one refused rather than stepped over blindly."""

from __future__ import annotations

import struct

import pytest

from austasync.binlog import query
from austasync.errors import UncarryableValueError

# written by MariaDB 10.11.19 (binlog_alter_two_phase = ON) for a latin1 session with lc_time_names = pt_BR and
# auto_increment_increment = 2: START ALTER, then COMMIT ALTER (Q_XID, then Q_GTID_FLAGS3 and the start's seq_no)
START = bytes.fromhex("0000000001010000205400000000060373746403020001000408000800e0000728008202")
COMMIT = bytes.fromhex(
    "0000000001010000205400000000060373746403020001000408000800e00007280081160000000000000082040600000000000000"
)


def body(status: bytes, statement: bytes, schema: bytes = b"db") -> bytes:
    return struct.pack("<IIBHH", 77, 0, len(schema), 0, len(status)) + status + schema + b"\0" + statement


def decode(status: bytes, statement: bytes = b"ALTER TABLE t ADD COLUMN w INT") -> query.QueryFields:
    b = body(status, statement)
    return query.decode(b, 0, len(b), 13, "binlog x:1")


def test_a_start_alter_reads_its_session_state_and_phase() -> None:
    fields = decode(START)
    assert (fields.thread, fields.schema, fields.statement) == (77, "db", b"ALTER TABLE t ADD COLUMN w INT")
    assert fields.alter_phase == "start"
    assert fields.auto_increment == (2, 1)
    assert fields.client_collation == 8  # latin1_swedish_ci
    assert fields.lc_time_names == 40  # pt_BR
    assert fields.sql_mode == 0x54200000


def test_a_commit_alter_steps_over_its_xid_and_start_sequence_number() -> None:
    assert decode(COMMIT).alter_phase == "commit"


def test_an_unknown_status_variable_is_refused_with_its_key() -> None:
    with pytest.raises(UncarryableValueError, match=r"status variable 131 \(0x83\)"):
        decode(START + bytes([0x83, 1, 0, 0, 0, 0]))


def test_status_variables_that_overrun_their_length_are_refused() -> None:
    with pytest.raises(UncarryableValueError, match="overrun"):
        decode(START[:-1])  # the last variable's byte is missing: its read goes past the block


def test_unknown_two_phase_flags_are_refused() -> None:
    with pytest.raises(UncarryableValueError, match="GTID flags 0x10"):
        decode(START[:-1] + b"\x10")


@pytest.mark.parametrize(
    ("statement", "collation", "exact"),
    [
        (b"ALTER TABLE t ADD c INT", None, True),  # ASCII: the same in every client character set
        ("DEFAULT 'ção'".encode(), 45, True),  # UTF-8 bytes from a utf8mb4 client
        ("DEFAULT 'ção'".encode("latin1"), 8, False),  # a latin1 client's bytes
        ("DEFAULT 'ção'".encode(), 8, False),  # valid UTF-8, but the latin1 client meant other characters
        ("DEFAULT 'ção'".encode(), None, False),  # no character set logged: cannot tell
        ("DEFAULT 'ção'".encode(), 4000, False),  # a collation the driver does not know
        (b"DEFAULT '\\xe7'", 8, True),  # a literal backslash sequence in ASCII is exact
    ],
)
def test_the_text_is_exact_only_when_its_bytes_mean_the_same_as_utf8(
    statement: bytes, collation: int | None, exact: bool
) -> None:
    status = START[:-2] if collation is None else START[:-2] + b"\x04" + struct.pack("<HHH", collation, 8, 224)
    status = status.replace(bytes.fromhex("0408000800e000"), b"") if collation is None else status
    assert decode(status, statement).exact is exact


def test_mysqls_session_collation_for_utf8mb4_is_read() -> None:
    # Q_DEFAULT_COLLATION_FOR_UTF8MB4 (0x12) = 45, utf8mb4_general_ci: a MySQL 8 session set for 5.7's meaning
    assert decode(START + b"\x12" + struct.pack("<H", 45)).default_collation_for_utf8mb4 == 45
