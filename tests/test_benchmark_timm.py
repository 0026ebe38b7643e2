"""benchmarks/timm_stages.py runs (``--quick``: 64x64), prints a row per stage output and agrees with Captum.

Benchmarks are not timed tests: nothing here looks at a time or a ratio.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_timm_stage_benchmark_quick_prints_every_stage_and_agrees() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "timm_stages.py"), "--quick", "--threads", "1"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| timm ")]
    stages = [f"layer{i}" for i in range(1, 5)] + [f"blocks.{i}" for i in range(7)] + [f"stages.{i}" for i in range(4)]
    assert [row.split("`")[1] for row in rows] == stages
    assert all(row.count("|") == 10 for row in rows)
    assert "agreement: OK" in done.stdout
