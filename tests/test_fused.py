"""The fused native neuron step, the native dropout masks, and the network's use of them.

The fused step must give the torch ops' forward values bit for bit (u, s, x), and the local
derivative m ⊙ ψ(u) to float rounding; the network must train to the same gradients on either
kernel set; every compiled code path (AVX-512 or not, OpenMP or not, any thread count) must
give the same numbers.
"""

from __future__ import annotations

import ctypes
import shutil
import warnings

import pytest
import torch

from opzo import DFA, OPZO, InstantLoss, NoiseSampler, OnlineLearner, SpikingMLP, SpikingNet, native
from opzo.neuron import LIFParams, lif_step
from opzo.surrogate import FastSigmoidSurrogate, SigmoidSurrogate

pytestmark = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("cc", "gcc")), reason="no C compiler on this machine")


def _torch_step(cur, u, s, lif, z, alpha, before, mask):
    """The unfused reference: the network's torch ops, in its order."""
    c = cur.clone()
    if z is not None and before:
        c = torch.add(c, z, alpha=alpha)
    un, sn = lif_step(u, s, c, lif, current_is_scratch=True)
    out = sn
    if z is not None and not before:
        out = torch.add(sn, z, alpha=alpha)
    if mask is not None:
        out = out * mask
    return un, sn, out


@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 13), (7, 300), (64, 801)])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("noise", [None, "after", "before"])
@pytest.mark.parametrize("masked", [False, True])
def test_fused_forward_equals_torch_ops_bit_for_bit(rows, cols, reset, noise, masked):
    torch.manual_seed(rows * cols)
    lif = LIFParams(lam=0.7, v_th=0.9, reset=reset)
    cur = torch.randn(rows, cols)
    u = torch.randn(rows, cols)
    s = (u > lif.v_th).float()
    wide = torch.randn(rows, cols + 9)  # z is a column block of a wider draw, as in OPZO
    z = wide[:, 4:4 + cols] if noise else None
    mask = (torch.rand(rows, cols) < 0.8).float() / 0.8 if masked else None
    ref = _torch_step(cur, u, s, lif, z, 0.3, noise == "before", mask)
    got = native.lif_step(cur, u, s, lam=lif.lam, v_th=lif.v_th, reset_zero=reset == "zero",
                          noise=z, alpha=0.3, noise_before=noise == "before", mask=mask)
    for name, a, b in zip(("u", "s", "x"), ref, got[:3]):
        assert torch.equal(a, b), f"{name} differs by {(a - b).abs().max()}"
    assert got[3] is None
    if noise is None and not masked:
        assert got[2] is got[1]  # x is the spikes themselves


@pytest.mark.parametrize("surrogate", [SigmoidSurrogate(0.25), SigmoidSurrogate(1.3),
                                       SigmoidSurrogate(10.0), FastSigmoidSurrogate(25.0)])
def test_fused_local_derivative_matches_the_surrogate(surrogate):
    torch.manual_seed(1)
    rows, cols = 5, 333
    cur = torch.randn(rows, cols) * 3
    cur[0, :7] = torch.tensor([-200.0, 200.0, 1.0, 0.75, 1e-30, -1e30, 1.0 + 87.5 * 0.25])
    u = torch.zeros(rows, cols)
    s = torch.zeros(rows, cols)
    mask = (torch.rand(rows, cols) < 0.5).float() * 2.0
    mask[0] = 1.0
    name = "sigmoid" if isinstance(surrogate, SigmoidSurrogate) else "fast-sigmoid"
    param = 1.0 / surrogate.a if name == "sigmoid" else surrogate.k
    un, _, _, dpsi = native.lif_step(cur, u, s, lam=0.5, v_th=1.0, mask=mask, surrogate=name,
                                     surrogate_param=param, gain=surrogate.gain())
    assert torch.equal(un, cur)  # from rest, u' = I
    want = mask * surrogate(un.double(), 1.0).float()
    assert torch.isfinite(dpsi).all()
    tiny = torch.finfo(torch.float32).tiny
    assert not ((dpsi != 0) & (dpsi.abs() < tiny)).any()  # no (slow) subnormal numbers
    assert torch.allclose(dpsi, want, rtol=1e-6, atol=1e-12), (dpsi - want).abs().max()


