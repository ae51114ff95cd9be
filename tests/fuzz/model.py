"""The differential fuzzer's generator: a random schema and a random workload, both drawn from one seed.

Nothing here imports austasync. Values are written as literals built here (numbers bare, bytes and text as hex
with a charset introducer), so a statement means the same under every ``sql_mode`` the workload switches to
(``NO_BACKSLASH_ESCAPES``, ``ANSI_QUOTES``, ``PAD_CHAR_TO_FULL_LENGTH``...).

The schema covers the column types of docs/types.md, keys of several shapes (integer, composite, text with
awkward bytes, binary), unique keys, and foreign keys with CASCADE and SET NULL, self-references and two-table
cycles among them. A MyISAM table outside the selection takes the non-transactional writes that make the source
log savepoint rollbacks.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

Value = Callable[[random.Random], str]

# bytes a key or a text must survive: quote, backslash, NUL, newline, CR, ^Z, a trailing space, multi-byte text
_AWKWARD = ["'", "\\", "\x00", "\n", "\r", "\x1a", " ", '"', "`", "%", "_", "ç", "ã", "日", "😀", "a", "A", "b", "z"]


def _text(rng: random.Random, longest: int) -> str:
    return "".join(rng.choice(_AWKWARD) for _ in range(rng.randint(0, longest)))


def utf8_literal(text: str) -> str:
    """Text as a hex literal with its charset: no escaping, so no sql_mode changes its meaning."""
    data = text.encode()
    return f"_utf8mb4 X'{data.hex()}'" if data else "_utf8mb4 ''"


def bytes_literal(data: bytes) -> str:
    return f"X'{data.hex()}'" if data else "_binary ''"


def _int(lo: int, hi: int) -> Value:
    def make(rng: random.Random) -> str:
        return str(rng.choice([lo, hi, 0 if lo <= 0 else lo, rng.randint(lo, hi), rng.randint(lo, hi)]))

    return make


def _decimal(m: int, d: int) -> Value:
    def make(rng: random.Random) -> str:
        whole = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, m - d))) if m > d else "0"
        frac = "".join(rng.choice("0123456789") for _ in range(d))
        return ("-" if rng.random() < 0.3 else "") + whole + ("." + frac if d else "")

    return make


def _float(rng: random.Random) -> str:
    value = struct.unpack(
        "<f", struct.pack("<f", rng.choice([0.0, 1.0000001, -3.4e38, 1e-38, rng.uniform(-1e6, 1e6)]))
    )[0]
    return repr(value) + ("" if "e" in repr(value) else "e0")


def _double(rng: random.Random) -> str:
    value = rng.choice([0.0, 0.1, -1.7976931348623157e308, 5e-324, rng.uniform(-1e12, 1e12)])
    return repr(value) + ("" if "e" in repr(value) else "e0")


def _bit(n: int) -> Value:
    return lambda rng: str(rng.choice([0, 2**n - 1, rng.getrandbits(n)]))


def _date(rng: random.Random) -> str:
    # zero and partial-zero dates are written by the sessions whose sql_mode allows them (see SQL_MODES)
    return f"'{rng.choice(['0000-00-00', '2020-00-15', f'{rng.randint(1000, 9999)}-{rng.randint(1, 12):02}-{rng.randint(1, 28):02}'])}'"


def _datetime(fsp: int) -> Value:
    def make(rng: random.Random) -> str:
        frac = f".{rng.randint(0, 10**fsp - 1):0{fsp}}" if fsp else ""
        day = f"{rng.randint(1000, 9999)}-{rng.randint(1, 12):02}-{rng.randint(1, 28):02}"
        return f"'{day} {rng.randint(0, 23):02}:{rng.randint(0, 59):02}:{rng.randint(0, 59):02}{frac}'"

    return make


def _time(fsp: int) -> Value:
    def make(rng: random.Random) -> str:
        frac = f".{rng.randint(0, 10**fsp - 1):0{fsp}}" if fsp else ""
        sign = "-" if rng.random() < 0.3 else ""
        return f"'{sign}{rng.randint(0, 838):02}:{rng.randint(0, 59):02}:{rng.randint(0, 59):02}{frac}'"

    return make


def _timestamp(fsp: int) -> Value:
    # 1980..2030 in any offset zone stays inside TIMESTAMP's range; offset zones have no DST gaps
    def make(rng: random.Random) -> str:
        frac = f".{rng.randint(0, 10**fsp - 1):0{fsp}}" if fsp else ""
        day = f"{rng.randint(1980, 2030)}-{rng.randint(1, 12):02}-{rng.randint(1, 28):02}"
        return f"'{day} {rng.randint(0, 23):02}:{rng.randint(0, 59):02}:{rng.randint(0, 59):02}{frac}'"

    return make


def _utf8(longest: int) -> Value:
    return lambda rng: utf8_literal(_text(rng, longest))


def _latin1(longest: int) -> Value:
    return lambda rng: f"_latin1 X'{bytes(rng.randrange(256) for _ in range(rng.randint(0, longest))).hex()}'"


def _binary(longest: int) -> Value:
    return lambda rng: bytes_literal(
        bytes(rng.choice([0, 0, 0x5C, 0x27, 0xFF, rng.randrange(256)]) for _ in range(rng.randint(0, longest)))
    )


def _json(rng: random.Random) -> str:
    doc = rng.choice(['{"a": 1}', '{"b":[1, 2.5, null, true]}', '  {"z": "x", "a": {}}  ', "[]", '"s"', "null"])
    return utf8_literal(doc)


def _uuid(rng: random.Random) -> str:
    return f"'{rng.getrandbits(128):032x}'"


def _inet6(rng: random.Random) -> str:
    return rng.choice(
        ["'::'", "'ffff:ffff::1:2:3'", "'::ffff:1.2.3.4'", f"'{rng.getrandbits(16):x}::{rng.getrandbits(16):x}'"]
    )


def _point(rng: random.Random) -> str:
    return f"ST_GeomFromText('POINT({rng.randint(-90, 90)} {rng.randint(-180, 180)})')"


# (name, column type, value maker): the rows of docs/types.md
COLUMN_TYPES: list[tuple[str, str, Value]] = [
    ("ti", "TINYINT", _int(-128, 127)),
    ("tu", "TINYINT UNSIGNED", _int(0, 255)),
    ("si", "SMALLINT", _int(-32768, 32767)),
    ("mi", "MEDIUMINT UNSIGNED", _int(0, 16777215)),
    ("ii", "INT", _int(-(2**31), 2**31 - 1)),
    ("bu", "BIGINT UNSIGNED", _int(0, 2**64 - 1)),
    ("bi", "BIGINT", _int(-(2**63), 2**63 - 1)),
    ("de", "DECIMAL(65,30)", _decimal(65, 30)),
    ("dm", "DECIMAL(10,2)", _decimal(10, 2)),
    ("d0", "DECIMAL(5,0)", _decimal(5, 0)),
    ("fl", "FLOAT", _float),
    ("db", "DOUBLE", _double),
    ("b1", "BIT(1)", _bit(1)),
    ("b6", "BIT(64)", _bit(64)),
    ("yr", "YEAR", lambda rng: rng.choice(["0", "1901", "2155", str(rng.randint(1901, 2155))])),
    ("da", "DATE", _date),
    ("dt", "DATETIME", _datetime(0)),
    ("d6", "DATETIME(6)", _datetime(6)),
    ("tm", "TIME(3)", _time(3)),
    ("ts", "TIMESTAMP(6) NULL", _timestamp(6)),
    ("t0", "TIMESTAMP NULL", _timestamp(0)),
    ("ch", "CHAR(10) CHARACTER SET utf8mb4", _utf8(10)),
    ("cl", "CHAR(5) CHARACTER SET latin1", _latin1(5)),
    ("vc", "VARCHAR(40) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin", _utf8(40)),
    ("vl", "VARCHAR(40) CHARACTER SET latin1", _latin1(40)),
    ("tx", "TEXT CHARACTER SET utf8mb4", _utf8(300)),
    ("bn", "BINARY(8)", _binary(8)),
    ("vb", "VARBINARY(30)", _binary(30)),
    ("bl", "BLOB", _binary(2000)),
    ("en", "ENUM('a','b','ção') CHARACTER SET latin1", lambda rng: str(rng.randint(1, 3))),
    ("st", "SET('x','y','z')", lambda rng: str(rng.randint(0, 7))),
    ("js", "JSON", _json),
    ("uu", "UUID", _uuid),
    ("i6", "INET6", _inet6),
    ("i4", "INET4", lambda rng: f"'{rng.randint(0, 255)}.{rng.randint(0, 255)}.0.{rng.randint(0, 255)}'"),
    ("pt", "POINT", _point),
]

# key shapes: (columns with their types, value makers, order-by); "ref" keys are single INTs other tables point at
KEY_SHAPES = ["int", "int", "bigint_unsigned", "composite", "text", "binary"]

SQL_MODES = [
    "STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_AUTO_CREATE_USER,NO_ENGINE_SUBSTITUTION",
    "",  # zero dates, truncation
    "NO_BACKSLASH_ESCAPES",
    "ANSI_QUOTES,PIPES_AS_CONCAT",
    "PAD_CHAR_TO_FULL_LENGTH",
    "ALLOW_INVALID_DATES",
    "ANSI",
]
TIME_ZONES = ["'+00:00'", "'+05:45'", "'-07:00'", "'+13:00'"]


@dataclass
class Column:
    name: str
    type: str
    value: Value
    nullable: bool = True


@dataclass
class Table:
    name: str
    key: list[Column]
    columns: list[Column]
    refs: list[tuple[str, str, str]] = field(default_factory=list)  # (column, parent table, action)
    unique: str | None = None

    @property
    def order_by(self) -> str:
        return ", ".join(f"`{c.name}`" for c in self.key)

    @property
    def int_key(self) -> bool:
        return len(self.key) == 1 and self.key[0].type == "INT"

    def ddl(self, db: str) -> str:
        parts = [f"`{c.name}` {c.type} NOT NULL" for c in self.key]
        parts += [f"`{c.name}` {c.type}{'' if c.nullable else ' NOT NULL'}" for c in self.columns]
        parts.append(f"PRIMARY KEY ({self.order_by})")
        if self.unique:
            parts.append(f"UNIQUE KEY `u_{self.unique}` (`{self.unique}`)")
        for column, parent, action in self.refs:
            parts.append(
                f"CONSTRAINT `fk_{self.name}_{column}` FOREIGN KEY (`{column}`) REFERENCES `{db}`.`{parent}` (id)"
                f" {action}"
            )
        return f"CREATE TABLE `{db}`.`{self.name}` ({', '.join(parts)}) ENGINE=InnoDB"


def _key(rng: random.Random, shape: str) -> list[Column]:
    if shape == "int":
        return [Column("id", "INT", lambda r: str(r.randint(1, 400)))]
    if shape == "bigint_unsigned":
        return [Column("k", "BIGINT UNSIGNED", lambda r: str(r.choice([0, 2**64 - 1, r.randint(0, 500)])))]
    if shape == "composite":
        return [
            Column("a", "INT", lambda r: str(r.randint(1, 30))),
            Column("b", "VARCHAR(12) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin", lambda r: utf8_literal(_text(r, 3))),
        ]
    if shape == "text":
        # case- and accent-insensitive: 'a', 'A' and 'a ' are one key with three spellings
        return [
            Column(
                "s", "VARCHAR(16) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci", lambda r: utf8_literal(_text(r, 4))
            )
        ]
    return [
        Column(
            "h",
            "VARBINARY(6)",
            lambda r: bytes_literal(bytes(r.choice([0, 0x27, 0x5C, 0x0A, 0xFF, 1]) for _ in range(r.randint(1, 3)))),
        )
    ]


@dataclass
class Schema:
    db: str
    tables: list[Table]

    def table(self, name: str) -> Table:
        return next(t for t in self.tables if t.name == name)

    def ddl(self) -> list[str]:
        """CREATE TABLE statements in an order that satisfies the foreign keys; cycles are closed by ALTERs."""
        creates = [t.ddl(self.db) for t in self.tables]
        return ["SET foreign_key_checks = 0", *creates, "SET foreign_key_checks = 1"]


def schema(rng: random.Random, db: str, cycles: bool = True) -> Schema:
    """A random schema: 3 to 5 tables, every table with a primary key, some with unique keys and foreign keys
    (with ``cycles``, self-references and two-table cycles among them; without, references point backwards)."""
    count = rng.randint(3, 5)
    tables: list[Table] = []
    for i in range(count):
        shape = "int" if i < 2 else rng.choice(KEY_SHAPES)  # two tables others can point at
        picked = rng.sample(COLUMN_TYPES, rng.randint(4, 12))
        columns = [Column(f"c_{name}", kind, make, nullable=rng.random() < 0.8) for name, kind, make in picked]
        for column in columns:
            if not column.nullable and column.type.startswith(("TIMESTAMP", "POINT")):
                column.nullable = True
        table = Table(f"t{i}", _key(rng, shape), columns)
        if rng.random() < 0.4:
            uniq = next((c for c in columns if c.type.startswith(("INT", "SMALLINT", "VARCHAR(40)"))), None)
            if uniq is not None:
                table.unique = uniq.name
        tables.append(table)
    referenced = [t for t in tables if t.int_key]
    actions = ["ON DELETE CASCADE ON UPDATE CASCADE", "ON DELETE SET NULL ON UPDATE CASCADE", "ON DELETE CASCADE"]
    for table in tables:
        parents = referenced if cycles else [t for t in referenced if t.name < table.name]
        for parent in rng.sample(parents, rng.randint(0, len(parents))):
            # a self-reference, or either direction between the two int tables: cycles happen
            column = f"p_{parent.name}"
            table.columns.append(Column(column, "INT", lambda r: str(r.randint(1, 120)), nullable=True))
            table.refs.append((column, parent.name, rng.choice(actions)))
    return Schema(db, tables)


def row_values(rng: random.Random, table: Table, key: list[str] | None = None) -> list[str]:
    values = key if key is not None else [c.value(rng) for c in table.key]
    for column in table.columns:
        values.append("NULL" if column.nullable and rng.random() < 0.15 else column.value(rng))
    return values


def column_list(table: Table) -> str:
    return ", ".join(f"`{c.name}`" for c in [*table.key, *table.columns])


@dataclass
class Transaction:
    """Statements run as one source transaction (or, for ``ddl``, alone with autocommit)."""

    kind: str
    statements: list[str]
    ddl: bool = False


def preload(rng: random.Random, schema: Schema) -> list[str]:
    """Rows for a start: the tables others point at get ids 1..N in order with their references unset, then the
    references are filled in (cycles need both rows first); the other tables get random keys."""
    statements = []
    db = schema.db
    for table in schema.tables:
        names = column_list(table)
        if table.int_key:
            rows = []
            for i in range(1, rng.randint(100, 300) + 1):
                values = row_values(rng, table, [str(i)])
                refs = {c for c, _, _ in table.refs}
                values = [
                    ("NULL" if col.name in refs else v)
                    for col, v in zip([*table.key, *table.columns], values, strict=True)
                ]
                rows.append("(" + ", ".join(values) + ")")
            statements += [
                f"INSERT INTO `{db}`.`{table.name}` ({names}) VALUES {', '.join(rows[i : i + 100])}"
                for i in range(0, len(rows), 100)
            ]
        else:
            for _ in range(rng.randint(1, 5)):
                rows = ["(" + ", ".join(row_values(rng, table)) + ")" for _ in range(50)]
                statements.append(f"INSERT IGNORE INTO `{db}`.`{table.name}` ({names}) VALUES {', '.join(rows)}")
    for table in schema.tables:
        if table.int_key:
            for column, _, _ in table.refs:
                for lo in range(1, 300, 10):
                    statements.append(
                        f"UPDATE `{db}`.`{table.name}` SET `{column}` = {rng.randint(1, 100)} WHERE id BETWEEN {lo} AND {lo + 9}"
                    )
    return statements


class Workload:
    """Draws transactions against a schema; ``other`` is a database outside the selection with a MyISAM table."""

    def __init__(self, rng: random.Random, schema: Schema, other: str) -> None:
        self.rng = rng
        self.schema = schema
        self.other = other
        self.scratch: list[str] = []
        self.added: dict[str, list[str]] = {}

    def insert(self, table: Table, rows: int = 1) -> str:
        verb = self.rng.choice(["INSERT", "INSERT IGNORE", "REPLACE", "INSERT"])
        body = ", ".join("(" + ", ".join(row_values(self.rng, table)) + ")" for _ in range(rows))
        tail = ""
        if verb == "INSERT" and table.columns and self.rng.random() < 0.4:
            column = self.rng.choice(table.columns)
            tail = f" ON DUPLICATE KEY UPDATE `{column.name}` = VALUES(`{column.name}`)"
        return f"{verb} INTO `{self.schema.db}`.`{table.name}` ({column_list(table)}) VALUES {body}{tail}"

    def where(self, table: Table) -> str:
        key = table.key[0]
        if key.type == "INT" and self.rng.random() < 0.4:
            lo = self.rng.randint(1, 400)
            return f"`{key.name}` BETWEEN {lo} AND {lo + self.rng.randint(0, 20)}"
        return " AND ".join(f"`{c.name}` = {c.value(self.rng)}" for c in table.key)

    def update(self, table: Table) -> str:
        sets = []
        for column in self.rng.sample(table.columns, min(len(table.columns), self.rng.randint(1, 3))):
            sets.append(
                f"`{column.name}` = {'NULL' if column.nullable and self.rng.random() < 0.1 else column.value(self.rng)}"
            )
        if self.rng.random() < 0.15:  # a key change: children follow by ON UPDATE CASCADE, not in the binlog
            key = self.rng.choice(table.key)
            sets.append(f"`{key.name}` = {key.value(self.rng)}")
        return f"UPDATE `{self.schema.db}`.`{table.name}` SET {', '.join(sets)} WHERE {self.where(table)}"

    def delete(self, table: Table) -> str:
        return f"DELETE FROM `{self.schema.db}`.`{table.name}` WHERE {self.where(table)}"

    def dml(self) -> str:
        table = self.rng.choice(self.schema.tables)
        op = self.rng.random()
        if op < 0.45:
            return self.insert(table, self.rng.randint(1, 5))
        if op < 0.8:
            return self.update(table)
        return self.delete(table)

    def transaction(self, ddl_allowed: bool) -> Transaction:
        op = self.rng.random()
        if op < 0.08:
            return self.session_change()
        if op < 0.18:
            return self.savepoints()
        if op < 0.21:
            table = self.rng.choice(self.schema.tables)
            return Transaction("large", [self.insert(table, 300) for _ in range(4)])
        if ddl_allowed and op < 0.28:
            return self.ddl()
        return Transaction("dml", [self.dml() for _ in range(self.rng.randint(1, 6))])

    def session_change(self) -> Transaction:
        statements = [
            f"SET SESSION sql_mode = '{self.rng.choice(SQL_MODES)}'",
            f"SET SESSION time_zone = {self.rng.choice(TIME_ZONES)}",
        ]
        if self.rng.random() < 0.5:
            statements.append(f"USE `{self.rng.choice([self.schema.db, self.other])}`")
        return Transaction("session", statements, ddl=True)

    def savepoints(self) -> Transaction:
        """Laravel's nested DB::transaction after a MyISAM write: the server logs the rows it rolls back."""
        statements = [
            f"INSERT INTO `{self.other}`.audit (msg) VALUES ('a')",
            "SAVEPOINT trans2",
            self.dml(),
            self.dml(),
        ]
        if self.rng.random() < 0.5:
            statements += ["SAVEPOINT trans3", self.dml()]
            statements.append(self.rng.choice(["ROLLBACK TO SAVEPOINT trans3", "RELEASE SAVEPOINT trans3"]))
        statements.append(
            self.rng.choice(
                ["ROLLBACK TO SAVEPOINT trans2", "ROLLBACK TO SAVEPOINT trans2", "RELEASE SAVEPOINT trans2"]
            )
        )
        statements.append(self.dml())
        return Transaction("savepoint", statements)

    def ddl(self) -> Transaction:
        """DDL the stream must carry under on_ddl = "exec": columns added and dropped, tables made from queries,
        renamed, truncated from another database, dropped in lists."""
        db = self.schema.db
        op = self.rng.random()
        table = self.rng.choice(self.schema.tables)
        if op < 0.25:
            name = f"x{self.rng.getrandbits(20)}"
            self.added.setdefault(table.name, []).append(name)
            # a bare TIMESTAMP means NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE ... where the source's
            # explicit_defaults_for_timestamp is OFF (the test sets it so for some seeds)
            default = self.rng.choice(
                ["INT NULL", "VARCHAR(10) NOT NULL DEFAULT 'd'", "DECIMAL(6,2) DEFAULT 1.5", "TIMESTAMP"]
            )
            where = self.rng.choice(["", "", " FIRST", f" AFTER `{table.columns[0].name}`" if table.columns else ""])
            return Transaction(
                "ddl", [f"ALTER TABLE `{db}`.`{table.name}` ADD COLUMN `{name}` {default}{where}"], ddl=True
            )
        if op < 0.35 and self.added.get(table.name):
            name = self.added[table.name].pop()
            return Transaction("ddl", [f"ALTER TABLE `{db}`.`{table.name}` DROP COLUMN `{name}`"], ddl=True)
        if op < 0.42 and self.added.get(table.name):
            # retyped (existing values converted on both sides) or renamed, or made unique (refused on duplicates)
            old_name = self.rng.choice(self.added[table.name])
            change = self.rng.random()
            if change < 0.4:
                statement = f"MODIFY COLUMN `{old_name}` VARCHAR(30) NULL"
            elif change < 0.7:
                new_name = f"{old_name}c"
                self.added[table.name] = [new_name if n == old_name else n for n in self.added[table.name]]
                statement = f"CHANGE COLUMN `{old_name}` `{new_name}` VARCHAR(30) NULL"
            else:
                statement = f"ADD UNIQUE KEY (`{old_name}`)"
            return Transaction("ddl", [f"ALTER TABLE `{db}`.`{table.name}` {statement}"], ddl=True)
        if op < 0.55 or not self.scratch:
            name = f"s{self.rng.getrandbits(20)}"
            self.scratch.append(name)
            replace = "OR REPLACE " if self.rng.random() < 0.3 else ""
            return Transaction(
                "ddl",
                [
                    f"CREATE {replace}TABLE `{db}`.`{name}` (PRIMARY KEY ({table.order_by})) SELECT * FROM `{db}`.`{table.name}`"
                ],
                ddl=True,
            )
        if op < 0.7:
            old = self.scratch.pop(self.rng.randrange(len(self.scratch)))
            new = f"{old}r"
            self.scratch.append(new)
            return Transaction("ddl", [f"RENAME TABLE `{db}`.`{old}` TO `{db}`.`{new}`"], ddl=True)
        if op < 0.85:
            name = self.rng.choice(self.scratch)
            return Transaction(
                "ddl", [f"USE `{self.other}`", f"TRUNCATE TABLE `{db}`.`{name}`", f"USE `{db}`"], ddl=True
            )
        dropped = self.rng.sample(self.scratch, min(2, len(self.scratch)))
        self.scratch = [n for n in self.scratch if n not in dropped]
        names = ", ".join(f"`{db}`.`{n}`" for n in dropped)
        return Transaction("ddl", [f"DROP TABLE IF EXISTS {names}, `{db}`.`never_there`"], ddl=True)
