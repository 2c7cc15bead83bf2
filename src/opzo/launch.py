"""``opzo train --nproc N``: N processes under torchrun that stop, fail and report like one.

The launcher starts ``python -m torch.distributed.run --standalone`` in a session of its own
and stands between it and the user:

* **Signals.** SIGINT, SIGTERM (and SIGHUP, passed on as SIGTERM) sent to the launcher alone
  are passed on to torchrun, which passes them to every process; they stop together at the
  end of the batch in progress and write the checkpoint. The launcher waits for them and
  exits 128 + the signal's number (130 for SIGINT, 143 for SIGTERM). A second signal stops
  everything at once (the last checkpoint stands). If torchrun has not ended
  :data:`GRACE_S` seconds after the first signal, it and its processes are killed.
* **No orphans.** torchrun gets SIGTERM when the launcher dies (Linux ``PR_SET_PDEATHSIG``);
  every process of the run watches its parent and leaves at once when torchrun is gone
  (:func:`watch_parent`).
* **One message.** torchrun's and gloo's own output, Python tracebacks and torchrun's
  ``ChildFailedError`` report are kept from the user; what they say becomes one line: the
  rank that failed first, what happened to it, and whether a checkpoint stands (or the one
  ``opzo: error:`` line the processes printed, once).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .rundir import CHECKPOINT

#: seconds the launcher waits for torchrun after passing a signal on (torchrun itself kills
#: its processes 30 s after passing it on, TORCH_ELASTIC_SHUTDOWN_TIMEOUT)
GRACE_S = 45.0
#: seconds between a process's checks that its parent (torchrun) is still there
WATCH_S = 0.5

_PASSED_ON = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM,
              signal.SIGHUP: signal.SIGTERM}
#: the lines of the processes' own stop messages (opzo.train)
_STOP_LINES = (b"stopped at epoch", b"stopped after epoch", b"interrupted; the last checkpoint")
#: process 0's last line of a finished run
_DONE_LINE = b"final test accuracy"
#: torch's and gloo's log lines: glog style (W0520 11:43:24.1 ...) and c10's ([W520 11:43...])
_LOG_LINE = re.compile(r"^\[?[WEIF]\d{3,4} \d\d:\d\d:\d\d")
#: torch marks a rank's uncaught exception so: "[rank1]: Traceback ..."
_RANK_PREFIX = re.compile(r"^\[rank\d+\]: ")
_NOISE = ("terminate called", "*****", "Setting OMP_NUM_THREADS", "warnings.warn(")


def _parent_death_signal(sig: int):
    """A ``preexec_fn`` for a child that is to receive ``sig`` when its parent dies (Linux
    ``prctl(PR_SET_PDEATHSIG)``; None elsewhere). libc is loaded here, before the fork."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, int(sig), 0, 0, 0)  # 1: PR_SET_PDEATHSIG


def watch_parent() -> None:
    """In a process started by torchrun: leave at once (exit code 1; the last checkpoint
    stands) when the parent is gone, so that no process of a run outlives its launcher."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(WATCH_S)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="opzo-watch-parent", daemon=True).start()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc; empty elsewhere)."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
    return found


class _Report:
    """What the launcher gathers from the processes' and torchrun's output."""

    def __init__(self) -> None:
        self.stop_line = False  # a process printed its stop message
        self.finished = False  # process 0 reported the end of the run
        self.errors: list[str] = []  # the processes' `opzo: error:` lines, in order
        self.exceptions: list[str] = []  # the last line of each process's traceback
        self.failures: list[tuple[int, int, str]] = []  # torchrun's (rank, exit code, signal)
        self.torchrun_signal: int | None = None  # a signal torchrun itself got
        self.seen: set[str] = set()


def _relay_stdout(stream, report: _Report) -> None:
    """Pass the processes' output on as it comes; note their stop messages."""
    out = sys.stdout.buffer
    tail = b""
    while True:
        data = os.read(stream.fileno(), 65536)
        if not data:
            return
        out.write(data)
        out.flush()
        window = tail + data
        if any(s in window for s in _STOP_LINES):
            report.stop_line = True
        if _DONE_LINE in window:
            report.finished = True
        tail = window[-64:]