def test_fused_step_rejects_bad_input():
    a = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="float32"):
        native.lif_step(a.double(), a, a, lam=0.5, v_th=1.0)
    with pytest.raises(ValueError, match="shape"):
        native.lif_step(a, torch.zeros(2, 4), a, lam=0.5, v_th=1.0)
    with pytest.raises(ValueError, match=r"\(B, n\)"):
        native.lif_step(torch.zeros(6), a, a, lam=0.5, v_th=1.0)
    with pytest.raises(ValueError, match="contiguous rows"):
        native.lif_step(a, a, a, lam=0.5, v_th=1.0, noise=torch.zeros(3, 2).t())
    with pytest.raises(ValueError, match="no native surrogate"):
        native.lif_step(a, a, a, lam=0.5, v_th=1.0, surrogate="localzo")
    with pytest.raises(ValueError, match="surrogate_code"):
        native.LifKernelParams(0.5, 1.0, surrogate_code=7)


def test_unchecked_step_takes_the_layer_params_and_the_step_tensors():
    """The network's entry point: one LifKernelParams per layer, this step's tensors as
    keywords; the same numbers as the checked step, u' written into ``u_out``."""
    torch.manual_seed(2)
    cur, u = torch.randn(6, 50), torch.randn(6, 50)
    s = (u > 0.8).float()
    z = torch.randn(6, 60)[:, 5:55]
    mask = (torch.rand(6, 50) < 0.8).float() * 1.25
    params = native.LifKernelParams(0.7, 0.8, True, native.SURROGATE_CODES["fast-sigmoid"],
                                    9.0, 1.0)
    want = native.lif_step(cur, u, s, lam=0.7, v_th=0.8, reset_zero=True, noise=z, alpha=0.3,
                           noise_before=True, mask=mask, surrogate="fast-sigmoid",
                           surrogate_param=9.0)
    scratch = cur.clone()
    got = native.lif_step_unchecked(params, scratch, u, s, noise=z, alpha=0.3,
                                    noise_before=True, mask=mask, u_out=scratch, threads=2)
    assert got[0] is scratch
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    plain_params = native.lif_kernel_params(0.7, 0.8, True)  # memoised, for the inner loop
    assert plain_params == native.LifKernelParams(0.7, 0.8, True)
    assert native.lif_kernel_params(0.7, 0.8, True) is plain_params
    plain = native.lif_step_unchecked(plain_params, cur, u, s)
    assert plain[3] is None and plain[2] is plain[1]
    want = native.lif_step(cur, u, s, lam=0.7, v_th=0.8, reset_zero=True)
    assert all(torch.equal(a, b) for a, b in zip(want[:2], plain[:2]))


def _mask_reference(key: int, n: int, keep: float, scale: float) -> list[float]:
    """Element 4i + j: ``scale`` if (w_j >> 8 + ½)/2²⁴ < keep for the words w of counter
    (i, 0, 0, 0), else 0 (Python arithmetic on the scalar generator)."""
    out: list[float] = []
    k = (key & 0xFFFFFFFF, key >> 32)
    i = 0
    while len(out) < n:
        for w in native.philox4x32_10((i & 0xFFFFFFFF, i >> 32, 0, 0), k):
            out.append(scale if ((w >> 8) + 0.5) / 2**24 < keep else 0.0)
        i += 1
    return out[:n]


def test_keep_mask_equals_scalar_reference_and_has_its_rate():
    key = 0xFEDCBA9876543210
    n = 4 * 64 * 3 + 5
    got = native.philox_keep_mask_(torch.empty(n), 0.8, 1.25, key=key)
    assert got.tolist() == _mask_reference(key, n, 0.8, 1.25)
    big = native.philox_keep_mask_(torch.empty(1_000_000), 0.8, 1.0)
    assert set(big.unique().tolist()) == {0.0, 1.0}
    # binomial: sd of the mean is 4e-4; 5 sd
    assert abs(float(big.mean()) - 0.8) < 2e-3
    with pytest.raises(ValueError, match="keep probability"):
        native.philox_keep_mask_(torch.empty(4), 1.5)


def test_numbers_do_not_depend_on_the_thread_count():
    n = 3 * 65536 + 1000  # enough for several threads
    for fill in (native.philox_normal_,
                 lambda t, key, threads: native.philox_keep_mask_(t, 0.7, 2.0, key=key,
                                                                  threads=threads)):
        one = fill(torch.empty(n), key=99, threads=1)
        for threads in (2, 3, 8):
            assert torch.equal(one, fill(torch.empty(n), key=99, threads=threads))
    torch.manual_seed(0)
    cur, u = torch.randn(300, 1000), torch.randn(300, 1000)
    s = (u > 1).float()
    mask = (torch.rand(300, 1000) < 0.8).float()
    z = torch.randn(300, 1000)
    runs = [native.lif_step(cur, u, s, lam=0.5, v_th=1.0, noise=z, alpha=0.2, mask=mask,
                            surrogate="sigmoid", surrogate_param=4.0, gain=4.0, threads=t)
            for t in (1, 2, 5)]
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))


