"""The shipped config files: each loads, validates, builds its network, and the generated
ones are exactly what configs/generate.py writes."""

import importlib.util
import math
from pathlib import Path

import pytest

from opzo.build import build_network, build_rule
from opzo.config import TrainConfig, load_config_file
from opzo.data import DATASETS
from opzo.rules import LocalLearning

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FILES = sorted(CONFIGS.glob("*.toml"))
#: per-sample input shape and classes of each dataset (what make_source would report)
SHAPES = {"mnist": ((1, 28, 28), 10), "fashion-mnist": ((1, 28, 28), 10),
          "nmnist": ((2, 34, 34), 10), "dvs-gesture": ((2, 48, 48), 11),
          "cifar10-dvs": ((2, 48, 48), 10), "cifar10": ((3, 32, 32), 10),
          "cifar100": ((3, 32, 32), 100), "randman-time": ((50,), 10),
          "randman-rate": ((50,), 10), "embedded-mnist": ((1, 28, 28), 10)}


def _generator():
    spec = importlib.util.spec_from_file_location("generate_configs", CONFIGS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_configs_are_up_to_date(tmp_path):
    names = _generator().generate(tmp_path)
    assert len(names) == 24  # 6 columns of Table 1, 3 rows of Table 2, 10 of Table 3, 5 of 12
    for name in names:
        shipped = CONFIGS / f"{name}.toml"
        assert shipped.is_file(), f"{shipped} missing: run python configs/generate.py"
        assert shipped.read_text() == (tmp_path / f"{name}.toml").read_text(), (
            f"{shipped} differs from configs/generate.py's output: run it again")


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_config_validates_and_builds_its_network(path, tmp_path):
    data = load_config_file(path)
    TrainConfig.from_dict(data, source=str(path), complete=False)
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
    if cfg.method != "bptt":
        rule = build_rule(cfg)
        assert isinstance(rule, LocalLearning) == (cfg.local_learning or cfg.igl_layer is not None)
    if cfg.igl_layer is not None:  # the paper's IGL layer: the 4th conv of the 9-layer net
        assert cfg.net == "conv9" and net.hidden[cfg.igl_layer - 1].out_channels == 256
