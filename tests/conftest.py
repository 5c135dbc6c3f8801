"""Shared pytest configuration: registers the fixture plugins in ``tests/fix_*.py``.

The tests mirror the package: ``queue/``, ``kamailio/``, ``db/``, ``dmq/``, ``rpc/``, ``cli/``,
and the top-level modules (config, instance) beside this file. Fixture plugins (``fix_*.py``)
and helpers meant to be imported by tests (``queue_helpers.py``, ``dmq_helpers.py``,
``kamailio_mq.py``) live in this folder, which pyproject.toml puts on ``sys.path``
(``pythonpath``), so ``import fix_kamailio`` works from any test module.
"""

pytest_plugins = [
    "fix_shm",
    "fix_postgres",
    "fix_kamailio",
]
