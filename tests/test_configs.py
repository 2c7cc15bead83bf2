"""The shipped config files: each loads, validates, builds its network, and the generated
ones are exactly what configs/generate.py writes."""

import importlib.util
import math
from dataclasses import fields
from pathlib import Path

import pytest

from opzo.build import build_learner, build_network, build_rule
from opzo.config import METHODS, TrainConfig, load_config_file
from opzo.data import DATASETS
from opzo.losses import InstantLoss
from opzo.netstring import parse_net
from opzo.pzo import UNTRUNCATED_METHODS
from opzo.rules import LocalLearning

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FILES = sorted(CONFIGS.glob("*.toml"))
#: per-sample input shape and classes of each dataset (what make_source would report)
SHAPES = {"mnist": ((1, 28, 28), 10), "fashion-mnist": ((1, 28, 28), 10),
          "nmnist": ((2, 34, 34), 10), "dvs-gesture": ((2, 48, 48), 11),
          "cifar10-dvs": ((2, 48, 48), 10), "cifar10": ((3, 32, 32), 10),
          "cifar100": ((3, 32, 32), 100), "randman-time": ((50,), 10),
          "randman-rate": ((50,), 10), "embedded-mnist": ((1, 28, 28), 10),
          "imagenet": ((3, 224, 224), 1000), "imagenet100": ((3, 224, 224), 100),
          "ncaltech101": ((2, 48, 48), 101), "ncars": ((2, 48, 48), 2)}


def _generator():
    spec = importlib.util.spec_from_file_location("generate_configs", CONFIGS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pending(data: dict) -> tuple[dict, list[str]]:
    """The part of a config that this tree can check, and why the rest cannot be yet: keys
    and names of parts this tree does not have (any option, net, method or dataset not
    registered here)."""
    known = {f.name for f in fields(TrainConfig)}
    checkable, reasons = {}, []
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            reasons.append(f"option {key!r} does not exist in this tree")
        elif name == "net" and not _net_exists(value):
            reasons.append(f"net {value!r} is not registered in this tree")
        elif name == "method" and value not in METHODS:
            reasons.append(f"method {value!r} is not a command-line method in this tree")
        elif name == "dataset" and value not in DATASETS:
            reasons.append(f"dataset {value!r} is not registered in this tree")
        else:
            checkable[key] = value
    return checkable, reasons


def _net_exists(net: str) -> bool:
    from opzo.nets import is_named

    if is_named(net):  # built by name (opzo.nets)
        return True
    try:
        parse_net(net, 1.0)
    except ValueError:
        return False
    return True


def test_generated_configs_are_up_to_date(tmp_path):
    names = _generator().generate(tmp_path)
    # 6 columns of Table 1, 3 rows of Table 2, 10 of Table 3, 5 of 12; LocalZO Table 2's 20
    # LocalZO rows (per T), OPZO Table 4's 2 x 5 and Table 13's 2 x 3
    assert len(names) == 24 + 20 + 10 + 6
    for name in names:
        shipped = CONFIGS / f"{name}.toml"
        assert shipped.is_file(), f"{shipped} missing: run python configs/generate.py"
        assert shipped.read_text() == (tmp_path / f"{name}.toml").read_text(), (
            f"{shipped} differs from configs/generate.py's output: run it again")


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_config_validates_and_builds_its_network(path, tmp_path):
    data, pending = _pending(load_config_file(path))
    TrainConfig.from_dict(data, source=str(path), complete=False)
    if pending:
        pytest.skip("its other fields validate; not built: " + "; ".join(pending))
    # what a user adds: the data folder (the table1-<method> files are the MNIST runs)
    data = {"dataset": "mnist", **data}
    if not DATASETS[data["dataset"]].builtin:
        data["data_root"] = str(tmp_path)
    cfg = TrainConfig.from_dict(data, source=str(path))
    shape, classes = SHAPES[cfg.dataset]
    if cfg.net is None:  # a fully connected net sees the flattened input
        shape = (math.prod(shape),)
    net = build_network(cfg, shape, classes)
    assert net.num_outputs == classes
    if cfg.method in UNTRUNCATED_METHODS:  # Table 13: opzo.pzo's learner, built for T
        assert build_learner(cfg, net, InstantLoss()).steps == cfg.T
    elif cfg.method != "bptt":
        rule = build_rule(cfg)
        assert isinstance(rule, LocalLearning) == (cfg.local_learning or cfg.igl_layer is not None)
    if cfg.igl_layer is not None:  # the paper's IGL layer: the 4th conv of the 9-layer net
        assert cfg.net == "conv9" and net.hidden[cfg.igl_layer - 1].out_channels == 256
