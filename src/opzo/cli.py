"""Command line: ``opzo train`` and ``opzo eval``.

    opzo train                                   # OPZO on the embedded MNIST subset
    opzo train --method bp --dataset mnist --data-root ../shared/data/mnist --epochs 50
    opzo train --config configs/mnist-opzo.toml --data-root /data/mnist
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
import os
import subprocess
import sys
from pathlib import Path

from .config import ConfigError, TrainConfig, add_arguments, config_from_args

#: options that may be given with --resume: where the run continues, not what it computes
RESUME_OPTIONS = ("device", "threads")


def _train(args: argparse.Namespace) -> int:
    from .distributed import Communicator, launched_by_torchrun
    from .train import Interrupted, default_run_dir, resolve_device, run_training

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
        cfg = TrainConfig.from_dict(json.loads(cfg_path.read_text()), source=str(cfg_path))
        for name in RESUME_OPTIONS:
            if getattr(args, name, None) is not None:
                setattr(cfg, name, getattr(args, name))
        cfg.validate()
    else:
        cfg = config_from_args(args, args.config)
        run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg)
        if (run_dir / "checkpoint.pt").exists():
            raise ConfigError(
                f"{run_dir} already holds a run; continue it with --resume {run_dir} or "
                "choose another --out")
    if args.nproc is not None and args.nproc > 1 and not launched_by_torchrun():
        return _spawn(args, run_dir)
    comm = None
    if launched_by_torchrun():  # every process must write to the folder process 0 chose
        comm = Communicator.init(resolve_device(cfg.device))
        run_dir = Path(str(comm.broadcast_object(str(run_dir))))
    try:
        run_training(cfg, run_dir, resume=bool(args.resume), progress=not args.quiet)
    except Interrupted:
        return 130
    finally:
        if comm is not None:
            comm.close()
    return 0


def _spawn(args: argparse.Namespace, run_dir: Path) -> int:
    """``opzo train --nproc N``: the same command as N processes under torchrun
    (``python -m torch.distributed.run --standalone``), with the run folder fixed here so
    that every process writes to the same one. torchrun stops every process when one fails
    and names the rank that failed first."""
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
    if not args.resume:
        out += ["--out", str(run_dir)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={args.nproc}", "-m", "opzo", *out]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # one thread per process unless told otherwise
    try:
        proc = subprocess.run(cmd, env=env)
    except KeyboardInterrupt:  # torchrun passed the signal on; the processes checkpoint
        return 130
    if proc.returncode != 0 and not args.quiet:
        print(f"opzo: the {args.nproc} processes under torchrun ended with exit code "
              f"{proc.returncode} (torchrun's report above names the failing rank); the last "
              f"checkpoint in {run_dir} stands", file=sys.stderr)
    return proc.returncode


def _eval(args: argparse.Namespace) -> int:
    import torch

    from .losses import InstantLoss
    from .train import CHECKPOINT, build_network, evaluate, make_source, resolve_device

    run_dir = Path(args.run)
    ckpt = run_dir / CHECKPOINT
    if not ckpt.is_file():
        raise ConfigError(f"{ckpt} not found: pass a run folder written by 'opzo train'")
    device = resolve_device(args.device)
    state = torch.load(ckpt, map_location=device, weights_only=False)
    cfg = TrainConfig.from_dict(state["config"], source=str(ckpt))
    if args.data_root:
        cfg.data_root = args.data_root
    test_set = make_source(cfg, "test")
    net = build_network(cfg, test_set.input_shape, test_set.classes).to(device)
    net.load_state_dict(state["model"])
    result = evaluate(net, test_set, cfg, InstantLoss(cfg.loss, cfg.gamma))
    print(json.dumps({"run": str(run_dir), "epoch": state["epoch"], **result}, indent=2))
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opzo", description="Online, backprop-free training of spiking neural networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train", help="train an SNN online",
        description="Train a fully connected or convolutional SNN (--net) online with a "
        "spatial credit rule. Every "
        "option can also be a key of a TOML/YAML --config file (use _ or -); options given "
        "on the command line override the file.")  # each option's help states its default
    train.add_argument("--config", help="TOML or YAML file whose keys mirror these options")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--nproc", type=int, metavar="N",
                       help="data parallel on N processes: runs this command under torchrun "
                       "(torch.distributed; gloo on the CPU, nccl on CUDA); the batch size is "
                       "the global batch, each process trains on its share of it")
    add_arguments(train)
    train.set_defaults(func=_train)
    ev = sub.add_parser("eval", help="evaluate a run's checkpoint on its test set")
    ev.add_argument("run", help="run folder written by 'opzo train'")
    ev.add_argument("--data-root", help="override the dataset folder of the run")
    ev.add_argument("--device", default="auto",
                    help="auto (CUDA when available), cpu, cuda, cuda:N or mps")
    ev.set_defaults(func=_eval)
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return int(args.func(args))
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"opzo: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # data errors and friends
        if type(exc).__name__ == "DatasetError":
            print(f"opzo: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
