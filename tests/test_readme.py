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


def test_readme_notebook_example_runs(tmp_path, monkeypatch, capsys) -> None:
    import deconv

    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "deconv.census(" in b)
    monkeypatch.chdir(tmp_path)  # it saves to runs/notebook
    names: dict = {}
    exec(compile(block, "README.md", "exec"), names)
    out = capsys.readouterr().out
    assert re.search(r"active on \d+% of images; median maximum \d", out)
    assert "classes in its top 9: [('" in out and "fires most at (" in out
    census, unit, sheet = names["census"], names["unit"], names["sheet"]
    assert sheet.width > 1000 and unit._repr_html_().startswith("<img")
    loaded = deconv.Census.load(tmp_path / "runs" / "notebook")
    assert loaded.top("features.11", 7) == census.top("features.11", 7)
    assert loaded.unit("features.3", 7).bottom == census.unit("features.3", 7).bottom
