"""The verification report: one JSON document other tools rely on, kept as evidence in a file or in S3.

Keys of differing rows are listed up to a cap per table (``differences_capped`` says when the list is cut) and
always counted in full (``differences_total``, ``counts``). Key values appear as JSON numbers for integer and
BIT columns, as text for other non-binary columns (exact decimal and temporal text, strings decoded from the
column's charset) and as ``0x``-prefixed hex for binary columns or undecodable strings.

S3 reports are written with server-side encryption (SSE-S3 by default, SSE-KMS when
``AUSTASYNC_REPORT_KMS_KEY_ID`` is set) under ``<prefix><migration>/verify-<UTC time>.json``; the endpoint and
credentials come from boto3's usual sources (``AWS_ENDPOINT_URL_S3`` points it at an S3-compatible store).
"""

from __future__ import annotations

import codecs
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from austasync.errors import ConfigError, UnavailableError
from austasync.schema import Table
from austasync.sql import Kind
from austasync.verifier import CHANGED, EXTRA, MISSING, Key, Result, TableResult

MAX_LISTED_DIFFERENCES = 100
_CODECS = {"utf8mb4": "utf-8", "utf8mb3": "utf-8", "utf8": "utf-8", "latin1": "cp1252", "binary": ""}


def _text(raw: bytes, charset: str) -> str:
    codec = _CODECS.get(charset, charset)
    try:
        if codec:
            codecs.lookup(codec)
            return raw.decode(codec)
    except (LookupError, UnicodeDecodeError):
        pass
    return "0x" + raw.hex()


def key_value(raw: bytes | None, kind: Kind, charset: str) -> Any:
    if raw is None:
        return None
    if kind in (Kind.INT, Kind.BIT):
        return int(raw)
    if kind is Kind.BINARY:
        return "0x" + raw.hex()
    if kind is Kind.TEXT:
        return _text(raw, charset)
    return raw.decode("ascii")


def render_key(table: Table, key: Key) -> dict[str, Any]:
    return {c.name: key_value(v, c.kind, c.charset) for c, v in zip(table.key_columns, key, strict=True)}


def table_document(result: TableResult, cap: int) -> dict[str, Any]:
    counts = dict.fromkeys((CHANGED, MISSING, EXTRA), 0)
    for diff in result.differences:
        counts[diff.kind] += 1
    doc: dict[str, Any] = {
        "table": str(result.table),
        "rows_checked": result.rows_checked,
        "chunks": result.chunks,
        "consistent": result.consistent,
        "differences": [{"key": render_key(result.table, d.key), "kind": d.kind} for d in result.differences[:cap]],
        "differences_total": len(result.differences),
        "differences_capped": len(result.differences) > cap,
        "counts": counts,
    }
    if result.target_name.replace("`", "") != str(result.table):
        doc["target_table"] = result.target_name.replace("`", "")
    generated = [c.name for c in result.table.columns if c.generated]
    if generated:
        doc["generated_columns_not_compared"] = generated
    if result.schema_differences:
        doc["schema_differences"] = result.schema_differences
    if result.unverified:
        doc["unverified"] = result.unverified
    return doc


def document(result: Result, migration: str, cap: int = MAX_LISTED_DIFFERENCES) -> dict[str, Any]:
    return {
        "consistent": result.consistent,
        "aligned": result.aligned,
        "source_position": str(result.source_position) if result.source_position else None,
        "started_at": result.started_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "duration_seconds": round(result.duration_seconds, 3),
        "migration": migration,
        "hash": result.flavor,
        "tables": [table_document(t, cap) for t in result.tables],
        # tables, views and routines on one side only or defined differently; each makes the result a difference
        "schema_differences": [
            {"object": d.object, "kind": d.kind, "difference": d.difference} for d in result.objects
        ],
        # selected tables that are not replicated (refused at start), so never verified: the result is incomplete
        "not_verified": list(result.refused),
    }


def gate_summary(result: Result, finished_at: float) -> dict[str, Any]:
    """What the readiness gate and the drift metrics read from Redis (``mirror.publish_verification``)."""
    return {
        "consistent": result.consistent,
        "finished_at": finished_at,
        "drift_rows": sum(len(t.differences) for t in result.tables),
        "tables": {str(t.table): len(t.differences) for t in result.tables},
        "schema_differences": [str(d) for d in result.objects],
        "not_verified": list(result.refused),
        "aligned": result.aligned,
        "source_position": str(result.source_position) if result.source_position else None,
        "duration_seconds": round(result.duration_seconds, 3),
        "by": "austasync verify",
    }


def report_name(migration: str, when: datetime) -> str:
    return f"{migration}/verify-{when.astimezone(UTC):%Y%m%dT%H%M%S.%f}Z.json"


def write_report(doc: dict[str, Any], destination: str, migration: str, when: datetime) -> str:
    """Store the document; returns where it went (a path or an ``s3://`` URL)."""
    body = json.dumps(doc, indent=2, sort_keys=False).encode()
    if destination.startswith("s3://"):
        return _to_s3(body, destination, report_name(migration, when))
    return _to_file(body, Path(destination), report_name(migration, when))


def _to_file(body: bytes, path: Path, name: str) -> str:
    if path.is_dir():
        path = path / name.replace("/", "-")
    try:
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(handle, "wb") as out:
            out.write(body)
        # a reader (the cutover decision, an auditor) never sees half a report
        os.replace(tmp, path)
    except OSError as exc:
        raise UnavailableError(f"cannot write the report to {path}: {exc.strerror}") from None
    return str(path)


def _split_s3(url: str) -> tuple[str, str]:
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise ConfigError(f"--report {url!r} names no bucket; use s3://bucket/prefix/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


def _to_s3(body: bytes, url: str, name: str) -> str:
    import boto3  # type: ignore[import-untyped]  # noqa: PLC0415 (only S3 reports pay for importing boto3)
    import botocore.exceptions  # type: ignore[import-untyped]  # noqa: PLC0415

    bucket, prefix = _split_s3(url)
    key = prefix + name
    extra: dict[str, str] = {"ServerSideEncryption": "AES256"}
    kms_key = os.environ.get("AUSTASYNC_REPORT_KMS_KEY_ID")
    if kms_key:
        extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key}
    try:
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", **extra)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise UnavailableError(f"cannot write the report to s3://{bucket}/{key}: {exc}") from None
    return f"s3://{bucket}/{key}"
