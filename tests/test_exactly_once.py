"""Exactly once under kill -9: 210 issues to a real SMTP server, the sender killed repeatedly.

The sender is ``python -m newsletter run --once`` in a subprocess (SMTP from the environment,
rate-limited so a run takes seconds); the server is aiosmtpd in this process, appending every
message it accepts (recipient, Message-ID) to a file as it arrives. The sender is SIGKILLed at
seeded random moments, restarted each time, then left to finish. Afterwards every issue must
have arrived, nothing twice except messages in flight at a kill — those sent since the killed
sender's last commit, at most one batch (``delivery_batch_size``, 100 by default) before the
kill — and such a duplicate must carry the same Message-ID; and the database must agree: every
issue sent, one sent-log row per delivered paper. test_delivery_batches.py does the same with
small batches.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from newsletter.config import load_settings
from newsletter.domain import IssueState
from newsletter.store import Store
from tests.conftest import NOW, ROOT
from tests.factories import clean_environ, run_cli, workspace_env
from tests.smtp_server import Recorder, SmtpServer, cli_env

SUBSCRIBERS = 210
KILLS = 6
RATE = 60.0  # messages per second: 210 issues take at least 3.5 s of sending
SEED = 20261123

DIGEST = """Daily Papers

Nov 22

Quantum Error Correction with Surface Codes at Scale

We study quantum error correction with surface codes and report logical error rates.

Variational Quantum Eigensolvers for Molecular Ground States

A variational quantum algorithm estimates molecular ground-state energies on noisy hardware.

Quantum Annealing Benchmarks on Combinatorial Optimization

We benchmark quantum annealing against classical heuristics on combinatorial problems.

Sparse Attention for Long Documents

A sparse attention pattern lets transformers read long documents at linear cost.
"""


def assert_duplicates_within_windows(
    rows: Sequence[Sequence[str]], at_kill: Sequence[int], window: int
) -> None:
    """``rows``: (recipient, Message-ID) in arrival order; ``at_kill``: how many messages had
    arrived at each kill. A recipient may get more than one copy only if its first copy was
    among the last ``window`` arrivals before a kill (sent since the killed sender's last
    commit), and every copy carries the Message-ID of the first."""
    first: dict[str, tuple[int, str]] = {}
    for index, (rcpt, message_id) in enumerate(rows):
        first.setdefault(rcpt, (index, message_id))
        assert message_id == first[rcpt][1], f"{rcpt}: re-sent with another Message-ID"
    copies = Counter(rcpt for rcpt, _ in rows)
    for rcpt, n in copies.items():
        if n > 1:
            index = first[rcpt][0]
            assert any(count - window <= index < count for count in at_kill), (
                f"{rcpt} arrived {n} times, first as message {index}: not within {window} "
                f"messages before a kill (kills after {list(at_kill)} messages)"
            )


def _subscribers_file(path: Path) -> None:
    entries = [
        f'[[subscriber]]\nemail = "reader{i:03d}@example.org"\nname = "Reader {i}"\n'
        f'profile = "quantum"\nmax_papers = 3\nmin_score = 0.01\n'
        for i in range(SUBSCRIBERS)
    ]
    path.write_text("\n".join(entries), encoding="utf-8")


def test_kill_9_during_delivery_never_loses_or_doubles_an_issue(
    tmp_path: Path, database_url: str
) -> None:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "today.txt").write_text(DIGEST, encoding="utf-8")
    _subscribers_file(tmp_path / "subscribers.toml")
    arrivals = tmp_path / "arrivals.tsv"
    arrivals.touch()
    environ = workspace_env(tmp_path, database_url, subscribers_file=tmp_path / "subscribers.toml")
    settings = load_settings(ROOT / "config" / "newsletter.toml", environ=environ)
    rng = random.Random(SEED)
    kills = 0
    at_kill: list[int] = []
    with SmtpServer(Recorder(log_file=arrivals)) as server:
        env = cli_env(settings, server.port, smtp_rate_per_second=RATE, inbox_settle_seconds=0)
        args = ["run", "--once", "--now", NOW.isoformat()]
        command = [sys.executable, "-m", "newsletter", *args]
        for attempt in range(KILLS):
            before = len(server.handler.received)
            proc = subprocess.Popen(
                command,
                env=clean_environ(env),
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if attempt == 0:
                # The first kill lands anywhere: ingest, planning, rendering or sending.
                time.sleep(rng.uniform(0.2, 1.5))
            else:
                # The others land mid-delivery: wait for this process's first message.
                deadline = time.monotonic() + 30
                while len(server.handler.received) == before and proc.poll() is None:
                    assert time.monotonic() < deadline, "the sender made no progress"
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.8))
            if proc.poll() is not None:
                break  # finished before its kill: nothing left to interrupt
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            time.sleep(0.2)  # a message whose last byte was out may still be taken
            at_kill.append(len(server.handler.received))
        final = run_cli(env, *args)
        assert final.returncode == 0, final.stderr
        connections = server.handler.connections

    rows = [line.split("\t") for line in arrivals.read_text(encoding="utf-8").splitlines()]
    ids_by_rcpt: dict[str, list[str]] = defaultdict(list)
    for rcpt, message_id in rows:
        ids_by_rcpt[rcpt].append(message_id)
    copies = Counter(rcpt for rcpt, _ in rows)
    duplicates = sum(n - 1 for n in copies.values())
    backend = database_url.split(":", 1)[0]
    print(
        f"\nexactly-once [{backend}]: issues={len(copies)} kills={kills} "
        f"messages received={len(rows)} duplicates={duplicates} connections={connections}"
    )
    assert kills == KILLS
    expected = {f"reader{i:03d}@example.org" for i in range(SUBSCRIBERS)}
    assert set(copies) == expected  # every issue arrived
    # Only messages sent since the last commit before a kill, with the same Message-ID.
    assert_duplicates_within_windows(rows, at_kill, settings.delivery_batch_size)

    store = Store(settings.database_url)
    try:
        store.migrate()
        issues = store.issues()
        subs = {s.id: s.email for s in store.subscribers()}
        sent_log = store.sent_log()
    finally:
        store.close()
    assert len(issues) == SUBSCRIBERS
    assert {i.state for i in issues} == {IssueState.SENT}
    for issue in issues:
        assert ids_by_rcpt[subs[issue.subscriber_id]][0] == issue.message_id
    delivered = sorted((i.subscriber_id, p, i.id) for i in issues for p in i.paper_ids)
    assert len(delivered) == SUBSCRIBERS * 3
    assert sent_log == delivered  # exactly one sent-log row per delivered paper
