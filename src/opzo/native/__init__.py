"""Native kernels, compiled on first use with the machine's C compiler.

:func:`philox_normal_` fills a float32 CPU tensor with standard normal numbers from the
Philox4x32-10 counter-based generator (Salmon et al., SC 2011) and a Box-Muller transform,
vectorised by the compiler (``philox_normal.c``). It draws a number in about a third of the
time of torch's ``normal_`` on CPU, whose serial Mersenne-Twister generator was the largest
single cost of an OPZO step after the matrix products (``benchmarks/RESULTS.md`` section 2).

The shared library is built with ``$CC`` (default ``cc``, then ``gcc``) into
``$OPZO_CACHE_DIR`` (default ``~/.cache/opzo``), named by a hash of the source, the flags and
the CPU, so a changed source or another machine gets its own build. With no compiler, or with
``OPZO_NATIVE=0``, :func:`available` is False and callers use torch's ops and generator
instead (:func:`ready` warns once). The numbers are reproducible: each call takes its 64-bit
Philox key from torch's default generator, so ``torch.manual_seed`` fixes them and a
checkpoint of torch's RNG state resumes them.

:func:`philox_keep_mask_` and :func:`philox_signs_` draw dropout masks and Rademacher noise
from the same generator, and :func:`lif_step` runs one time step of a layer of LIF neurons
with its noise, dropout and local derivative in one pass (``lif_step.c``; :mod:`opzo.network`
uses it for float32 CPU tensors outside autograd through :func:`lif_step_unchecked`, with
the layer's constants in a :class:`LifKernelParams` and the C arguments in one
:class:`LifArgs`). All of them split their work over torch's thread count (``parallel.h``);
results do not depend on the number of threads.

:func:`unavailable` (the library counts as missing, for a given reason) and :func:`fresh` (it
is looked for again, following the environment of the moment) are context managers for tests
of the fallback and of a failed build; each restores the previous state on exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

HERE = Path(__file__).parent
#: compiled into one library; the header is hashed with them
SOURCES = [HERE / "philox_normal.c", HERE / "lif_step.c"]
HEADERS = [HERE / "parallel.h"]
#: -ffp-contract=off: no fused multiply-adds the source does not ask for (fmaf), so every CPU
#: gives the same numbers
FLAGS = ["-O3", "-fno-math-errno", "-ffp-contract=off", "-shared", "-fPIC"]
#: parallel loops with the OpenMP runtime torch has loaded; where the compiler has no OpenMP
#: the library is built with serial loops (still vectorised: -fopenmp-simd), or without it
OPENMP_FLAGS = ["-fopenmp"]
SIMD_FLAGS = ["-fopenmp-simd"]
ARCH_FLAGS = ["-march=native"]

_lib: ctypes.CDLL | None = None
_error: str | None = None
_tried = False


def cache_dir() -> Path:
    return Path(os.environ.get("OPZO_CACHE_DIR") or Path.home() / ".cache" / "opzo")


def _cpu_fingerprint() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return f"{platform.machine()}|{platform.processor()}|{flags}"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return name
    return None


def base_flags() -> list[str]:
    """The compiler flags of every build (without OpenMP)."""
    return FLAGS + (ARCH_FLAGS if platform.machine() in ("x86_64", "AMD64") else [])


def build(flag_sets: list[list[str]] | None = None, directory: Path | None = None
          ) -> ctypes.CDLL:
    """Compile the library (or take it from the cache) and load it.

    ``flag_sets`` are tried in order until one compiles (default: with OpenMP; then serial
    loops with ``-fopenmp-simd``; then plain); ``directory`` defaults to :func:`cache_dir`.
    Tests build variants with other flags (no AVX-512, no OpenMP) to check that every code
    path gives the same numbers.
    """
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set $CC, or install gcc)")
    source = b"".join(p.read_bytes() for p in [*SOURCES, *HEADERS])
    if flag_sets is None:  # serial loops if OpenMP does not build
        flag_sets = [base_flags() + OPENMP_FLAGS, base_flags() + SIMD_FLAGS, base_flags()]
    directory = cache_dir() if directory is None else Path(directory)
    failure = ""
    for flags in flag_sets:
        digest = hashlib.sha256(source + " ".join([cc, *flags]).encode()
                                + _cpu_fingerprint().encode()).hexdigest()[:16]
        target = directory / f"opzo_native_{digest}.so"
        if target.is_file():
            break
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            proc = subprocess.run([cc, *flags, "-o", tmp, *map(str, SOURCES), "-lm"],
                                  capture_output=True, text=True)
            if proc.returncode == 0:
                os.replace(tmp, target)  # atomic: concurrent builds never see half a file
                break
            failure = proc.stderr.strip()
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    else:
        names = ", ".join(p.name for p in SOURCES)
        raise RuntimeError(f"{cc} failed on {names} in {HERE}:\n{failure}")
    lib = ctypes.CDLL(str(target))
    i64, f32, ptr, cint = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p, ctypes.c_int
    lib.opzo_philox_normal.argtypes = [ptr, i64, ctypes.c_uint64, cint]
    lib.opzo_philox_normal.restype = None
    lib.opzo_philox_keep_mask.argtypes = [ptr, i64, ctypes.c_uint64, f32, f32, cint]
    lib.opzo_philox_keep_mask.restype = None
    lib.opzo_philox_signs.argtypes = [ptr, i64, ctypes.c_uint64, cint]
    lib.opzo_philox_signs.restype = None
    lib.opzo_lif_step.argtypes = [ctypes.POINTER(LifArgs)]
    lib.opzo_lif_step.restype = None
    lib.opzo_lif_args_layout.argtypes = [ptr]
    lib.opzo_lif_args_layout.restype = i64
    _check_lif_args(lib)
    lib.opzo_philox4x32_10.argtypes = [ptr, ptr, ptr]
    lib.opzo_philox4x32_10.restype = None
    return lib


def load() -> ctypes.CDLL | None:
    """The compiled library, building it on the first call; None if that is not possible
    (the reason is in :func:`error`)."""
    global _lib, _error, _tried
    if not _tried:
        _tried = True
        if os.environ.get("OPZO_NATIVE", "1") == "0":
            _error = "disabled by OPZO_NATIVE=0"
        else:
            try:
                _lib = build()
            except (OSError, RuntimeError) as exc:
                _error = str(exc)
    return _lib


def available() -> bool:
    return load() is not None


def error() -> str | None:
    """Why the native library is unavailable (None if it loaded)."""
    load()
    return _error


_warned = False


def ready() -> bool:
    """Whether the library loaded; if not, warns once that the noise, the dropout masks and
    the neuron step fall back to torch's slower ops, and returns False."""
    global _warned
    if available():
        return True
    if not _warned:
        _warned = True
        advice = ("" if os.environ.get("OPZO_NATIVE") == "0" else
                  ": install a C compiler (gcc) or set $CC to one to use them")
        warnings.warn(f"opzo's native kernels are unavailable ({_error}); the noise, dropout "
                      f"masks and neuron step use torch's slower ops instead{advice}",
                      stacklevel=3)
    return False


