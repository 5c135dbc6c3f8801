"""A hypothesis state machine: the queue behaves like a deque that follows Kamailio's rules
(drop-oldest at ``size``, addmode 1 keep-oldest, addmode 2 keep-newest, byte-exact keys)."""

from __future__ import annotations

from collections import deque

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from queue_helpers import unique_name

import pymqueue

keys = st.sampled_from([b"", b"a", b"b", b"a\0x", b"a\0y", b"\xff", "ключ".encode()])
values = st.binary(max_size=48)


class QueueModel(RuleBasedStateMachine):
    q: pymqueue.Queue

    @initialize(size=st.integers(0, 6), addmode=st.integers(0, 2))
    def setup(self, size: int, addmode: int) -> None:
        self.q = pymqueue.Queue(unique_name("m"), create=True, size=size, addmode=addmode)
        self.model: deque[tuple[bytes, bytes]] = deque()
        self.size = size
        self.addmode = addmode

    def _model_add(self, key: bytes, value: bytes) -> bool:
        if self.addmode:
            existing = [i for i, (k, _) in enumerate(self.model) if k == key]
            if existing and self.addmode == 1:
                return False
            if existing:
                del self.model[existing[0]]
        self.model.append((key, value))
        if self.size and len(self.model) > self.size:
            self.model.popleft()
        return True

    @rule(key=keys, value=values)
    def add(self, key: bytes, value: bytes) -> None:
        assert self.q.add(key, value) == self._model_add(key, value)

    @rule(items=st.lists(st.tuples(keys, values), max_size=10))
    def add_many(self, items: list[tuple[bytes, bytes]]) -> None:
        for key, value in items:
            self._model_add(key, value)
        assert self.q.add_many(items) == len(items)

    @rule()
    def fetch(self) -> None:
        expected = self.model.popleft() if self.model else None
        assert self.q.fetch() == expected

    @rule(n=st.integers(0, 8))
    def fetch_many(self, n: int) -> None:
        expected = [self.model.popleft() for _ in range(min(n, len(self.model)))]
        assert self.q.fetch_many(n) == expected

    @precondition(lambda self: hasattr(self, "q"))
    @invariant()
    def same_contents(self) -> None:
        assert len(self.q) == len(self.model)
        assert self.q.peek_many(len(self.model) + 10) == list(self.model)
        s = self.q.stats()
        assert s.added == s.fetched + s.items + s.dropped + s.replaced

    def teardown(self) -> None:
        if hasattr(self, "q"):
            self.q.unlink()
            self.q.close()


QueueModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestQueueModel = QueueModel.TestCase
