"""The SMTP sink both delivery benchmarks send to: aiosmtpd's ``Sink`` handler in its own
process (so it does not compete with the measured process for the GIL), on a free loopback
port. Imported by ``bench_smtp.py`` and ``bench_e2e.py`` (run from the repository root as
``python bench/<script>.py``, which puts this folder on ``sys.path``).

``data_delay`` makes the sink answer the end of each message that many seconds late
(:class:`SlowSink`), like a relay a network round trip away that checks the message before it
answers: what parallel SMTP sessions (``smtp.connections``) are for."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class SlowSink:
    """aiosmtpd handler (``-c sink.SlowSink SECONDS``): drops every message like ``Sink``,
    answering the end of DATA ``SECONDS`` late; other sessions are served meanwhile."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    @classmethod
    def from_cli(cls, parser: object, delay: str) -> SlowSink:
        """How aiosmtpd's command line passes ``SECONDS`` (it calls no plain constructor)."""
        return cls(float(delay))

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        await asyncio.sleep(self.delay)
        return "250 OK"


def start_sink(port: int, data_delay: float = 0.0) -> subprocess.Popen[bytes]:
    handler = ["sink.SlowSink", str(data_delay)] if data_delay > 0 else ["aiosmtpd.handlers.Sink"]
    sink = subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"{HOST}:{port}", "-c", *handler],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent)},
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
