"""Everything that mirrors Kamailio's ``mqueue`` module.

* :mod:`~pymqueue.kamailio.modparam`: the ``mqueue`` definition strings and ``modparam``
  order (the strict parser);
* :mod:`~pymqueue.kamailio.script`: the config-script API, ``mq_add``/``mq_fetch``/
  ``mq_size``/``mq_pv_free`` and ``$mqk``/``$mqv``/``$mq_size``;
* :mod:`~pymqueue.kamailio.rpc_methods`: the ``mqueue.*`` RPC commands, registered on a
  :class:`~pymqueue.rpc.RpcServer`.

The script API and the parser are re-exported here (``from pymqueue.kamailio import mq_add``).
"""

from __future__ import annotations

from pymqueue.kamailio.modparam import ModparamState, parse_mqueue, queues_from_modparams
from pymqueue.kamailio.script import (
    NULL_TEXT,
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

__all__ = [
    "NULL_TEXT",
    "PV_BUFFER_SIZE",
    "ModparamState",
    "ScriptApi",
    "default_api",
    "mq_add",
    "mq_fetch",
    "mq_pv_free",
    "mq_size",
    "parse_mqueue",
    "pv_mq_size",
    "pv_mqk",
    "pv_mqv",
    "pv_text",
    "queues_from_modparams",
    "set_default_api",
]
