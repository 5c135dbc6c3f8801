"""Differential tests: the same queue definitions and the same operations through the REAL
Kamailio 5.6.3 (tests/kamailio_mq.py driver, one SIP worker = one slot context) and through
pymqueue (an Instance plus one ScriptApi context); every result is compared.

Known divergence excluded from the generated inputs: keys with NUL bytes in addmode 1/2
(Kamailio compares them only up to the first NUL, pymqueue byte-exactly — spec T21).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest
from fix_kamailio import KamailioFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kamailio_mq import KamailioMq, driver_config

from pymqueue import ConfigError
from pymqueue.config import InstanceConfig
from pymqueue.instance import Instance
from pymqueue.kamailio import ScriptApi
from pymqueue.kamailio.modparam import parse_mqueue, queues_from_modparams

pytestmark = pytest.mark.kamailio

Start = Callable[..., KamailioMq]


def kam_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def mqueue_lines(defs: Sequence[str]) -> list[str]:
    return [f'modparam("mqueue", "mqueue", {kam_string(d)})' for d in defs]


@dataclass
class Both:
    kam: KamailioMq
    api: ScriptApi

    def check(self, op: str, q: str, key: bytes = b"", val: bytes = b"") -> None:
        """Run ``op`` on both and compare rc, $mqk, $mqv and $mq_size right after it."""
        st_ = self.kam.op(op, q, key, val)
        if op == "add":
            rc: int | None = self.api.mq_add(q, key, val)
        elif op == "fetch":
            rc = self.api.mq_fetch(q)
        elif op == "size":
            rc = self.api.mq_size(q)
        elif op == "pvfree":
            rc = self.api.mq_pv_free(q)
        elif op == "drain":
            rc = 0
            while self.api.mq_fetch(q) > 0:
                rc += 1
        else:
            assert op == "read"
            rc = None
        size = self.api.pv_mq_size(q)
        ours = (rc, self.api.pv_mqk(q), self.api.pv_mqv(q), "" if size is None else str(size))
        theirs = (st_.rc, st_.mqk, st_.mqv, st_.mq_size)
        assert ours == theirs, (
            f"{op}({q!r}, {key!r}, {val!r}): pymqueue {ours} != kamailio {theirs}"
        )


@pytest.fixture
def both(kamailio_mq: Start, namespace: str) -> Iterator[Callable[[Sequence[str]], Both]]:
    instances: list[Instance] = []

    def start(defs: Sequence[str]) -> Both:
        kam = kamailio_mq(mqueue_lines(defs))
        inst = Instance(
            InstanceConfig(queues=tuple(parse_mqueue(d) for d in defs)), namespace=namespace
        )
        inst.start()
        instances.append(inst)
        return Both(kam, ScriptApi(inst))

    yield start
    for inst in instances:
        inst.stop()


STD = ["name=q3;size=3", "name=qu", "name=qa1;size=2;addmode=1", "name=qa2;size=3;addmode=2"]


def test_spec_sequences(both: Callable[[Sequence[str]], Both]) -> None:
    b = both(STD)
    b.check("read", "q3")  # T01
    for q in ("q3", "nope"):
        b.check("size", q)  # T02, T03
        b.check("fetch", q)  # T04, T05
    b.check("add", "nope", b"a", b"b")  # T06
    b.check("pvfree", "nope")  # T07
    for i in range(1, 6):  # T08, T09
        b.check("add", "q3", b"k%d" % i, b"v%d" % i)
    for _ in range(4):
        b.check("fetch", "q3")
    b.check("add", "q3", b"p1", b"pv1")  # T10-T13
    b.check("fetch", "q3")
    b.check("read", "q3")
    b.check("fetch", "nope")
    b.check("read", "q3")
    b.check("fetch", "q3")
    b.check("add", "q3", b"p2", b"pv2")
    b.check("fetch", "q3")
    b.check("pvfree", "q3")
    b.check("pvfree", "q3")
    for k, v in ((b"", b""), (b"", b"onlyval"), (b"k", b"")):  # T14, T15
        b.check("add", "qu", k, v)
        b.check("fetch", "qu")
    b.check("add", "qu", b"k\0ey\xff", bytes(range(256)))  # T22
    b.check("fetch", "qu")
    for k, v in ((b"a", b"1"), (b"b", b"2"), (b"a", b"3"), (b"c", b"4"), (b"a", b"5")):
        for q in ("qa1", "qa2"):  # T17-T20
            b.check("add", q, k, v)
    for q in ("qa1", "qa2"):
        for _ in range(4):
            b.check("fetch", q)
    for i in range(3):  # T25
        b.check("add", "qu", b"k%d" % i, b"v")
    b.check("drain", "qu")
    for name in ("Q3", "q3 ", "q"):  # T24
        b.check("size", name)


def test_t23_pv_buffer_limit(both: Callable[[Sequence[str]], Both]) -> None:
    b = both(["name=qu"])
    for n in (8190, 8191, 8192):
        b.check("add", "qu", b"k", b"v" * n)
    b.check("size", "qu")
    b.check("fetch", "qu")
    b.check("fetch", "qu")


OPS = st.one_of(
    st.tuples(
        st.just("add"),
        st.sampled_from(["q3", "qu", "qa1", "qa2", "nope"]),
        st.sampled_from([b"", b"a", b"b", b"c", b"\xff"]),
        st.sampled_from([b"", b"1", b"2", b"x y"]),
    ),
    st.tuples(
        st.sampled_from(["fetch", "size", "pvfree", "read"]),
        st.sampled_from(["q3", "qu", "qa1", "qa2", "nope"]),
        st.just(b""),
        st.just(b""),
    ),
)


def test_generated_sequences(both: Callable[[Sequence[str]], Both]) -> None:
    b = both(STD)

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(st.lists(OPS, max_size=40))
    def run(ops: list[tuple[str, str, bytes, bytes]]) -> None:
        for q in STD:  # reset both: empty queues, empty slots
            name = parse_mqueue(q).display_name
            b.check("drain", name)
            b.check("pvfree", name)
        for op, q, k, v in ops:
            b.check(op, q, k, v)

    run()


def test_t21_nul_keys_documented_divergence(both: Callable[[Sequence[str]], Both]) -> None:
    """Kamailio's addmode 1 treats same-length keys equal up to the first NUL as equal;
    pymqueue compares bytes (docs/kamailio.md, Divergences)."""
    b = both(["name=x;addmode=1"])
    for key in (b"a\0x", b"a\0y", b"a\0yz"):
        assert b.kam.add("x", key, b"v") == b.api.mq_add("x", key, b"v") == 1
    assert b.kam.size("x") == 2
    assert b.api.mq_size("x") == 3


# --- configuration: what both accept means the same; what Kamailio refuses we refuse -----

ACCEPTED = {
    # definition -> queue name (12 adds are made; the sizes are compared)
    "NAME=Up;SIZE=2;AddMode=1;DBMODE=0": "Up",
    "name=t1 ; size = 3": "t1",
    'name="quoted q";size=2': "quoted q",
    "name=t2;size=3;": "t2",
    "name=t3;size=+4": "t3",
    "name=t4;size= 5": "t4",
    "name=t5;size=0": "t5",
    "name=q.x-y:z/1;size=1": "q.x-y:z/1",
    'name="a,b";size=2': "a,b",
}


def test_accepted_definitions_behave_the_same(both: Callable[[Sequence[str]], Both]) -> None:
    b = both(list(ACCEPTED))
    for name in ACCEPTED.values():
        for i in range(12):
            b.check("add", name, b"k%d" % (i % 3), b"v")
        b.check("size", name)
        b.check("fetch", name)


def test_modparam_order_behaves_the_same(kamailio_mq: Start, namespace: str) -> None:
    lines = [
        ("mqueue_name", "n1"),
        ("mqueue_size", 2),
        ("mqueue_addmode", 1),
        ("mqueue_name", "n2"),
    ]
    kam = kamailio_mq(
        [
            f'modparam("mqueue", "{p}", {kam_string(v) if isinstance(v, str) else v})'
            for p, v in lines
        ]
    )
    with Instance(InstanceConfig(queues=queues_from_modparams(lines)), namespace=namespace) as inst:
        b = Both(kam, ScriptApi(inst))
        for q in ("n1", "n2"):
            for k in (b"a", b"b", b"a", b"c"):
                b.check("add", q, k, b"v")
            b.check("size", q)
            b.check("drain", q)
        # registry order: newest definition first, as mqueue.get_sizes shows it
        assert [d["name"] for d in kam.rpc("mqueue.get_sizes")] == list(inst.queues)


@pytest.mark.parametrize(
    "lines",
    [
        ['"name=a"', '"name=a"'],  # C01
        ['"name=a;foo=1"'],  # C02
        ['"size=3"'],  # C03
        ['"name="'],  # C04
        ['"name=t;;size=3"'],  # C10
    ],
)
def test_kamailio_refuses_and_so_do_we(kamailio: KamailioFactory, lines: list[str]) -> None:
    cfg = driver_config([f'modparam("mqueue", "mqueue", {x})' for x in lines])
    result = kamailio.run(cfg)
    assert result.returncode != 0
    with pytest.raises(ConfigError):
        queues_from_modparams([("mqueue", x.strip('"')) for x in lines])
