"""``python -m opzo ...``: the command line (``torchrun ... -m opzo train`` starts it so).

The ``opzo`` command runs :func:`run` too: Ctrl-C while Python is still importing torch and
opzo (the first seconds) ends with one line and exit 130, as it does later
(:func:`opzo.cli.main`), not with a traceback of the import.

Before torch is imported, :func:`run` also asks OpenMP for passive waiting
(:data:`OPENMP_DEFAULTS`, unless the environment says otherwise): torch's CPU threads, and the
native kernels' that share them, then sleep at the end of a parallel loop instead of spinning,
so that a busy neighbour on a shared machine no longer slows a run forty-fold.
"""

import os
import signal
import sys
from collections.abc import MutableMapping

#: the exit status of a command stopped by Ctrl-C (SIGINT): 128 + 2, as shells report it
EXIT_INTERRUPTED = 130

#: the OpenMP environment the command line sets when the variable is unset. With the default
#: (active) waiting, a thread that reaches the end of a parallel loop spins for its partners;
#: when a busy neighbour has taken the core of one of them, the others burn their time slices
#: spinning and every one of the step's hundreds of small loops waits a scheduler tick: on a
#: 2-core machine with one core kept busy an epoch of the README's run took 30-40 times as long
#: as on the idle machine. Passive waiting (a sleeping thread, woken by the runtime) costs a
#: few microseconds per loop on an idle machine and keeps the busy case within 2x
#: (``benchmarks/bench_busy.py``). It only decides how idle threads wait: no number changes.
#: It must be in the environment before the OpenMP runtime starts, i.e. before torch is
#: imported; from Python, set it at the top of the script (README, "Threads").
OPENMP_DEFAULTS: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}


def set_openmp_defaults(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Put :data:`OPENMP_DEFAULTS` into ``environ`` where a variable is unset (a value the user
    set is kept). Returns whether torch was imported already (then it comes too late for this
    process: its OpenMP runtime has read the environment)."""
    for key, value in OPENMP_DEFAULTS.items():
        environ.setdefault(key, value)
    return "torch" in sys.modules


def _leave(code: int) -> None:
    """Exit with ``code`` at once, without the interpreter's teardown (output flushed; every
    file of the run was closed already)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run() -> int:
    """Import the command line and run it; exit status 130 for Ctrl-C during the import."""
    try:
        set_openmp_defaults()  # before torch is imported (by the command line)
        # numpy first, from Python: torch's C code imports it lazily on first need and clears
        # any error of that import, so a Ctrl-C landing inside it would be swallowed
        import numpy  # noqa: F401

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
