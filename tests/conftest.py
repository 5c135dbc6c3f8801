"""Shared pytest configuration: registers the fixture plugins in ``tests/fix_*.py``.

Helpers meant to be imported by tests live beside this file (``kamailio_mq.py``); pytest puts
``tests/`` on ``sys.path`` (rootdir-relative "prepend" import mode), so ``import fix_kamailio``
works from any test module.
"""

pytest_plugins = [
    "fix_shm",
    "fix_postgres",
    "fix_kamailio",
]
