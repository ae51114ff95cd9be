"""Event accounting: every binlog event the reader delivers ends in exactly one outcome.

``applied`` (its change reached the target, or will with the batch it is in), ``skipped`` by a named rule, or
``stopped`` (the daemon stopped at it). Nothing else: an event that no rule names is a stop, so a kind of event the
code does not expect cannot vanish. The sum over all outcomes equals the events read, which a test checks against
the server's own ``SHOW BINLOG EVENTS``.

Counting runs in the reader's hot loop, so a tally is a plain ``dict`` with every key present from the start
(``counts[key] += 1``, no lookups of label objects); the metrics collector reads the tallies when scraped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

# rule -> outcome. Statement skip rules come from austasync.binlog.statements.SKIP_RULES.
RULES: dict[str, str] = {
    "rows": "applied",  # a rows event of a replicated table
    "ddl_executed": "applied",  # a DDL run on the target under on_ddl = "exec" (or resolved by `austasync ddl`)
    "table_map": "skipped",  # the map that names the next rows events' table
    "table_not_selected": "skipped",  # a rows event of a table outside the selection
    "transaction_control": "skipped",  # GTID, BEGIN, COMMIT/XID, SAVEPOINT, ROLLBACK TO, XA END/COMMIT/ROLLBACK
    "rolled_back": "skipped",  # a rows event undone by ROLLBACK [TO SAVEPOINT] in the same source transaction
    "already_applied": "skipped",  # a rows event of a split transaction committed before a restart
    "binlog_metadata": "skipped",  # format description, rotate, GTID lists, binlog checkpoints, stop
    "annotation": "skipped",  # annotate rows, rows query, session variables of a statement (intvar, rand, user var)
    "heartbeat": "skipped",  # the source is idle
    "artificial": "skipped",  # events the server makes up for a new connection (fake rotate, format description)
    "group_replication": "skipped",  # MySQL's view change and transaction context events: no rows
    # an event of a type austasync does not know that the server flags LOG_EVENT_IGNORABLE_F: the server's promise
    # that a replica which does not know it may drop it (MySQL's own replicas do); Aurora's type-100 padding
    "ignorable": "skipped",
    "xa_not_replicated": "skipped",  # an XA PREPARE of a transaction that changed no replicated table
    "ddl_ignored": "skipped",  # DDL on a replicated table under on_ddl = "ignore"
    "alter_started": "skipped",  # binlog_alter_two_phase's START ALTER: the ALTER is carried at its COMMIT ALTER
    "alter_rolled_back": "skipped",  # binlog_alter_two_phase's ROLLBACK ALTER: the ALTER failed on the source
    "ddl_already_applied": "skipped",  # a DDL inside a transaction that was run on the target before a restart
    "account_management": "skipped",
    "table_maintenance": "skipped",
    "server_admin": "skipped",
    "temporary_table": "skipped",
    "not_replicated": "skipped",
    "trigger": "skipped",
    "scheduled_event": "skipped",
    "stop": "stopped",  # the event the daemon stopped at (DDL stop, statement DML, XA, an uncarryable value)
}


def key(rule: str) -> str:
    """The tally key of a rule: ``outcome:rule``."""
    return f"{RULES[rule]}:{rule}"


ROWS = key("rows")
TABLE_MAP = key("table_map")
NOT_SELECTED = key("table_not_selected")
TRANSACTION = key("transaction_control")
ROLLED_BACK = key("rolled_back")
ALREADY_APPLIED = key("already_applied")
METADATA = key("binlog_metadata")
ANNOTATION = key("annotation")
HEARTBEAT = key("heartbeat")
ARTIFICIAL = key("artificial")
STOP = key("stop")


def new_tally() -> dict[str, int]:
    """Counts per ``outcome:rule``, every key present."""
    return dict.fromkeys((key(rule) for rule in RULES), 0)


def sum_tallies(tallies: Iterable[dict[str, int]]) -> dict[str, int]:
    """The counts of ``tallies`` added up."""
    total = new_tally()
    for tally in tallies:
        for name, count in list(tally.items()):  # another thread may add to it meanwhile
            total[name] = total.get(name, 0) + count
    return total


def labelled(tally: dict[str, int]) -> Iterator[tuple[str, str, int]]:
    """``(outcome, rule, count)`` of a tally."""
    for name, count in tally.items():
        outcome, _, rule = name.partition(":")
        yield outcome, rule, count
