"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path


def test_readme_example_runs(capsys) -> None:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    exec(compile(blocks[0], "README.md", "exec"), {})
    assert "['0', '1', '2', '3', '4', '5', '6', '7']" in capsys.readouterr().out


def test_readme_resnet_example_runs(capsys) -> None:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "resnet18" in b)
    exec(compile(block.replace("224, 224", "64, 64"), "README.md", "exec"), {})  # smaller images, same calls
    out = capsys.readouterr().out
    assert "'layer1.0', 'layer1.1'" in out and "'layer4.1'" in out and "Box(" in out
