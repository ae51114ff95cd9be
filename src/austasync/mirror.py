"""Redis: the lease that coordinates daemons, and the mirror of the state that operators and tools read.

Redis may run without persistence; losing it costs a re-publish, never data: the target holds the truth
(docs/DESIGN.md#rule-target-truth) and the fence in the target, not the lease, is what stops a stale writer
(docs/DESIGN.md#rule-fencing).

Keys, for ``<p>`` = ``<key_prefix>:<migration>``:

- ``<p>:lease``   token of the daemon that holds the migration (PX expiry, renewed by the apply loop)
- ``<p>:alive``   present while the daemon's loop turns (short TTL)
- ``<p>:status``  JSON: phase, position, lag, copy progress per table, throttle, holder, updated_at
- ``<p>:verify``  JSON: the last verification's summary (also kept in the target's state row)
- ``<p>:pause``   JSON: the operator's throttle pause (who, when, why), while set; a restarted daemon keeps it
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from redis.credentials import CredentialProvider

from austasync.config import RedisConfig, Secret
from austasync.errors import UnavailableError

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class Mirror:
    """Lease and status keys of one migration."""

    def __init__(self, cfg: RedisConfig, migration: str, client: redis.Redis[str] | None = None) -> None:
        self.cfg = cfg
        self.client: redis.Redis[str] = client or connect(cfg)
        self.prefix = f"{cfg.key_prefix}:{migration}"
        self.token = f"{uuid.uuid4()}"
        self._last_error_logged = 0.0

    def key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def ping(self) -> None:
        """Connect and authenticate now, so a wrong password or CA stops start-up with what to fix."""
        try:
            self.client.ping()
        except redis.AuthenticationError as exc:
            # a rotated password: fetch it again once (file, systemd credential, AWS) before giving up
            if not self.cfg.password.refresh():
                raise UnavailableError(explain(self.cfg, exc)) from None
            try:
                self.client.ping()
            except redis.RedisError as again:
                raise UnavailableError(explain(self.cfg, again)) from None
        except redis.RedisError as exc:
            raise UnavailableError(explain(self.cfg, exc)) from None

    def acquire_lease(
        self,
        holder: str,
        ttl_seconds: float,
        *,
        wait: bool,
        on_wait: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Take the lease; with ``wait`` keep trying until it is free (a second daemon waits, never writes)."""
        value = json.dumps({"token": self.token, "holder": holder})
        while True:
            try:
                if self.client.set(self.key("lease"), value, nx=True, px=int(ttl_seconds * 1000)):
                    self.token_value = value
                    return True
                current = self.client.get(self.key("lease"))
            except redis.RedisError as exc:
                raise UnavailableError(explain(self.cfg, exc)) from None
            if not wait or should_stop():
                return False
            if on_wait is not None:
                on_wait(str(current))
            time.sleep(min(1.0, ttl_seconds / 4))

    def renew_lease(self, ttl_seconds: float) -> bool:
        """Extend our lease; False if another daemon holds it now. Redis unreachable counts as still ours: the
        fence in the target, not the lease, is what stops a stale writer, so a Redis outage must not stop us."""
        try:
            return self.renew(ttl_seconds)
        except redis.RedisError:
            return True

    def renew(self, ttl_seconds: float) -> bool:
        """:meth:`renew_lease` that raises Redis's error (the daemon's :class:`~austasync.recovery.RedisLink`
        logs it and spaces the next attempts)."""
        result = self.client.eval(  # type: ignore[no-untyped-call]  # redis stubs leave eval untyped
            _RENEW, 1, self.key("lease"), self.token_value, int(ttl_seconds * 1000)
        )
        if result:
            return True
        # Redis restarted empty or the key expired while nobody took it: take it back if free
        return bool(self.client.set(self.key("lease"), self.token_value, nx=True, px=int(ttl_seconds * 1000)))

    def release_lease(self) -> None:
        token = getattr(self, "token_value", None)
        if token is not None:
            self.client.eval(  # type: ignore[no-untyped-call]  # redis stubs leave eval untyped
                _RELEASE, 1, self.key("lease"), token
            )

    def lease_holder(self) -> dict[str, Any] | None:
        raw = self.client.get(self.key("lease"))
        return json.loads(str(raw)) if raw else None

    def publish(self, status: dict[str, Any], alive_ttl_seconds: float) -> None:
        pipe = self.client.pipeline()
        pipe.set(self.key("status"), json.dumps(status, default=str))
        pipe.set(self.key("alive"), str(time.time()), px=int(alive_ttl_seconds * 1000))
        pipe.execute()

    def publish_verification(self, doc: dict[str, Any]) -> None:
        """The last verification's summary (``consistent``, ``finished_at``, ``drift_rows``...), for the gate."""
        self.client.set(self.key("verify"), json.dumps(doc, default=str))

    def publish_pause(self, doc: dict[str, Any] | None) -> None:
        """The operator's pause of the copy and verification (None: resumed), kept for the next daemon."""
        if doc is None:
            self.client.delete(self.key("pause"))
        else:
            self.client.set(self.key("pause"), json.dumps(doc, default=str))

    def pause(self) -> dict[str, Any] | None:
        raw = self.client.get(self.key("pause"))
        return json.loads(str(raw)) if raw else None

    def publish_cutover(self, doc: dict[str, Any]) -> None:
        self.client.set(self.key("cutover"), json.dumps(doc, default=str))

    def cutover(self) -> dict[str, Any] | None:
        raw = self.client.get(self.key("cutover"))
        return json.loads(str(raw)) if raw else None

    def forget_progress(self) -> None:
        """Drop the published status and verification (after a reset: they describe a copy that is gone)."""
        self.client.delete(self.key("status"), self.key("verify"))

    def forget_watch_position(self) -> None:
        """The next daemon's target-write watcher starts at the target's current position, not where the last one
        stopped: what an operator did meanwhile on purpose (a DDL resolved by hand) is no foreign write."""
        doc = self.status()
        if doc and doc.pop("foreign_write_watch_position", None) is not None:
            self.client.set(self.key("status"), json.dumps(doc, default=str))

    def verification(self) -> dict[str, Any] | None:
        raw = self.client.get(self.key("verify"))
        return json.loads(str(raw)) if raw else None

    def status(self) -> dict[str, Any] | None:
        raw = self.client.get(self.key("status"))
        return json.loads(str(raw)) if raw else None

    def alive(self) -> bool:
        return bool(self.client.exists(self.key("alive")))


