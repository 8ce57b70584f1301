"""Secrets for the MQTT connection: a password from a file or the environment, private keys.

Secrets never come from the YAML config (it lives in the repo and in backups). A secret file is
refused when every user of the machine may read it, so a ``chmod 644`` mistake is caught at
start-up rather than leaking the broker password. Under systemd, ``LoadCredential=name:/path``
puts a private copy in ``$CREDENTIALS_DIRECTORY/name``; a bare ``password_file`` name is looked
up there.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent.errors import ChorusError

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


class CredentialError(ChorusError):
    """A secret file is missing, empty, unreadable or readable by every user."""

    exit_code = 2


def check_private_file(path: Path, what: str) -> None:
    """Raise CredentialError unless ``path`` is a regular file that others cannot read."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CredentialError(f"{what}: file not found: {path}") from None
    except OSError as exc:
        raise CredentialError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CredentialError(f"{what}: not a regular file: {path}")
    if st.st_mode & stat.S_IROTH:
        raise CredentialError(
            f"{what}: {path} is readable by every user (mode {stat.filemode(st.st_mode)}); "
            f"run: chmod o-rwx {path}"
        )


def resolve_secret_path(name_or_path: str, what: str) -> Path:
    """An absolute path as is; a bare name inside ``$CREDENTIALS_DIRECTORY``."""
    p = Path(name_or_path)
    if p.is_absolute():
        return p
    base = os.environ.get(CREDENTIALS_ENV)
    if not base:
        raise CredentialError(
            f"{what}: {name_or_path!r} is not an absolute path and ${CREDENTIALS_ENV} is not "
            "set (use an absolute path, or systemd LoadCredential=)"
        )
    return Path(base) / p


def read_secret_file(name_or_path: str, what: str) -> str:
    """The secret held in a private file, without its trailing line break."""
    path = resolve_secret_path(name_or_path, what)
    check_private_file(path, what)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialError(f"{what}: cannot read {path}: {exc}") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise CredentialError(f"{what}: {path} is empty")
    return secret


def mqtt_password(password_file: str | None, password_env: str) -> str | None:
    """The broker password: from ``password_file`` if set, else ``$password_env`` (or None)."""
    if password_file:
        return read_secret_file(password_file, "mqtt.password_file")
    return os.environ.get(password_env)
