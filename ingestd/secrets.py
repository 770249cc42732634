"""Secret values from the environment or systemd credentials, kept out of logs and tracebacks.

Any free-text config option may be written as an inline table instead of a literal string:

    rest_url = { env = "BINANCE_REST_URL" }          # read $BINANCE_REST_URL at load time
    dsn      = { credential = "pg-dsn" }             # read $CREDENTIALS_DIRECTORY/pg-dsn

`credential` is systemd's LoadCredential=/SetCredential= mechanism: the unit copies the secret
into a private, non-swappable directory readable only by the service and exports its path as
$CREDENTIALS_DIRECTORY, so the secret never sits in the unit file, the config file, or `ps`.

Resolved values are wrapped in `Secret`, whose str/repr/format are all "***", so a config object
can be logged or shown in a traceback without leaking; code that needs the value calls `reveal`.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any, Mapping

HIDDEN = "***"
REFERENCE_KEYS = frozenset({"env", "credential"})


class SecretError(Exception):
    """A secret reference is malformed or cannot be resolved. The message never holds the value."""


class Secret:
    """A string that refuses to print itself. `origin` says where it came from (safe to show)."""

    __slots__ = ("_value", "origin")

    def __init__(self, value: str, origin: str = "literal") -> None:
        self._value = value
        self.origin = origin

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return HIDDEN

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return HIDDEN

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # Constant-time, so comparing a guessed value against a secret does not leak its prefix.
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> Any:
        # Pickling would write the plain value into whatever file or pipe the pickle ends up in.
        raise TypeError("Secret values cannot be pickled")


def reveal(value: str | Secret) -> str:
    """The plain string behind a config value that may or may not have been given as a secret."""
    return value.reveal() if isinstance(value, Secret) else value


def is_reference(raw: object) -> bool:
    """True for inline tables that are meant as secret references (even malformed ones)."""
    return isinstance(raw, dict) and bool(REFERENCE_KEYS & raw.keys())


def describe_reference(raw: Mapping[str, Any]) -> str:
    """How to name a reference in a message: `$NAME` or `credential "name"`. Never the value."""
    if "env" in raw:
        return f"${raw['env']}"
    return f'credential "{raw.get("credential")}"'


def resolve(raw: Mapping[str, Any], environ: Mapping[str, str]) -> Secret:
    """Turn `{env = "NAME"}` or `{credential = "name"}` into a Secret, or raise SecretError."""
    if len(raw) != 1 or not is_reference(raw):
        keys = ", ".join(sorted(raw))
        raise SecretError(
            f'a secret reference takes exactly one of env = "NAME" or credential = "name", got keys {keys}'
        )
    (kind, name), = raw.items()
    if not isinstance(name, str) or not name:
        raise SecretError(f"the {kind} name of a secret reference must be a non-empty string")
    if kind == "env":
        return _from_environment(name, environ)
    return _from_credentials(name, environ)


def _from_environment(name: str, environ: Mapping[str, str]) -> Secret:
    if name not in environ:
        raise SecretError(f"environment variable ${name} is not set")
    return Secret(environ[name], origin=f"${name}")


def _from_credentials(name: str, environ: Mapping[str, str]) -> Secret:
    # A credential name is a file name inside the credentials directory, never a path: letting
    # "../x" through would turn the config file into a way to read arbitrary files as secrets.
    if "/" in name or name in (".", ".."):
        raise SecretError(f'credential "{name}" must be a plain file name, not a path')
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise SecretError(
            f'credential "{name}" needs $CREDENTIALS_DIRECTORY, which is not set '
            f"(systemd sets it when the unit has LoadCredential={name}:/path/to/file)"
        )
    path = Path(directory) / name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecretError(f'credential "{name}" not found in $CREDENTIALS_DIRECTORY ({directory})') from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise SecretError(f'credential "{name}" cannot be read: {reason}') from None
    # Files written by `echo` or an editor end with a newline that is not part of the secret.
    return Secret(text.rstrip("\r\n"), origin=f'credential "{name}"')
