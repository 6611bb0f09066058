"""Each bench script added with the architecture change runs in its smoke mode and prints its
figures, so a figure in bench/README.md cannot outlive the code that made it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def smoke(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_cli_start_smoke() -> None:
    out = smoke("cli_start.py", "--runs", "1")
    assert "camvoice --help" in out and "python -c pass (floor)" in out and "median" in out


def test_directive_cost_smoke() -> None:
    """Each case answered its success shape (the script asserts it) and was counted."""
    out = smoke("directive_cost.py", "--runs", "1")
    for case in ("Alexa InitializeCameraStreams", "Google EXECUTE"):
        line = next(line for line in out.splitlines() if case in line)
        assert "statements" in line and "transactions" in line and "median" in line
