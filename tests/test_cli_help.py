"""``opzo train --help`` reads like a manual, and a batch job's log shows progress (issue 25).

* Every option is listed under a topic (data, network and neuron, method, optimisation,
  chip, run folder, devices, diagnostics), none in argparse's catch-all group; every config
  field has one topic, and every flag name of before still parses.
* The usage is at most three lines; the footer names the full reference (docs/guide/cli.md).
* Without a terminal, an epoch prints a plain progress line (batch i/n, loss, samples/s,
  ETA) every interval (30 s by default; OPZO_PROGRESS_INTERVAL in a test).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from opzo.cli import build_parser
from opzo.config import OPTION_TOPICS, TrainConfig
from opzo.progress import Progress

#: the options of ``opzo train`` that are not config fields
CLI_ONLY = ("--config", "--resume", "--quiet", "--overwrite", "--nproc")


def _train_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def _help() -> str:
    proc = subprocess.run([sys.executable, "-m", "opzo", "train", "--help"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "100"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_every_option_is_listed_under_a_topic():
    train = _train_parser()
    catch_all = (train._positionals, train._optionals)
    titled = {}
    for group in train._action_groups:
        for action in group._group_actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert group not in catch_all, f"{action.option_strings} is in no topic"
            titled[action.dest] = group.title
    # every config field in exactly one topic, and under that topic in --help
    names = [n for topic in OPTION_TOPICS.values() for n in topic]
    assert sorted(names) == sorted(f.name for f in fields(TrainConfig))
    for topic, members in OPTION_TOPICS.items():
        for name in members:
            assert titled[name] == topic, name
    # the topics the issue asks for
    for topic in ("data", "network and neuron", "method: spatial rule and loss",
                  "method: temporal trace", "method: local derivative",
                  "method: noise (opzo, zo)", "optimisation", "run folder and checkpoints",
                  "devices and processes", "diagnostics and logging"):
        assert topic in titled.values(), topic
    assert any(t.startswith("chip") for t in titled.values())
    # the flag names and config keys of before keep working
    flags = {s for a in train._actions for s in a.option_strings}
    for f in fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in flags, f.name
    assert set(CLI_ONLY) <= flags
    args = train.parse_args(["--hidden", "48", "32", "--lif-lambda", "0.3", "--no-augment",
                             "--method", "dfa", "--nproc", "2", "--resume", "runs/x"])
    assert (args.hidden, args.lif_lambda, args.augment, args.method, args.nproc,
            args.resume) == ([48, 32], 0.3, False, "dfa", 2, "runs/x")


def test_usage_is_at_most_three_lines_and_the_footer_names_the_reference():
    text = _help()
    usage = text.split("\n\n", 1)[0].splitlines()
    assert usage[0].startswith("usage: opzo train")
    assert len(usage) <= 3, usage
    footer = text.rstrip().split("\n\n")[-1]
    assert "docs/guide/cli.md" in footer and "mkdocs serve" in footer
    # the page it names exists (the site's 'Command line' page)
    assert (Path(__file__).resolve().parents[1] / "docs" / "guide" / "cli.md").is_file()
    # the topics appear as headings, in the order of OPTION_TOPICS
    heads = [line[:-1] for line in text.splitlines() if line.endswith(":")
             and not line.startswith(" ")]
    assert [h for h in heads if h in OPTION_TOPICS] == list(OPTION_TOPICS)


def test_without_a_terminal_an_epoch_prints_plain_progress_lines(tmp_path):
    args = ["--hidden", "48", "32", "--T", "3", "--epochs", "1", "--batch-size", "10",
            "--limit-train", "200", "--limit-test", "100", "--threads", "1",
            "--out", str(tmp_path / "run")]

    def train(interval: str | None, *extra: str) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env.pop("OPZO_PROGRESS_INTERVAL", None)
        if interval is not None:
            env["OPZO_PROGRESS_INTERVAL"] = interval
        return subprocess.run([sys.executable, "-m", "opzo", "train", *args, "--overwrite",
                               *extra], capture_output=True, text=True, timeout=300, env=env)

    line = re.compile(r"epoch 1/1 batch (\d+)/20, loss \d+\.\d+ acc \d+\.\d%, "
                      r"\d+ samples/s, ETA \d+s$")
    proc = train("0")  # a line at every batch
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    batches = [int(m.group(1)) for m in map(line.match, proc.stderr.splitlines()) if m]
    assert batches == list(range(1, 21)), proc.stderr
    for run in (train(None), train("0", "--quiet")):  # 30 s: a short epoch prints none
        assert run.returncode == 0, run.stderr
        assert not [x for x in run.stderr.splitlines() if " batch " in x], run.stderr


def test_the_interval_is_kept(capsys):
    for interval, lines in ((3600.0, 0), (0.0, 5)):
        bar = Progress(5, "epoch 1/1", interval=interval)
        for i in range(1, 6):
            bar.update(i, "loss 1.000 acc 10.0%", samples=10 * i)
        bar.close()
        assert len(capsys.readouterr().err.splitlines()) == lines
