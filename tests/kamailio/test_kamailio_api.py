"""pymqueue.kamailio: Kamailio's mq_* functions and $mq* PVs, spec cases T01-T25.

Setup unless stated: ``q3`` = ``name=q3;size=3``, ``qu`` = ``name=qu``, one consumer context.
T21 is the byte-exact variant (Kamailio compares keys only up to the first NUL; the engine
compares bytes, a documented divergence).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest

from pymqueue import Overflow, Queue
from pymqueue.config import InstanceConfig
from pymqueue.instance import Instance
from pymqueue.kamailio import (
    PV_BUFFER_SIZE,
    ScriptApi,
    default_api,
    mq_add,
    mq_fetch,
    mq_pv_free,
    mq_size,
    pv_mq_size,
    pv_mqk,
    pv_mqv,
    pv_text,
    set_default_api,
)
from pymqueue.kamailio.modparam import parse_mqueue

MakeApi = Callable[..., ScriptApi]


@pytest.fixture
def make_api(namespace: str) -> Iterator[MakeApi]:
    """``make_api("name=q3;size=3", ...)``: start an instance with those queues and return a
    fresh consumer context on it. Everything is stopped (queues unlinked) afterwards."""
    instances: list[Instance] = []

    def make(*defs: str, **kwargs: object) -> ScriptApi:
        inst = Instance(
            InstanceConfig(queues=tuple(parse_mqueue(d) for d in defs)), namespace=namespace
        )
        inst.start()
        instances.append(inst)
        return ScriptApi(inst, **kwargs)  # type: ignore[arg-type]

    yield make
    for inst in instances:
        inst.stop()


@pytest.fixture
def api(make_api: MakeApi) -> ScriptApi:
    return make_api("name=q3;size=3", "name=qu")


def slot(api: ScriptApi, q: str) -> tuple[bytes | None, bytes | None]:
    return api.pv_mqk(q), api.pv_mqv(q)


def test_t01_fresh_start(api: ScriptApi) -> None:
    assert slot(api, "q3") == (None, None)
    assert api.pv_mq_size("q3") == 0
    assert [pv_text(v) for v in (api.pv_mqk("q3"), api.pv_mqv("q3"), api.pv_mq_size("q3"))] == [
        b"<null>",
        b"<null>",
        b"0",
    ]


def test_t02_mq_size_empty(api: ScriptApi) -> None:
    assert api.mq_size("q3") == -1


def test_t03_unknown_queue_size(api: ScriptApi, caplog: pytest.LogCaptureFixture) -> None:
    assert api.mq_size("nope") == -2
    with caplog.at_level(logging.ERROR, logger="pymqueue.kamailio"):
        assert api.pv_mq_size("nope") is None
    assert "mqueue not found: nope" in caplog.text
    assert api.pv_mqk("nope") is None
    assert api.pv_mqv("nope") is None


def test_t04_fetch_empty(api: ScriptApi) -> None:
    assert api.mq_fetch("q3") == -2


def test_t05_fetch_unknown(api: ScriptApi) -> None:
    assert api.mq_fetch("nope") == -1


def test_t06_add_unknown(api: ScriptApi, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="pymqueue.kamailio"):
        assert api.mq_add("nope", "a", "b") == -1
    assert "mqueue not found: nope" in caplog.text


def test_t07_pv_free_unknown(api: ScriptApi) -> None:
    assert api.mq_pv_free("nope") == 1


def test_t08_t09_overflow_drops_oldest(api: ScriptApi) -> None:
    sizes = []
    for i in range(1, 6):
        assert api.mq_add("q3", f"k{i}", f"v{i}") == 1
        sizes.append(api.pv_mq_size("q3"))
    assert sizes == [1, 2, 3, 3, 3]
    assert api.mq_size("q3") == 3
    got = []
    for _ in range(4):
        rc = api.mq_fetch("q3")
        got.append((rc, *slot(api, "q3")))
    assert got == [
        (1, b"k3", b"v3"),
        (1, b"k4", b"v4"),
        (1, b"k5", b"v5"),
        (-2, None, None),
    ]


def test_t10_t11_slot_persists_until_empty_fetch(api: ScriptApi) -> None:
    assert api.mq_add("q3", "p1", "pv1") == 1
    assert api.mq_fetch("q3") == 1
    # "next message, same context": the slot is still there
    assert slot(api, "q3") == (b"p1", b"pv1")
    assert slot(api, "q3") == (b"p1", b"pv1")
    assert api.pv_mq_size("q3") == 0
    assert api.mq_fetch("q3") == -2  # T11: a fetch finding the queue empty clears the slot
    assert slot(api, "q3") == (None, None)


def test_t12_pv_free(api: ScriptApi) -> None:
    api.mq_add("q3", "p2", "pv2")
    api.mq_add("q3", "other", "x")
    assert api.mq_fetch("q3") == 1
    assert api.mq_pv_free("q3") == 1
    assert slot(api, "q3") == (None, None)
    assert api.mq_size("q3") == 1  # unchanged
    assert api.mq_pv_free("q3") == 1


def test_t13_fetch_unknown_keeps_slot(api: ScriptApi) -> None:
    api.mq_add("q3", "p3", "pv3")
    assert api.mq_fetch("q3") == 1
    assert api.mq_fetch("nope") == -1
    assert api.pv_mqk("q3") == b"p3"


def test_t14_empty_key_and_value_read_as_null(api: ScriptApi) -> None:
    assert api.mq_add("qu", "", "") == 1
    assert api.mq_size("qu") == 1
    assert api.mq_fetch("qu") == 1
    assert slot(api, "qu") == (None, None)
    # the KEMI getters return b"" for a held empty key/value (K12)
    assert api.mqk_get("qu") == b""
    assert api.mqv_get("qu") == b""


def test_t15_empty_key_only(api: ScriptApi) -> None:
    api.mq_add("qu", "", "onlyval")
    assert api.mq_fetch("qu") == 1
    assert slot(api, "qu") == (None, b"onlyval")


def test_t16_duplicate_keys_in_addmode_0(api: ScriptApi) -> None:
    for k, v in (("a", "1"), ("b", "2"), ("a", "3")):
        assert api.mq_add("qu", k, v) == 1
    got = []
    for _ in range(4):
        rc = api.mq_fetch("qu")
        got.append((rc, *slot(api, "qu")))
    assert got == [(1, b"a", b"1"), (1, b"b", b"2"), (1, b"a", b"3"), (-2, None, None)]


def drain(api: ScriptApi, q: str) -> list[tuple[bytes | None, bytes | None]]:
    out = []
    while api.mq_fetch(q) > 0:
        out.append(slot(api, q))
    return out


def test_t17_addmode_1_keeps_oldest(make_api: MakeApi) -> None:
    api = make_api("name=qa1;addmode=1")
    assert [api.mq_add("qa1", k, v) for k, v in (("a", "1"), ("b", "2"), ("a", "3"))] == [1, 1, 1]
    assert api.mq_size("qa1") == 2
    assert drain(api, "qa1") == [(b"a", b"1"), (b"b", b"2")]
    assert api.mq_fetch("qa1") == -2


def test_t18_addmode_2_keeps_newest(make_api: MakeApi) -> None:
    api = make_api("name=qa2;addmode=2")
    for k, v in (("a", "1"), ("b", "2"), ("c", "3"), ("a", "4"), ("c", "5")):
        assert api.mq_add("qa2", k, v) == 1
    assert api.mq_size("qa2") == 3
    assert drain(api, "qa2") == [(b"b", b"2"), (b"a", b"4"), (b"c", b"5")]


def test_t19_dedup_before_overflow(make_api: MakeApi) -> None:
    api = make_api("name=x;size=2;addmode=2")
    for k, v in (("a", "1"), ("b", "2"), ("a", "3"), ("c", "4")):
        assert api.mq_add("x", k, v) == 1
    assert drain(api, "x") == [(b"a", b"3"), (b"c", b"4")]
    assert api.mq_fetch("x") == -2


def test_t20_key_reusable_after_drop(make_api: MakeApi) -> None:
    api = make_api("name=x;size=2;addmode=1")
    for k, v in (("a", "1"), ("b", "2"), ("a", "3"), ("c", "4"), ("a", "5")):
        assert api.mq_add("x", k, v) == 1
    assert drain(api, "x") == [(b"c", b"4"), (b"a", b"5")]
    assert api.mq_fetch("x") == -2


def test_t21_keys_compare_byte_exactly(make_api: MakeApi) -> None:
    # Kamailio 5.6.3 ignores b"a\0y" (strncmp stops at NUL); pymqueue keeps all three.
    api = make_api("name=x;addmode=1")
    for key in (b"a\0x", b"a\0y", b"a\0yz", b"a\0x"):
        assert api.mq_add("x", key, b"v") == 1
    assert [k for k, _ in drain(api, "x")] == [b"a\0x", b"a\0y", b"a\0yz"]


def test_t22_binary_round_trip(api: ScriptApi) -> None:
    key, val = b"k\0ey\xff", bytes(range(256))
    assert api.mq_add("qu", key, val) == 1
    assert api.mq_fetch("qu") == 1
    assert api.pv_mqk("qu") == key
    assert api.pv_mqv("qu") == val
    assert (len(key), len(val)) == (5, 256)


def test_t23_pv_buffer_limit(api: ScriptApi, make_api: MakeApi) -> None:
    limit = PV_BUFFER_SIZE - 1
    assert api.mq_add("qu", "k", b"v" * limit) == 1
    assert api.mq_add("qu", "k", b"v" * (limit + 1)) == -1
    assert api.mq_add("qu", b"k" * (limit + 1), "v") == -1
    assert api.mq_add("qu", "k", b"v" * 20000) == -1
    assert api.mq_size("qu") == 1
    assert api.mq_fetch("qu") == 1
    assert len(api.pv_mqv("qu") or b"") == limit
    # KEMI-like: no limit
    kemi = make_api("name=big", pv_buffer_size=None)
    assert kemi.mq_add("big", "k", b"v" * 20000) == 1
    assert kemi.mq_fetch("big") == 1
    assert kemi.pv_mqv("big") == b"v" * 20000


def test_t24_names_are_exact(api: ScriptApi) -> None:
    api.mq_add("q3", "k", "v")
    assert [api.mq_size(n) for n in ("Q3", "q3 ", "q")] == [-2, -2, -2]
    assert api.mq_size("q3") == 1
    assert api.mq_size(b"q3") == 1


def test_t25_while_fetch_drains(api: ScriptApi) -> None:
    for i in range(3):
        api.mq_add("qu", f"k{i}", f"v{i}")
    iterations = 0
    while api.mq_fetch("qu") > 0:
        iterations += 1
    assert iterations == 3
    assert slot(api, "qu") == (None, None)


# --- beyond the T cases ------------------------------------------------------------------


def test_contexts_have_their_own_slots(api: ScriptApi) -> None:
    """X01/R09: an item fetched by one context (process) is invisible to the others."""
    other = ScriptApi(api._lookup)  # type: ignore[arg-type]
    api.mq_add("qu", "a", "1")
    api.mq_add("qu", "b", "2")
    assert api.mq_fetch("qu") == 1
    assert slot(other, "qu") == (None, None)
    assert other.mq_fetch("qu") == 1
    assert slot(other, "qu") == (b"b", b"2")
    assert slot(api, "qu") == (b"a", b"1")
    assert api.pv_mq_size("qu") == other.pv_mq_size("qu") == 0
    assert other.mq_fetch("qu") == -2  # clears only `other`
    assert slot(api, "qu") == (b"a", b"1")


def test_kemi_flavour(api: ScriptApi) -> None:
    assert api.kemi_mq_size("q3") == 0  # T44
    assert api.kemi_mq_size("nope") == -1
    assert api.mqk_get("q3") is None
    api.mq_add("q3", "k", "v")
    assert api.kemi_mq_size("q3") == 1
    api.mq_fetch("q3")
    assert (api.mqk_get("q3"), api.mqv_get("q3")) == (b"k", b"v")


def test_policy_reject_makes_mq_add_fail(namespace: str) -> None:
    q = Queue("rej", create=True, size=1, policy=Overflow.REJECT, namespace=namespace)
    try:
        ctx = ScriptApi({b"rej": q})
        assert ctx.mq_add("rej", "a", "1") == 1
        assert ctx.mq_add("rej", "b", "2") == -1
        assert ctx.mq_size("rej") == 1
    finally:
        q.unlink()
        q.close()


def test_lookups_mapping_callable_and_attach(namespace: str) -> None:
    q = Queue("lk", create=True, namespace=namespace)
    try:
        by_str = ScriptApi({"lk": q})
        by_call = ScriptApi(lambda name: q if name == b"lk" else None)
        attach = ScriptApi(namespace=namespace)
        for ctx in (by_str, by_call, attach):
            assert ctx.mq_add("lk", "k", "v") == 1
            assert ctx.mq_size("lk") == 1
            assert ctx.mq_fetch("lk") == 1
            assert ctx.pv_mqk("lk") == b"k"
            assert ctx.mq_size("nope") == -2
        attach.close()
        assert attach.pv_mqk("lk") is None  # close() drops held items
    finally:
        q.unlink()
        q.close()


def test_module_level_functions_use_the_default_context(namespace: str) -> None:
    q = Queue("dflt", create=True, size=2, namespace=namespace)
    try:
        set_default_api(ScriptApi(namespace=namespace))
        assert mq_add("dflt", "k", "v") == 1
        assert mq_size("dflt") == 1
        assert pv_mq_size("dflt") == 1
        assert mq_fetch("dflt") == 1
        assert (pv_mqk("dflt"), pv_mqv("dflt")) == (b"k", b"v")
        assert mq_pv_free("dflt") == 1
        assert pv_mqk("dflt") is None
        assert mq_fetch("dflt") == -2
        default_api().close()
    finally:
        set_default_api(None)
        q.unlink()
        q.close()
