"""Mutation check: do the tests catch a wrong rule?

A list of deliberate one-line mistakes in the learning rules, traces, losses and metrics
(dropping ψ from DFA's δ = (B e) ⊙ m ⊙ ψ(u), OPZO paper eq. 7; flipping the sign of DKP's
feedback gradient Σ_t â e ᵀ, appendix C.3.2; skipping the decay of OTTT's presynaptic trace
â[t] = λ â[t−1] + x[t]; swapping the factors of OPZO's momentum update
M ← λ_M M + (1 − λ_M) z õᵀ/α, eq. 6; …). Each one is applied on its own to a fresh copy of
``src/`` and ``tests/`` in a temporary folder, and the test files it names are run there
(``pytest -x -q -p no:cacheprovider``, with the copy's ``src`` first on ``PYTHONPATH``; the
subprocess checks that ``opzo`` is imported from the copy). A mutation is *caught* when some
test fails, *survived* when all pass. The working tree is never modified.

Every mutation's target text must occur exactly once in its file, so that after a refactor
the check says which mutation no longer applies (``not applicable``) instead of silently
testing nothing. Before the mutations the selected tests run once on the unmodified copy
(``baseline``): they must pass, or a "caught" would mean nothing.

Usage::

    python tools/mutation_check.py                  # all mutations, a table and a score
    python tools/mutation_check.py --list           # the mutations and their test files
    python tools/mutation_check.py --only dfa-drop-psi dkp-flip-sign --jobs 2

Exit status 0 when every mutation is caught, 1 otherwise (a survivor, a mutation that no
longer applies, a failing baseline or a run that errored). The native kernels compile into
``$OPZO_CACHE_DIR`` (default ``~/.cache/opzo``), keyed by a hash of their source: the copy
reuses the cache; a mutation of a C file builds into a temporary cache of its own.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RULE_CHECKS = "tests/test_rule_checks.py"
FIRING_RATES = RULE_CHECKS + "::test_firing_rates_equal_a_hand_count"


@dataclass(frozen=True)
class Mutation:
    """One deliberate mistake: replace ``old`` (which must occur exactly once in ``path``,
    relative to the repository root) by ``new``; ``tests`` are the test files (or node ids)
    expected to catch it, run in this order with ``-x``."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str


