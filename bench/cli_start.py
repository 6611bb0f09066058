"""How long `camvoice --help` takes, beside a bare interpreter start measured in the same run.

The CLI imports only click and the command modules at start; the database, web and assistant
stacks load when a command that needs them runs.

    .venv/bin/python bench/cli_start.py [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20, help="runs of each (1: smoke mode)")
    args = parser.parse_args()
    cases = {
        "python -c pass (floor)": [sys.executable, "-c", "pass"],
        "camvoice --help": [str(BIN / "camvoice"), "--help"],
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.runs):  # interleaved, so both see the same machine load
        for name, command in cases.items():
            times[name].append(seconds(command))
    print(f"start-up, {args.runs} runs each, interleaved")
    for name, values in times.items():
        print(f"  {name:24} median {statistics.median(values):.3f} s   min {min(values):.3f} s")


if __name__ == "__main__":
    main()