def _call(lib: ctypes.CDLL, fill: str, n: int) -> torch.Tensor:
    t = torch.empty(n)
    if fill == "normal":
        lib.opzo_philox_normal(t.data_ptr(), n, 1234567, 2)
    elif fill == "signs":
        lib.opzo_philox_signs(t.data_ptr(), n, 1234567, 2)
    else:
        lib.opzo_philox_keep_mask(t.data_ptr(), n, 1234567, 0.6, 1.5, 2)
    return t


def _lif_call(lib: ctypes.CDLL) -> list[torch.Tensor]:
    """The fused step through one build of the library: (u', s', x, dpsi)."""
    g = torch.Generator().manual_seed(5)
    rows, cols = 9, 301
    cur, u = torch.randn(rows, cols, generator=g), torch.randn(rows, cols, generator=g)
    s = (u > 1.0).float()
    z = torch.randn(rows, cols + 3, generator=g)[:, 3:]
    mask = (torch.rand(rows, cols, generator=g) < 0.8).float() * 1.25
    outs = [torch.empty(rows, cols) for _ in range(4)]
    u_out, s_out, out, dpsi = (t.data_ptr() for t in outs)
    lib.opzo_lif_step(native.LifArgs(
        rows=rows, cols=cols, current=cur.data_ptr(), u=u.data_ptr(), s=s.data_ptr(),
        u_out=u_out, s_out=s_out, out=out, dpsi=dpsi,
        z=z.data_ptr(), z_ld=z.stride(0), alpha=0.2, noise_before=0, mask=mask.data_ptr(),
        lam=0.5, v_th=1.0, reset_zero=0, surrogate=native.SURROGATE_CODES["sigmoid"],
        surr_param=4.0, gain=4.0, threads=2))
    return outs


def test_a_struct_mirror_out_of_step_with_the_library_is_refused(monkeypatch):
    """LifArgs must match lif_step.c's struct lif_args field by field: a mirror with two
    same-sized fields swapped (the same size and offsets, in another order) is caught."""
    fields = list(native.LifArgs._fields_)
    i, j = (next(k for k, (n, _) in enumerate(fields) if n == name) for name in ("lam", "v_th"))
    fields[i], fields[j] = fields[j], fields[i]

    class Swapped(ctypes.Structure):
        _fields_ = fields

    native.build()  # the cached library, with the right mirror
    monkeypatch.setattr(native, "LifArgs", Swapped)
    with pytest.raises(RuntimeError, match="struct lif_args .* differ"):
        native.build()


def test_every_build_gives_the_same_numbers(tmp_path):
    """The AVX-512 Philox path, the portable loops and the serial build agree exactly."""
    base = native.base_flags()
    variants = [base + ["-fopenmp"], base + ["-mno-avx512f"], base + ["-fopenmp-simd"], base,
                ["-O1", "-shared", "-fPIC", "-fno-math-errno", "-ffp-contract=off"]]
    libs = [native.build([flags], tmp_path) for flags in variants]
    n = 128 * 64 * 3 + 3
    for fill in ("normal", "mask", "signs"):
        first = _call(libs[0], fill, n)
        for lib in libs[1:]:
            other = _call(lib, fill, n)
            if fill != "normal":
                assert torch.equal(first, other)
            else:  # the same words; the portable build may round the polynomials otherwise
                assert torch.allclose(first, other, rtol=1e-6, atol=1e-6)
    first = _lif_call(libs[0])
    for lib in libs[1:]:
        other = _lif_call(lib)
        assert all(torch.equal(a, b) for a, b in zip(first[:3], other[:3]))
        assert torch.allclose(first[3], other[3], rtol=1e-6, atol=1e-9)


def _net(kernels: str, spec: str | None = None) -> SpikingNet:
    torch.manual_seed(0)
    if spec is None:
        net = SpikingMLP([20, 30, 25, 4], dropout=0.3, kernels=kernels)
    else:
        net = SpikingNet(spec, (2, 6, 6), 4, dropout=0.3, kernels=kernels)
    with torch.no_grad():
        for layer in net.hidden:
            layer.weight.mul_(3.0)
    return net