class SecretCredentials(CredentialProvider):
    """The ACL user and the password, revealed for each new connection (so a refreshed password is used next) and
    kept out of the connection's keyword arguments, which redis-py keeps and a traceback's locals could show."""

    def __init__(self, username: str | None, password: Secret) -> None:
        self._username = username
        self._password = password

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        if self._username:
            return self._username, self._password.reveal()
        return (self._password.reveal(),)

    def __repr__(self) -> str:
        return f"SecretCredentials(username={self._username!r}, password={self._password!r})"


def connect(cfg: RedisConfig) -> redis.Redis[str]:
    """A client for ``[redis]``: URL, ACL user and password (a secret), TLS verified against ``tls_ca``.

    Every Redis client austasync makes comes from here, so TLS and credentials apply to the daemon and the CLI alike.
    """
    options: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 5, "decode_responses": True}
    if cfg.username or cfg.password:
        options["credential_provider"] = SecretCredentials(cfg.username, cfg.password)
    if cfg.tls:
        # verification on, always: redis-py's defaults have changed across versions, so say it
        options.update(
            ssl_cert_reqs="required",
            ssl_check_hostname=cfg.tls_verify == "verify_identity",
            ssl_ca_certs=cfg.tls_ca,
        )
    return redis.Redis.from_url(cfg.url.reveal(), **options)


def explain(cfg: RedisConfig, exc: BaseException) -> str:
    """What failed, where (host:port, TLS, user) and what to fix; never the password."""
    text = _safe(exc, cfg).rstrip(". ")  # redis-py ends some texts with a period; the hint follows
    lowered = text.lower()
    where = cfg.describe()
    if isinstance(exc, redis.AuthenticationError) or "wrongpass" in lowered or "noauth" in lowered:
        source = cfg.password.source if cfg.password else "none set"
        return (
            f"{where} refused the credentials: {text}; check [redis] username and password (password from"
            f" {source}) against the server's ACL (ACL LIST) or requirepass"
        )
    if "certificate verify failed" in lowered or "hostname mismatch" in lowered or "ip address mismatch" in lowered:
        return (
            f"{where}: the server's TLS certificate is not trusted: {text}; set [redis] tls_ca to the PEM bundle of"
            ' the CA that signed it (or tls_verify = "verify_ca" if it is not issued for this host name)'
        )
    if "ssl" in lowered or "tls" in lowered or "wrong version number" in lowered:
        return f"{where}: the TLS handshake failed: {text}; does the server speak TLS on this port (rediss://)?"
    if not cfg.tls and any(sign in lowered for sign in ("closed by server", "reset by peer", "timeout")):
        return (
            f"{where} is unreachable: {type(exc).__name__}: {text}; if the server accepts only TLS, write"
            " rediss://host:port/db in [redis] url"
        )
    return f"{where} is unreachable: {type(exc).__name__}: {text}"


def _safe(exc: BaseException, cfg: RedisConfig | None = None) -> str:
    """An error text without credentials (redis-py may echo the URL)."""
    text = str(exc)
    if "@" in text:
        text = text.split("@", 1)[-1]
    if cfg is not None and cfg.password:
        secret = cfg.password.reveal()
        if secret:
            text = text.replace(secret, "**********")
    return text
