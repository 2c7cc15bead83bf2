"""Command line: ``opzo train`` and ``opzo eval``.

    opzo train                                   # OPZO on the embedded MNIST subset
    opzo train --method bp --dataset mnist --data-root ../shared/data/mnist --epochs 50
    opzo train --config configs/table1-opzo.toml --dataset mnist --data-root DIR
    opzo train --net conv5 --width 0.25          # the paper's 5-layer conv net, 1/4 channels
    opzo train --resume runs/<run>               # continue an interrupted run
    opzo train --device cuda                     # on a GPU (default auto: CUDA if present)
    opzo train --nproc 2                         # data parallel: 2 processes via torchrun
    torchrun --nproc_per_node 2 -m opzo train    # the same, launched by torchrun
    opzo eval runs/<run>                         # test accuracy of a run's checkpoint
    opzo plot runs/a runs/b --out curves.png     # learning curves (+ diagnostics) as a PNG
    opzo export runs/<run> --out model.nir       # the trained network as a NIR graph
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from .config import (
    ConfigError,
    OptionParser,
    TrainConfig,
    add_argument_groups,
    add_arguments,
    config_from_args,
)
from .hardware import HW_KINDS

#: options that may be given with --resume: where the run continues, and its learning rate
#: (to continue a diverged run more gently); everything else is the run's config.json
RESUME_OPTIONS = ("device", "threads", "lr")


def _train(args: argparse.Namespace) -> int:
    from .build import resolve_device
    from .distributed import Communicator, launched_by_torchrun
    from .rundir import RUN_FILES, occupied
    from .train import Interrupted, default_run_dir, run_training

    if args.nproc is not None and args.nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {args.nproc}")
    if args.resume:
        run_dir = Path(args.resume)
        cfg_path = run_dir / "config.json"
        if not cfg_path.is_file():
            raise ConfigError(f"cannot resume: {cfg_path} not found; is {run_dir} a run folder?")
        given = [k for k in vars(TrainConfig()) if getattr(args, k, None) is not None
                 and k not in RESUME_OPTIONS]
        if given or args.config:
            raise ConfigError(
                "--resume continues a run with its saved config.json; drop the other options "
                f"({', '.join('--' + g.replace('_', '-') for g in given) or '--config'}); "
                f"only {', '.join('--' + o for o in RESUME_OPTIONS)} may change")
        try:
            saved = json.loads(cfg_path.read_text())
        except ValueError as exc:
            raise ConfigError(f"cannot resume: {cfg_path} is not valid JSON ({exc}); the "
                              "run's options are also in its checkpoint.pt under 'config'"
                              ) from None
        cfg = TrainConfig.from_dict(saved, source=str(cfg_path))
        for name in RESUME_OPTIONS:
            if getattr(args, name, None) is not None:
                setattr(cfg, name, getattr(args, name))
        cfg.validate()
    else:
        cfg = config_from_args(args, args.config)
        run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg)
        present = [f for f in RUN_FILES if (run_dir / f).exists()]
        if present and not args.overwrite:
            raise ConfigError(occupied(run_dir, present))
    if getattr(cfg, "norm", "none") != "none" and (
            (args.nproc is not None and args.nproc > 1) or launched_by_torchrun()):
        raise ConfigError(f"norm {cfg.norm!r} with several processes would normalise each "
                          "process's rows with their own statistics (no synchronised batch "
                          "norm yet), so the result would depend on --nproc: train in one "
                          "process, or norm 'none'")
    if args.nproc is not None and args.nproc > 1 and not launched_by_torchrun():
        return _spawn(args, run_dir)
    comm = None
    if launched_by_torchrun():  # every process must write to the folder process 0 chose
        from .launch import watch_parent

        watch_parent()  # no process of the run outlives torchrun
        comm = Communicator.init(resolve_device(cfg.device))
        run_dir = Path(str(comm.broadcast_object(str(run_dir))))
    clean = False  # whether every process ends normally (then they part in step)
    try:
        run_training(cfg, run_dir, resume=bool(args.resume), progress=not args.quiet,
                     overwrite=args.overwrite)
        clean = True
    except Interrupted as stop:  # a second signal may have stopped this process alone
        clean = stop.agreed
        return 130
    finally:
        if comm is not None:
            comm.close(clean)
    return 0


def _spawn(args: argparse.Namespace, run_dir: Path) -> int:
    """``opzo train --nproc N``: the same command as N processes under torchrun
    (``python -m torch.distributed.run --standalone``), with the run folder fixed here so
    that every process writes to the same one. Signals, failures and messages as one run
    (:mod:`opzo.launch`)."""
    argv = list(args.argv)
    out: list[str] = []
    i = 0
    while i < len(argv):  # drop --nproc N / --nproc=N
        if argv[i] == "--nproc":
            i += 2
            continue
        if not argv[i].startswith("--nproc="):
            out.append(argv[i])
        i += 1
    if not args.resume and "--out" not in out:
        out += ["--out", str(run_dir)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={args.nproc}", "-m", "opzo", *out]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # one thread per process unless told otherwise
    from .launch import launch

    return launch(cmd, env, run_dir, args.nproc)


def _check_eval_options(args: argparse.Namespace) -> None:
    """``opzo eval``'s chip options, before anything is read: each names itself."""
    for flag, value in (("--hw-noise", args.hw_noise), ("--hw-weight-noise",
                                                        args.hw_weight_noise)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{flag} {value:g}: a noise scale is a finite number >= 0")
    if args.hw_repeats < 1:
        raise ConfigError(f"--hw-repeats {args.hw_repeats}: the number of draws (chips) to "
                          "average must be >= 1")
    if args.hw_seed is not None and args.hw_seed < 0:
        raise ConfigError(f"--hw-seed {args.hw_seed}: a seed is >= 0")


#: ``opzo eval``'s chip flags -> the option each sets (:mod:`opzo.chip`)
_EVAL_CHIP_FLAGS = {"weight_bits": "weight_bits", "state_bits": "state_bits",
                    "hw_threshold_noise": "threshold_noise", "hw_leak_noise": "leak_noise",
                    "chip": "backend", "chip_sim": "sim", "chip_variant": "variant"}


def _eval_chip(args: argparse.Namespace, cfg: TrainConfig, state: dict, net,
               evaluate) -> dict | None:
    """``opzo eval``'s accuracy on the chip (the run's own chip options, overridden by the
    flags given); None without a chip. The run's weights go on the grid by nearest rounding
    (on the run's own grid when it trained with the same weight_bits), and are put back
    afterwards. ``evaluate(net, chip_backend)`` gives the figures."""
    import dataclasses

    from . import chip_nir  # noqa: F401  (registers the chip backend of --chip nir:FILE)
    from .chip import ChipConfig, setup_chip

    chip = ChipConfig.from_options(cfg)
    chip.seed = cfg.hw_seed if args.hw_seed is None else args.hw_seed
    chip.grad_from = "chip"
    for flag, name in _EVAL_CHIP_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            setattr(chip, name, value)
    if not chip.active:
        return None
    problem = chip.problem()
    if problem:
        raise ConfigError(problem)
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    grid_state = ((state.get("chip") or {}).get("grid")
                  if chip.weight_bits == cfg.weight_bits else None)
    try:
        setup = setup_chip(net, chip, grid_state)
        assert setup is not None
        result = evaluate(net, setup.backend)
    finally:
        net.load_state_dict(saved)
    return {**{k: v for k, v in dataclasses.asdict(chip).items()
               if k not in ("update_rounding", "grad_from")}, **result}


def _eval(args: argparse.Namespace) -> int:
    from .build import build_network, make_source, resolve_device
    from .data import DATASETS
    from .losses import InstantLoss
    from .rundir import CHECKPOINT, data_fingerprint, load_checkpoint
    from .train import evaluate

    _check_eval_options(args)
    if args.dataset is not None and args.dataset not in DATASETS:
        raise ConfigError(f"--dataset {args.dataset!r} is not a dataset of opzo; choose one "
                          f"of {', '.join(DATASETS)}")
    run_dir = Path(args.run)
    ckpt = run_dir / CHECKPOINT
    if not ckpt.is_file():
        raise ConfigError(f"{ckpt} not found: pass a run folder written by 'opzo train'")
    device = resolve_device(args.device)
    state = load_checkpoint(ckpt, device)
    cfg = TrainConfig.from_dict(state["config"], source=str(ckpt))
    trained_on = dict(state.get("data") or {})
    if args.dataset:
        cfg.dataset = args.dataset
    if DATASETS[cfg.dataset].builtin:  # the package's own data: no folder is read
        if args.data_root:
            raise ConfigError(f"--data-root: {cfg.dataset} ships with the package and reads "
                              "no folder; drop --data-root, or name the dataset that folder "
                              "holds with --dataset")
        cfg.data_root = None  # what an older run may have recorded was never read either
    elif args.data_root:
        cfg.data_root = args.data_root
    if args.synops_convention:
        cfg.synops_convention = args.synops_convention
    cfg.validate()
    test_set = make_source(cfg, "test")
    here = data_fingerprint(test_set, cfg.dataset)
    saved = trained_on.get("test")
    if not args.dataset and saved and any(here[k] != saved.get(k) for k in
                                          ("samples", "input_shape", "labels_sha")):
        raise ConfigError(
            f"the test data at {cfg.data_root or cfg.dataset} are not those of this run's "
            f"{saved.get('dataset')} test split ({saved.get('samples')} samples of shape "
            f"{saved.get('input_shape')}; here {here['samples']} of {here['input_shape']}, "
            "other labels). To evaluate on another dataset on purpose, name it with --dataset")
    shape = (trained_on.get("train") or {}).get("input_shape")
    if shape is not None and list(test_set.input_shape) != list(shape):
        raise ConfigError(f"the run's network takes inputs of shape {tuple(shape)}; "
                          f"{cfg.dataset} gives {tuple(test_set.input_shape)}")
    net = build_network(cfg, test_set.input_shape, test_set.classes).to(device)
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ConfigError(f"{ckpt} does not fit a network for {cfg.dataset} "
                          f"({test_set.classes} classes, input {tuple(test_set.input_shape)}): "
                          f"{str(exc)[:200]}") from None
    loss = InstantLoss.from_config(cfg)
    # the chip: the run's own (its --hw-noise, kind and seed) unless told otherwise
    seed = cfg.hw_seed if args.hw_seed is None else args.hw_seed
    if args.hw_noise is not None or args.hw_noise_kind is not None:
        from .hardware import attach

        scale = cfg.hw_noise if args.hw_noise is None else args.hw_noise
        if not scale and args.hw_noise_kind is not None:
            raise ConfigError("--hw-noise-kind needs a noise scale: give --hw-noise SCALE (the "
                              "run itself was trained without chip noise)")
        attach(net, scale, args.hw_noise_kind or cfg.hw_noise_kind, seed)
    report: dict = {"run": str(run_dir), "epoch": state["epoch"], "dataset": cfg.dataset,
                    "data_root": cfg.data_root, "split": "test", "samples": len(test_set),
                    "device": str(device)}
    on_chip = _eval_chip(args, cfg, state, net, lambda n, c: evaluate(n, test_set, cfg, loss,
                                                                      chip=c))
    if on_chip is not None:
        report["chip"] = on_chip
    hw = net.hardware
    if hw is not None:  # the accuracy on the chip over draws; then the clean figures below
        from .hardware import evaluate_under_noise

        report["hardware"] = evaluate_under_noise(
            lambda n: evaluate(n, test_set, cfg, loss), net, hw.scale, hw.kind,
            args.hw_repeats, seed, args.hw_weight_noise)
        net.hardware = None
    elif args.hw_weight_noise:
        raise ConfigError("--hw-weight-noise is a chip's mismatch: give --hw-noise with "
                          "--hw-noise-kind fixed (--hw-noise 0 is not allowed with it)")
    result = evaluate(net, test_set, cfg, loss)  # clean: no chip noise
    print(json.dumps({**report, **result}, indent=2))
    return 0


def _cost(argv: list[str]) -> int:
    from .cost import main_cost

    return main_cost(argv)


def _plot(args: argparse.Namespace) -> int:
    from .plots import plot_runs

    out = plot_runs(args.runs, args.out)
    print(f"wrote {out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .nir import export_run, format_report

    print(format_report(export_run(args.run, args.out, approximate=args.approximate,
                                   dt=args.dt, data_root=args.data_root)))
    return 0


#: ``opzo train --help``'s usage lines (argparse's own lists all the options: 47 lines)
TRAIN_USAGE = ("opzo train [--config FILE] [--OPTION VALUE ...]\n"
               "       opzo train --resume RUN_DIR [--device D] [--threads N] [--lr LR]")

#: ``opzo train --help``'s footer: where the full reference is
TRAIN_EPILOG = ("The full reference of every option, with examples: the page 'Command line' "
                "(docs/guide/cli.md) of the documentation site (build it with mkdocs serve).")


def build_parser() -> argparse.ArgumentParser:
    parser = OptionParser(  # every subcommand's parser is one too: one-line errors
        prog="opzo", description="Online, backprop-free training of spiking neural networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train", help="train an SNN online", usage=TRAIN_USAGE, epilog=TRAIN_EPILOG,
        description="Train a fully connected or convolutional SNN (--net) online with a "
        "spatial credit rule. Every "
        "option can also be a key of a TOML/YAML --config file (use _ or -); options given "
        "on the command line override the file.")  # each option's help states its default
    groups = add_argument_groups(train)  # --help lists the options by topic
    run_group = groups["run folder and checkpoints"]
    run_group.add_argument("--config", metavar="FILE",
                           help="TOML or YAML file whose keys mirror these options")
    run_group.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run "
                           "with its saved options (only --device, --threads and --lr may "
                           "change)")
    run_group.add_argument("--overwrite", action="store_true",
                           help="replace the run already in --out (its files are deleted "
                           "first)")
    groups["devices and processes"].add_argument(
        "--nproc", type=int, metavar="N",
        help="data parallel on N processes: runs this command under torchrun "
        "(torch.distributed; gloo on the CPU, nccl on CUDA); the batch size is the global "
        "batch, each process trains on its share of it")
    groups["diagnostics and logging"].add_argument(
        "--quiet", action="store_true",
        help="no progress: neither the bar on a terminal nor, without one, the plain line "
        "every 30 s within an epoch (batch, loss, samples/s, ETA)")
    add_arguments(train, groups)
    train.set_defaults(func=_train)
    ev = sub.add_parser("eval", help="evaluate a run's checkpoint on its test set")
    ev.add_argument("run", help="run folder written by 'opzo train'")
    ev.add_argument("--data-root", help="override the dataset folder of the run (it must "
                    "hold the run's dataset, checked, unless --dataset names another)")
    ev.add_argument("--dataset", help="evaluate on this dataset instead of the run's (same "
                    "input shape and classes)")
    ev.add_argument("--hw-noise", type=float, default=None, metavar="SCALE",
                    help="evaluate on a noisy chip: noise of this scale on every synaptic "
                    "current (default: the run's own --hw-noise; 0: a clean chip); the output "
                    "gives the accuracy over --hw-repeats draws with its spread, and the clean "
                    "accuracy")
    ev.add_argument("--hw-noise-kind", choices=HW_KINDS, default=None,
                    help="fresh Gaussian noise every step, or fixed per-neuron offsets (one "
                    "chip per repeat)")
    ev.add_argument("--hw-repeats", type=int, default=5, help="draws (chips) to average")
    ev.add_argument("--hw-seed", type=int, default=None,
                    help="seed of the first draw (fixed: the first chip; default: the run's "
                    "own --hw-seed, so a run trained on a chip is tested on it first)")
    ev.add_argument("--hw-weight-noise", type=float, default=0.0, metavar="SCALE",
                    help="with --hw-noise-kind fixed: also a static error per synapse, "
                    "W (1 + SCALE N(0, 1))")
    ev.add_argument("--weight-bits", type=int, default=None, metavar="B",
                    help="the chip's weights in B bits (2-16; the run's weights put on the "
                         "grid by nearest rounding; default: the run's own)")
    ev.add_argument("--state-bits", type=int, default=None, metavar="B",
                    help="the chip's membrane in B bits of saturating fixed point (2-16)")
    ev.add_argument("--hw-threshold-noise", type=float, default=None, metavar="S",
                    help="the chip's per-neuron threshold mismatch (from --hw-seed)")
    ev.add_argument("--hw-leak-noise", type=float, default=None, metavar="S",
                    help="the chip's per-neuron leak mismatch (from --hw-seed)")
    ev.add_argument("--chip", default=None, metavar="CHIP",
                    help="where the forward runs: none, opzo or nir:FILE.nir (opzo.chip)")
    ev.add_argument("--chip-sim", default=None, help="the simulator of --chip nir:FILE.nir")
    ev.add_argument("--chip-variant", default=None, help="the NIR chip's neuron variant")
    ev.add_argument("--device", default="auto",
                    help="auto (CUDA when available), cpu, cuda, cuda:N or mps")
    ev.add_argument("--synops-convention", choices=("exact", "paper"), default=None,
                    help="count the SynOps exactly (borders included) or as the OPZO paper's "
                    "Table 7 does (firing rate x dense fan-out); default: the run's own")
    ev.set_defaults(func=_eval)
    co = sub.add_parser("cost", add_help=False,
                        help="memory and operations of each method's error-backward procedure "
                        "for a network (OPZO paper Table 5); opzo cost --help for options")
    co.add_argument("args", nargs=argparse.REMAINDER)
    co.set_defaults(func=lambda a: _cost(a.args))
    pl = sub.add_parser("plot", help="draw learning curves (and diagnostics) of runs as a PNG")
    pl.add_argument("runs", nargs="+", help="run folders written by 'opzo train'")
    pl.add_argument("--out", default="runs/plot.png", help="PNG file to write")
    pl.set_defaults(func=_plot)
    ex = sub.add_parser("export", help="write a run's network as a NIR file (for snnTorch, "
                        "SpikingJelly, Lava, ... and neuromorphic chips)",
                        description="Write a run's checkpoint as a NIR graph (opzo.nir). Exact "
                        "for networks trained with --reset zero.")
    ex.add_argument("run", help="run folder written by 'opzo train'")
    ex.add_argument("--out", required=True, help="NIR file to write, e.g. model.nir")
    ex.add_argument("--approximate", action="store_true",
                    help="export a subtractive-reset network with reset to zero anyway, and "
                    "report how often the two agree on the run's test set")
    ex.add_argument("--dt", type=float, default=1e-4,
                    help="time step in seconds the time constants assume, tau = dt/(1-lambda) "
                    "(default 1e-4, as snnTorch and SpikingJelly read NIR)")
    ex.add_argument("--data-root", help="override the dataset folder of the run")
    ex.set_defaults(func=_export)
    return parser


#: exit code of a run stopped by NaN / infinite loss or weights
EXIT_DIVERGED = 3


#: exit code of a command stopped by Ctrl-C (SIGINT) / SIGTERM: 128 + SIGINT, as shells say
EXIT_INTERRUPTED = 130

#: what an interrupted command leaves behind, by command
_INTERRUPTED = {
    "train": "training had not begun or had ended: no trained batch is lost",
    "eval": "nothing was written",
    "export": "no NIR file was written",
    "plot": "no PNG file was written",
    "cost": "nothing was written",
}


def interrupted(command: str | None) -> int:
    """The one line for Ctrl-C outside a training loop (which stops at a batch boundary
    itself, :class:`opzo.train.StopSignals`); returns :data:`EXIT_INTERRUPTED`."""
    what = _INTERRUPTED.get(command or "", "nothing was done")
    print(f"opzo{' ' + command if command else ''}: interrupted (SIGINT); {what}",
          file=sys.stderr)
    return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    """Run the command line; every expected failure is one ``opzo: error:`` line on stderr
    (exit 2; 3 for a diverged run; 130 for a command stopped by Ctrl-C / SIGTERM)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return interrupted(argv[0] if argv and argv[0] in _INTERRUPTED else None)


def _main(argv: list[str]) -> int:
    parser = build_parser()
    if argv[:1] == ["cost"]:  # its own parser (opzo.cost.main_cost) takes every option
        try:
            return _cost(argv[1:])
        except (ConfigError, ValueError) as exc:
            print(f"opzo: error: {exc}", file=sys.stderr)
            return 2
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return int(args.func(args))
    except FloatingPointError as exc:
        print(f"opzo: error: training diverged: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except (ConfigError, OSError, ValueError, RuntimeError) as exc:
        print(f"opzo: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # data errors and friends
        if type(exc).__name__ == "DatasetError":
            print(f"opzo: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