def _relay_stderr(stream, report: _Report) -> None:
    """Pass the processes' stderr on line by line (a progress bar's ``\\r`` ends a line too),
    without tracebacks, torchrun's report and torch's / gloo's log lines; hold the
    ``opzo: error:`` lines back for :func:`launch` to choose one."""
    err = sys.stderr
    buf = b""
    state = "pass"  # "traceback": in a Python traceback; "torchrun": in torchrun's report
    rank = None
    while True:
        data = os.read(stream.fileno(), 65536)
        if not data:
            break
        buf += data
        parts = re.split(rb"(\r|\n)", buf)
        buf = parts.pop()  # an incomplete last line waits for its end
        for i in range(0, len(parts), 2):
            line = _RANK_PREFIX.sub("", parts[i].decode("utf-8", "replace"))
            end = parts[i + 1].decode()
            if state == "torchrun":  # to the end: who failed and how
                m = re.search(r"rank\s*:\s*(\d+)", line)
                if m:
                    rank = int(m.group(1))
                m = re.search(r"exitcode\s*:\s*(-?\d+)", line)
                if m and rank is not None:
                    report.failures.append((rank, int(m.group(1)), ""))
                m = re.search(r"Signal \d+ \((SIG\w+)\)", line)
                if m and report.failures:
                    r, c, _ = report.failures[-1]
                    report.failures[-1] = (r, c, m.group(1))
                continue
            if state == "traceback":
                if not line or line[0].isspace() or line.startswith(
                        ("Traceback", "During handling", "The above exception")):
                    continue
                state = "pass"  # the exception's own line ends it
                if "ChildFailedError" in line:
                    state = "torchrun"
                    continue
                m = re.search(r"SignalException: Process \d+ got signal: (\d+)", line)
                if m:
                    report.torchrun_signal = int(m.group(1))
                elif line.strip():
                    report.exceptions.append(line.strip())
                continue
            if line.startswith("Traceback (most recent call last)"):
                state = "traceback"
                continue
            if line.startswith("opzo: error:"):
                report.errors.append(line)
                continue
            if any(s.decode() in line for s in _STOP_LINES):  # stop messages go to stderr
                report.stop_line = True
            if _LOG_LINE.match(line) or any(line.lstrip().startswith(n) for n in _NOISE):
                continue
            if "Warning" in line:  # every process warns alike: once
                if line in report.seen:
                    continue
                report.seen.add(line)
            err.write(line + end)
            err.flush()
    if buf:
        err.write(buf.decode("utf-8", "replace"))
        err.flush()


