"""The global feed over HTTP with a long history: GET, conditional GET (304), server RSS.

Not a test (shared machines are noisy): run it by hand and read the figures as ratios taken in
the same run.

    .venv/bin/python bench/bench_feeds.py                  # 150,000 papers, SQLite
    .venv/bin/python bench/bench_feeds.py --papers 20000 --requests 50

What it builds (not timed): a temporary workspace with a settings file and a SQLite database
migrated by the application, holding ``--papers`` papers inserted in bulk (500 per day over
the days before now, so the 7-day feed window holds 3,500 of them and the 500-entry cap
applies). Then ``newsletter serve`` runs in a child process (uvicorn, one worker) and this
script measures, over ``--requests`` sequential requests each: ``GET /feeds/all.atom`` (the
first one, which builds the feed, reported apart), the same with ``Accept-Encoding: gzip``,
a conditional GET with the ETag (a 304), and the server's resident memory (``VmRSS`` and
``VmHWM`` from ``/proc``) at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from newsletter.store import Store  # noqa: E402
from newsletter.store.schema import PaperRow  # noqa: E402

log = logging.getLogger("bench_feeds")
PER_DAY = 500


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fill(url: str, papers: int, now: datetime) -> None:
    store = Store(url)
    store.migrate()
    words = "graph neural diffusion language model attention sparse robust vision".split()
    rows = []
    for n in range(papers):
        seen = (now - timedelta(days=n // PER_DAY, hours=1)).replace(microsecond=0)
        title = f"Paper {n}: {' '.join(words[(n + k) % len(words)] for k in range(5))}"
        rows.append(
            {
                "key": f"arxiv:2601.{n:06d}",
                "title_key": title.casefold(),
                "arxiv_id": f"2601.{n:06d}",
                "title": title,
                "abstract": " ".join(words[(n * k) % len(words)] for k in range(120)),
                "authors": json.dumps([f"Author {n % 97}", f"Author {n % 89}"]),
                "author_count": 2,
                "upvotes": n % 50,
                "first_seen_at": seen,
                "updated_at": seen,
            }
        )
    with store.engine.begin() as conn:
        for i in range(0, len(rows), 5000):
            conn.execute(insert(PaperRow), rows[i : i + 5000])
    store.close()


def get(url: str, headers: dict[str, str]) -> tuple[float, int, dict[str, str], int]:
    request = urllib.request.Request(url, headers=headers)
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request) as response:
            body = response.read()
            status, found = response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        body, status, found = exc.read(), exc.code, dict(exc.headers)
    return (time.perf_counter() - start) * 1000, status, found, len(body)


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--papers", type=int, default=150_000)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        url = f"sqlite:///{work / 'bench.db'}"
        started = time.perf_counter()
        fill(url, args.papers, datetime.now(UTC))
        log.info("%d papers stored in %.1f s", args.papers, time.perf_counter() - started)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
        env |= {
            "NEWSLETTER_DATABASE_URL": url,
            "NEWSLETTER_FEEDS_DIR": str(work / "feeds"),
            "NEWSLETTER_SUBSCRIBERS_FILE": str(work / "none.toml"),
            "NEWSLETTER_SECRET_KEY": "bench-secret-bench-secret-0123456789",
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "newsletter", "serve", "--port", str(port)],
            env=env,
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            feed = f"http://127.0.0.1:{port}/feeds/all.atom"
            for _ in range(200):
                try:
                    get(f"http://127.0.0.1:{port}/", {})
                    break
                except OSError:
                    time.sleep(0.1)
            first, status, headers, size = get(feed, {"accept-encoding": "identity"})
            assert status == 200, status
            etag = headers["etag"]
            plain = [get(feed, {"accept-encoding": "identity"})[0] for _ in range(args.requests)]
            gz = [get(feed, {"accept-encoding": "gzip"}) for _ in range(args.requests)]
            cond = [
                get(feed, {"accept-encoding": "identity", "if-none-match": etag})
                for _ in range(args.requests)
            ]
            assert all(c[1] == 304 for c in cond)
            mem = memory_kib(server.pid)
        finally:
            server.terminate()
            server.wait(30)
        p50 = statistics.median
        log.info("papers %d, feed %d bytes (gzip %d)", args.papers, size, gz[0][3])
        log.info("first GET (builds the feed): %.1f ms", first)
        log.info(
            "GET p50 %.2f ms, gzip GET p50 %.2f ms, 304 p50 %.2f ms",
            p50(plain),
            p50([g[0] for g in gz]),
            p50([c[0] for c in cond]),
        )
        log.info("server RSS %.0f MiB (peak %.0f MiB)", mem["VmRSS"] / 1024, mem["VmHWM"] / 1024)


if __name__ == "__main__":
    main()
