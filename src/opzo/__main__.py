"""``python -m opzo ...``: the command line (``torchrun ... -m opzo train`` starts it so).

The ``opzo`` command runs :func:`run` too: Ctrl-C while Python is still importing torch and
opzo (the first seconds) ends with one line and exit 130, as it does later
(:func:`opzo.cli.main`), not with a traceback of the import.
"""

import os
import signal
import sys

#: the exit status of a command stopped by Ctrl-C (SIGINT): 128 + 2, as shells report it
EXIT_INTERRUPTED = 130


def run() -> int:
    """Import the command line and run it; exit status 130 for Ctrl-C during the import."""
    try:
        from .cli import main

        code = main()
    except KeyboardInterrupt:
        print("opzo: interrupted (SIGINT) while starting; nothing was done", file=sys.stderr)
        code = EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:
        # A KeyboardInterrupt that passed through code run by exec() (dataclasses build their
        # methods so, while modules are imported) marks the interpreter, which then ends by
        # killing itself with SIGINT (status -2) although the interrupt was handled: leave
        # with the status given, everything written having been closed already.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    # the command has finished: a Ctrl-C during the interpreter's teardown changes nothing
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code


if __name__ == "__main__":
    sys.exit(run())
