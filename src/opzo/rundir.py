"""The run folder and what it promises: one writer (a lock), files written atomically,
checkpoints that load or say why not, JSON-lines logs that survive a kill, the RNG states
that make a resume exact, and the errors a run ends with. A write that fails (disk full, a
file-size limit, a read-only or forbidden folder) is a :class:`WriteError` naming the file
and the cause, with no temporary file left behind.

A run folder holds ``config.json`` (the resolved options), ``metrics.jsonl`` (one JSON line
per epoch), ``diagnostics.jsonl``, ``summary.json`` (written at the end) and
``checkpoint.pt`` (see :mod:`opzo.train` for when it is written).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .config import TrainConfig
    from .data import Source

CHECKPOINT = "checkpoint.pt"


#: what an OSError's errno means to someone whose run could not write a file
_WRITE_CAUSES = {
    errno.ENOSPC: "the disk is full (no space left on device)",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is too large (a file-size limit: see ulimit -f)",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied (operation not permitted)",
    errno.EROFS: "the file system is read-only",
}


def write_cause(exc: OSError) -> str:
    """What stopped a write, in words (disk full, file too large, permission denied, ...)."""
    return _WRITE_CAUSES.get(exc.errno or 0, exc.strerror or str(exc))


class WriteError(RuntimeError):
    """A file of the run folder could not be written (disk full, a file-size limit, a
    read-only or forbidden folder). The message names the file and the cause; the temporary
    file is removed and the file's previous content stands (:func:`atomic_save`,
    :func:`atomic_write_text`) or the partial line is cut off (:func:`append_jsonl`)."""

    def __init__(self, path: Path, exc: OSError) -> None:
        self.path = path
        self.cause = write_cause(exc)
        super().__init__(f"cannot write {path}: {self.cause}")


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


class _WholeWrites:
    """A binary file whose ``write`` writes every byte or raises the OSError that stopped it,
    and keeps that error in ``error``: torch's writer swallows it and reports only
    "unexpected pos ..." (so does a buffered file's short count)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                done += os.write(self.fd, view[done:])
        except OSError as exc:
            self.error = exc
            raise
        return done

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self.fd


def _write_atomically(path: Path, write) -> None:
    """``write(fh)`` into ``path``.tmp, flushed to the disk, then renamed over ``path``; on an
    OSError the temporary file is removed (``path`` is untouched) and a WriteError raised."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        out = _WholeWrites(fd)
        try:
            write(out)
            os.fsync(fd)
        except RuntimeError:
            if out.error is None:
                raise
            raise out.error from None
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise WriteError(path, exc) from None
    except BaseException:  # a second Ctrl-C mid-write: no torn temporary file left behind
        _remove(tmp)
        raise


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path`` (a
    :class:`WriteError` naming ``path`` and the cause if it cannot be written)."""
    # torch writes through our file object, so a failed write keeps its errno (given a
    # file name, torch's own writer reports only "unexpected pos ...")
    _write_atomically(path, lambda fh: torch.save(obj, fh))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_save`)."""
    _write_atomically(path, lambda fh: fh.write(text.encode()))


def git_commit() -> str | None:
    """The commit of the source tree opzo runs from, when it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def append_jsonl(path: Path, row: dict) -> None:
    """Append one JSON line; a :class:`WriteError` naming ``path`` if it cannot be written
    (a partial line is cut off again where the file system allows)."""
    size = path.stat().st_size if path.exists() else None
    try:
        with path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
    except OSError as exc:
        if size is not None:
            try:
                os.truncate(path, size)
            except OSError:
                pass  # read_jsonl drops a torn last line
        raise WriteError(path, exc) from None


def jsonl_text(rows: list[dict]) -> str:
    """The text of a JSON-lines file holding ``rows``."""
    return "".join(json.dumps(r) + "\n" for r in rows)


def rewrite_jsonl(path: Path, rows: list[dict]) -> bool:
    """Make ``path`` hold exactly ``rows`` (atomically), leaving it untouched when it already
    does; whether it was rewritten."""
    text = jsonl_text(rows)
    try:
        if path.read_text() == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)
    return True


def read_jsonl(path: Path, log=print) -> list[dict]:
    """The rows of a JSON-lines file of a run folder. A torn last line (an append cut short by
    a kill) is dropped and the file repaired; any other unreadable line is a RunError naming
    the file and the line."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    rows: list[dict] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if i == len(lines) - 1:
                log(f"{path}: dropped a torn last line (an append cut short): {line[:60]!r}")
                atomic_write_text(path, jsonl_text(rows))
                break
            raise RunError(f"{path}, line {i + 1}: not a JSON row ({exc}); repair or remove "
                           "that line") from None
        rows.append(row)
    return rows


def truncate_jsonl(path: Path, keep, log=print) -> None:
    """Keep only the rows ``keep`` accepts (after repairing a torn last line)."""
    if path.exists():
        rows = [r for r in read_jsonl(path, log) if keep(r)]
        atomic_write_text(path, jsonl_text(rows))


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """This process's peak resident memory (MiB; Linux's ru_maxrss) and, on CUDA, the peak
    of torch's allocations on the device."""
    out: dict[str, float] = {}
    try:
        import resource

        rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["rss"] = round(rss_kb / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)
    except (ImportError, OSError):
        pass
    if device.type == "cuda":
        out["cuda"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


class Interrupted(Exception):
    """Raised after Ctrl-C / SIGTERM once the checkpoint is safely on disk. ``agreed``: every
    process of a distributed run stops here together (False after a second signal, which
    stops this process at once)."""

    def __init__(self, run_dir: str, agreed: bool = True) -> None:
        super().__init__(run_dir)
        self.agreed = agreed


class RunError(RuntimeError):
    """A run folder cannot be used as asked (taken by another process, holding another run,
    damaged files); the message names the file and says what to do."""


class Diverged(FloatingPointError):
    """The loss or the weights became NaN / infinite; the last good checkpoint stands."""


class RunLock:
    """One writer per run folder: an exclusive ``flock`` on ``RUN/.lock``, which holds the
    writer's PID. The lock dies with its process (a SIGKILL leaves no stale lock). Where
    ``fcntl`` does not exist (Windows) no lock is taken."""

    NAME = ".lock"

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / self.NAME
        self.fh = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        fh = open(self.path, "a+")  # noqa: SIM115 - held for the life of the run
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise RunError(f"{run_dir} is in use by another opzo process (PID {holder}); wait "
                           "for it to finish (or stop it), or choose another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self.fh = fh

    def release(self) -> None:
        if self.fh is not None:
            self.fh.close()  # closing the file releases the lock
            self.fh = None


#: the files that make a folder a run folder: a new run never reuses one without overwrite
RUN_FILES = ("config.json", "metrics.jsonl", CHECKPOINT, "summary.json", "diagnostics.jsonl")


def occupied(run_dir: Path, present: list[str]) -> str:
    """What a new run is told about a folder that holds the files ``present`` of a run: how
    to continue it, or, without a checkpoint, that nothing can be continued."""
    if CHECKPOINT in present:
        return (f"{run_dir} already holds a run ({', '.join(present)}); continue it with "
                f"--resume {run_dir}, replace it with --overwrite, or choose another --out")
    return (f"{run_dir} already holds a run without a checkpoint ({', '.join(present)}: it "
            "stopped before its first checkpoint, or is starting), so there is nothing to "
            "resume; replace it with --overwrite, or choose another --out")


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> RunLock:
    """Create ``run_dir``, take its lock, and refuse to start a new run over an old one."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunError(f"cannot use {run_dir} as the run folder: it is a file; choose another "
                       "--out") from None
    except OSError as exc:
        raise RunError(f"cannot create the run folder {run_dir}: {exc.strerror or exc}; "
                       "choose another --out") from None
    try:
        lock = RunLock(run_dir)
    except OSError as exc:
        raise RunError(f"cannot write to the run folder {run_dir}: {exc.strerror or exc}; "
                       "choose another --out") from None
    if not resume:
        present = [f for f in RUN_FILES if (run_dir / f).exists()]
        if present and not overwrite:
            lock.release()
            raise RunError(occupied(run_dir, present))
        for name in present:  # --overwrite: nothing of the old run may be resumed later
            (run_dir / name).unlink()
    return lock


def data_fingerprint(source: Source, name: str) -> dict[str, Any]:
    """What identifies a dataset split: its name, size, input shape and a hash of its first
    1000 labels (MNIST and Fashion-MNIST share file names and shapes, not labels)."""
    labels = source.labels_head(1000)
    digest = hashlib.sha256(labels.to(torch.int64).numpy().tobytes()).hexdigest()[:16]
    return {"dataset": name, "samples": len(source),
            "input_shape": list(source.input_shape), "labels_sha": digest}


def load_checkpoint(path: Path, device: torch.device,
                    needed: tuple[str, ...] = ("model", "optimizer", "epoch", "batch", "config")
                    ) -> dict[str, Any]:
    """The checkpoint's dict with its tensors on ``device``; a RunError naming the file if it
    is empty, truncated, damaged or not an opzo checkpoint: it lacks one of the ``needed``
    fields, or a field holds the wrong type (:data:`CHECKPOINT_FIELDS`, naming the field)."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as exc:  # EOFError, UnpicklingError, RuntimeError (zip), ...
        size = path.stat().st_size if path.exists() else 0
        raise RunError(f"{path} cannot be read ({size} bytes; {type(exc).__name__}: "
                       f"{str(exc)[:120]}): the file is damaged or not a checkpoint") from None
    missing = [k for k in needed if not isinstance(state, dict) or k not in state]
    if missing:
        raise RunError(f"{path} is not an opzo checkpoint (it lacks {', '.join(missing)})")
    for key, (ok, expected) in CHECKPOINT_FIELDS.items():
        if key in state and not ok(state[key]):
            raise RunError(f"{path} is damaged or not an opzo checkpoint: its field {key!r} "
                           f"holds {_kind(state[key])}, expected {expected}")
    return state


def _kind(value: Any) -> str:
    """A short description of a value for an error message: its type and a glimpse."""
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _tensor_dict(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, Tensor)
                                       for k, t in v.items())


def _optional(check):
    return lambda v: v is None or check(v)


#: what each field of a checkpoint must hold (checked when present): a test and its words
CHECKPOINT_FIELDS: dict[str, tuple[Any, str]] = {
    "model": (_tensor_dict, "the network's weights (a dict of names to tensors)"),
    "optimizer": (lambda v: isinstance(v, dict) and isinstance(v.get("param_groups"), list),
                  "the optimizer's state (a dict with param_groups)"),
    "epoch": (_count, "a whole number >= 0"),
    "batch": (_count, "a whole number >= 0"),
    "config": (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
               "the run's options (a dict)"),
    "scheduler": (_optional(lambda v: isinstance(v, dict)), "a dict or None"),
    "rule": (_optional(lambda v: isinstance(v, dict)), "a dict or None"),
    "chip": (_optional(lambda v: isinstance(v, dict) and (v.get("grid") is None or (
        isinstance(v["grid"], dict) and isinstance(v["grid"].get("scales"), list)))),
        "the chip's state (a dict whose grid is None or holds its scales) or None"),
    "partial": (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
                "the epoch's partial statistics (a dict)"),
    "rng": (_optional(lambda v: isinstance(v, Tensor)), "a tensor"),
    "rng_states": (_optional(lambda v: isinstance(v, list) and all(
        isinstance(r, dict) and isinstance(r.get("cpu"), Tensor) for r in v)),
        "a list of generator states (dicts holding a 'cpu' tensor)"),
    "metrics_rows": (_optional(lambda v: isinstance(v, list)
                               and all(isinstance(r, dict) for r in v)),
                     "the rows of metrics.jsonl (a list of dicts)"),
    "diag_rows": (_optional(lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v)),
                  "the rows of diagnostics.jsonl (a list of dicts)"),
    "world_size": (lambda v: _count(v) and v >= 1, "a whole number >= 1"),
    "device": (lambda v: isinstance(v, str), "a device name"),
    "wall_time_s": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                    "a number of seconds"),
    "first_loss": (_optional(lambda v: isinstance(v, (int, float))), "a number or None"),
    "data": (_optional(lambda v: isinstance(v, dict) and all(
        r is None or isinstance(r, dict) for r in v.values())),
        "the data's fingerprints (a dict of dicts) or None"),
}


#: options that may differ between a run's checkpoint and its resume: where it continues
#: (device, threads) and the learning rate (to continue a diverged run more gently)
RESUME_CHANGES = ("device", "threads", "lr", "out")


def edited_options(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    now = cfg.to_dict()
    return [f"{k} ({saved[k]!r} -> {now[k]!r})" for k in now
            if k in saved and k not in RESUME_CHANGES and saved[k] != now[k]]


def rng_state(device: torch.device) -> dict[str, Tensor | None]:
    """This process's generator states: torch's CPU generator and, on CUDA, the device's."""
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict[str, Tensor | None], device: torch.device) -> None:
    cpu = state["cpu"]
    assert cpu is not None
    torch.set_rng_state(cpu.cpu())
    cuda = state.get("cuda")
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda.cpu(), device)
