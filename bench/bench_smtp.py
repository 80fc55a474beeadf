"""How fast our SMTP delivery is, next to the floor smtplib itself sets.

Usage: ``.venv/bin/python bench/bench_smtp.py --issues 500 [--connections 1 3] [--latency-ms 20]``

Both sides send to the same local sink (aiosmtpd's ``Sink`` handler in its own process, so it
does not compete with us for the GIL):

* **ours**: the deliver stage as a run does it (``Newsletter.deliver``, one application kept
  for the whole benchmark) — in batches (``delivery_batch_size``): render the planned issues
  (in a thread, ahead of sending), claim the batch in one transaction (``sending``, attempts
  counted), send each message from memory with :class:`SmtpMailer` over one reused
  connection, then mark the batch sent with its sent log in one transaction (a temp SQLite
  database);
* **floor**: the same messages, pre-built in memory, over one ``smtplib`` connection with
  ``sendmail`` and no database at all.

``--connections 1 3`` measures "ours" once per value in the same run, against the same sink
(each on a fresh database): ``1`` is :class:`SmtpMailer`, more is :class:`SmtpPool` with that
many parallel sessions (``smtp.connections``). ``--latency-ms`` makes the sink answer the end
of each message that late (a relay a round trip away); the floor pays it too.

Planning happens before the clock starts. Since issue 13 rendering is part of delivery (no
message bytes are stored: a retry renders again), so "ours" includes it while the floor does
not: the ratio says what rendering plus the exactly-once bookkeeping cost.
"""

from __future__ import annotations

import argparse
import logging
import smtplib
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sink import HOST, free_port, start_sink

from newsletter.app import Newsletter
from newsletter.config import Settings, load_settings
from newsletter.domain import IssueState, SubscriberSource, SubscriberSpec
from newsletter.pipeline import issue_content
from newsletter.smtp import SmtpMailer, SmtpPool

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
DIGEST = """Daily Papers

Nov 22

Quantum Error Correction with Surface Codes at Scale

We study quantum error correction with surface codes and report logical error rates.

Variational Quantum Eigensolvers for Molecular Ground States

A variational quantum algorithm estimates molecular ground-state energies on noisy hardware.

Quantum Annealing Benchmarks on Combinatorial Optimization

We benchmark quantum annealing against classical heuristics on combinatorial problems.
"""

log = logging.getLogger("bench_smtp")


def _settings(folder: Path) -> Settings:
    """Settings on a temp folder and SQLite database, with one digest in the inbox."""
    (folder / "inbox").mkdir()
    (folder / "inbox" / "today.txt").write_text(DIGEST, encoding="utf-8")
    return load_settings(
        ROOT / "config" / "newsletter.toml",
        environ={
            "NEWSLETTER_DATABASE_URL": f"sqlite:///{folder / 'bench.db'}",
            "NEWSLETTER_INBOX": str(folder / "inbox"),
            "NEWSLETTER_OUTBOX_DIR": str(folder / "outbox"),
            "NEWSLETTER_FEEDS_DIR": str(folder / "feeds"),
            "NEWSLETTER_SUBSCRIBERS_FILE": str(folder / "none.toml"),
        },
    )


def _prepare(app: Newsletter, issues: int) -> None:
    """``issues`` subscribers, each with one planned issue (nothing of this is timed)."""
    app.ingest(now=NOW)
    for i in range(issues):
        spec = SubscriberSpec(
            email=f"reader{i:05d}@example.org",
            name=f"Reader {i}",
            profile="quantum",
            max_papers=3,
            min_score=0.01,
        )
        app.store.upsert_subscriber(spec, source=SubscriberSource.CLI, now=NOW)
    plan = app.plan_current_slots(NOW)
    assert plan.planned == issues, plan


def _ours(app: Newsletter) -> tuple[int, float, list[tuple[str, bytes]]]:
    """Deliver every rendered issue through the application; (sent, seconds, messages)."""
    start = time.perf_counter()
    delivery = app.deliver(NOW)
    elapsed = time.perf_counter() - start
    assert not delivery.stopped, delivery.stopped
    subscribers = app.store.subscribers_by_id()
    messages = []
    for issue in app.store.issues(states=[IssueState.SENT]):  # the same bytes, rendered again
        sub = subscribers[issue.subscriber_id]
        rendered = app.renderer.render(issue_content(app.store, issue, sub))
        messages.append((sub.email, rendered.message))
    return len(delivery.delivered), elapsed, messages


def _floor(messages: list[tuple[str, bytes]], sender: str, port: int) -> float:
    conn = smtplib.SMTP(HOST, port)
    try:
        start = time.perf_counter()
        for recipient, raw in messages:
            conn.sendmail(sender, [recipient], raw)
        return time.perf_counter() - start
    finally:
        conn.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--issues", type=int, default=500, help="issues to send (default 500)")
    parser.add_argument(
        "--connections",
        type=int,
        nargs="+",
        default=[1],
        help="SMTP sessions of ours (smtp.connections); several values: one measure each",
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="the sink answers the end of each message this late (default 0)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    port = free_port()
    sink = start_sink(port, data_delay=args.latency_ms / 1000)
    runs: list[tuple[int, int, float, int]] = []  # (connections, sent, seconds, opened)
    try:
        for connections in args.connections:
            with tempfile.TemporaryDirectory(prefix="bench_smtp_") as tmp:
                settings = _settings(Path(tmp))
                mailer: SmtpMailer | SmtpPool = (
                    SmtpMailer(HOST, port, security="none")
                    if connections == 1
                    else SmtpPool(HOST, port, size=connections, security="none")
                )
                try:
                    with Newsletter(settings, mailer=mailer) as app:  # one app per measure
                        _prepare(app, args.issues)
                        sent, ours, messages = _ours(app)
                finally:
                    mailer.close()  # a given mailer is the caller's to close
                assert mailer.connections <= connections, "no more sessions than allowed"
                runs.append((connections, sent, ours, mailer.connections))
        floor = _floor(messages, settings.mail.from_address, port)
    finally:
        sink.terminate()
        sink.wait()
    size = sum(len(raw) for _, raw in messages) / max(len(messages), 1)
    latency = f", sink answers DATA {args.latency_ms:g} ms late" if args.latency_ms else ""
    print(f"issues: {sent} sent per measure, {size / 1024:.1f} KiB per message{latency}")
    for connections, sent, ours, opened in runs:
        print(
            f"ours, {connections} connection(s) ({opened} opened) "
            f"(render + claim + SMTP + mark sent): {sent / ours:8.1f} msg/s ({ours:.2f} s), "
            f"ours / floor {floor / ours:.2f}"
        )
    print(
        f"floor (smtplib sendmail, one connection, no database): {sent / floor:8.1f} msg/s "
        f"({floor:.2f} s)"
    )


if __name__ == "__main__":
    main()
