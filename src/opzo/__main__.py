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


def _leave(code: int) -> None:
    """Exit with ``code`` at once, without the interpreter's teardown (output flushed; every
    file of the run was closed already)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run() -> int:
    """Import the command line and run it; exit status 130 for Ctrl-C during the import."""
    try:
        from .cli import main

        code = main()
    except KeyboardInterrupt:
        print("opzo: interrupted (SIGINT) while starting; nothing was done", file=sys.stderr)
        code = EXIT_INTERRUPTED
    # the command has finished: a Ctrl-C or kill during the interpreter's teardown changes
    # nothing (the launcher of --nproc N, too, has returned its processes' verdict)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # one of several processes started by torchrun (opzo.distributed.launched_by_torchrun,
    # read here without importing torch, which an interrupt may have left half-imported)
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if code == EXIT_INTERRUPTED or under_torchrun:
        # A KeyboardInterrupt that passed through code run by exec() (dataclasses build their
        # methods so, while modules are imported) marks the interpreter, which then ends by
        # killing itself with SIGINT (status -2) although the interrupt was handled. And one
        # process of a torchrun run, finished (its process group left), could be aborted
        # during the teardown by torch's and gloo's threads after a good run (exit code 134).
        _leave(code)
    return code


if __name__ == "__main__":
    sys.exit(run())
