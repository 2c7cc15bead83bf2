"""The native Philox4x32-10 Gaussian kernel (opzo.native) and the noise sampler's use of it."""

from __future__ import annotations

import math
import shutil
import warnings

import pytest
import torch

from opzo import native
from opzo.rules import base

pytestmark = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("cc", "gcc")), reason="no C compiler on this machine")


def test_kernel_builds():
    assert native.available(), native.error()


@pytest.mark.parametrize("counter,key,expect", [
    # known-answer vectors of Random123's philox4x32_10
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(counter, key, expect):
    assert native.philox4x32_10(counter, key) == expect


def _box_muller_reference(key: int, n: int) -> list[float]:
    """Element 4i + j from counter (i, 0, 0, 0): words (w0, w1) and (w2, w3) give
    r = sqrt(−2 ln u(w_even)), θ = 2π u(w_odd), (r cos θ, r sin θ), u(w) = (w >> 8 + ½)/2²⁴;
    computed with Python's double-precision math."""
    out: list[float] = []
    k = (key & 0xFFFFFFFF, key >> 32)
    i = 0
    while len(out) < n:
        w = native.philox4x32_10((i & 0xFFFFFFFF, i >> 32, 0, 0), k)
        for a, b in ((w[0], w[1]), (w[2], w[3])):
            r = math.sqrt(-2.0 * math.log(((a >> 8) + 0.5) / 2**24))
            theta = 2.0 * math.pi * ((b >> 8) + 0.5) / 2**24
            out += [r * math.cos(theta), r * math.sin(theta)]
        i += 1
    return out[:n]


def test_block_kernel_equals_scalar_reference():
    """The vectorised kernel (blocks of 64 counters, polynomial log/sin/cos) gives the
    numbers of the scalar generator and exact transcendentals, across a block boundary and
    for a length that is not a multiple of 4."""
    key = 0x0123456789ABCDEF
    n = 4 * 64 + 7
    got = native.philox_normal_(torch.empty(n), key=key)
    ref = torch.tensor(_box_muller_reference(key, n))
    assert torch.allclose(got, ref, rtol=2e-5, atol=2e-6), (got - ref).abs().max()


def test_distribution_is_standard_normal():
    torch.manual_seed(0)
    z = native.philox_normal_(torch.empty(1_000_000)).double()
    assert abs(float(z.mean())) < 4e-3
    assert abs(float(z.var()) - 1.0) < 6e-3
    assert abs(float((z**4).mean()) - 3.0) < 0.05  # kurtosis of a normal
    # Kolmogorov-Smirnov distance to Φ (critical value at α = 0.001: 1.95/√n ≈ 0.002)
    zs = z.sort().values
    cdf = 0.5 * (1.0 + torch.erf(zs / math.sqrt(2.0)))
    i = torch.arange(1, zs.numel() + 1, dtype=torch.float64) / zs.numel()
    ks = float(torch.maximum((i - cdf).abs(), (cdf - (i - 1.0 / zs.numel())).abs()).max())
    assert ks < 0.002, ks
    # tails: P(|z| > 3) = 0.0026998
    assert abs(float((z.abs() > 3).double().mean()) - 0.0026998) < 3e-4
    # consecutive numbers (the cos/sin pair of one Box-Muller draw) are uncorrelated
    assert abs(float((z[0::2] * z[1::2]).mean())) < 6e-3


def test_seeded_by_torch_and_rejects_other_tensors():
    torch.manual_seed(5)
    a = native.philox_normal_(torch.empty(1000))
    torch.manual_seed(5)
    b = native.philox_normal_(torch.empty(1000))
    c = native.philox_normal_(torch.empty(1000))
    assert torch.equal(a, b)
    assert not torch.equal(b, c)
    with pytest.raises(ValueError, match="float32"):
        native.philox_normal_(torch.empty(10, dtype=torch.float64))
    with pytest.raises(ValueError, match="contiguous"):
        native.philox_normal_(torch.empty(10, 10).t())


def test_noise_sampler_generators():
    """rng='philox' draws the kernel's numbers, rng='torch' torch's normal_; float64 falls
    back to torch's; both follow torch.manual_seed."""
    s = base.NoiseSampler(alpha=1.0, rng="philox")
    like = torch.zeros(1)
    torch.manual_seed(3)
    z = torch.cat(s.sample(0, 8, [5, 7], like), dim=1)
    torch.manual_seed(3)
    assert torch.equal(z, native.philox_normal_(torch.empty(8, 12)))
    t = base.NoiseSampler(alpha=1.0, rng="torch")
    torch.manual_seed(3)
    z = torch.cat(t.sample(0, 8, [5, 7], like), dim=1)
    torch.manual_seed(3)
    assert torch.equal(z, torch.empty(8, 12).normal_())
    torch.manual_seed(3)
    z64 = torch.cat(s.sample(0, 8, [12], like.double()), dim=1)
    torch.manual_seed(3)
    assert torch.equal(z64, torch.empty(8, 12, dtype=torch.float64).normal_())
    with pytest.raises(ValueError, match="noise generator"):
        base.NoiseSampler(rng="mt")


def test_missing_compiler_falls_back_with_one_warning():
    s = base.NoiseSampler(alpha=1.0)
    with native.unavailable("no C compiler found"):
        assert not native.available() and native.error() == "no C compiler found"
        torch.manual_seed(4)
        with pytest.warns(UserWarning, match="no C compiler found"):
            z = s.sample(0, 4, [6], torch.zeros(1))[0]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # only once
            s.sample(0, 4, [6], torch.zeros(1))
    torch.manual_seed(4)
    assert torch.equal(z, torch.empty(4, 6).normal_())


def test_unavailable_restores_the_library_and_the_warning_state():
    lib = native.load()
    with native.unavailable("first"):
        with pytest.warns(UserWarning, match="first"):
            assert not native.ready()
        with native.unavailable("nested"):  # warns afresh, with its own reason
            assert native.error() == "nested"
            with pytest.warns(UserWarning, match="nested"):
                native.ready()
        assert native.error() == "first"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the outer block had warned already
            native.ready()
    assert native.load() is lib and native.available() == (lib is not None)
    if lib is not None:
        assert native.error() is None and native.ready()


def test_build_failure_is_reported(monkeypatch, tmp_path):
    """A compiler that fails leaves the reason in native.error(), not an exception."""
    lib = native.load()
    monkeypatch.setenv("OPZO_CACHE_DIR", str(tmp_path))  # nothing built there yet
    monkeypatch.setenv("CC", "false")  # exists, always fails
    with native.fresh():
        assert not native.available()
        assert "false failed" in native.error()
        with pytest.raises(RuntimeError, match="install a C compiler"):
            native.philox_normal_(torch.empty(4))
    monkeypatch.setenv("OPZO_NATIVE", "0")
    with native.fresh():
        assert native.error() == "disabled by OPZO_NATIVE=0"
    assert native.load() is lib  # the blocks leave the library as it was