def _is_rank_of(pid: int, run_dir: Path) -> bool:
    """Whether process ``pid`` is alive and a process of this run (its command line names
    the run folder): a pid seen earlier may have been reused since."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(run_dir).encode() in cmd


def launch(cmd: list[str], env: dict[str, str], run_dir: Path, nproc: int) -> int:
    """Run ``cmd`` (torchrun) as described in the module docstring; its exit code."""
    env = dict(env, PYTHONUNBUFFERED="1")
    if sys.stderr.isatty():  # the processes' stderr is a pipe to us: draw the bar anyway
        env["OPZO_PROGRESS_TTY"] = "1"
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        preexec_fn=_parent_death_signal(signal.SIGTERM))
    report = _Report()
    readers = [threading.Thread(target=_relay_stdout, args=(proc.stdout, report), daemon=True),
               threading.Thread(target=_relay_stderr, args=(proc.stderr, report), daemon=True)]
    for t in readers:
        t.start()
    got: list[int] = []  # the signals the launcher got

    ranks: set[int] = set()  # torchrun's children seen while it ran (they outlive its pid)

    def kill_all() -> None:
        """torchrun, its process group and its children (the ranks), at once; nothing once
        torchrun has been reaped (its pid may name another process by then)."""
        if proc.returncode is not None:
            return
        children = _children(proc.pid)
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in children:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def on_signal(signum, frame) -> None:
        got.append(signum)
        if len(got) == 1:
            with contextlib.suppress(OSError):
                proc.send_signal(_PASSED_ON.get(signal.Signals(signum), signal.SIGTERM))
        else:  # a second one: at once
            kill_all()

    previous = {s: signal.signal(s, on_signal) for s in _PASSED_ON}  # kept: see the end
    try:
        deadline = None
        while True:
            try:
                rc = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                ranks.update(_children(proc.pid))
                if got and deadline is None:
                    deadline = time.monotonic() + GRACE_S
                if deadline is not None and time.monotonic() > deadline:
                    kill_all()
                    deadline = float("inf")
        for pid in ranks:  # none should be left (each watches its parent); one that is goes
            if _is_rank_of(pid, run_dir):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        for t in readers:
            t.join(timeout=5.0)
    except BaseException:
        for s, h in previous.items():
            signal.signal(s, h)
        raise
    # The handlers stay: a signal from now until this process has exited (the interpreter's
    # teardown takes a moment) finds torchrun gone and changes nothing, where the default
    # action would kill the launcher of a run that has ended well (exit -15 instead of 0).
    return _conclude(rc, got, report, run_dir, nproc)


def _conclude(rc: int, got: list[int], report: _Report, run_dir: Path, nproc: int) -> int:
    """The one line (if any is needed) and the exit code of a launch that ended with
    torchrun's exit code ``rc``."""
    ckpt = run_dir / CHECKPOINT
    resume = f"opzo train --resume {run_dir} --nproc {nproc}"
    stands = (f"the last checkpoint in {run_dir} stands: continue with {resume}"
              if ckpt.is_file() else
              "no checkpoint was written yet: start the run again (with --overwrite)")

    def say(text: str) -> None:
        print(text, file=sys.stderr)

    sig = got[0] if got else report.torchrun_signal
    if report.finished and (rc == 0 or sig is not None):  # done before the signal mattered
        return 0
    own = [e for e in report.errors if "lost contact" not in e]
    if sig is not None and own:  # a process failed while stopping (its checkpoint, say)
        say(own[0])
        codes = [c for _, c, _ in report.failures if c in (2, 3)]
        return codes[0] if codes else 2
    if sig is not None:  # a stop the user asked for (of the launcher or of torchrun)
        name = signal.Signals(sig).name
        who = "" if got else "torchrun got "
        if len(got) > 1:
            say(f"opzo: {who}{name} twice: stopped at once; {stands}")
        elif not report.stop_line:
            say(f"opzo: {who}{name}: the {nproc} processes stopped before the end of a "
                f"batch; {stands}")
        return 128 + sig
    if rc == 0:
        for line in dict.fromkeys(report.errors):
            say(line)
        return 0
    failures = report.failures
    # torchrun stops the other processes with SIGTERM once one has failed: a SIGTERM'd one
    # is the cause only when nothing else is
    killed = sorted((f for f in failures if f[1] < 0),
                    key=lambda f: -f[1] in (signal.SIGTERM, signal.SIGINT))
    stopped = [f for f in failures if f[1] in (130, 143)]

    def say_killed() -> int:
        rank, code, name = killed[0]
        name = name or signal.Signals(-code).name
        say(f"opzo: error: process {rank} of {nproc} was killed ({name}); the other processes "
            f"were stopped; {stands}")
        return 1

    if killed and -killed[0][1] not in (signal.SIGTERM, signal.SIGINT):
        return say_killed()
    if stopped and report.stop_line:  # a process got SIGINT / SIGTERM and all stopped
        return stopped[0][1]
    if own or report.errors:
        say((own or report.errors)[0])
        codes = [c for _, c, _ in failures if c in (2, 3)]
        return codes[0] if codes else 2
    if killed:
        return say_killed()
    rank_text = f"process {failures[0][0]} of {nproc}" if failures else "a process"
    what = (f"failed: {report.exceptions[0]}" if report.exceptions else
            f"ended with exit code {failures[0][1] if failures else rc}")
    say(f"opzo: error: {rank_text} {what}; {stands}")
    return 1