def _swap_state(state: tuple[bool, ctypes.CDLL | None, str | None, bool]
                ) -> tuple[bool, ctypes.CDLL | None, str | None, bool]:
    """Set (tried, library, error, warned); return the previous ones."""
    global _tried, _lib, _error, _warned
    previous = (_tried, _lib, _error, _warned)
    _tried, _lib, _error, _warned = state
    return previous


@contextlib.contextmanager
def unavailable(reason: str = "made unavailable by opzo.native.unavailable()"
                ) -> Iterator[None]:
    """Within the block the library counts as unavailable, for ``reason``.

    :func:`available` is False and :func:`error` is ``reason``; the kernels raise, and the
    network and the noise samplers use torch's ops, after one warning from :func:`ready`
    (the warning is due afresh inside the block, whatever was warned before). The previous
    state (a loaded library, an earlier warning) comes back on exit. For tests of the
    fallback path, and to run torch's ops on a machine that has the library::

        with native.unavailable("no C compiler found"):
            ...
    """
    previous = _swap_state((True, None, reason, False))
    try:
        yield
    finally:
        _swap_state(previous)


@contextlib.contextmanager
def fresh() -> Iterator[None]:
    """Within the block the library is looked for afresh: its first use there loads it again
    as the first use in a new process would, following the environment of that moment
    (``$OPZO_NATIVE``, ``$CC``, ``$OPZO_CACHE_DIR``: a compiler or cache directory not used
    before builds a new library, or fails to, leaving the reason in :func:`error`), and
    :func:`ready` warns afresh. The previous state comes back on exit."""
    previous = _swap_state((False, None, None, False))
    try:
        yield
    finally:
        _swap_state(previous)


