"""Where a password comes from, and how to fetch it again after a rotation.

A ``password`` value is a reference:

- ``credential:<name>``: the systemd credential ``$CREDENTIALS_DIRECTORY/<name>`` (``LoadCredential=`` in the unit);
- ``aws-sm:<secret id or ARN>[#<json key>]``: AWS Secrets Manager (region and endpoint from the standard AWS
  environment, or from the ARN); with ``#key`` the secret is a JSON object (the RDS rotation format) and the
  password is its ``key`` field;
- ``literal:<text>``: the text as is (for a password that happens to start with one of these prefixes);
- anything else: the password itself.

``password_file`` (in :mod:`austasync.config`) is a :class:`FileSource`, and ``AUSTASYNC_<SECTION>_PASSWORD``
may hold any of these references. Local sources are read when the configuration loads, so a missing file is a
configuration error naming the key; AWS is asked on first use, so an unreachable endpoint is an "unavailable"
error (exit 3, systemd restarts) rather than a configuration error.

Every source can be fetched again: a connection refused with "access denied" asks for the current value once
more (:meth:`austasync.config.Secret.refresh`), so rotating a password does not stop the daemon. During an AWS
rotation the database may already have the new password while ``AWSCURRENT`` still holds the old one (between
the rotation's ``setSecret`` and ``finishSecret`` steps), so when ``AWSCURRENT`` has not changed the
``AWSPENDING`` version is offered as well.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from austasync.errors import ConfigError, UnavailableError

CREDENTIAL_PREFIX = "credential:"
AWS_PREFIX = "aws-sm:"
LITERAL_PREFIX = "literal:"
_ARN_REGION = re.compile(r"^arn:aws[\w-]*:secretsmanager:([a-z0-9-]+):")
_CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9_.@:+-]{1,255}$")


class SecretSource(ABC):
    """Something a password can be fetched from, again and again. Never holds the value itself."""

    #: fetched when the configuration loads (local, cheap, errors are configuration errors)
    eager: bool = True

    @abstractmethod
    def fetch(self) -> str:
        """The current value. Raises :class:`ConfigError` (fix the reference) or :class:`UnavailableError`."""

    def fetch_next(self) -> str | None:
        """A value that may be valid before :meth:`fetch` returns it (a rotation in progress), or None."""
        return None

    @abstractmethod
    def describe(self) -> str:
        """Where the value comes from, for messages; never the value."""


def _strip_line_end(text: str) -> str:
    # editors and `echo` add a final newline that is never part of the password
    return text.rstrip("\r\n")


@dataclass(frozen=True)
class FileSource(SecretSource):
    path: Path
    where: str

    def fetch(self) -> str:
        try:
            return _strip_line_end(self.path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{self.where}: cannot read {self.path}: {exc.strerror}") from None

    def describe(self) -> str:
        return f"file {self.path}"


@dataclass(frozen=True)
class CredentialSource(SecretSource):
    """A systemd credential: a file systemd places, readable only by the service, in ``$CREDENTIALS_DIRECTORY``."""

    name: str
    directory: Path | None
    where: str

    def fetch(self) -> str:
        if self.directory is None:
            raise ConfigError(
                f"{self.where}: credential {self.name!r} is asked for but $CREDENTIALS_DIRECTORY is not set; systemd"
                f" sets it for a service with LoadCredential={self.name}:/path/to/file"
            )
        try:
            return _strip_line_end((self.directory / self.name).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(
                f"{self.where}: cannot read credential {self.name!r} in {self.directory}: {exc.strerror}; check the"
                " unit's LoadCredential= line"
            ) from None

    def describe(self) -> str:
        return f"systemd credential {self.name}"


@dataclass(frozen=True)
class AwsSecretsManagerSource(SecretSource):
    secret_id: str
    json_key: str | None
    region: str | None
    endpoint_url: str | None
    where: str

    eager = False

    def fetch(self) -> str:
        value = self._get("AWSCURRENT")
        if value is None:
            raise ConfigError(f"{self.where}: AWS secret {self.secret_id!r} has no AWSCURRENT version")
        return value

    def fetch_next(self) -> str | None:
        return self._get("AWSPENDING")

    def describe(self) -> str:
        return f"AWS Secrets Manager secret {self.secret_id}" + (f" (key {self.json_key})" if self.json_key else "")

    def _client(self) -> Any:
        # boto3 ships no type hints; it takes a second to import and only AWS references need it
        import boto3  # type: ignore[import-untyped]  # noqa: PLC0415
        from botocore.config import Config  # type: ignore[import-untyped]  # noqa: PLC0415

        return boto3.session.Session().client(
            "secretsmanager",
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"}),
        )

    def _get(self, stage: str) -> str | None:
        from botocore.exceptions import (  # type: ignore[import-untyped]  # noqa: PLC0415
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            NoRegionError,
        )

        try:
            answer = self._client().get_secret_value(SecretId=self.secret_id, VersionStage=stage)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "ResourceNotFoundException":
                if stage != "AWSCURRENT":
                    return None  # no rotation in progress
                raise ConfigError(f"{self.where}: AWS secret {self.secret_id!r} does not exist") from None
            if code in ("AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException"):
                raise ConfigError(
                    f"{self.where}: AWS refused to read secret {self.secret_id!r} ({code}); give this host's AWS"
                    " identity secretsmanager:GetSecretValue on it (and kms:Decrypt on its key)"
                ) from None
            if code in ("DecryptionFailure", "InvalidRequestException", "InvalidParameterException"):
                raise ConfigError(f"{self.where}: AWS cannot return secret {self.secret_id!r}: {code}") from None
            raise UnavailableError(f"AWS Secrets Manager failed for {self.where}: {code or 'error'}") from None
        except NoRegionError:
            raise ConfigError(
                f"{self.where}: no AWS region for secret {self.secret_id!r}; set AWS_REGION or use the secret's ARN"
            ) from None
        except NoCredentialsError:
            raise ConfigError(
                f"{self.where}: no AWS credentials found (environment, ~/.aws, instance or task role)"
            ) from None
        except BotoCoreError as exc:
            raise UnavailableError(
                f"AWS Secrets Manager is unreachable for {self.where}: {type(exc).__name__}"
            ) from None
        if answer.get("SecretString") is not None:
            text = str(answer["SecretString"])
        else:
            try:
                text = bytes(answer["SecretBinary"]).decode("utf-8")
            except (KeyError, UnicodeDecodeError):
                raise ConfigError(f"{self.where}: AWS secret {self.secret_id!r} is not UTF-8 text") from None
        return self._select(text)

    def _select(self, text: str) -> str:
        """The password inside the secret's text. Error messages never quote the text: it is the secret."""
        try:
            document = json.loads(text) if text.lstrip().startswith("{") else None
        except ValueError:
            document = None
        if self.json_key is None:
            if isinstance(document, dict) and "password" in document:
                raise ConfigError(
                    f"{self.where}: AWS secret {self.secret_id!r} is a JSON object with a password field; write"
                    f" {AWS_PREFIX}{self.secret_id}#password"
                )
            return text
        if not isinstance(document, dict):
            raise ConfigError(
                f"{self.where}: AWS secret {self.secret_id!r} is not a JSON object, so #{self.json_key} cannot be read"
            )
        value = document.get(self.json_key)
        if not isinstance(value, str):
            keys = ", ".join(sorted(map(str, document)))
            raise ConfigError(
                f"{self.where}: AWS secret {self.secret_id!r} has no text field {self.json_key!r} (fields: {keys})"
            )
        return value