MUTATIONS: tuple[Mutation, ...] = (
    Mutation("dfa-drop-psi", "src/opzo/rules/direct.py",
             "return self.apply_local_derivative(ctx, list(g.split(self.sizes, dim=1)))",
             "return list(g.split(self.sizes, dim=1))",
             (RULE_CHECKS,), "DFA/DKP/OPZO: δ_l = B_l e without m_l ⊙ ψ(u_l) (eq. 7)"),
    Mutation("fused-psi-ignored", "src/opzo/rules/base.py",
             "        return g * dp\n", "        return g\n",
             (RULE_CHECKS,), "local_delta drops the fused step's m ⊙ ψ (float32 native path)"),
    Mutation("fused-psi-drops-mask", "src/opzo/native/lif_step.c",
             "dp[j] = MASK ? d * mk[j] : d;", "dp[j] = d;",
             (RULE_CHECKS,), "native LIF step: dpsi = ψ without the dropout mask m"),
    Mutation("torch-psi-drops-mask", "src/opzo/learner.py",
             "gains = [m * gain for m in masks]",
             "gains = [torch.ones_like(m) * gain for m in masks]",
             (RULE_CHECKS, "tests/test_rules.py"),
             "learner: local derivative ψ without the dropout mask (torch path)"),
    Mutation("sigmoid-psi-drops-1/a", "src/opzo/surrogate/sigmoid.py",
             "        return 1.0 / self.a\n", "        return 1.0\n",
             (RULE_CHECKS, "tests/test_rules.py"),
             "sigmoid surrogate: ψ = σ'(x) without its 1/a (torch path)"),
    Mutation("otpe-derivative-drops-mask", "src/opzo/rules/base.py",
             "return (g if rec.masks is None else g * rec.masks[l]) * d", "return g * d",
             ("tests/test_traces.py",),
             "local_delta with a trace's D_l (OTPE's ḡ): δ = g ⊙ D_l without the dropout mask"),
    Mutation("dkp-flip-sign", "src/opzo/rules/direct.py",
             "self.feedback_t.grad.addmm_(ctx.error.t(), self._trace)",
             "self.feedback_t.grad.addmm_(ctx.error.t(), self._trace, alpha=-1.0)",
             (RULE_CHECKS,), "DKP: feedback gradient −Σ_t â eᵀ (sign flipped)"),
    Mutation("dkp-trace-no-decay", "src/opzo/rules/direct.py",
             "self._trace.mul_(self.trace_lam).add_(act)", "self._trace.add_(act)",
             (RULE_CHECKS,), "DKP: activity trace â[t] = â[t−1] + x[t] (λ skipped)"),
    Mutation("dkp-no-weight-decay", "src/opzo/rules/direct.py",
             "weight_decay=self.weight_decay)", "weight_decay=0.0)",
             (RULE_CHECKS,), "DKP: feedback optimizer without its weight decay"),
    Mutation("ottt-trace-no-decay", "src/opzo/traces.py",
             "torch.add(x, self.a, alpha=self.lam, out=self.a)", "torch.add(x, self.a, out=self.a)",
             ("tests/test_rules.py", RULE_CHECKS),
             "OTTT: presynaptic trace â[t] = â[t−1] + x[t] (λ skipped)"),
    Mutation("ottt-bias-trace-constant", "src/opzo/traces.py",
             "self.c = self.lam * self.c + 1.0", "self.c = 1.0",
             ("tests/test_rules.py", RULE_CHECKS), "OTTT: bias trace b̂[t] = 1 (no leaky sum)"),
    Mutation("opzo-swap-M-factors", "src/opzo/rules/direct.py",
             "addmm_(ctx.output.t(), noise.z, alpha=scale)",
             "addmm_(noise.z.t(), ctx.output, alpha=scale)",
             (RULE_CHECKS,), "OPZO: M update õ zᵀ instead of z õᵀ (factors swapped)"),
    Mutation("opzo-M-from-error", "src/opzo/rules/direct.py",
             "addmm_(ctx.output.t(), noise.z, alpha=scale)",
             "addmm_(ctx.error.t(), noise.z, alpha=scale)",
             (RULE_CHECKS,), "OPZO: M learns z eᵀ (the error) instead of z õᵀ (the output)"),
    Mutation("opzo-drop-1-minus-lambda", "src/opzo/rules/direct.py",
             "(1.0 - self.lambda_m)", "(1.0)",
             (RULE_CHECKS,), "OPZO: M ← λ_M M + z õᵀ/α without the (1 − λ_M) factor"),
    Mutation("opzo-alpha-factor-inverted", "src/opzo/rules/direct.py",
             "scale /= noise.alpha", "scale *= noise.alpha",
             (RULE_CHECKS,), "OPZO: M update times α instead of divided by α"),
    Mutation("noise-before-unscaled", "src/opzo/network.py",
             "current = torch.add(current, z, alpha=noise_scale)",
             "current = torch.add(current, z)",
             (RULE_CHECKS,), "noise before the neuron added as z instead of α z (torch path)"),
    Mutation("native-noise-before-unscaled", "src/opzo/native/lif_step.c",
             "if (NOISE == 2) c = fmaf(z[j], alpha, c);", "if (NOISE == 2) c = c + z[j];",
             (RULE_CHECKS,), "native LIF step: noise before the neuron as z instead of α z"),
    Mutation("bp-flip-backward", "src/opzo/rules/bp.py",
             "below = layer.input_grad(delta, self.feedback_weight(layer))",
             "below = layer.input_grad(-delta, self.feedback_weight(layer))",
             ("tests/test_rules.py", RULE_CHECKS), "spatial BP: g_{l−1} = −W_lᵀ δ_l"),
    Mutation("ce-error-drops-target", "src/opzo/losses.py",
             "e = logp.exp_().sub_(target).mul_(1.0 - self.gamma)",
             "e = logp.exp_().mul_(1.0 - self.gamma)",
             (RULE_CHECKS, "tests/test_losses.py"),
             "loss: ∂CE/∂o = softmax(o) instead of softmax(o) − onehot(y)"),
    Mutation("mse-error-half", "src/opzo/losses.py",
             "e.add_(diff, alpha=2.0 * self.gamma / m)", "e.add_(diff, alpha=self.gamma / m)",
             (RULE_CHECKS, "tests/test_losses.py"),
             "loss: ∂MSE/∂o = (o − onehot(y))/m instead of 2 (o − onehot(y))/m"),
    Mutation("per-step-stale-current", "src/opzo/learner.py",
             'if static and self.update != "step":', "if static:",
             (RULE_CHECKS,),
             "per-step updates: the first layer's current kept from the weights before the steps"),
    Mutation("per-step-grad-not-cleared", "src/opzo/learner.py",
             "        self.rule.optimizer_step()\n        for p in self._parameters():\n"
             "            p.grad.zero_()\n",
             "        self.rule.optimizer_step()\n        for p in self._parameters():\n"
             "            pass\n",
             (RULE_CHECKS,), "per-step updates: .grad not cleared after each step's update"),
    Mutation("rate-per-sample-not-step", "src/opzo/batch.py",
             "neuron_steps=[batch * T * n for n in sizes]",
             "neuron_steps=[batch * n for n in sizes]",
             (FIRING_RATES,), "firing rate: spikes over B·n instead of B·T·n"),
    Mutation("rate-epoch-keeps-last-batch", "src/opzo/progress.py",
             "self.spikes = [a + b for a, b in zip(self.spikes, s.spike_counts)]",
             "self.spikes = list(s.spike_counts)",
             (FIRING_RATES,), "epoch firing rate: spike counts of the last batch only"),
)


