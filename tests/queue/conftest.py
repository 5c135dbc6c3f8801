"""Fixtures of the queue tests."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator

import pytest


@pytest.fixture(params=["fork", "spawn"])
def ctx(request: pytest.FixtureRequest) -> Iterator[mp.context.BaseContext]:
    """A multiprocessing context, once per start method; children a failed assertion left
    behind are stopped by PID afterwards."""
    context = mp.get_context(request.param)
    yield context
    for child in mp.active_children():
        child.kill()
        child.join(10)
