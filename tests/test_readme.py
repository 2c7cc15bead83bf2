"""The README's Python example runs as written and learns."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    exec(compile(blocks[0], "README.md", "exec"), {})
    acc = float(capsys.readouterr().out.split()[-1])
    assert acc > 0.75  # one epoch of OPZO on 6000 images


def test_readme_commands_name_the_ci_test_command():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest" in text and ".venv/bin/python -m pytest" in ci
    assert ".venv/bin/opzo train" in text
