"""The benchmark script runs (``--quick``), prints its table, and deconv agrees with the reference.

Benchmarks are not timed tests: nothing here looks at a time or a ratio.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_quick_prints_table_and_agrees() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "| model | layer | forward to layer |" in out
    for layer in ("features.3", "features.15", "features.29", "features.1", "features.4", "features.11"):
        assert f"(`{layer}`)" in out
    assert "peak RSS" in out
    assert "agreement: OK" in out


def test_serve_benchmark_quick_prints_its_table() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "serve.py"), "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for model, layer in [
        ("embedded default", "features.4"),
        ("embedded default", "features.11"),
        ("VGG16", "features.29"),
    ]:
        for request in ("layer grid", "projection", "click"):
            assert any(
                line.startswith(f"| {model}") and f"`{layer}` | {request} |" in line
                for line in done.stdout.splitlines()
            )
