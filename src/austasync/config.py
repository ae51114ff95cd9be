"""Configuration: a TOML file, ``AUSTASYNC_<SECTION>_<KEY>`` environment overrides, passwords from files.

Everything is validated on load into frozen dataclasses; an error names the key (``source.port``) and what is
wrong with it. Unknown keys are errors too: a typo must not silently fall back to a default on a production
migration.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import threading
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

from austasync.errors import ConfigError
from austasync.secrets import FileSource, SecretSource, parse_reference

OnDdl = Literal["stop", "exec", "ignore"]
_IDENT = re.compile(r"^[A-Za-z0-9_$\-]{1,64}$")


class Secret:
    """A value that never shows itself in ``repr``/``str``, logs or tracebacks. Call :meth:`reveal` to use it.

    A secret built from a reference (file, systemd credential, AWS Secrets Manager: :mod:`austasync.secrets`)
    remembers its source, so :meth:`refresh` can fetch it again after the server answered "access denied".
    """

    __slots__ = ("_lock", "_source", "_value")

    def __init__(self, value: str | None = "", source: SecretSource | None = None) -> None:
        if value is None and source is None:
            raise ValueError("a Secret needs a value or a source")
        self._value = value
        self._source = source
        # the binlog reader thread and the main thread may both reveal or refresh the same password
        self._lock = threading.Lock()

    @classmethod
    def from_source(cls, source: SecretSource) -> Secret:
        secret = cls(None, source)
        if source.eager:
            secret.reveal()
        return secret

    def reveal(self) -> str:
        with self._lock:
            if self._value is None:
                assert self._source is not None  # noqa: S101 (guaranteed by __init__)
                self._value = self._source.fetch()
            return self._value

    def refresh(self) -> bool:
        """Fetch the value again; True when it changed (a rotated password), i.e. when a retry can succeed."""
        if self._source is None:
            return False
        with self._lock:
            old = self._value
            new = self._source.fetch()
            if new == old:
                upcoming = self._source.fetch_next()
                if upcoming is not None:
                    new = upcoming
            self._value = new
            return new != old

    @property
    def source(self) -> str:
        """Where the value comes from ("literal", "file /etc/...", ...); never the value."""
        return "literal" if self._source is None else self._source.describe()

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return False
        if self._source is not None or other._source is not None:
            return self._source == other._source
        return other._value == self._value

    def __hash__(self) -> int:
        return hash(self._source if self._source is not None else self._value)

    def __bool__(self) -> bool:
        return self._source is not None or bool(self._value)

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        # one object per configured password, so a refresh is seen by every holder (dataclasses.asdict deep-copies)
        return self


TlsMode = Literal["preferred", "required", "verify_ca", "verify_identity", "disabled"]
TLS_MODES: tuple[str, ...] = ("preferred", "required", "verify_ca", "verify_identity", "disabled")


@dataclass(frozen=True)
class DatabaseConfig:
    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    password: Secret = field(default_factory=lambda: Secret(""))
    connect_timeout_seconds: float = 10.0
    # "preferred": encrypted when the server offers it, unverified (the MySQL clients' default); "required":
    # encrypted or refused; "verify_ca": and the server's certificate signed by tls_ca (or the system's CAs);
    # "verify_identity": and issued for ``host``; "disabled"
    tls: TlsMode = "preferred"
    tls_ca: str | None = None

    def describe(self) -> str:
        """``user@host:port`` for messages; never the password."""
        return f"{self.user}@{self.host}:{self.port}"


RedisTlsVerify = Literal["verify_identity", "verify_ca"]
REDIS_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class RedisConfig:
    # rediss://host:port/db is TLS; the password belongs in ``password`` (a secret reference), not in the URL
    url: Secret = field(default_factory=lambda: Secret("redis://127.0.0.1:6379/0"))
    key_prefix: str = "austasync"
    # an ACL user (AUTH <username> <password>); none: the default user, AUTH <password> when a password is set
    username: str | None = None
    password: Secret = field(default_factory=lambda: Secret(""))
    # rediss:// only: the PEM CA bundle the server's certificate must chain to (none: the system's CAs)
    tls_ca: str | None = None
    # "verify_identity": the certificate must also be issued for the URL's host; "verify_ca": any host.
    # Verification is never off: an unverified TLS connection hands the password to whoever answers
    tls_verify: RedisTlsVerify = "verify_identity"

    @property
    def tls(self) -> bool:
        return urlsplit(self.url.reveal()).scheme == "rediss"

    @property
    def address(self) -> str:
        """``host:port`` (or the socket path) for messages; never the credentials the URL may hold."""
        parts = urlsplit(self.url.reveal())
        if parts.scheme == "unix":
            return parts.path
        host = parts.hostname or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{parts.port or 6379}"

    def describe(self) -> str:
        """Where and how austasync reaches Redis, for messages: server, TLS, user; never the password."""
        tls = f"TLS verified ({self.tls_verify})" if self.tls else "no TLS"
        return f"Redis {self.address} ({tls}, user {self.username or 'default'})"


@dataclass(frozen=True)
class ReplicationConfig:
    server_id: int = 4321
    databases: tuple[str, ...] = ()
    name: str = "default"
    include_tables: tuple[str, ...] = ()
    exclude_tables: tuple[str, ...] = ()
    rename: Mapping[str, str] = field(default_factory=dict)
    on_ddl: OnDdl = "stop"
    state_schema: str = "_austasync"
    heartbeat_seconds: float = 1.0
    read_timeout_seconds: float = 30.0
    lease_seconds: float = 15.0

    def target_db(self, source_db: str) -> str:
        return self.rename.get(source_db, source_db)


@dataclass(frozen=True)
class CopyConfig:
    chunk_rows: int = 5000
    snapshot_seconds: float = 2.0
    max_rows_per_second: int = 0
    # False: copied chunks skip the target's binlog (SET SESSION sql_log_bin = 0, as myloader does by default).
    # The copy then costs the target a quarter less CPU (measured), but replicas and binlog backups of the
    # target never see the copied rows, so it is the operator's call
    target_binlog: bool = True
    # who renders a chunk's row literals. "daemon": the source only SELECTs the rows, 0.57 s of source CPU per
    # million sysbench rows copied; "source": CONCAT/QUOTE/GROUP_CONCAT in the source server, 1.40 s (its chunk
    # query costs it 2.6x a plain SELECT of the same rows), for a fifth of the daemon's CPU (1.2 s against 6.7 s)
    # and a faster copy where the daemon's core is the limit (benchmarks/source_impact.py, 2026-12-07). The
    # migration must not take the source's CPU; the daemon's host is the one to spend
    render: Literal["source", "daemon"] = "daemon"


@dataclass(frozen=True)
class ApplyConfig:
    # measured on a sysbench catch-up: the target spent 3.2 s of CPU at 5000 rows a batch, 1.7 s at 20000 and 1.4 s
    # at 50000 (fewer statements and commits, more keys collapsed); batch_max_bytes bounds the memory either way
    batch_max_rows: int = 50000
    batch_max_bytes: int = 16 * 1024 * 1024
    batch_max_seconds: float = 0.5
    queue_max_events: int = 20000
    # rows-event bytes of one source transaction held until it ends (so a ROLLBACK [TO SAVEPOINT] can drop what
    # the source undid); a bigger transaction is handed over as it is read, and a rollback in it stops the daemon
    hold_bytes: int = 32 * 1024 * 1024
    # how long a lost or refused connection (source, target) is retried in-process, from the target's checkpoint,
    # before `run` gives up with exit 3; 0 = exit at once, as before in-process recovery existed
    retry_budget_seconds: float = 300.0


@dataclass(frozen=True)
class ThrottleConfig:
    max_threads_running: int = 32
    max_lag_seconds: float = 30.0
    check_interval_seconds: float = 1.0
    # InnoDB history list length of the source (undo not purged yet); 0 = not watched. Needs PROCESS to read
    max_history_list_length: int = 1_000_000
    # latency of the daemon's probe read on the source, in ms; 0 = not probed
    max_probe_ms: float = 250.0
    # past this share of a limit the copy and verification slow down in proportion to what is left of it
    # (at 90% of a limit: half speed); 1 = only pause at the limit
    slow_from: float = 0.8
    # source sessions waiting on a lock of the migration's own sessions pause it (needs PROCESS to read)
    watch_lock_waits: bool = True


@dataclass(frozen=True)
class VerifyConfig:
    interval_seconds: float = 6 * 3600.0  # 0 turns the daemon's own verification off
    # share of the wall time the daemon's scheduled passes (not the first, not the CLI's) spend in checksum
    # queries: after a chunk that took t seconds they wait t * (1 / pace - 1). 1 = full speed
    pace: float = 0.5
    # between full passes, the keys the stream wrote are checked this often (0 = only full passes)
    touched_interval_seconds: float = 300.0


ControlMode = Literal["enabled", "disabled"]
#: a shorter control token is guessable; ``openssl rand -hex 32`` makes a good one
CONTROL_TOKEN_MIN_CHARS = 16


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) into host and port; an empty host means all interfaces."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 (an empty host means all interfaces)


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 or ``localhost``. Any other name is not trusted to stay on this host (fail closed)."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def control_token_problem(token: Secret) -> str | None:
    """Why ``run`` refuses this control token (too short to resist guessing, or not sendable in an HTTP header as
    is), or None. Never quotes the token."""
    value = token.reveal()
    if len(value) < CONTROL_TOKEN_MIN_CHARS:
        return (
            f"http.control_token ({token.source}) is shorter than {CONTROL_TOKEN_MIN_CHARS} characters: make one"
            " with `openssl rand -hex 32`"
        )
    if not (value.isascii() and value.isprintable()) or any(ch.isspace() for ch in value):
        return (
            f"http.control_token ({token.source}) must be printable ASCII without spaces (it is sent in an HTTP"
            " header): make one with `openssl rand -hex 32`"
        )
    return None


@dataclass(frozen=True)
class HttpConfig:
    listen: str = "127.0.0.1:9108"
    # required on every /control/* request as "Authorization: Bearer <token>"; without one, /control/* answers
    # only on a loopback listener (anyone who reaches the port could otherwise pause or rewrite replication)
    control_token: Secret = field(default_factory=lambda: Secret(""))
    # "disabled": /control/* answers 403 everywhere; `verify` then compares unaligned and says so
    control: ControlMode = "enabled"
    # a loopback host:port of its own for /control/*, so the control plane never shares the scraped port
    control_listen: str | None = None

    @property
    def host_port(self) -> tuple[str, int]:
        return split_listen(self.listen)

    @property
    def control_host_port(self) -> tuple[str, int] | None:
        return split_listen(self.control_listen) if self.control_listen else None

    def control_exposure(self) -> str | None:
        """Why ``run`` must refuse to start: a control plane anyone on the network can steer. None when safe."""
        if self.control == "disabled" or self.control_token or self.control_listen:
            return None
        host = self.host_port[0]
        if is_loopback_host(host):
            return None
        return (
            f"[http] listen = {self.listen!r} is reachable from other hosts and no [http] control_token is set:"
            " anyone who reaches the port could pause replication or make the daemon rewrite rows through"
            " /control/*. Set control_token (or control_token_file; `openssl rand -hex 32`), or move the control"
            ' plane to a loopback control_listen, or set control = "disabled" (verify then compares unaligned)'
        )


@dataclass(frozen=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


@dataclass(frozen=True)
class Config:
    source: DatabaseConfig
    target: DatabaseConfig
    redis: RedisConfig
    replication: ReplicationConfig
    copy: CopyConfig = field(default_factory=CopyConfig)
    apply: ApplyConfig = field(default_factory=ApplyConfig)
    throttle: ThrottleConfig = field(default_factory=ThrottleConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    log: LogConfig = field(default_factory=LogConfig)
    path: Path | None = None

    def table_selected(self, db: str, table: str) -> bool:
        """Whether ``db.table`` is replicated: its database is listed, included (if a list is given), not excluded."""
        if db not in self.replication.databases:
            return False
        name = f"{db}.{table}"
        inc = self.replication.include_tables
        if inc and not any(_glob_match(p, name) for p in inc):
            return False
        return not any(_glob_match(p, name) for p in self.replication.exclude_tables)


def _glob_match(pattern: str, name: str) -> bool:
    regex = "^" + re.escape(pattern).replace(r"\*", ".*") + "$"
    return re.match(regex, name) is not None


T = TypeVar("T")


class _Section:
    """Reads one TOML table, tracking which keys were used so unknown keys can be reported."""

    def __init__(self, name: str, data: Mapping[str, Any], env: Mapping[str, str]) -> None:
        self.name = name
        self.data = dict(data)
        self.env = env
        self.used: set[str] = set()

    def _raw(self, key: str) -> tuple[Any, str] | None:
        self.used.add(key)
        env_key = f"AUSTASYNC_{self.name.upper()}_{key.upper()}"
        if env_key in self.env:
            return self.env[env_key], f"${env_key}"
        if key in self.data:
            return self.data[key], f"{self.name}.{key}"
        return None

    def get(self, key: str, kind: Callable[[Any, str], T], default: T) -> T:
        raw = self._raw(key)
        if raw is None:
            return default
        value, where = raw
        return kind(value, where)

    def check_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(f"unknown key {self.name}.{unknown[0]} in the configuration; check its spelling")


def _int(value: Any, where: str, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{where} must be at least {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ConfigError(f"{where} must be at most {maximum}, got {number}")
    return number


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):  # environment overrides are text
        return value.lower() == "true"
    raise ConfigError(f"{where} must be true or false, got {value!r}")


def _float(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if number < 0:
        raise ConfigError(f"{where} must not be negative, got {number}")
    return number


def _seconds(value: Any, where: str) -> float:
    """A finite, non-negative number of seconds (NaN and infinity are no budget anyone can reason about)."""
    number = _float(value, where)
    if not math.isfinite(number):
        raise ConfigError(f"{where} must be a finite number of seconds, got {number}")
    return number


def _pace(value: Any, where: str) -> float:
    number = _float(value, where)
    if not 0 < number <= 1:
        raise ConfigError(f"{where} must be more than 0 and at most 1 (a share of the time), got {number}")
    return number


def _slow_from(value: Any, where: str) -> float:
    number = _float(value, where)
    if not 0 < number <= 1:
        raise ConfigError(
            f"{where} must be more than 0 and at most 1 (a share of each limit; 1 = no slowing), got {number}"
        )
    return number


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a non-empty string")
    return value


def _ident(value: Any, where: str) -> str:
    text = _str(value, where)
    if not _IDENT.match(text):
        raise ConfigError(f"{where}: {text!r} is not a plain identifier (letters, digits, _ $ -, at most 64)")
    return text


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):  # environment overrides are comma-separated
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where} must be a list of non-empty strings")
    return tuple(value)


def _choice(*allowed: str) -> Callable[[Any, str], Any]:
    def check(value: Any, where: str) -> Any:
        if value not in allowed:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value

    return check


def _password(section: _Section, base_dir: Path | None, key: str = "password") -> Secret:
    """A password (or another secret: ``key``) given literally or as a reference (:mod:`austasync.secrets`), in
    the file, in ``AUSTASYNC_<SECTION>_<KEY>``, or read from ``<key>_file``."""
    literal = section._raw(key)
    from_file = section._raw(f"{key}_file")
    if literal is not None and from_file is not None:
        raise ConfigError(f"{section.name}.{key} and {section.name}.{key}_file are both set; keep one")
    if from_file is not None:
        path = Path(_str(from_file[0], from_file[1]))
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        return Secret.from_source(FileSource(path, from_file[1]))
    if literal is not None:
        if not isinstance(literal[0], str):
            raise ConfigError(f"{literal[1]} must be a string")
        reference = parse_reference(literal[0], literal[1], section.env)
        return Secret(reference) if isinstance(reference, str) else Secret.from_source(reference)
    return Secret("")


def _database(section: _Section, base_dir: Path | None, default_port: int) -> DatabaseConfig:
    return DatabaseConfig(
        host=section.get("host", _str, "127.0.0.1"),
        port=section.get("port", lambda v, w: _int(v, w, 1, 65535), default_port),
        user=section.get("user", _str, "root"),
        password=_password(section, base_dir),
        connect_timeout_seconds=section.get("connect_timeout_seconds", _float, 10.0),
        tls=section.get("tls", _tls_mode, "preferred"),
        tls_ca=_tls_ca(section, base_dir),
    )


def _tls_mode(value: Any, where: str) -> TlsMode:
    if value not in TLS_MODES:
        raise ConfigError(f"{where} must be one of {', '.join(TLS_MODES)}, got {value!r}")
    return cast(TlsMode, value)


def _tls_ca(section: _Section, base_dir: Path | None) -> str | None:
    path = section.get("tls_ca", _str, None)
    if path is None:
        return None
    resolved = Path(path) if Path(path).is_absolute() or base_dir is None else base_dir / path
    if not resolved.is_file():
        raise ConfigError(f"[{section.name}] tls_ca {str(resolved)!r} is not a readable file (a PEM CA bundle)")
    return str(resolved)


def _rename(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(f'{where} must be a table of source_db = "target_db"')
    for key, val in value.items():
        _ident(key, f"{where}.{key}")
        _ident(val, f"{where}.{key}")
    return dict(value)


def _build(data: Mapping[str, Any], env: Mapping[str, str], path: Path | None) -> Config:
    known = {"source", "target", "redis", "replication", "copy", "apply", "throttle", "http", "verify", "log"}
    for key in data:
        if key not in known:
            raise ConfigError(f"unknown section [{key}] in the configuration; known: {', '.join(sorted(known))}")
    sections = {name: _Section(name, data.get(name, {}), env) for name in known}
    for name, sec in sections.items():
        if not isinstance(data.get(name, {}), dict):
            raise ConfigError(f"[{name}] must be a table")
        del sec
    base_dir = path.parent if path else None
    s = sections
    rep = s["replication"]
    replication = ReplicationConfig(
        server_id=rep.get("server_id", lambda v, w: _int(v, w, 1, 2**32 - 1), 4321),
        databases=tuple(_ident(d, "replication.databases") for d in rep.get("databases", _str_list, tuple[str, ...]())),
        name=rep.get("name", _ident, "default"),
        include_tables=rep.get("include_tables", _str_list, ()),
        exclude_tables=rep.get("exclude_tables", _str_list, ()),
        rename=rep.get("rename", _rename, {}),
        on_ddl=rep.get("on_ddl", _choice("stop", "exec", "ignore"), "stop"),
        state_schema=rep.get("state_schema", _ident, "_austasync"),
        heartbeat_seconds=rep.get("heartbeat_seconds", _float, 1.0),
        read_timeout_seconds=rep.get("read_timeout_seconds", _float, 30.0),
        lease_seconds=rep.get("lease_seconds", _float, 15.0),
    )
    if not replication.databases:
        raise ConfigError("replication.databases must list at least one source database")
    if replication.state_schema in replication.databases or replication.state_schema in replication.rename.values():
        raise ConfigError("replication.state_schema must not be one of the replicated databases")
    cp, ap, th = s["copy"], s["apply"], s["throttle"]
    config = Config(
        source=_database(s["source"], base_dir, 3306),
        target=_database(s["target"], base_dir, 3307),
        redis=_redis(s["redis"], base_dir),
        replication=replication,
        copy=CopyConfig(
            chunk_rows=cp.get("chunk_rows", lambda v, w: _int(v, w, 1, 1_000_000), 5000),
            snapshot_seconds=cp.get("snapshot_seconds", _float, 2.0),
            max_rows_per_second=cp.get("max_rows_per_second", lambda v, w: _int(v, w, 0), 0),
            target_binlog=cp.get("target_binlog", _bool, True),
            render=cp.get("render", _choice("source", "daemon"), "daemon"),
        ),
        apply=ApplyConfig(
            batch_max_rows=ap.get("batch_max_rows", lambda v, w: _int(v, w, 1), 50000),
            batch_max_bytes=ap.get("batch_max_bytes", lambda v, w: _int(v, w, 1024), 16 * 1024 * 1024),
            batch_max_seconds=ap.get("batch_max_seconds", _float, 0.5),
            queue_max_events=ap.get("queue_max_events", lambda v, w: _int(v, w, 100), 20000),
            hold_bytes=ap.get("hold_bytes", lambda v, w: _int(v, w, 1024), 32 * 1024 * 1024),
            retry_budget_seconds=ap.get("retry_budget_seconds", _seconds, 300.0),
        ),
        throttle=ThrottleConfig(
            max_threads_running=th.get("max_threads_running", lambda v, w: _int(v, w, 0), 32),
            max_lag_seconds=th.get("max_lag_seconds", _float, 30.0),
            check_interval_seconds=th.get("check_interval_seconds", _float, 1.0),
            max_history_list_length=th.get("max_history_list_length", lambda v, w: _int(v, w, 0), 1_000_000),
            max_probe_ms=th.get("max_probe_ms", _float, 250.0),
            slow_from=th.get("slow_from", _slow_from, 0.8),
            watch_lock_waits=th.get("watch_lock_waits", _bool, True),
        ),
        http=_http(s["http"], base_dir),
        verify=VerifyConfig(
            interval_seconds=s["verify"].get("interval_seconds", _float, 6 * 3600.0),
            pace=s["verify"].get("pace", _pace, 0.5),
            touched_interval_seconds=s["verify"].get("touched_interval_seconds", _float, 300.0),
        ),
        log=LogConfig(
            level=s["log"].get("level", _choice("debug", "info", "warning", "error"), "info"),
            format=s["log"].get("format", _choice("auto", "json", "console"), "auto"),
        ),
        path=path,
    )
    for sec in sections.values():
        sec.check_unknown()
    return config


def _redis(section: _Section, base_dir: Path | None) -> RedisConfig:
    url = section.get("url", _str, "redis://127.0.0.1:6379/0")
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        # never quote the URL: it may hold a password
        raise ConfigError(
            f"redis.url must start with redis:// (plain), rediss:// (TLS) or unix://, not {parts.scheme}://"
        )
    cfg = RedisConfig(
        url=Secret(url),
        key_prefix=section.get("key_prefix", _ident, "austasync"),
        username=section.get("username", _str, None),
        password=_password(section, base_dir),
        tls_ca=_tls_ca(section, base_dir),
        tls_verify=section.get("tls_verify", _choice("verify_identity", "verify_ca"), "verify_identity"),
    )
    if (parts.username or parts.password) and (cfg.username or cfg.password):
        raise ConfigError(
            "redis.url holds a user or password and redis.username/redis.password is set too; keep one (the"
            " password is safer in redis.password, redis.password_file or a credential:/aws-sm: reference)"
        )
    if parts.scheme != "rediss" and (cfg.tls_ca or section._raw("tls_verify") is not None):
        raise ConfigError(
            f"redis.tls_ca/redis.tls_verify are set but redis.url is {parts.scheme}:// (no TLS); write"
            " rediss://host:port/db for TLS"
        )
    return cfg


def _http(section: _Section, base_dir: Path | None) -> HttpConfig:
    http = HttpConfig(
        listen=section.get("listen", _listen, "127.0.0.1:9108"),
        control_token=_password(section, base_dir, "control_token"),
        control=section.get("control", _choice("enabled", "disabled"), "enabled"),
        control_listen=section.get("control_listen", _loopback_listen, None),
    )
    if http.control == "disabled" and (http.control_token or http.control_listen):
        raise ConfigError(
            'http.control = "disabled" turns /control/* off, yet http.control_token or http.control_listen is set;'
            " keep one"
        )
    if http.control_host_port is not None and http.control_host_port == http.host_port and http.host_port[1]:
        raise ConfigError("http.control_listen must differ from http.listen (it is a listener of its own)")
    return http


def _loopback_listen(value: Any, where: str) -> str:
    text = _listen(value, where)
    if not is_loopback_host(split_listen(text)[0]):
        raise ConfigError(f"{where} must be a loopback host:port (127.0.0.1, [::1] or localhost), got {text!r}")
    return text


def _listen(value: Any, where: str) -> str:
    text = _str(value, where)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where} must be host:port, got {text!r}")
    del host
    return text


def load(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate a configuration file; ``env`` defaults to ``os.environ``."""
    file = Path(path)
    try:
        with file.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {file} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file} is not valid TOML: {exc}") from None
    return _build(data, os.environ if env is None else env, file)


