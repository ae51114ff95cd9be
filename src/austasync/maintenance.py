"""Operator commands that change the migration's state in the target: resolve a DDL stop, reset progress.

Both take the Redis lease and fence the target first, so they never race a running daemon.
"""

from __future__ import annotations

from austasync.config import Config
from austasync.db import Connection, connect, query, server_flavor, setup_target_session
from austasync.ddl_exec import DdlSession, execute_ddl
from austasync.ddl_resume import finish
from austasync.errors import ConfigError, UnavailableError
from austasync.mirror import Mirror
from austasync.state import TargetState, connection_id, holder_name


def _with_fence(config: Config, action: str) -> tuple[Mirror, TargetState, Connection]:
    mirror = Mirror(config.redis, config.replication.name)
    mirror.ping()
    if not mirror.acquire_lease(holder_name() + f" ({action})", 30.0, wait=False):
        raise UnavailableError(
            f"a daemon holds the lease of migration {config.replication.name!r}; stop it before `{action}`"
        )
    conn = connect(config.target, "target", autocommit=False)
    setup_target_session(conn)
    state = TargetState(config.replication.state_schema, config.replication.name)
    state.ensure_schema(conn)
    state.take_over(conn, [connection_id(conn)])
    return mirror, state, conn


def resolve_ddl(config: Config, action: str | None) -> str:
    """Show the pending DDL stop, or resolve it by skipping or executing the statement on the target."""
    mirror, state, conn = _with_fence(config, "ddl")
    try:
        checkpoint = state.load(conn)
        if checkpoint is None or not checkpoint.pending_stop or checkpoint.pending_stop.get("kind") != "ddl_stop":
            return "no DDL stop is pending"
        stop = checkpoint.pending_stop
        if action is None:
            return (
                f"pending DDL at {stop['start']} (schema {stop['schema']}):\n  {stop['statement']}\n"
                "resolve with --skip (you applied it to the target) or --exec (austasync runs it there)"
            )
        if action == "exec" and stop.get("not_replayable"):
            raise ConfigError(
                f"the pending statement cannot run on the target as on the source ({stop['not_replayable']});"
                " apply it to the target by hand from the source's binlog and use --skip"
            )
        if action == "exec":
            target_db = config.replication.target_db(stop["schema"]) if stop["schema"] else None
            if config.replication.rename and "." in stop["statement"]:
                raise ConfigError(
                    "the statement may name a schema that is renamed on the target; apply it by hand and use --skip"
                )
            # a stop recorded before the flavor was: the target's, which runs it (mixed pairs are not supported)
            flavor = stop.get("sql_mode_flavor") or server_flavor(conn)[0]
            # a stop recorded before its settings were: none (what the daemon ran such DDL under then)
            session = DdlSession(
                stop.get("sql_mode"), stop.get("timestamp"), stop.get("time_zone"), flavor, stop.get("settings") or {}
            )
            execute_ddl(conn, stop["statement"], target_db, session)
        state.check_fence(conn)
        resumes = finish(state, conn, stop, checkpoint.phase)
        query(conn, "COMMIT")
        mirror.forget_watch_position()  # the DDL on the target (by hand or just now) is no foreign write
        done = "executed on the target and skipped" if action == "exec" else "skipped"
        return f"DDL {done}; the stream resumes at {resumes}. Start `austasync run` again"
    finally:
        conn.close()
        mirror.release_lease()


def reset_state(config: Config) -> str:
    mirror, state, conn = _with_fence(config, "reset")
    try:
        state.reset(conn)
        # a verdict about the old copy must not make the gate ready for the new one
        mirror.forget_progress()
        return (
            f"migration {config.replication.name!r} reset: the next `austasync run` persists a new P0 and re-copies"
            " every table"
        )
    finally:
        conn.close()
        mirror.release_lease()