def parse_reference(text: str, where: str, env: Mapping[str, str]) -> str | SecretSource:
    """The literal password, or the source a reference names. ``where`` names the key for error messages."""
    if text.startswith(LITERAL_PREFIX):
        return text[len(LITERAL_PREFIX) :]
    if text.startswith(CREDENTIAL_PREFIX):
        name = text[len(CREDENTIAL_PREFIX) :]
        if not _CREDENTIAL_NAME.match(name) or name in (".", ".."):
            raise ConfigError(f"{where}: {name!r} is not a systemd credential name (a file name, no '/')")
        directory = env.get("CREDENTIALS_DIRECTORY")
        return CredentialSource(name, Path(directory) if directory else None, where)
    if text.startswith(AWS_PREFIX):
        reference = text[len(AWS_PREFIX) :]
        # secret names cannot contain '#', so the last one separates the JSON key
        secret_id, hash_sign, key = reference.rpartition("#")
        if not hash_sign:
            secret_id, key = reference, ""
        if not secret_id or (hash_sign and not key):
            raise ConfigError(f"{where}: write {AWS_PREFIX}<secret id or ARN>[#<json key>]")
        arn = _ARN_REGION.match(secret_id)
        region = arn.group(1) if arn else env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        endpoint = env.get("AWS_ENDPOINT_URL_SECRETS_MANAGER") or env.get("AWS_ENDPOINT_URL")
        return AwsSecretsManagerSource(secret_id, key or None, region, endpoint, where)
    return text