@pytest.mark.parametrize("spec", [None, "4C3-AP2-6C3-FC", "4C3-4C3+-FC"])
def test_network_forward_is_the_same_on_both_kernel_sets(spec):
    nets = {k: _net(k, spec).eval() for k in ("native", "torch")}
    x = torch.rand(5, nets["torch"].num_inputs)
    with torch.no_grad():
        outs = {k: net(x, T=4) for k, net in nets.items()}
        spikes = {k: [rec.spikes for _, rec in net.run(x, T=4)] for k, net in nets.items()}
    assert torch.equal(outs["native"], outs["torch"])
    for a, b in zip(spikes["native"], spikes["torch"]):
        assert all(torch.equal(p, q) for p, q in zip(a, b))


@pytest.mark.parametrize("rule", ["opzo", "dfa"])
@pytest.mark.parametrize("spec", [None, "4C3-AP2-6C3-FC"])
@pytest.mark.parametrize("mixed", [False, True])
def test_training_gradients_agree_on_both_kernel_sets(rule, spec, mixed):
    """Same masks, same noise: the fused step's local derivative gives the gradients of the
    torch ops (to float rounding of ψ). ``mixed``: the second layer's mask is not contiguous,
    so that layer takes torch's ops while the first is fused."""
    grads = {}
    for kernels in ("native", "torch"):
        net = _net(kernels, spec)
        r = OPZO(NoiseSampler(alpha=0.2, rng="torch")) if rule == "opzo" else DFA()
        learner = OnlineLearner(net, r, InstantLoss("mix", 0.05))
        torch.manual_seed(7)
        x = torch.rand(6, net.num_inputs)
        y = torch.randint(0, 4, (6,))
        masks = [(torch.rand(6, n) < 0.7).float() / 0.7 for n in net.hidden_sizes]
        if mixed:
            masks[1] = masks[1].t().contiguous().t()
        torch.manual_seed(8)
        learner.accumulate(x, y, T=3, masks=masks)
        grads[kernels] = [p.grad.clone() for p in net.parameters()]
    for a, b in zip(grads["native"], grads["torch"]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), (a - b).abs().max()


def test_native_masks_are_drawn_from_philox_and_seeded():
    net = _net("native").train()
    torch.manual_seed(3)
    a = net.dropout_masks(8, torch.zeros(1))
    torch.manual_seed(3)
    b = net.dropout_masks(8, torch.zeros(1))
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    scale = float(torch.tensor(1.0 / 0.7))  # in float32
    assert set(torch.cat([m.flatten() for m in a]).unique().tolist()) <= {0.0, scale}
    torch.manual_seed(3)
    c = _net("torch").train().dropout_masks(8, torch.zeros(1))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))  # a different generator


def test_autograd_and_other_dtypes_use_torch_ops():
    net = _net("native")
    x = torch.rand(3, 20)
    _, rec = net.step(net.initial_state(3, x), x)  # grad enabled: the graph must exist
    assert all(u.requires_grad for u in rec.u)
    with torch.no_grad():
        net64 = _net("native").double().eval()
        ref64 = _net("torch").double().eval()
        assert torch.equal(net64(x.double(), T=3), ref64(x.double(), T=3))


