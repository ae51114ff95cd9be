"""The portal's users at work: a rate-limited stream of the transactions the Laravel app runs.

Registrations, logins, document uploads and their OCR results, questionnaire answers and JSON edits, points
and badges, e-mail changes (a unique key), session clean-up and account deletions (cascading to six tables
without a binlog entry for the children). Bounded by a rate and a duration, and stoppable from another thread.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable

import pymysql

from austasync.db import Connection, query
from austasync.demo import portal

# relative weights, roughly what an onboarding portal sees
OPERATIONS = {
    "register": 10,
    "login": 20,
    "upload": 15,
    "ocr_done": 10,
    "answer": 10,
    "edit_answers": 8,
    "points": 15,
    "badge": 5,
    "change_email": 3,
    "purge_sessions": 2,
    "delete_account": 4,
}
# deadlocks and lock wait timeouts: the app would retry the request; so does the workload
RETRYABLE = {1205, 1213}


class Workload:
    def __init__(self, connect: Callable[[], Connection], *, rate: float, seed: int = 11) -> None:
        self.connect = connect
        self.rate = rate
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.stop_event = threading.Event()

    def stop(self) -> None:
        self.stop_event.set()

    def run(self, seconds: float) -> Counter[str]:
        """Run until ``seconds`` pass (0: until :meth:`stop`); returns how many of each operation committed."""
        conn = self.connect()
        query(conn, f"USE `{portal.DATABASE}`")
        names, weights = list(OPERATIONS), list(OPERATIONS.values())
        started = time.monotonic()
        done = 0
        try:
            while not self.stop_event.is_set() and (seconds <= 0 or time.monotonic() - started < seconds):
                operation = self.rng.choices(names, weights)[0]
                try:
                    getattr(self, f"_{operation}")(conn)
                    conn.commit()
                    self.counts[operation] += 1
                except pymysql.err.OperationalError as exc:
                    conn.rollback()
                    if not (exc.args and exc.args[0] in RETRYABLE):
                        raise
                    self.counts["retried"] += 1
                done += 1
                # a fixed schedule, not a sleep per operation, so slow statements do not lower the rate
                ahead = done / self.rate - (time.monotonic() - started) if self.rate > 0 else 0
                if ahead > 0:
                    self.stop_event.wait(ahead)
        finally:
            conn.close()
        return self.counts

    # --- operations: each runs in one transaction, committed by run() ---------------------------------------

    def _some_user(self, conn: Connection) -> int | None:
        top = query(conn, "SELECT MAX(id) FROM users")[0][0]
        if not top:
            return None
        rows = query(conn, "SELECT id FROM users WHERE id >= %s ORDER BY id LIMIT 1", (self.rng.randint(1, int(top)),))
        return int(rows[0][0]) if rows else None

    def _register(self, conn: Connection) -> None:
        serial = self.rng.randint(10**9, 10**10)
        with conn.cursor() as cur:
            cur.execute(portal.USER_INSERT, portal.user_row(self.rng, serial))
            user_id = int(cur.lastrowid or 0)
            cur.execute(portal.SESSION_INSERT, portal.session_row(self.rng, user_id))
            cur.execute(portal.POINTS_INSERT, (user_id, 10, "registration", portal.now()))
            cur.execute("INSERT INTO user_badges (user_id, badge_id) VALUES (%s, 1)", (user_id,))

    def _login(self, conn: Connection) -> None:
        user_id = self._some_user(conn)
        if user_id is None:
            return
        with conn.cursor() as cur:
            updated = cur.execute(
                "UPDATE sessions SET last_activity = UNIX_TIMESTAMP(), payload = %s WHERE user_id = %s",
                (self.rng.randbytes(80).hex(), user_id),
            )
            if not updated:
                cur.execute(portal.SESSION_INSERT, portal.session_row(self.rng, user_id))
            cur.execute(
                "UPDATE users SET remember_token = %s, updated_at = %s WHERE id = %s",
                (self.rng.randbytes(30).hex(), portal.now(), user_id),
            )

    def _upload(self, conn: Connection) -> None:
        user_id = self._some_user(conn)
        if user_id is not None:
            row = list(portal.document_row(self.rng, user_id))
            row[6], row[7], row[8] = None, None, "uploaded"  # OCR runs later
            query(conn, portal.DOCUMENT_INSERT, row)

    def _ocr_done(self, conn: Connection) -> None:
        rows = query(
            conn, "SELECT id FROM documents WHERE status IN ('uploaded', 'processing') ORDER BY id DESC LIMIT 20"
        )
        if rows:
            query(
                conn,
                "UPDATE documents SET ocr_text = %s, ocr_confidence = %s, status = %s, updated_at = %s WHERE id = %s",
                (
                    portal.ocr_text(self.rng),
                    round(self.rng.uniform(55, 99.99), 2),
                    self.rng.choice(["verified", "rejected"]),
                    portal.now(),
                    self.rng.choice(rows)[0],
                ),
            )

    def _answer(self, conn: Connection) -> None:
        user_id = self._some_user(conn)
        if user_id is not None:
            query(conn, portal.RESPONSE_INSERT, portal.response_row(self.rng, user_id, len(portal.QUESTIONNAIRES)))

    def _edit_answers(self, conn: Connection) -> None:
        top = query(conn, "SELECT MAX(id) FROM questionnaire_responses")[0][0]
        if top:
            query(
                conn,
                "UPDATE questionnaire_responses SET answers = JSON_SET(answers, '$.weight_kg', %s, '$.smoker', %s),"
                " updated_at = %s WHERE id >= %s ORDER BY id LIMIT 1",
                (
                    round(self.rng.uniform(45, 130), 1),
                    self.rng.random() < 0.2,
                    portal.now(),
                    self.rng.randint(1, int(top)),
                ),
            )

    def _points(self, conn: Connection) -> None:
        user_id = self._some_user(conn)
        if user_id is not None:
            query(conn, portal.POINTS_INSERT, (user_id, self.rng.choice([5, 10, 20, 50]), "quiz", portal.now()))

    def _badge(self, conn: Connection) -> None:
        user_id = self._some_user(conn)
        if user_id is not None:
            query(
                conn,
                "INSERT IGNORE INTO user_badges (user_id, badge_id) VALUES (%s, %s)",
                (user_id, self.rng.randint(1, len(portal.BADGES))),
            )

    def _change_email(self, conn: Connection) -> None:
        user_id = self._some_user(conn)
        if user_id is not None:
            query(
                conn,
                "UPDATE users SET email = %s, email_verified_at = NULL, updated_at = %s WHERE id = %s",
                (f"changed.{user_id}.{self.rng.randint(0, 10**9)}@example.org", portal.now(), user_id),
            )

    def _purge_sessions(self, conn: Connection) -> None:
        query(conn, "DELETE FROM sessions WHERE last_activity < UNIX_TIMESTAMP() - 86400 * 25 LIMIT 20")

    def _delete_account(self, conn: Connection) -> None:
        user_id = self._some_user(conn)
        if user_id is not None:
            # the children go by ON DELETE CASCADE: only this row is in the binlog
            query(conn, "DELETE FROM users WHERE id = %s", (user_id,))
