"""The onboarding portal's schema (as Laravel migrations would create it) and generated data to fill it.

Users, their sessions, uploaded documents with OCR text, health questionnaires answered as JSON, and the
gamification tables (points ledger, badges). Every child table has ``ON DELETE CASCADE`` to ``users``, as
Laravel's ``->cascadeOnDelete()`` writes it: deleting an account removes its rows without a binlog entry for
them, which is exactly what austasync must reproduce.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from austasync.db import Connection, query

DATABASE = "austa_portal"

TABLES = (
    "users",
    "sessions",
    "documents",
    "questionnaires",
    "questionnaire_responses",
    "badges",
    "user_badges",
    "points_ledger",
)

SCHEMA = (
    """CREATE TABLE users (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        name VARCHAR(255) NOT NULL,
        email VARCHAR(255) NOT NULL,
        email_verified_at TIMESTAMP NULL DEFAULT NULL,
        password VARCHAR(255) NOT NULL,
        insurance_number VARCHAR(20) NULL,
        birth_date DATE NULL,
        locale CHAR(5) NOT NULL DEFAULT 'de_DE',
        remember_token VARCHAR(100) NULL,
        created_at TIMESTAMP NULL DEFAULT NULL,
        updated_at TIMESTAMP NULL DEFAULT NULL,
        UNIQUE KEY users_email_unique (email)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci""",
    """CREATE TABLE sessions (
        id VARCHAR(255) NOT NULL PRIMARY KEY,
        user_id BIGINT UNSIGNED NULL,
        ip_address VARCHAR(45) NULL,
        user_agent TEXT NULL,
        payload LONGTEXT NOT NULL,
        last_activity INT NOT NULL,
        KEY sessions_user_id_index (user_id),
        KEY sessions_last_activity_index (last_activity),
        CONSTRAINT sessions_user_id_foreign FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci""",
    """CREATE TABLE documents (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        user_id BIGINT UNSIGNED NOT NULL,
        kind ENUM('insurance_card', 'id_card', 'medical_report', 'invoice', 'other') NOT NULL,
        original_name VARCHAR(255) NOT NULL,
        mime_type VARCHAR(100) NOT NULL,
        size_bytes INT UNSIGNED NOT NULL,
        sha256 BINARY(32) NOT NULL,
        ocr_text LONGTEXT NULL,
        ocr_confidence DECIMAL(5,2) NULL,
        status ENUM('uploaded', 'processing', 'verified', 'rejected') NOT NULL DEFAULT 'uploaded',
        created_at TIMESTAMP NULL DEFAULT NULL,
        updated_at TIMESTAMP NULL DEFAULT NULL,
        KEY documents_user_id_index (user_id),
        CONSTRAINT documents_user_id_foreign FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci""",
    """CREATE TABLE questionnaires (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        slug VARCHAR(100) NOT NULL,
        title VARCHAR(255) NOT NULL,
        version SMALLINT UNSIGNED NOT NULL DEFAULT 1,
        definition JSON NOT NULL,
        created_at TIMESTAMP NULL DEFAULT NULL,
        updated_at TIMESTAMP NULL DEFAULT NULL,
        UNIQUE KEY questionnaires_slug_unique (slug)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci""",
    """CREATE TABLE questionnaire_responses (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        user_id BIGINT UNSIGNED NOT NULL,
        questionnaire_id BIGINT UNSIGNED NOT NULL,
        answers JSON NOT NULL,
        risk_score DECIMAL(6,2) NULL,
        submitted_at TIMESTAMP NULL DEFAULT NULL,
        created_at TIMESTAMP NULL DEFAULT NULL,
        updated_at TIMESTAMP NULL DEFAULT NULL,
        KEY questionnaire_responses_user_id_index (user_id),
        CONSTRAINT questionnaire_responses_user_id_foreign FOREIGN KEY (user_id)
            REFERENCES users (id) ON DELETE CASCADE,
        CONSTRAINT questionnaire_responses_questionnaire_id_foreign FOREIGN KEY (questionnaire_id)
            REFERENCES questionnaires (id) ON DELETE CASCADE
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci""",
    """CREATE TABLE badges (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        code VARCHAR(64) NOT NULL,
        name VARCHAR(255) NOT NULL,
        description TEXT NULL,
        points_required INT UNSIGNED NOT NULL DEFAULT 0,
        UNIQUE KEY badges_code_unique (code)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci""",
    """CREATE TABLE user_badges (
        user_id BIGINT UNSIGNED NOT NULL,
        badge_id BIGINT UNSIGNED NOT NULL,
        awarded_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
        PRIMARY KEY (user_id, badge_id),
        CONSTRAINT user_badges_user_id_foreign FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE,
        CONSTRAINT user_badges_badge_id_foreign FOREIGN KEY (badge_id) REFERENCES badges (id) ON DELETE CASCADE
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci""",
    """CREATE TABLE points_ledger (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        user_id BIGINT UNSIGNED NOT NULL,
        points INT NOT NULL,
        reason VARCHAR(64) NOT NULL,
        created_at TIMESTAMP NULL DEFAULT NULL,
        KEY points_ledger_user_id_index (user_id),
        CONSTRAINT points_ledger_user_id_foreign FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci""",
)

FIRST = ("Anna", "Jonas", "Lea", "Lukas", "Mia", "Finn", "Sofía", "Zoë", "Émile", "Ayşe", "Łukasz", "Björn", "Noah")
LAST = ("Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Çelik", "Nowak", "Kühn")
OCR_WORDS = (
    "Versichertennummer",
    "Krankenkasse",
    "gültig",
    "bis",
    "Name",
    "Geburtsdatum",
    "Diagnose",
    "ICD-10",
    "J45.0",
    "Asthma",
    "bronchiale",
    "Überweisung",
    "Facharzt",
    "Rechnung",
    "Betrag",
    "EUR",
    "Datum",
    "Praxis",
    "Dr.",
    "med.",
    "Befund",
    "unauffällig",
    "Blutdruck",
    "120/80",
    "mmHg",
    "Allergie",
    "Pollen",
    "Impfung",
    "Tetanus",
    "Leistungserbringer",
    "Zuzahlung",
    "befreit",
    "Rezept",
    "Ibuprofen",
    "400mg",
    "Unterschrift",
    "Stempel",
)
CONDITIONS = ("asthma", "diabetes_type_2", "hypertension", "migraine", "allergy_pollen", "back_pain", "none")
BADGES = (
    ("first_login", "Willkommen!", 0),
    ("profile_complete", "Profil vollständig", 50),
    ("documents_uploaded", "Dokumente hochgeladen", 100),
    ("health_check", "Gesundheits-Check", 200),
    ("streak_7", "7 Tage am Stück", 300),
    ("ambassador", "Botschafter:in", 1000),
)
QUESTIONNAIRES = (
    ("health-basics", "Gesundheitsfragen (Basis)"),
    ("lifestyle", "Lebensstil & Prävention"),
    ("dental", "Zahngesundheit"),
)
KINDS = ("insurance_card", "id_card", "medical_report", "invoice", "other")


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def ocr_text(rng: random.Random) -> str:
    return " ".join(rng.choice(OCR_WORDS) for _ in range(rng.randint(30, 400)))


def answers(rng: random.Random) -> str:
    conditions = sorted(set(rng.sample(CONDITIONS, rng.randint(1, 3))))
    return json.dumps(
        {
            "height_cm": rng.randint(150, 205),
            "weight_kg": round(rng.uniform(45, 130), 1),
            "smoker": rng.random() < 0.2,
            "conditions": conditions,
            "medications": [{"name": "Ibuprofen", "dose_mg": 400}] if rng.random() < 0.3 else [],
            "last_checkup": (date(2024, 1, 1) + timedelta(days=rng.randint(0, 700))).isoformat(),
            "notes": rng.choice(["", "Heuschnupfen im Frühjahr", "keine Angaben", "Brille seit 2019 👓"]),
        },
        ensure_ascii=False,
    )


def user_row(rng: random.Random, serial: int) -> tuple[Any, ...]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    created = now() - timedelta(days=rng.randint(0, 900), seconds=rng.randint(0, 86400))
    return (
        f"{first} {last}",
        f"{first.lower()}.{last.lower()}.{serial}@example.org",
        created if rng.random() < 0.8 else None,
        "$2y$12$" + hashlib.sha256(f"pw{serial}".encode()).hexdigest()[:53],
        f"A{rng.randint(100_000_000, 999_999_999)}",
        date(1950, 1, 1) + timedelta(days=rng.randint(0, 20000)),
        rng.choice(["de_DE", "en_GB", "tr_TR"]),
        created,
        created,
    )


USER_INSERT = (
    "INSERT INTO users (name, email, email_verified_at, password, insurance_number, birth_date, locale, created_at,"
    " updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
DOCUMENT_INSERT = (
    "INSERT INTO documents (user_id, kind, original_name, mime_type, size_bytes, sha256, ocr_text, ocr_confidence,"
    " status, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
RESPONSE_INSERT = (
    "INSERT INTO questionnaire_responses (user_id, questionnaire_id, answers, risk_score, submitted_at, created_at,"
    " updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
POINTS_INSERT = "INSERT INTO points_ledger (user_id, points, reason, created_at) VALUES (%s, %s, %s, %s)"
SESSION_INSERT = (
    "INSERT INTO sessions (id, user_id, ip_address, user_agent, payload, last_activity) VALUES (%s, %s, %s, %s, %s, %s)"
)


def document_row(rng: random.Random, user_id: int) -> tuple[Any, ...]:
    kind = rng.choice(KINDS)
    body = rng.randbytes(64)
    stamp = now() - timedelta(seconds=rng.randint(0, 10_000_000))
    return (
        user_id,
        kind,
        f"{kind}_{rng.randint(1, 9999)}.pdf",
        rng.choice(["application/pdf", "image/jpeg", "image/png"]),
        rng.randint(20_000, 9_000_000),
        hashlib.sha256(body).digest(),
        ocr_text(rng) if rng.random() < 0.9 else None,
        round(rng.uniform(55, 99.99), 2),
        rng.choice(["uploaded", "processing", "verified", "verified", "rejected"]),
        stamp,
        stamp,
    )


def response_row(rng: random.Random, user_id: int, questionnaires: int) -> tuple[Any, ...]:
    stamp = now() - timedelta(seconds=rng.randint(0, 10_000_000))
    return (
        user_id,
        rng.randint(1, questionnaires),
        answers(rng),
        round(rng.uniform(0, 100), 2),
        stamp if rng.random() < 0.85 else None,
        stamp,
        stamp,
    )


def session_row(rng: random.Random, user_id: int | None) -> tuple[Any, ...]:
    return (
        rng.randbytes(20).hex(),
        user_id,
        f"192.0.2.{rng.randint(1, 254)}",  # TEST-NET-1: documentation addresses, never a real client
        rng.choice(["Mozilla/5.0 (iPhone; CPU iPhone OS 17_4)", "Mozilla/5.0 (X11; Linux x86_64) Firefox/126.0"]),
        rng.randbytes(rng.randint(100, 600)).hex(),
        int(now().timestamp()) - rng.randint(0, 86400 * 30),
    )


def create_schema(conn: Connection, database: str = DATABASE) -> None:
    query(conn, f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    query(conn, f"USE `{database}`")
    for statement in SCHEMA:
        query(conn, statement)


def load(conn: Connection, users: int, *, seed: int = 7, database: str = DATABASE, batch: int = 500) -> dict[str, int]:
    """Create the schema and fill it; returns the number of rows per table. Deterministic for a seed."""
    rng = random.Random(seed)
    create_schema(conn, database)
    stamp = now()
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO badges (code, name, description, points_required) VALUES (%s, %s, %s, %s)",
            [(code, name, f"Abzeichen: {name}", points) for code, name, points in BADGES],
        )
        cur.executemany(
            "INSERT INTO questionnaires (slug, title, version, definition, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            [
                (slug, title, 1, json.dumps({"questions": ["height_cm", "weight_kg", "smoker"]}), stamp, stamp)
                for slug, title in QUESTIONNAIRES
            ],
        )
    for start in range(0, users, batch):
        count = min(batch, users - start)
        with conn.cursor() as cur:
            cur.executemany(USER_INSERT, [user_row(rng, start + i) for i in range(count)])
            first_id = int(cur.lastrowid or 0)
        ids = range(first_id, first_id + count)
        _children(conn, rng, ids)
        conn.commit()
    return {t: int(query(conn, f"SELECT COUNT(*) FROM `{database}`.`{t}`")[0][0]) for t in TABLES}


def _children(conn: Connection, rng: random.Random, ids: Sequence[int]) -> None:
    docs: list[tuple[Any, ...]] = []
    responses: list[tuple[Any, ...]] = []
    points: list[tuple[Any, ...]] = []
    badges: list[tuple[int, int]] = []
    sessions: list[tuple[Any, ...]] = []
    for user_id in ids:
        docs.extend(document_row(rng, user_id) for _ in range(rng.randint(0, 4)))
        responses.extend(response_row(rng, user_id, len(QUESTIONNAIRES)) for _ in range(rng.randint(0, 3)))
        points.extend(
            (user_id, rng.choice([10, 20, 50, -5]), rng.choice(["login", "upload", "quiz", "referral"]), now())
            for _ in range(rng.randint(1, 8))
        )
        badges.extend((user_id, b) for b in sorted(rng.sample(range(1, len(BADGES) + 1), rng.randint(0, 3))))
        if rng.random() < 0.6:
            sessions.append(session_row(rng, user_id))
    with conn.cursor() as cur:
        cur.executemany(DOCUMENT_INSERT, docs)
        cur.executemany(RESPONSE_INSERT, responses)
        cur.executemany(POINTS_INSERT, points)
        cur.executemany("INSERT INTO user_badges (user_id, badge_id) VALUES (%s, %s)", badges)
        cur.executemany(SESSION_INSERT, sessions)
