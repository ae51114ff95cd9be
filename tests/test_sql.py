"""Literals and predicates are exact; FKs are read from SHOW CREATE TABLE text."""

from __future__ import annotations

import datetime as dt
import decimal

from austasync.schema import parse_foreign_keys
from austasync.sql import Kind, after_key, at_most_key, value_literal


def test_values_render_as_exact_literals() -> None:
    assert value_literal(None, Kind.INT, "") == "NULL"
    assert value_literal(18446744073709551615, Kind.INT, "") == "18446744073709551615"
    tiny = decimal.Decimal("-0.000000000000000000000000000001")
    assert value_literal(tiny, Kind.DECIMAL, "") == "-0.000000000000000000000000000001"  # never 1E-30 (a DOUBLE)
    assert float(value_literal(0.1, Kind.DOUBLE, "")) == 0.1
    assert value_literal(0.1, Kind.DOUBLE, "").endswith("e0")  # parsed by the server as a DOUBLE
    # the same under every sql_mode: quotes doubled, other bytes as themselves, hex for a backslash or ''
    assert value_literal(b"a'\\\x00", Kind.BINARY, "binary") == "_binary X'61275c00'"
    assert value_literal(b"a'b\x00\n\r\x1a", Kind.BINARY, "binary") == "_binary'a''b\x00\n\r\x1a'"
    assert value_literal(b"", Kind.TEXT, "latin1") == "_latin1 X''"
    assert value_literal("a\\b", Kind.TEXT, "utf8mb4") == "_utf8mb4 X'615c62'"
    assert value_literal(dt.timedelta(seconds=-1, microseconds=-250000), Kind.TEMPORAL, "") == "'-00:00:01.250000'"
    assert value_literal(dt.datetime(2020, 1, 2, 3, 4, 5, 6), Kind.TEMPORAL, "") == "'2020-01-02 03:04:05.000006'"


def test_composite_key_predicates_are_expanded_for_range_scans() -> None:
    assert after_key(["a", "b"], ["1", "2"]) == "((`a` > 1) OR (`a` = 1 AND `b` > 2))"
    assert at_most_key(["a", "b"], ["1", "2"]) == "((`a` < 1) OR (`a` = 1 AND `b` < 2) OR (`a` = 1 AND `b` = 2))"


def test_foreign_keys_are_parsed_with_their_actions() -> None:
    ddl = (
        "CREATE TABLE `documents` (\n  `id` int NOT NULL,\n  `user_id` int DEFAULT NULL,\n"
        "  CONSTRAINT `docs_user` FOREIGN KEY (`user_id`) REFERENCES `users` (`id`) ON DELETE CASCADE,\n"
        "  CONSTRAINT `docs_x` FOREIGN KEY (`a`, `b`) REFERENCES `other`.`p` (`x`, `y`)"
        " ON DELETE SET NULL ON UPDATE CASCADE\n) ENGINE=InnoDB"
    )
    fks = parse_foreign_keys("portal", "documents", ddl)
    assert [(f.name, f.parent, f.child_columns, f.on_delete, f.on_update) for f in fks] == [
        ("docs_user", ("portal", "users"), ("user_id",), "CASCADE", "RESTRICT"),
        ("docs_x", ("other", "p"), ("a", "b"), "SET NULL", "CASCADE"),
    ]
