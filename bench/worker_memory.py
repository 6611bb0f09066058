"""What one `camvoice serve` process costs in memory at rest, once /readyz answers.

Starts `camvoice serve` on a scratch SQLite database with the environment bench/load.py gives it
(RTSPS relay on), waits for /readyz, sends a few /healthz and /readyz requests so each worker has
answered at least once, then prints for the gunicorn master, each web worker and the other
children (the media node, the RTSPS relay):

- RSS: resident pages, shared ones counted in full (what `ps` and bench/load.py show);
- PSS: each shared page divided among the processes that map it (the honest share);
- USS: pages only this process maps (Private_Clean + Private_Dirty): what a worker really adds.

    .venv/bin/python bench/worker_memory.py [--workers 2] [--threads 4] [--requests 50]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

from camvoice.db import Database  # noqa: E402
from media.rtsps import self_signed  # noqa: E402


def rollup(pid: int) -> dict[str, int]:
    """kB figures of /proc/<pid>/smaps_rollup (Rss, Pss, Private_*, Shared_*)."""
    figures = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        figures[name] = int(value.split()[0])
    return figures


def children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("PPid:") and int(line.split()[1]) == pid:
                found.append(int(proc.name))
    return sorted(found)


def describe(pid: int, master_cmdline: bytes, master: int) -> str:
    if pid == master:
        return "gunicorn master"
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    if cmdline == master_cmdline:
        return "web worker"
    words = cmdline.split(b"\0")
    return "child: " + " ".join(w.decode(errors="replace") for w in words[1:4])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--requests", type=int, default=50, help="warm-up requests")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="camvoice-memory-"))
    url = f"sqlite:///{scratch / 'bench.db'}"
    Database(url).upgrade()
    cert, key = scratch / "cert.pem", scratch / "key.pem"
    self_signed(cert, key, "127.0.0.1")
    port = free_port()
    env = {**os.environ, "CAMVOICE_DATA_DIR": str(scratch / "data"), "CAMVOICE_DATABASE_URL": url,
           "CAMVOICE_SECRET_KEY": "bench-secret-key-" + "x" * 40, "CAMVOICE_LOG_LEVEL": "WARNING",
           "CAMVOICE_PUBLIC_URL": f"http://127.0.0.1:{port}", "CAMVOICE_RELAY_ENABLED": "true",
           "CAMVOICE_RTSPS_CERT": str(cert), "CAMVOICE_RTSPS_KEY": str(key)}  # fmt: skip
    command = [str(BIN / "camvoice"), "serve", "--port", str(port),
               "--workers", str(args.workers), "--threads", str(args.threads)]  # fmt: skip
    log = scratch / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"camvoice serve did not become ready; see {log}")
            try:
                if requests.get(base + "/readyz", timeout=5).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        for number in range(args.requests):  # a connection each: both workers answer some
            requests.get(base + ("/readyz" if number % 2 else "/healthz"), timeout=5)
        time.sleep(1)  # let gunicorn's workers settle after the last answer
        master_cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        print(f"{'process':40} {'RSS MB':>7} {'PSS MB':>7} {'USS MB':>7}")
        for pid in [process.pid, *children(process.pid)]:
            try:
                figures = rollup(pid)
                name = describe(pid, master_cmdline, process.pid)
            except OSError:
                continue
            uss = figures["Private_Clean"] + figures["Private_Dirty"]
            print(f"{name[:40]:40} {figures['Rss'] / 1024:7.1f} {figures['Pss'] / 1024:7.1f} "
                  f"{uss / 1024:7.1f}")  # fmt: skip
    finally:
        process.terminate()
        process.wait(15)


if __name__ == "__main__":
    main()
