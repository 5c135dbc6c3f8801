"""Bytes ↔ text for queue names, keys and values: the one place that decides.

* Keys and values are bytes; a ``str`` given for one is UTF-8 (strict) (:func:`to_bytes`).
* Queue names are bytes too; a ``str`` name is UTF-8 with ``surrogateescape``, so any bytes
  can be named and come back unchanged (:func:`name_bytes` / :func:`name_text`).
* Messages and listings show a name with invalid UTF-8 replaced (:func:`display`).
* JSON (the RPC and the CLI's ``--json``) carries bytes as text, plus ``<field>_b64`` with the
  exact bytes when they are not UTF-8 (:func:`json_bytes_fields`).

Pure Python, imports nothing of pymqueue: every layer may use it.
"""

from __future__ import annotations

import base64
from typing import TypeAlias

__all__ = ["Key", "display", "json_bytes_fields", "name_bytes", "name_text", "to_bytes"]

#: What a key or a value may be given as.
Key: TypeAlias = str | bytes | bytearray | memoryview


def to_bytes(value: Key) -> bytes:
    """A key or value as bytes (``str``: UTF-8); :class:`TypeError` for anything else."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"keys and values are str or bytes, not {type(value).__name__}")


def name_bytes(name: str | bytes | bytearray | memoryview) -> bytes:
    """A queue name as bytes (``str``: UTF-8 with ``surrogateescape``); raises
    :class:`UnicodeEncodeError` for a lone surrogate that is not an escaped byte."""
    if isinstance(name, str):
        return name.encode("utf-8", "surrogateescape")
    return bytes(name)


def name_text(raw: bytes) -> str:
    """A queue name as text, exactly reversible (invalid UTF-8 as surrogate escapes)."""
    return raw.decode("utf-8", "surrogateescape")


def display(raw: bytes) -> str:
    """Bytes as text for a message or a listing (invalid UTF-8 replaced by U+FFFD)."""
    return raw.decode("utf-8", "replace")


def json_bytes_fields(field: str, data: bytes) -> dict[str, str]:
    """``{field: text}``, plus ``{field_b64: exact bytes}`` when ``data`` is not UTF-8."""
    try:
        return {field: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {
            field: data.decode("utf-8", "replace"),
            field + "_b64": base64.b64encode(data).decode("ascii"),
        }