def _require() -> ctypes.CDLL:
    lib = load()
    if lib is None:
        raise RuntimeError(f"opzo's native library is unavailable ({_error}): install a C "
                           "compiler (gcc) or set $CC to one, and leave OPZO_NATIVE unset")
    return lib


def philox4x32_10(counter: tuple[int, int, int, int], key: tuple[int, int]
                  ) -> tuple[int, int, int, int]:
    """The raw generator on one 128-bit counter (four 32-bit words) and a 64-bit key (two)."""
    lib = _require()
    ctr = (ctypes.c_uint32 * 4)(*counter)
    k = (ctypes.c_uint32 * 2)(*key)
    out = (ctypes.c_uint32 * 4)()
    lib.opzo_philox4x32_10(ctr, k, out)
    return tuple(out)  # type: ignore[return-value]


def _check_float32(t: Tensor, what: str) -> None:
    if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError(f"{what} takes contiguous float32 CPU tensors; got {t.dtype} on "
                         f"{t.device}, contiguous={t.is_contiguous()}")


def _key(key: int | None) -> int:
    """A 64-bit Philox key: the given one, or 63 random bits from torch's generator."""
    if key is None:
        key = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64, device="cpu"))
    return key & (2**64 - 1)


def default_threads() -> int:
    """The kernels' thread count: torch's (which is 1 in a process forked from one that used
    its OpenMP pool: GNU OpenMP's pool does not survive fork)."""
    return max(1, torch.get_num_threads())


def _threads(threads: int | None) -> int:
    return default_threads() if threads is None else max(1, int(threads))


def philox_normal_(t: Tensor, key: int | None = None, threads: int | None = None) -> Tensor:
    """Fill the contiguous float32 CPU tensor ``t`` with N(0, 1) numbers in place.

    ``key`` (64 bits) selects the stream; by default it is drawn from torch's default
    generator. Element 4i + j comes from Philox counter i, word pair j // 2. ``threads``
    (default: torch's thread count) does not change the numbers.
    """
    lib = _require()
    _check_float32(t, "philox_normal_")
    lib.opzo_philox_normal(t.data_ptr(), t.numel(), _key(key), _threads(threads))
    return t


def philox_keep_mask_(t: Tensor, keep: float, scale: float = 1.0, key: int | None = None,
                      threads: int | None = None) -> Tensor:
    """Fill ``t`` (contiguous float32, CPU) with a dropout mask in place: each element is
    ``scale`` with probability ``keep`` and 0 otherwise, independently (element 4i + j is
    kept when the open uniform (w + 0.5)/2^24 of the top 24 bits of word j of Philox counter
    i is below ``keep``). Key and threads as in :func:`philox_normal_`."""
    lib = _require()
    _check_float32(t, "philox_keep_mask_")
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"keep probability must lie in [0, 1], got {keep}")
    lib.opzo_philox_keep_mask(t.data_ptr(), t.numel(), _key(key), float(keep), float(scale),
                              _threads(threads))
    return t


def philox_signs_(t: Tensor, key: int | None = None, threads: int | None = None) -> Tensor:
    """Fill ``t`` (contiguous float32, CPU) with independent fair ±1 in place: element i is +1
    when bit i mod 32 of word (i div 32) mod 4 of Philox counter i div 128 is set (32 signs
    per random word). Key and threads as in :func:`philox_normal_`."""
    lib = _require()
    _check_float32(t, "philox_signs_")
    lib.opzo_philox_signs(t.data_ptr(), t.numel(), _key(key), _threads(threads))
    return t


#: surrogate codes of lif_step.c (0: no local derivative)
SURROGATE_CODES = {"sigmoid": 1, "fast-sigmoid": 2}
_CODES = frozenset([0, *SURROGATE_CODES.values()])


