"""pymqueue.config: Kamailio ``mqueue`` strings, modparam order, the TOML instance config.

Spec cases T32-T35 (configuration part; the behavioural part is in test_instance.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pymqueue import AddMode, ConfigError, Overflow
from pymqueue.config import InstanceConfig, RpcConfig, config_from_dict, load_config
from pymqueue.definitions import DbMode, QueueDef
from pymqueue.kamailio.modparam import ModparamState, parse_mqueue, queues_from_modparams

# --- parse_mqueue: what Kamailio accepts with the same meaning ---------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name=q3;size=3", QueueDef(b"q3", size=3)),
        ("name=qu", QueueDef(b"qu")),
        # C06: attribute names are case-insensitive, the name value is not
        (
            "NAME=Up;SIZE=2;AddMode=1;DBMODE=0",
            QueueDef(b"Up", size=2, addmode=AddMode.UNIQUE_KEEP_OLDEST),
        ),
        # C07, C31: whitespace around names, '=', values and ';' is trimmed
        ("name=t ; size = 3", QueueDef(b"t", size=3)),
        ("  name =t;size=3  ", QueueDef(b"t", size=3)),
        ("\tname=t\t;\tsize=3\t", QueueDef(b"t", size=3)),
        # C08: double quotes keep inner spaces and are removed
        ('name="quoted q"', QueueDef(b"quoted q")),
        ('name = "a;b,c=d" ; size="7"', QueueDef(b"a;b,c=d", size=7)),
        # C09: one trailing ';'
        ("name=t;", QueueDef(b"t")),
        ("name=t ; ", QueueDef(b"t")),
        # C16 (' 5'), C37 ('+4'), C14 ('0')
        ("name=t;size= 5", QueueDef(b"t", size=5)),
        ("name=t;size=+4", QueueDef(b"t", size=4)),
        ("name=t;size=0", QueueDef(b"t", size=0)),
        ("name=t;size=2147483647", QueueDef(b"t", size=2147483647)),
        ("name=t;size=007", QueueDef(b"t", size=7)),
        # C28: punctuation in names
        ("name=q.x-y:z/1", QueueDef(b"q.x-y:z/1")),
        ("name=Q3", QueueDef(b"Q3")),
        ("name=d;dbmode=1", QueueDef(b"d", dbmode=DbMode.LOAD_SAVE)),
        (
            "name=d;dbmode=3;addmode=2",
            QueueDef(b"d", dbmode=DbMode.SAVE, addmode=AddMode.UNIQUE_KEEP_NEWEST),
        ),
        ("name=né", QueueDef("né".encode())),
    ],
)
def test_parse_mqueue_accepts(text: str, expected: QueueDef) -> None:
    assert parse_mqueue(text) == expected


def test_parse_mqueue_defaults_are_kamailio_behaviour() -> None:
    q = parse_mqueue("name=x")
    assert (q.size, q.dbmode, q.addmode) == (0, DbMode.NONE, AddMode.APPEND)
    assert (q.policy, q.capacity) == (Overflow.DROP_OLDEST, None)
    assert isinstance(q.name, bytes)


# --- what Kamailio rejects (T32) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("name=a;foo=1", "foo"),  # C02 unknown param
        ("size=3", "size=3"),  # C03 name missing
        ("name=", "name="),  # C04
        ("", "''"),  # C05
        ("   ", "'   '"),
        ("name=t;;size=3", "name=t;;size=3"),  # C10 empty segment
        ('name=""', 'name=""'),
        ("name=t;;", "name=t;;"),  # only one trailing ';'
    ],
)
def test_parse_mqueue_rejects_like_kamailio(text: str, quoted: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_mqueue(text)
    assert quoted in str(info.value)


# --- what Kamailio silently misreads and pymqueue rejects (divergences, T33/T34) ------------


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("name=t;size=abc", "abc"),  # C11 Kamailio: unbounded
        ("name=t;size=-1", "-1"),  # C13 Kamailio: unbounded
        ("name=t;size=0x10", "0x10"),  # C36 Kamailio: 0 = unbounded
        ("name=t;size=99999999999", "99999999999"),  # C15 Kamailio: INT_MAX
        ("name=t;size=10abc", "10abc"),  # C12 Kamailio: 10
        ("name=t;size=1.5", "1.5"),
        ("name=t;size=", "size"),
        ("name=t;size", "size"),  # C35 Kamailio: empty value = unbounded
        ("name", "name"),
        ("name=t,u;size=3", ",u;size=3"),  # C30 Kamailio: queue t, unbounded
        ("name=t;size=3,name=u", ",name=u"),  # C34 Kamailio: queue t, size 3
        ("name=t;size=2;size=5", "size"),  # C19 Kamailio: first wins (2)
        ("name=a;name=b", "name"),  # C20 Kamailio: queue a
        ("name=a;NAME=b", "NAME"),
        ("name=t;dbmode=4", "4"),  # Kamailio: no DB interaction
        ("name=t;dbmode=-1", "-1"),
        ("name=t;addmode=3", "3"),  # Kamailio: acts like 0
        ("name=t;addmode=x", "x"),
        ("name=a b", "b"),  # unquoted inner space
        ('name="open', '"open'),
        ('name="a"b', "b"),
        ("=x", "=x"),
        ("name=t;=3", "=3"),
    ],
)
def test_parse_mqueue_rejects_what_kamailio_misreads(text: str, quoted: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_mqueue(text)
    message = str(info.value)
    assert quoted in message
    assert repr(text) in message  # the whole definition is quoted too


def test_config_error_is_value_error() -> None:
    with pytest.raises(ValueError, match="unknown param"):
        parse_mqueue("name=a;foo=1")


def test_parse_mqueue_rejects_non_string() -> None:
    with pytest.raises(ConfigError):
        parse_mqueue(5)  # type: ignore[arg-type]  # C38


# --- modparam order: mqueue_name / mqueue_size / mqueue_addmode (T35) -----------------------


def test_t35_mqueue_size_and_addmode_apply_to_later_names() -> None:
    queues = queues_from_modparams(
        [
            ("mqueue_name", "n1"),
            ("mqueue_size", 2),
            ("mqueue_addmode", 1),
            ("mqueue_name", "n2"),
        ]
    )
    assert queues == (
        QueueDef(b"n1"),
        QueueDef(b"n2", size=2, addmode=AddMode.UNIQUE_KEEP_OLDEST),
    )


def test_mqueue_name_is_literal_and_not_affected_by_mqueue_strings() -> None:
    mp = ModparamState()
    mp.set("mqueue_size", 5)
    mp.set("mqueue", "name=s;size=1")  # C32: mqueue_size does not apply to mqueue strings
    mp.set("mqueue_name", "a;size=3")  # C33: literal name
    mp.set("mqueue_name", " spaced ")
    assert mp.queues == (
        QueueDef(b"s", size=1),
        QueueDef(b"a;size=3", size=5),
        QueueDef(b" spaced ", size=5),
    )


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        ([("mqueue", "name=a"), ("mqueue", "name=a")], "redefined"),  # C01
        ([("mqueue", "name=a"), ("mqueue_name", "a")], "redefined"),  # C23
        ([("mqueue_name", "")], "not defined"),  # C24
        ([("mqueue", 5)], "mqueue"),  # C38
        ([("mqueue_size", "2")], "mqueue_size"),  # C25
        ([("mqueue_size", -1)], "-1"),  # Kamailio: unbounded; pymqueue: use 0
        ([("mqueue_size", True)], "True"),
        ([("mqueue_addmode", 3)], "3"),
        ([("nope", 1)], "nope"),
        ([("db_url", "sqlite:///a"), ("db_url", "sqlite:///b")], "twice"),
    ],
)
def test_modparam_errors(lines: list[tuple[str, object]], fragment: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        queues_from_modparams(lines)
    assert fragment in str(info.value)


def test_names_are_case_sensitive_so_q_and_Q_coexist() -> None:
    assert len(queues_from_modparams([("mqueue", "name=q"), ("mqueue", "name=Q")])) == 2


def test_instance_config_rejects_duplicates() -> None:
    with pytest.raises(ConfigError, match="redefined"):
        InstanceConfig(queues=(QueueDef(b"a"), QueueDef(b"a")))


# --- TOML ------------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pymqueue.toml"
    path.write_text(text)
    return path


def test_load_full_config(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
namespace = "prod-1"
db_url = "sqlite:////var/lib/pymqueue/mq.db"
db_sync_interval = 30

modparam = [
  ["mqueue", "name=acc;size=1000;dbmode=1"],
  ["mqueue_name", "n1"],
  ["mqueue_size", 2],
  ["mqueue_addmode", 1],
  ["mqueue_name", "n2"],
]

[[queue]]
name = "jobs"
size = 100
addmode = "unique_keep_newest"
policy = "block"
capacity = 1048576

[[queue]]
mqueue = 'name="with space";size=3'
policy = "reject"

[rpc]
port = 0
unix = "/run/pymqueue.sock"

[dmq]
server_address = "sip:127.0.0.1:5090"
notification_address = ["sip:127.0.0.1:5091"]
""",
    )
    cfg = load_config(path)
    assert cfg.queues == (
        QueueDef(b"acc", size=1000, dbmode=DbMode.LOAD_SAVE),
        QueueDef(b"n1"),
        QueueDef(b"n2", size=2, addmode=AddMode.UNIQUE_KEEP_OLDEST),
        QueueDef(
            b"jobs",
            size=100,
            addmode=AddMode.UNIQUE_KEEP_NEWEST,
            policy=Overflow.BLOCK,
            capacity=1048576,
        ),
        QueueDef(b"with space", size=3, policy=Overflow.REJECT),
    )
    assert cfg.db_url == "sqlite:////var/lib/pymqueue/mq.db"
    assert cfg.db_sync_interval == 30.0
    assert cfg.namespace == "prod-1"
    assert cfg.rpc == RpcConfig(http=("127.0.0.1", 0), unix="/run/pymqueue.sock")
    assert cfg.rpc.enabled
    assert cfg.dmq == {
        "server_address": "sip:127.0.0.1:5090",
        "notification_address": ["sip:127.0.0.1:5091"],
    }
    assert cfg.source == str(path)


