"""db_url parsing (pymqueue.db.url) and the Persistence constructor's checks."""

from __future__ import annotations

import pytest

from pymqueue.db import Persistence, parse_db_url
from pymqueue.errors import ConfigError


@pytest.mark.parametrize(
    ("url", "kind", "target"),
    [
        ("sqlite:///relative/path.db", "sqlite", "relative/path.db"),
        ("sqlite:////absolute/path.db", "sqlite", "/absolute/path.db"),
        ("sqlite:///q.db", "sqlite", "q.db"),
        ("sqlite:////tmp/with%20space.db", "sqlite", "/tmp/with space.db"),
        ("SQLITE:///x.db", "sqlite", "x.db"),
        ("postgres://u:secret@127.0.0.1:5432/kam", "postgresql", None),
        ("postgresql://u@localhost/kam?sslmode=disable", "postgresql", None),
        ("postgresql:///kam", "postgresql", None),
    ],
)
def test_good_urls(url: str, kind: str, target: str | None) -> None:
    u = parse_db_url(url)
    assert u.kind == kind
    assert u.target == (target if target is not None else url)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "   ",
        "q.db",
        "/abs/q.db",
        "sqlite://q.db",  # host part, no path
        "sqlite://host/q.db",
        "sqlite:///",
        "sqlite:////",
        "sqlite:///dir/",
        "sqlite:///q.db?mode=ro",
        "mysql://u@h/db",
        "text:///tmp/x",
        "postgresql://u@h:notaport/db",
        "postgresql://u@h",
        " sqlite:///q.db",
        "sqlite:///q\n.db",
    ],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_db_url(url)


def test_password_never_in_messages() -> None:
    u = parse_db_url("postgresql://kam:s3cr3t@127.0.0.1/kam")
    assert "s3cr3t" not in u.display
    assert "s3cr3t" not in repr(u.display)
    with pytest.raises(ConfigError) as ei:
        parse_db_url("postgresql://kam:s3cr3t@127.0.0.1:badport/kam")
    assert "s3cr3t" not in str(ei.value)
    p = Persistence("postgresql://kam:s3cr3t@127.0.0.1/kam")
    assert "s3cr3t" not in repr(p)


@pytest.mark.parametrize("interval", [0, -1.0, float("nan")])
def test_bad_sync_interval(interval: float) -> None:
    with pytest.raises(ConfigError):
        Persistence("sqlite:///x.db", sync_interval=interval)


def test_default_reject_file_beside_sqlite_db() -> None:
    p = Persistence("sqlite:////var/lib/k/mq.db")
    assert str(p.reject_file) == "/var/lib/k/mq.db.rejected.jsonl"