class LifArgs(ctypes.Structure):
    """The one argument of the C entry point ``opzo_lif_step``: ``struct lif_args`` of
    ``lif_step.c``, field by field (each documented there; pointers are ``data_ptr()``s,
    None for NULL). :func:`build` checks this layout against the compiled library's.
    :func:`lif_step_unchecked` fills one per call; a test can call a library of its own
    build with one: ``lib.opzo_lif_step(LifArgs(rows=..., ...))``."""

    _fields_ = [
        ("rows", ctypes.c_int64), ("cols", ctypes.c_int64),  # geometry
        ("current", ctypes.c_void_p), ("u", ctypes.c_void_p), ("s", ctypes.c_void_p),  # in
        ("u_out", ctypes.c_void_p), ("s_out", ctypes.c_void_p),  # out
        ("out", ctypes.c_void_p), ("dpsi", ctypes.c_void_p),
        ("z", ctypes.c_void_p), ("z_ld", ctypes.c_int64),  # noise
        ("alpha", ctypes.c_float), ("noise_before", ctypes.c_int),
        ("mask", ctypes.c_void_p),  # dropout
        ("lam", ctypes.c_float), ("v_th", ctypes.c_float), ("reset_zero", ctypes.c_int),
        ("surrogate", ctypes.c_int), ("surr_param", ctypes.c_float), ("gain", ctypes.c_float),
        ("threads", ctypes.c_int),
    ]


#: the fields in the order opzo_lif_args_layout reports their offsets (lif_step.c)
_LIF_ARGS_ORDER = ("rows", "cols", "current", "u", "s", "u_out", "s_out", "out", "dpsi", "z",
                   "z_ld", "alpha", "noise_before", "mask", "lam", "v_th", "reset_zero",
                   "surrogate", "surr_param", "gain", "threads")


def _check_lif_args(lib: ctypes.CDLL) -> None:
    """Raise if :class:`LifArgs` does not match the library's ``struct lif_args``: the size,
    and each field's offset by name."""
    offsets = (ctypes.c_int64 * len(_LIF_ARGS_ORDER))()
    size = lib.opzo_lif_args_layout(offsets)
    theirs = dict(zip(_LIF_ARGS_ORDER, offsets))
    ours = {name: getattr(LifArgs, name).offset for name, _ in LifArgs._fields_}
    if size != ctypes.sizeof(LifArgs) or ours != theirs:
        raise RuntimeError(f"struct lif_args of lif_step.c (size {size}, offsets {theirs}) "
                           f"and its mirror LifArgs (size {ctypes.sizeof(LifArgs)}, offsets "
                           f"{ours}) differ: an edit to one of them needs the same edit to "
                           "the other (in lif_step.c and opzo/native/__init__.py)")


@dataclass(frozen=True)
class LifKernelParams:
    """What the fused step keeps fixed over a layer's steps: the neuron and its surrogate.

    ``lam`` (λ) and ``v_th`` (V_th) are the LIF neuron's leak and threshold; ``reset_zero``
    resets to zero instead of subtracting V_th. ``surrogate_code`` is a
    :data:`SURROGATE_CODES` value, or 0 for no local derivative (the step then returns None
    for it); ``surrogate_param`` and ``gain`` are the surrogate's parameter and constant
    factor (see :func:`lif_step`).
    """

    lam: float
    v_th: float
    reset_zero: bool = False
    surrogate_code: int = 0
    surrogate_param: float = 1.0
    gain: float = 1.0

    def __post_init__(self) -> None:
        if self.surrogate_code not in _CODES:
            raise ValueError(f"surrogate_code must be 0 or a SURROGATE_CODES value "
                             f"{sorted(SURROGATE_CODES.values())}; got {self.surrogate_code!r}")


@functools.lru_cache(maxsize=256)
def lif_kernel_params(lam: float, v_th: float, reset_zero: bool = False,
                      surrogate_code: int = 0, surrogate_param: float = 1.0, gain: float = 1.0
                      ) -> LifKernelParams:
    """``LifKernelParams(...)`` of these values, one object for equal values (memoised: the
    network asks for its layers' parameters at every time step, and a lookup costs less than
    building the frozen object anew)."""
    return LifKernelParams(lam, v_th, reset_zero, surrogate_code, surrogate_param, gain)