@dataclass
class Result:
    """The outcome of one mutation: ``status`` is caught, survived, not applicable or error."""

    mutation: Mutation
    status: str
    seconds: float = 0.0
    detail: str = ""


def count_target(mutation: Mutation, root: Path = ROOT) -> int:
    """How often the mutation's target text occurs in its file under ``root`` (0 if missing)."""
    path = root / mutation.path
    return path.read_text().count(mutation.old) if path.is_file() else 0


def check_targets(mutations=MUTATIONS, root: Path = ROOT) -> list[str]:
    """Problems with the list: a name used twice, a target not exactly once in its file, a
    test file that does not exist. Empty when every mutation applies."""
    problems = []
    names = [m.name for m in mutations]
    problems += [f"{n}: name used twice" for n in sorted({n for n in names if names.count(n) > 1})]
    for m in mutations:
        n = count_target(m, root)
        if n != 1:
            problems.append(f"{m.name}: target text occurs {n} times in {m.path} (expected 1): "
                            f"{m.old.strip()!r}")
        for t in m.tests:
            if not (root / t.split("::")[0]).is_file():
                problems.append(f"{m.name}: test file {t} does not exist")
    return problems


def make_copy(dest: Path, root: Path = ROOT) -> Path:
    """Copy ``src/``, ``tests/`` and ``pyproject.toml`` (the pytest settings) to ``dest``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("src", "tests"):
        shutil.copytree(root / name, dest / name, ignore=ignore)
    if (root / "pyproject.toml").is_file():
        shutil.copy2(root / "pyproject.toml", dest / "pyproject.toml")
    return dest


def apply(mutation: Mutation, copy_root: Path) -> None:
    """Apply the mutation to the copy (the target must occur exactly once)."""
    path = copy_root / mutation.path
    text = path.read_text()
    if text.count(mutation.old) != 1:
        raise ValueError(f"{mutation.name}: target occurs {text.count(mutation.old)} times")
    path.write_text(text.replace(mutation.old, mutation.new))


#: run in the subprocess: check that opzo comes from the copy, then run pytest
_RUNNER = """
import sys
import opzo
src = sys.argv[1]
if not opzo.__file__.startswith(src):
    print(f"MUTATION-CHECK: opzo imported from {opzo.__file__}, not from {src}")
    sys.exit(99)
