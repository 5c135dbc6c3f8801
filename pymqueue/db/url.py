"""``db_url`` parsing: Kamailio's SQLite form and PostgreSQL URLs.

* ``sqlite:///relative/path.db`` — a path relative to the current directory (three slashes,
  as in Kamailio: ``sqlite:///abs`` is *relative* ``abs``).
* ``sqlite:////absolute/path.db`` — an absolute path (four slashes, Kamailio's form).
* ``postgres://user:pass@host:port/dbname?opts`` and ``postgresql://…`` — handed to psycopg
  (libpq accepts both schemes).

Anything else raises :class:`~pymqueue.errors.ConfigError` quoting the URL with its password
hidden.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pymqueue.errors import ConfigError

__all__ = ["DbUrl", "parse_db_url", "redact"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class DbUrl:
    """A parsed ``db_url``. ``target`` is the SQLite file path or the libpq URL."""

    kind: Literal["sqlite", "postgresql"]
    target: str
    display: str  # the URL with any password replaced by ``***``

    def __str__(self) -> str:
        return self.display


def redact(url: str) -> str:
    """``url`` with the password (if any) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def parse_db_url(url: str) -> DbUrl:
    """Parse a ``db_url`` (see the module docstring); ConfigError when it is not usable."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"db_url must be a non-empty string, got {url!r}")
    if url != url.strip() or any(c in url for c in "\0\r\n"):
        raise ConfigError(f"db_url contains whitespace or control characters: {redact(url)!r}")
    m = _SCHEME.match(url)
    if m is None:
        raise ConfigError(
            f"db_url {redact(url)!r} has no scheme: use sqlite:///relative.db, "
            "sqlite:////absolute.db or postgresql://user@host/dbname"
        )
    scheme = m.group(1).lower()
    if scheme == "sqlite":
        rest = url[m.end() :]
        if not rest.startswith("/"):
            raise ConfigError(
                f"db_url {url!r}: a SQLite URL has no host part; use sqlite:///relative.db "
                "or sqlite:////absolute.db"
            )
        path = rest[1:]
        if "?" in path or "#" in path:
            raise ConfigError(f"db_url {url!r}: options ('?', '#') are not supported for SQLite")
        path = unquote(path)
        if not path or path.endswith("/"):
            raise ConfigError(f"db_url {url!r}: no database file name after sqlite:///")
        return DbUrl("sqlite", path, url)
    if scheme in ("postgres", "postgresql"):
        display = redact(url)
        try:
            parts = urlsplit(url)
            _ = parts.port  # validates the port
        except ValueError as e:
            raise ConfigError(f"db_url {display!r} is not a valid PostgreSQL URL: {e}") from None
        if not parts.path.strip("/") and "dbname=" not in parts.query:
            raise ConfigError(f"db_url {display!r} names no database (…/dbname)")
        return DbUrl("postgresql", url, display)
    raise ConfigError(
        f"db_url {redact(url)!r}: unsupported scheme {scheme!r} (sqlite, postgres, postgresql)"
    )