def from_mapping(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Build a configuration from an already parsed mapping (tests, tools)."""
    return _build(data, {} if env is None else env, None)


def describe(config: Config) -> dict[str, Any]:
    """A JSON-safe view of the configuration with every secret masked."""

    def view(obj: Any) -> Any:
        if isinstance(obj, Secret):
            return "**********" if obj else ""
        if hasattr(obj, "__dataclass_fields__"):
            return {f.name: view(getattr(obj, f.name)) for f in fields(obj)}
        if isinstance(obj, tuple | list):
            return [view(v) for v in obj]
        if isinstance(obj, Mapping):
            return {k: view(v) for k, v in obj.items()}
        if isinstance(obj, Path):
            return str(obj)
        return obj

    return dict(view(config))


def reversed_config(config: Config) -> Config:
    """The same migration streaming back: the promoted target is the source, the legacy host the target.

    Used by ``austasync run --reverse`` after a cutover, so the legacy host stays exact for the rollback window.
    The reverse stream has its own name (state rows and Redis keys), and renamed databases map back.
    """
    rep = config.replication
    back = {target: source for source, target in rep.rename.items()}
    reverse = replace(
        rep,
        name=f"{rep.name}-reverse"[:64],
        databases=tuple(rep.target_db(db) for db in rep.databases),
        rename=back,
        include_tables=tuple(_rename_pattern(p, rep.rename) for p in rep.include_tables),
        exclude_tables=tuple(_rename_pattern(p, rep.rename) for p in rep.exclude_tables),
    )
    return replace(config, source=config.target, target=config.source, replication=reverse)


def _rename_pattern(pattern: str, rename: Mapping[str, str]) -> str:
    db, dot, rest = pattern.partition(".")
    return f"{rename.get(db, db)}{dot}{rest}"