import pytest
sys.exit(pytest.main(sys.argv[2:]))
"""


def run_tests(copy_root: Path, tests: tuple[str, ...], timeout: float = 600.0,
              extra_env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``tests`` (paths relative to the copy) in the copy: (pytest's exit code, output).
    Exit code 99: opzo was not imported from the copy's src."""
    src = str((copy_root / "src").resolve())
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra_env or {})
    cmd = [sys.executable, "-c", _RUNNER, src + os.sep, *tests, "-x", "-q", "-rf",
           "-p", "no:cacheprovider"]
    try:
        proc = subprocess.run(cmd, cwd=copy_root, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return 124, f"timed out after {timeout:.0f} s: {exc}"
    return proc.returncode, proc.stdout + proc.stderr


def _first_failure(output: str) -> str:
    """The first failing test of pytest's -rf summary (or the last line of the output)."""
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            line = re.sub(r"^(FAILED|ERROR) tests/", "", line)
            return line[:160]
    lines = [ln for ln in output.splitlines() if ln.strip()]
    return lines[-1][:160] if lines else ""


def run_mutation(mutation: Mutation, workdir: Path, root: Path = ROOT,
                 tests: tuple[str, ...] | None = None, timeout: float = 600.0) -> Result:
    """Apply one mutation to a fresh copy under ``workdir`` and run its tests (or ``tests``)."""
    start = time.perf_counter()
    n = count_target(mutation, root)
    if n != 1:
        return Result(mutation, "not applicable", 0.0,
                      f"target text occurs {n} times in {mutation.path}")
    copy_root = make_copy(Path(tempfile.mkdtemp(prefix=f"{_slug(mutation.name)}-", dir=workdir)),
                          root)
    apply(mutation, copy_root)
    env = {}
    if mutation.path.endswith((".c", ".h")):  # a mutated library must not enter the user's cache
        env["OPZO_CACHE_DIR"] = str(copy_root / "native-cache")
    code, output = run_tests(copy_root, tests or mutation.tests, timeout, env)
    seconds = time.perf_counter() - start
    shutil.rmtree(copy_root, ignore_errors=True)
    if code == 0:
        return Result(mutation, "survived", seconds, "all selected tests passed")
    if code in (1, 2):  # tests failed (1) or collection/import broke (2)
        return Result(mutation, "caught", seconds, _first_failure(output))
    return Result(mutation, "error", seconds, f"exit code {code}: {_first_failure(output)}")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def baseline(mutations, workdir: Path, root: Path = ROOT, timeout: float = 900.0
             ) -> tuple[bool, str]:
    """Run every selected test file once on an unmodified copy: (all passed, detail)."""
    tests: list[str] = []
    for m in mutations:
        tests += [t for t in m.tests if t not in tests]
    copy_root = make_copy(Path(tempfile.mkdtemp(prefix="baseline-", dir=workdir)), root)
    code, output = run_tests(copy_root, tuple(tests), timeout)
    shutil.rmtree(copy_root, ignore_errors=True)
    return code == 0, "passed" if code == 0 else f"exit code {code}: {_first_failure(output)}"


def markdown_table(results: list[Result]) -> str:
    """The results as a Markdown table."""
    rows = ["| mutation | file | mistake | tests run | result | first failing test | s |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        m = r.mutation
        tests = ", ".join(Path(t).name for t in m.tests)
        detail = r.detail.replace("|", "\\|") if r.status != "survived" else ""
        rows.append(f"| `{m.name}` | `{m.path.removeprefix('src/opzo/')}` | {m.what} | {tests} "
                    f"| **{r.status}** | {detail} | {r.seconds:.0f} |")
    return "\n".join(rows)


def score(results: list[Result]) -> str:
    caught = sum(r.status == "caught" for r in results)
    return f"{caught}/{len(results)} mutations caught"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutations only")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--jobs", type=int, default=1,
                        help="mutations run at the same time (default 1)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the run of the selected tests on the unmodified copy")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds per mutation (default 600)")
    args = parser.parse_args(argv)

    mutations = list(MUTATIONS)
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in mutations})
        if unknown:
            parser.error(f"unknown mutation(s) {unknown}; --list shows them")
        mutations = [m for m in mutations if m.name in args.only]
    if args.list:
        for m in mutations:
            print(f"{m.name:30s} {m.path:30s} {', '.join(m.tests)}\n    {m.what}")
        return 0

    problems = check_targets(mutations)
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="opzo-mutation-") as tmp:
        workdir = Path(tmp)
        if not args.no_baseline:
            start = time.perf_counter()
            ok, detail = baseline(mutations, workdir, timeout=max(args.timeout, 900.0))
            print(f"baseline (unmodified copy): {detail} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            if not ok:
                print("the selected tests fail without any mutation: fix that first",
                      file=sys.stderr)
                return 1

        def one(m: Mutation) -> Result:
            r = run_mutation(m, workdir, timeout=args.timeout)
            print(f"{r.status:>14s}  {m.name:30s} {r.seconds:5.0f} s  {r.detail}", flush=True)
            return r

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(one, mutations))
    print()
    print(markdown_table(results))
    print()
    print(f"score: {score(results)} ({time.perf_counter() - start:.0f} s, "
          f"{max(1, args.jobs)} at a time)")
    return 0 if all(r.status == "caught" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
