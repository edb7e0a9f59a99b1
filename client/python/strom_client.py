#!/usr/bin/env python3
"""Deprecated entry point kept for old scripts: use the ``strom`` package
(``pip install ./client/python``; see README.md).

``python3 strom_client.py ...`` runs the package's command line
(``strom.cli``), and ``from strom_client import StromClient, Record`` still
works: ``StromClient`` is ``strom.Client`` (``create_topic``,
``list_topics``, ``partition_count``, ``produce``, ``fetch``,
``list_offset`` keep their signatures) and ``Record`` the
``(key, value, headers, timestamp_ms)`` tuple its ``produce`` takes.
"""

import os
import sys
from collections import namedtuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from strom.cli import main  # noqa: E402
from strom.client import Client as StromClient  # noqa: E402,F401
from strom.errors import StromError  # noqa: E402,F401
from strom.frames import murmur2, partition_for_key  # noqa: E402,F401
from strom.wire import ACKS_DURABLE, ACKS_LEADER, ACKS_NONE  # noqa: E402,F401

Record = namedtuple("Record", "key value headers timestamp_ms", defaults=((), None))

if __name__ == "__main__":
    sys.exit(main(prog="strom_client.py"))
