"""Bytes written by real MySQL servers (tests/fixtures/mysql, from public test suites: see its README), read
offline, since no MySQL server runs here: every binlog file through the reader's own packet loop, every binary
JSON value through the row decoder's JSON converter.

The expectations come from outside austasync: the event count from walking each file's event headers here, the
event types from MySQL's numbering, the JSON documents from the test suites the bytes were taken from.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from austasync.binlog import outcomes
from austasync.binlog.adapter import BinlogReader
from austasync.binlog.rowcodec import json_text
from austasync.errors import UncarryableValueError
from austasync.events import Statement
from austasync.position import Position

FIXTURES = Path(__file__).parent / "fixtures" / "mysql"
BINLOGS = sorted((FIXTURES / "binlogs").iterdir())
# files whose every event has a named outcome and which stop nowhere
STOPS = {
    "osheroff_binlog_connector__mysql-bin.compressed": "TRANSACTION_PAYLOAD",
    "rust_mysql_common__transaction_compression.000001": "TRANSACTION_PAYLOAD",
    "rust_mysql_common__json.binlog.000001": "PARTIAL_UPDATE_ROWS",
}


def event_types(data: bytes) -> list[int]:
    """The type of every event of a binlog file, from its headers (timestamp, type, server id, size, ...)."""
    types, pos = [], 4
    while pos + 19 <= len(data):
        _, etype, _, size = struct.unpack_from("<IBII", data, pos)
        types.append(etype)
        pos += size
    return types


def replay(path: Path) -> tuple[BinlogReader, list[object]]:
    reader = BinlogReader(None, 1, {}, Position(path.name, 4))
    return reader, list(reader.replay(path.read_bytes()))


@pytest.mark.parametrize("path", [p for p in BINLOGS if p.name not in STOPS], ids=lambda p: p.name)
def test_every_event_of_a_real_mysql_binlog_gets_exactly_one_outcome(path: Path) -> None:
    reader, events = replay(path)
    statements = sum(isinstance(e, Statement) for e in events)  # judged and counted by the consumer
    assert sum(reader.tally.values()) + statements == len(event_types(path.read_bytes()))
    assert reader.tally[outcomes.STOP] == 0


@pytest.mark.parametrize("name", sorted(STOPS))
def test_compressed_transactions_and_partial_json_updates_stop_with_what_to_turn_off(name: str) -> None:
    with pytest.raises(UncarryableValueError, match=STOPS[name]) as stopped:
        replay(FIXTURES / "binlogs" / name)
    assert "binlog_transaction_compression" in str(stopped.value) and "binlog_row_value_options" in str(stopped.value)


def test_mysql_9_tagged_gtids_are_transaction_control_and_their_previous_gtids_metadata() -> None:
    path = FIXTURES / "binlogs" / "rust_mysql_common__binlog_transaction_with_GTID_TAG.000001"
    types = event_types(path.read_bytes())
    assert 42 in types and 35 in types  # GTID_TAGGED, PREVIOUS_GTIDS in MySQL 9.6's tagged form
    reader, _ = replay(path)
    assert reader.tally[outcomes.TRANSACTION] >= types.count(42) + types.count(16)  # GTID_TAGGED and XID
    assert reader.tally[outcomes.METADATA] == types.count(15) + types.count(35) + types.count(4)


def test_mysql_9_binlogs_that_declare_the_old_rows_events_obsolete_are_read() -> None:
    """MySQL 8.4+ declares a post-header of 0 bytes for the version-1 rows events it no longer writes."""
    for name in ("rust_mysql_common__json-opaque.binlog", "rust_mysql_common__vector.binlog"):
        reader, _ = replay(FIXTURES / "binlogs" / name)
        assert reader.tally[outcomes.NOT_SELECTED] > 0 and reader.tally[outcomes.STOP] == 0


def test_an_unknown_event_the_server_flags_ignorable_is_skipped_by_that_rule() -> None:
    """Aurora's type-100 padding event carries LOG_EVENT_IGNORABLE_F, which lets a replica drop what it does not
    know; an unknown event without the flag still stops (the next test)."""
    reader, _ = replay(FIXTURES / "binlogs" / "osheroff_binlog_connector__mysql-bin.aurora-padding")
    assert reader.tally[outcomes.key("ignorable")] == 1


def test_an_unknown_event_without_the_ignorable_flag_stops() -> None:
    data = bytearray((FIXTURES / "binlogs" / "osheroff_binlog_connector__mysql-bin.aurora-padding").read_bytes())
    pos = 4
    while pos + 19 <= len(data):
        _, etype, _, size = struct.unpack_from("<IBII", data, pos)
        if etype == 100:
            struct.pack_into("<H", data, pos + 17, 0)  # the same event, its flags cleared
        pos += size
    reader = BinlogReader(None, 1, {}, Position("aurora", 4))
    with pytest.raises(UncarryableValueError, match="type 100"):
        reader.replay(bytes(data))


VECTORS = json.loads((FIXTURES / "vectors.json").read_text())
OPAQUE = "opaque JSON value"


@pytest.mark.parametrize(
    "vector",
    [v for v in VECTORS if v["expected"] is not None or v.get("server_generated")],
    ids=lambda v: v["source"][-60:],
)
def test_mysql_binary_json_is_carried_as_the_same_document_or_refused(vector: dict[str, object]) -> None:
    """Documents decode to what the suite the bytes come from expects; opaque values (DATE, TIME, DATETIME,
    DECIMAL, BIT, BLOB inside JSON) are refused, since no JSON text parses back to the same types; bytes the
    suites made by hand that no server would write (a container whose size runs past its end) are refused too."""
    raw = bytes.fromhex(str(vector["hex"]))
    expected = vector["expected"]
    note = str(vector.get("note") or "")
    if _opaque(vector):
        with pytest.raises(ValueError, match=OPAQUE):
            json_text(raw)
        return
    if "size" in note and ">" in note:  # hand-made, truncated
        with pytest.raises(ValueError, match="truncated"):
            json_text(raw)
        return
    document = json.loads(json_text(raw))
    if expected is None:  # the suite states only what MySQL's generated columns computed from the document
        assert {k: document[k] for k in vector["server_generated"]} == vector["server_generated"]  # type: ignore[union-attr]
    else:
        assert document == (json.loads(expected) if isinstance(expected, str) else expected)


def _opaque(vector: dict[str, object]) -> bool:
    """Whether the suite says the value holds an opaque scalar (its note, its MySQL text, or its case name)."""
    note, expected = str(vector.get("note") or "").lower(), vector["expected"]
    case = str(vector["source"]).split("case ", 1)[-1] if "case " in str(vector["source"]) else ""
    return (
        "opaque" in note
        or (isinstance(expected, str) and "base64:type" in expected)
        or bool(re.match(r"'(datetime|time|date|decimal|small decimal|bit literal|opaque)\b", case))
    )
