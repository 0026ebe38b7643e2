"""The README's Python example runs as written."""
from __future__ import annotations

import re
from pathlib import Path


def test_readme_example_runs(capsys) -> None:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    exec(compile(blocks[0], "README.md", "exec"), {})
    assert "['0', '1', '2', '3', '4', '5', '6', '7']" in capsys.readouterr().out
