"""The SMTP sink both delivery benchmarks send to: aiosmtpd's ``Sink`` handler in its own
process (so it does not compete with the measured process for the GIL), on a free loopback
port. Imported by ``bench_smtp.py`` and ``bench_e2e.py`` (run from the repository root as
``python bench/<script>.py``, which puts this folder on ``sys.path``)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_sink(port: int) -> subprocess.Popen[bytes]:
    sink = subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"{HOST}:{port}"]
        + ["-c", "aiosmtpd.handlers.Sink"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5) as probe:
                probe.recv(100)  # the greeting: the server is serving
            return sink
        except OSError:
            time.sleep(0.05)
    sink.kill()
    raise SystemExit(f"the aiosmtpd sink did not start on {HOST}:{port}")
