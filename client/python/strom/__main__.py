"""``python -m strom``: the command line of ``strom.cli``."""

import sys

from strom.cli import main

sys.exit(main(prog="python -m strom"))