def test_missing_library_falls_back_to_torch_ops_with_one_warning(monkeypatch):
    x = torch.rand(3, 20)
    with torch.no_grad(), native.unavailable("no C compiler found"):
        with pytest.warns(UserWarning, match="no C compiler found.*install a C compiler"):
            a = _net("native").eval()(x, T=3)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _net("native").eval()(x, T=3)
        assert torch.equal(a, _net("torch").eval()(x, T=3))
    # turned off on purpose: the warning says so and gives no install advice
    monkeypatch.setenv("OPZO_NATIVE", "0")
    with torch.no_grad(), native.fresh(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _net("native").eval()(x, T=3)
    (message,) = [str(w.message) for w in caught]
    assert "OPZO_NATIVE=0" in message and "install" not in message


def test_unknown_kernels_is_an_error():
    with pytest.raises(ValueError, match="unknown kernels 'gpu'"):
        SpikingMLP([4, 3, 2], kernels="gpu")


def _signs_reference(key: int, n: int) -> list[float]:
    """Element i: +1 if bit i mod 32 of word (i // 32) mod 4 of counter i // 128 is set."""
    k = (key & 0xFFFFFFFF, key >> 32)
    out: list[float] = []
    i = 0
    while len(out) < n:
        for w in native.philox4x32_10((i & 0xFFFFFFFF, i >> 32, 0, 0), k):
            out += [1.0 if (w >> b) & 1 else -1.0 for b in range(32)]
        i += 1
    return out[:n]


def test_rademacher_signs_equal_scalar_reference_and_are_fair():
    key = 0x1122334455667788
    n = 128 * 64 + 77  # past one block of counters
    assert native.philox_signs_(torch.empty(n), key=key).tolist() == _signs_reference(key, n)
    big = native.philox_signs_(torch.empty(2_000_000))
    assert set(big.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(big.mean())) < 5 * 2_000_000 ** -0.5
    assert torch.equal(native.philox_signs_(torch.empty(300_001), key=5, threads=1),
                       native.philox_signs_(torch.empty(300_001), key=5, threads=3))
    # the sampler uses them by default, torch's randint with rng="torch"
    torch.manual_seed(2)
    z = NoiseSampler(distribution="rademacher").sample(0, 4, [5, 3], torch.zeros(1))
    assert set(torch.cat(z, dim=1).unique().tolist()) <= {-1.0, 1.0}


def test_inputs_the_kernel_cannot_take_go_to_torch_ops():
    """Masks and noise handed in by a caller in another dtype or layout are used as they are
    (by torch's ops), never read wrongly by the kernel."""
    net = _net("native").train()
    ref = _net("torch").train()
    x = torch.rand(4, 20)
    masks64 = [(torch.rand(4, n) < 0.7).double() / 0.7 for n in net.hidden_sizes]
    masks_t = [m.float().t().contiguous().t() for m in masks64]  # transposed layout
    z = [torch.randn(n, 4).t() for n in net.hidden_sizes]  # columns contiguous, rows not
    with torch.no_grad():
        for masks in (masks64, masks_t):
            outs = []
            for n in (net, ref):
                o, _ = n.step(n.initial_state(4, x), x, masks=masks, noise=z, noise_scale=0.2)
                outs.append(o)
            assert torch.allclose(outs[0], outs[1])


def _child_step(queue) -> None:
    net = _net("native").eval()
    with torch.no_grad():
        out = net(torch.ones(3, 20), T=2)
    queue.put((native.default_threads(), float(out.sum()),
               float(native.philox_normal_(torch.empty(300_000), key=1).sum())))


def test_kernels_run_in_a_forked_child():
    """A process forked after the parent ran the kernels on its OpenMP pool runs them on one
    thread (torch's thread count there is 1: GNU OpenMP's pool does not survive fork), does
    not hang, and gives the same numbers."""
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    with torch.no_grad():
        want = float(_net("native").eval()(torch.ones(3, 20), T=2).sum())
    z = float(native.philox_normal_(torch.empty(300_000), key=1, threads=2).sum())
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_step, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung")
    assert child.exitcode == 0
    assert queue.get(timeout=5) == (1, want, z)


def test_straight_line_opzo_step_equals_the_library_step():
    """benchmarks/bench_speed_variants.py's ``flat-python`` variant writes OPZO's whole step
    (OTTT traces, mixed loss, M's update, δ, gradients) as one function on the same kernels.
    The speed comparison there is only fair if it does the same work: under the same seed it
    must give the library's gradients and M exactly, over several batches (M carries over)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from bench_speed_variants import flat_step
    finally:
        sys.path.pop(0)

    class NoStep:  # keep the gradients to compare them
        def zero_grad(self, set_to_none: bool = False) -> None:
            pass

        def step(self) -> None:
            pass

    sizes = [40, 24, 16, 10]

    def fresh() -> SpikingMLP:
        torch.manual_seed(0)
        net = SpikingMLP(sizes, dropout=0.2)
        with torch.no_grad():
            net.hidden[0].weight.mul_(3.0)
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        return net

    x, y = torch.rand(8, sizes[0]), torch.randint(0, sizes[-1], (8,))
    lib_net, flat_net = fresh(), fresh()
    learner = OnlineLearner(lib_net, OPZO(), InstantLoss("mix", 0.05))
    M_t = torch.zeros(sizes[-1], sum(sizes[1:-1]))
    for batch in range(3):
        torch.manual_seed(10 + batch)
        learner.accumulate(x, y, T=5)
        torch.manual_seed(10 + batch)
        flat_step(flat_net, NoStep(), M_t, x, y, 5)
        for p, q in zip(lib_net.parameters(), flat_net.parameters()):
            assert torch.equal(p.grad, q.grad)
        assert torch.equal(learner.rule.feedback_t, M_t)
    assert M_t.abs().sum() > 0 and lib_net.readout.weight.grad.abs().sum() > 0