def test_dmq_load_limits(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[dmq]
server_address = "sip:127.0.0.1:5090"
max_deferred = 7
reply_cache_size = 33
""",
    )
    dc = load_config(path).dmq_config
    assert dc is not None
    assert (dc.max_deferred, dc.reply_cache_size) == (7, 33)
    defaults = load_config(write(tmp_path, '[dmq]\nserver_address = "sip:127.0.0.1:5090"'))
    assert defaults.dmq_config is not None
    assert (defaults.dmq_config.max_deferred, defaults.dmq_config.reply_cache_size) == (4096, 16384)


def test_minimal_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg.queues == ()
    assert cfg.db_url is None
    assert cfg.rpc == RpcConfig()
    assert not cfg.rpc.enabled
    assert cfg.dmq is None
    assert cfg.namespace is None


def test_db_url_from_modparam_and_enum_ints(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            """
modparam = [["db_url", "sqlite:///q.db"], ["mqueue", "name=d;dbmode=2"]]
[[queue]]
name = "x"
dbmode = 3
addmode = 1
policy = 1
""",
        )
    )
    assert cfg.db_url == "sqlite:///q.db"
    assert cfg.queues[1] == QueueDef(
        b"x", dbmode=DbMode.SAVE, addmode=AddMode.UNIQUE_KEEP_OLDEST, policy=Overflow(1)
    )


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("bogus = 1", "bogus", "unknown key"),
        ("modparam = [['mqueue', 'name=a;size=abc']]", "modparam[0]", "abc"),
        ("modparam = [['mqueue', 'name=a'], ['mqueue_name', 'a']]", "modparam[1]", "redefined"),
        ("modparam = [['mqueue_size', '2']]", "modparam[0]", "mqueue_size"),
        ("modparam = [['mqueue', 'name=a', 'x']]", "modparam[0]", "pair"),
        ("modparam = 'name=a'", "modparam", "array"),
        ("[[queue]]\nsize = 3", "queue[0].name", "required"),
        ("[[queue]]\nname = 'a'\nsize = -1", "queue[0].size", "-1"),
        ("[[queue]]\nname = 'a'\nsize = 1.5", "queue[0].size", "1.5"),
        ("[[queue]]\nname = 'a'\nsize = true", "queue[0].size", "True"),
        ("[[queue]]\nname = 'a'\naddmode = 7", "queue[0].addmode", "7"),
        ("[[queue]]\nname = 'a'\naddmode = 'dedupe'", "queue[0].addmode", "dedupe"),
        ("[[queue]]\nname = 'a'\npolicy = 'explode'", "queue[0].policy", "explode"),
        ("[[queue]]\nname = 'a'\ncapacity = 0", "queue[0].capacity", "0"),
        ("[[queue]]\nname = 'a'\ncolour = 'red'", "queue[0].colour", "unknown"),
        ("[[queue]]\nmqueue = 'name=a'\nsize = 3", "queue[0].size", "either"),
        ("[[queue]]\nmqueue = 'name=a,b'", "queue[0].mqueue", "comma"),
        ("[[queue]]\nname = 'a'\n[[queue]]\nmqueue = 'name=a'", "queue[1].name", "redefined"),
        ("modparam = [['mqueue', 'name=a;dbmode=1']]", "db_url", "no db_url"),
        ("db_url = 'x'\nmodparam = [['db_url', 'y']]", "db_url", "once"),
        ("db_url = ''", "db_url", "non-empty"),
        ("db_sync_interval = 0", "db_sync_interval", "positive"),
        ("db_sync_interval = 'fast'", "db_sync_interval", "fast"),
        ("namespace = 'a/b'", "namespace", "a/b"),
        ("rpc = 5", "rpc", "table"),
        ("[rpc]\nport = 70000", "rpc.port", "70000"),
        ("[rpc]\nhost = '127.0.0.1'", "rpc.host", "without"),
        ("[rpc]\nlisten = 'x'", "rpc.listen", "unknown"),
        ("[rpc]\nunix = ''", "rpc.unix", "non-empty"),
        ("dmq = 3", "dmq", "table"),
        (
            "[dmq]\nserver_address = 'sip:127.0.0.1:5090'\nmax_deferred = 0",
            "dmq.max_deferred",
            ">= 1",
        ),
        (
            "[dmq]\nserver_address = 'sip:127.0.0.1:5090'\nmax_deferred = -5",
            "dmq.max_deferred",
            "-5",
        ),
        (
            "[dmq]\nserver_address = 'sip:127.0.0.1:5090'\nmax_deferred = 1.5",
            "dmq.max_deferred",
            "1.5",
        ),
        (
            "[dmq]\nserver_address = 'sip:127.0.0.1:5090'\nmax_deferred = true",
            "dmq.max_deferred",
            "True",
        ),
        (
            "[dmq]\nserver_address = 'sip:127.0.0.1:5090'\nreply_cache_size = 0",
            "dmq.reply_cache_size",
            ">= 1",
        ),
        (
            "[dmq]\nserver_address = 'sip:127.0.0.1:5090'\nreply_cache_size = '9'",
            "dmq.reply_cache_size",
            "'9'",
        ),
        ("queue = 'x'", "queue", "array"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path).dmq_config  # noqa: B018 - the [dmq] table is checked when read
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert fragment in message


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    path = write(tmp_path, "name = = 3")
    with pytest.raises(ConfigError, match=f"^{path}: invalid TOML"):
        load_config(path)
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"^{missing}: cannot read"):
        load_config(missing)


def test_config_from_dict_without_source() -> None:
    cfg = config_from_dict({"queue": [{"name": "a"}]})
    assert cfg.queues == (QueueDef(b"a"),)
    with pytest.raises(ConfigError, match=r"^queue\[0\]\.size: "):
        config_from_dict({"queue": [{"name": "a", "size": "3"}]})


def test_examples_load() -> None:
    examples = sorted((Path(__file__).parent.parent / "examples").glob("*.toml"))
    assert examples
    for path in examples:
        assert load_config(path).queues