def lif_step(current: Tensor, u: Tensor, s: Tensor, *, lam: float, v_th: float,
             reset_zero: bool = False, noise: Tensor | None = None, alpha: float = 0.0,
             noise_before: bool = False, mask: Tensor | None = None,
             surrogate: str | None = None, surrogate_param: float = 1.0, gain: float = 1.0,
             u_out: Tensor | None = None, threads: int | None = None
             ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """One fused LIF step on (B, n) float32 CPU tensors (``lif_step.c``; OPZO paper eq. 1):

        I = current (+ α z before the neuron),  u' = λu + I − λV_th s  (or − λ u s: reset
        to zero),  s' = H(u' − V_th),  x = (s' (+ α z after the neuron)) ⊙ mask,
        dpsi = mask ⊙ gain · ψ̃(u')   (with ``surrogate``: "sigmoid", parameter 1/a, gain 1/a,
        ψ̃ = σ(1 − σ) of (u' − V_th)/a; "fast-sigmoid", parameter k, ψ̃ = 1/(k|u' − V_th| + 1)²)

    Returns (u', s', x, dpsi or None). ``noise`` may be a column block of a wider tensor (rows
    of stride ``noise.stride(0)``); every other tensor must be contiguous. ``u_out`` receives
    u' (it may be ``current`` itself); by default a new tensor.
    """
    _require()
    if current.dim() != 2:
        raise ValueError(f"lif_step takes (B, n) tensors; current has shape "
                         f"{tuple(current.shape)}")
    rows, cols = current.shape
    for name, t in (("current", current), ("u", u), ("s", s), ("mask", mask),
                    ("u_out", u_out)):
        if t is None:
            continue
        _check_float32(t, f"lif_step's {name}")
        if t.shape != (rows, cols):
            raise ValueError(f"lif_step: {name} has shape {tuple(t.shape)}, expected "
                             f"{(rows, cols)}")
    if noise is not None and (noise.dtype != torch.float32 or noise.device.type != "cpu"
                              or noise.shape != (rows, cols) or noise.stride(1) != 1):
        raise ValueError("lif_step: noise must be a float32 CPU (B, n) tensor with "
                         "contiguous rows")
    if surrogate is not None and surrogate not in SURROGATE_CODES:
        raise ValueError(f"lif_step has no native surrogate {surrogate!r}; choose one of "
                         f"{sorted(SURROGATE_CODES)}")
    params = LifKernelParams(lam, v_th, reset_zero, SURROGATE_CODES.get(surrogate or "", 0),
                             surrogate_param, gain)
    return lif_step_unchecked(params, current, u, s, noise=noise, alpha=alpha,
                              noise_before=noise_before, mask=mask, u_out=u_out,
                              threads=_threads(threads))


def lif_step_unchecked(params: LifKernelParams, current: Tensor, u: Tensor, s: Tensor, *,
                       noise: Tensor | None = None, alpha: float = 0.0,
                       noise_before: bool = False, mask: Tensor | None = None,
                       u_out: Tensor | None = None, threads: int = 1
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """:func:`lif_step` without the checks, for the network's inner loop: the layer's
    ``params`` (built outside the loop, e.g. by :func:`lif_kernel_params`) and this step's
    tensors. The caller has made sure that the library is loaded, and of the tensors' dtype,
    device, shapes and contiguity; ``threads`` >= 1."""
    lib = _lib
    assert lib is not None
    rows, cols = current.shape
    u_new = torch.empty_like(current) if u_out is None else u_out
    s_new = torch.empty_like(current)
    plain = noise is None and mask is None  # x = s'
    out = s_new if plain else torch.empty_like(current)
    code = params.surrogate_code
    dpsi = torch.empty_like(current) if code else None
    # positional, in LifArgs's field order: the fastest way to fill a ctypes Structure
    lib.opzo_lif_step(LifArgs(
        rows, cols, current.data_ptr(), u.data_ptr(), s.data_ptr(),
        u_new.data_ptr(), s_new.data_ptr(), None if plain else out.data_ptr(),
        None if dpsi is None else dpsi.data_ptr(),
        None if noise is None else noise.data_ptr(), 0 if noise is None else noise.stride(0),
        alpha, noise_before, None if mask is None else mask.data_ptr(),
        params.lam, params.v_th, params.reset_zero, code, params.surrogate_param, params.gain,
        threads))
    return u_new, s_new, out, dpsi
