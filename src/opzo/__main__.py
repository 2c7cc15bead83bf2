"""``python -m opzo ...``: the command line (``torchrun ... -m opzo train`` starts it so)."""

import os
import sys

from .cli import main
from .distributed import launched_by_torchrun

code = main()
if launched_by_torchrun():
    # One process of a torchrun run, finished (its process group left, its files closed):
    # leave without the interpreter's and C++ libraries' teardown, during which torch's and
    # gloo's threads could abort the process after a good run (exit code 134).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
