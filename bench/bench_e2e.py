"""End to end: ``newsletter run --once`` for N subscribers against an SMTP sink, and the floor.

Not a test (shared machines are noisy): run it by hand and read the figures as ratios taken in
the same run.

    .venv/bin/python bench/bench_e2e.py                        # 10,000 subscribers, SQLite
    .venv/bin/python bench/bench_e2e.py --subscribers 100000
    .venv/bin/python bench/bench_e2e.py --database-url postgresql://postgres@127.0.0.1/postgres
    .venv/bin/python bench/bench_e2e.py --subscribers 300 --keep --json

What it builds (none of it timed as the run): a temporary workspace (``--workdir`` for its
parent folder, ``--keep`` to keep it) with a settings file ``newsletter.toml`` (inbox, outbox,
feeds, database, and ``mailer = "smtp"`` to a local sink on a free port, no TLS, no AUTH), an
inbox of four Hugging Face daily-papers JSON digests holding ``--papers`` distinct papers made
from the seed corpus (the 380 seed papers first, then titles and abstracts recombined from two
of them), and N active daily subscribers, each validated by the application's own rules and
inserted in batches with the rows ``upsert_subscriber`` writes (tokens, token hashes). Their
profiles are 3-8 terms drawn from the papers' vocabulary (words, some quoted two-word phrases,
some weighted, some ``title:``, some exclusions; seeded, so every run has the same ones),
mixed timezones and send times, ``max_papers`` 10. ``run --once`` makes every active
subscriber's current slot due whatever their send time, so all N are due. A PostgreSQL URL
names a server: the benchmark creates a scratch database ``bench_e2e_<pid>`` on it and drops
it afterwards (unless ``--keep``).

What it measures, all against one aiosmtpd ``Sink`` in its own process:

* **the run**: ``newsletter -c <workspace>/newsletter.toml run --once --json`` in a child
  process, as a user runs it: it ingests the digests, plans (ranks) everyone's issue, renders
  and sends each one over one SMTP connection, and writes the feeds. Its wall time runs from
  spawning the process to reaping it; its peak RSS is the child's ``ru_maxrss`` (``wait4``);
  the issues delivered come from its JSON summary. messages/s = issues delivered / wall time.
* **the floor**: the same number of messages (``--floor-messages`` to send fewer), of the same
  size, sent with ``smtplib.sendmail`` over one connection, no database, no rendering: what
  moving the bytes costs. The messages are real issues: up to 200 subscribers spread over the
  N, planned and rendered by the application in a scratch database before the run, cycled
  (the output compares their mean size with the run's stored messages). The floor is
  measured before **and** after the run; the two show the noise.
* **stages**: ``run --once`` prints no timings, so by default the child is this script, which
  wraps the stages' methods (``Newsletter.__init__`` = open and migrate, ``ingest``,
  ``sync_subscribers`` + ``delete_unconfirmed`` = subscribers, ``plan_current_slots``,
  ``deliver``, ``write_feeds``) and, inside each stage, the time spent in ``Store`` methods
  (database), ``rank_papers``, ``EmailRenderer.render`` and ``SmtpMailer.send``, then calls the
  CLI's own entry point (``newsletter.cli.main``) with the same arguments: the same code path,
  a few microseconds per wrapped call. Start-up (interpreter, imports, settings) is the time
  from spawning to the first stage; exit (summary counts, JSON output, interpreter shutdown)
  from the last stage to reaping. ``--no-stages`` runs ``python -m newsletter`` itself instead,
  without any wrapper (no stage table).
* **database bytes per delivered issue**: the growth of the SQLite file (+ its ``-wal``) or of
  ``pg_database_size`` over the run, divided by the issues delivered. It includes the ingested
  papers (small next to N issues: stored message and HTML, issue-paper rows, sent log).

How to read the ratio: run msg/s / floor msg/s, the floor being all floor messages over all
floor seconds (before and after together). 1.0 would mean the whole run (ingest, planning,
rendering, bookkeeping, feeds, start-up) cost nothing next to the SMTP conversation; 0.5 that
it took as long again. The issue's target: >= 0.8 at N = 10,000 on SQLite and PostgreSQL, and
N = 100,000 completing with a peak RSS <= 2 GB. The deliver stage's own msg/s and ratio are
printed too: they say how much of the gap is per-message work and how much is fixed work.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import random
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sink import HOST, free_port, start_sink  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from newsletter.app import Newsletter  # noqa: E402
from newsletter.config import Settings, load_settings  # noqa: E402
from newsletter.domain import (  # noqa: E402
    IssueState,
    SubscriberSource,
    SubscriberSpec,
    SubscriberStatus,
)
from newsletter.ingest import parse_bytes  # noqa: E402
from newsletter.ingest.identity import title_key  # noqa: E402
from newsletter.store import new_token, normalize_url  # noqa: E402

CHILD = "_child"  # argv[1] of the wrapped child run (see _child)
SAMPLE = 200  # subscribers whose issues are rendered for the floor's messages
BATCH = 2000  # subscribers per insert transaction
DIGEST_FILES = 4
STOP = set(
    "a an and as at by for from in is of on or the to via with without using its we our this "
    "that these those are be can not but into than then which while also has have how what "
    "when where why more most over under between their such both each http https www com "
    "github org html".split()
)
ZONES = (
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "Australia/Sydney",
)
AUTHORS = (
    "Ada Lovelace Grace Hopper Alan Turing Emmy Noether Claude Shannon Barbara Liskov "
    "Edsger Dijkstra Frances Allen John Backus Margaret Hamilton Donald Knuth Leslie Lamport"
).split()

F = TypeVar("F", bound=Callable[..., Any])


# ---------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class SeedPaper:
    title: str
    abstract: str


def seed_papers() -> list[SeedPaper]:
    """The distinct papers of ``seeds/``, as the application parses them."""
    seen: dict[str, SeedPaper] = {}
    for path in sorted((ROOT / "seeds").glob("*.txt")):
        digest = parse_bytes(path.read_bytes(), name=path.name, today=date.today())
        for paper in digest.papers:
            key = title_key(paper.title)
            if key not in seen and paper.abstract:
                seen[key] = SeedPaper(paper.title, paper.abstract)
    return list(seen.values())


def _sentences(text_: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text_.strip()) if s]


def build_papers(n: int, rng: random.Random) -> list[SeedPaper]:
    """``n`` distinct papers: the seed papers, then halves of two of them recombined."""
    seeds = seed_papers()
    papers: list[SeedPaper] = []
    keys: set[str] = set()
    for i in range(n * 50):
        if len(papers) == n:
            break
        if i < len(seeds):
            paper = seeds[i]
        else:
            a, b = rng.sample(seeds, 2)
            ta, tb = a.title.split(), b.title.split()
            sa, sb = _sentences(a.abstract), _sentences(b.abstract)
            paper = SeedPaper(
                " ".join(ta[: max(2, len(ta) // 2)] + tb[len(tb) // 2 :]),
                " ".join(sa[: max(1, len(sa) // 2)] + sb[len(sb) // 2 :]),
            )
        key = title_key(paper.title)
        if key not in keys:
            keys.add(key)
            papers.append(paper)
    if len(papers) < n:
        raise SystemExit(f"could only make {len(papers)} distinct papers from the seeds")
    return papers


def write_digests(inbox: Path, papers: list[SeedPaper], rng: random.Random) -> list[Path]:
    """The papers as Hugging Face daily-papers API dumps, one file per day of the last days.

    Their modification time is an hour ago: digests that arrived earlier, so the run's two
    inbox scans need no settling pause.
    """
    inbox.mkdir(parents=True)
    today = date.today()
    per_file = -(-len(papers) // DIGEST_FILES)
    paths = []
    old = time.time() - 3600
    for f in range(DIGEST_FILES):
        day = today - timedelta(days=DIGEST_FILES - 1 - f)
        items = []
        for i, paper in enumerate(papers[f * per_file : (f + 1) * per_file], f * per_file):
            published = f"{day.isoformat()}T{rng.randint(0, 23):02d}:00:00.000Z"
            names = rng.sample(AUTHORS, rng.randint(1, 6))
            items.append(
                {
                    "paper": {
                        "id": f"{today:%y%m}.{10000 + i:05d}",
                        "title": paper.title,
                        "summary": paper.abstract,
                        "authors": [{"name": f"{name} {i}"} for name in names],
                        "publishedAt": published,
                        "upvotes": rng.randint(0, 300),
                    },
                    "publishedAt": published,
                    "title": paper.title,
                    "numComments": rng.randint(0, 20),
                }
            )
        if not items:
            continue
        path = inbox / f"daily_papers_{day.isoformat()}.json"
        path.write_text(json.dumps(items, ensure_ascii=False, indent=1), encoding="utf-8")
        os.utime(path, (old, old))
        paths.append(path)
    return paths


def vocabulary(papers: list[SeedPaper]) -> tuple[list[str], list[str]]:
    """Words (in at least two papers, at most 15% of them) and two-word phrases (in at least
    two papers) of the papers, most used first."""
    words: Counter[str] = Counter()
    pairs: Counter[str] = Counter()
    for p in papers:
        tokens = [
            t.strip("-").lower()
            for t in re.findall(r"[A-Za-z][A-Za-z-]{2,}", f"{p.title} {p.abstract}")
        ]
        tokens = [t for t in tokens if len(t) > 2]
        words.update({t for t in tokens if t not in STOP})
        pairs.update(
            {
                f"{x} {y}"
                for x, y in zip(tokens, tokens[1:], strict=False)
                if x not in STOP and y not in STOP
            }
        )
    common = max(2, len(papers) * 15 // 100)  # "model", "results": nobody's interest
    return (
        [w for w, c in words.most_common() if 2 <= c <= common][:1500],
        [p for p, c in pairs.most_common(500) if c > 1],
    )


def profile_text(rng: random.Random, words: list[str], phrases: list[str]) -> str:
    terms = []
    for _ in range(rng.randint(3, 8)):
        term = f'"{rng.choice(phrases)}"' if phrases and rng.random() < 0.2 else rng.choice(words)
        if rng.random() < 0.1:
            term = "title:" + term
        if rng.random() < 0.25:
            term += f"^{rng.choice([0.5, 1.5, 2, 3])}"
        terms.append(term)
    if rng.random() < 0.2:
        terms.append("-" + rng.choice(words))
    return ", ".join(terms)


def subscriber_entries(n: int, papers: list[SeedPaper], rng: random.Random) -> list[dict[str, Any]]:
    """Entries as a subscribers file or CSV import would give them."""
    words, phrases = vocabulary(papers)
    return [
        {
            "email": f"reader{i:06d}@example.org",
            "name": f"Reader {i}",
            "timezone": rng.choice(ZONES),
            "send_at": f"{rng.randint(5, 9):02d}:{rng.choice((0, 15, 30, 45)):02d}",
            "profile": profile_text(rng, words, phrases),
            "max_papers": 10,
        }
        for i in range(n)
    ]


# ---------------------------------------------------------------------- the workspace


@dataclass
class Workspace:
    folder: Path
    config: Path
    database_url: str
    admin_url: str | None  # PostgreSQL: the server URL the scratch database was created from
    scratch_db: str | None


def make_workspace(folder: Path, database_url: str | None, port: int) -> Workspace:
    admin_url = scratch = None
    if database_url is None:
        url = f"sqlite:///{folder / 'newsletter.db'}"
    elif make_url(normalize_url(database_url)).get_backend_name() == "postgresql":
        admin_url = normalize_url(database_url)
        scratch = f"bench_e2e_{os.getpid()}"
        engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{scratch}"')
            conn.exec_driver_sql(f'CREATE DATABASE "{scratch}"')
        engine.dispose()
        url = make_url(admin_url).set(database=scratch).render_as_string(hide_password=False)
    else:
        url = database_url
    config = folder / "newsletter.toml"
    q = json.dumps  # a JSON string is a TOML basic string
    config.write_text(
        "# Written by bench/bench_e2e.py\n"
        f"database_url = {q(url)}\n"
        f"inbox = {q(str(folder / 'inbox'))}\n"
        f"outbox_dir = {q(str(folder / 'outbox'))}\n"
        f"feeds_dir = {q(str(folder / 'feeds'))}\n"
        f"subscribers_file = {q(str(folder / 'subscribers.toml'))}  # absent: none synced\n"
        'mailer = "smtp"\n\n'
        "[smtp]\n"
        f"host = {q(HOST)}\n"
        f"port = {port}\n"
        'security = "none"\n',
        encoding="utf-8",
    )
    return Workspace(folder, config, url, admin_url, scratch)


def drop_scratch(ws: Workspace) -> None:
    if ws.admin_url is None or ws.scratch_db is None:
        return
    engine = create_engine(ws.admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{ws.scratch_db}" WITH (FORCE)')
    engine.dispose()


def settings_of(ws: Workspace, **overrides: str) -> Settings:
    environ = {f"NEWSLETTER_{k.upper()}": v for k, v in overrides.items()}
    return load_settings(ws.config, environ=environ)


def insert_subscribers(app: Newsletter, entries: list[dict[str, Any]], now: datetime) -> None:
    """Validate every entry as the application does, then insert the rows that
    ``Store.upsert_subscriber`` writes for a new address, ``BATCH`` per transaction (one
    upsert per subscriber costs about 2 ms on SQLite: minutes at N = 100,000)."""
    from newsletter.store import rows
    from newsletter.store.schema import SubscriberRow
    from newsletter.subscribers import make_spec

    specs = [make_spec(e, app.defaults, where=f"bench entry {e['email']}") for e in entries]
    for start in range(0, len(specs), BATCH):
        with Session(app.store.engine) as session, session.begin():
            for spec in specs[start : start + BATCH]:
                row = SubscriberRow(
                    email=spec.email,
                    status=SubscriberStatus.ACTIVE.value,
                    token=new_token(),
                    feed_token=new_token(),
                    source=SubscriberSource.CSV.value,
                    created_at=now,
                    updated_at=now,
                )
                rows.apply_spec(row, spec)
                session.add(row)


def sample_messages(ws: Workspace, entries: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
    """Real issues for the floor: up to SAMPLE subscribers spread over all of them, planned
    and rendered by the application from the same inbox, in a scratch SQLite database."""
    from newsletter.pipeline import issue_content
    from newsletter.subscribers import make_spec

    step = max(1, len(entries) // SAMPLE)
    chosen = entries[::step][:SAMPLE]
    folder = ws.folder / "floor_sample"
    settings = settings_of(
        ws,
        database_url=f"sqlite:///{folder / 'sample.db'}",
        outbox_dir=str(folder / "outbox"),
        feeds_dir=str(folder / "feeds"),
    )
    now = datetime.now(UTC)
    messages: list[tuple[str, bytes]] = []
    with Newsletter(settings) as app:
        app.ingest(now=now)
        for entry in chosen:
            spec: SubscriberSpec = make_spec(entry, app.defaults, where="floor sample")
            app.store.upsert_subscriber(spec, source=SubscriberSource.CSV, now=now)
        app.plan_current_slots(now)
        subscribers = app.store.subscribers_by_id()
        for issue in app.store.issues(states=[IssueState.PLANNED]):
            sub = subscribers[issue.subscriber_id]
            rendered = app.renderer.render(issue_content(app.store, issue, sub))
            messages.append((sub.email, rendered.message))
    shutil.rmtree(folder)
    if not messages:
        raise SystemExit("no sample issue for the floor: no profile matched any paper")
    return messages


def database_bytes(url: str) -> int:
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            return int(conn.scalar(text("SELECT pg_database_size(current_database())")) or 0)
    finally:
        engine.dispose()


def stored_messages(url: str) -> tuple[int, float]:
    """(issues sent, mean size of their stored message in bytes), from the database."""
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT count(*), avg(length(message)) FROM issues WHERE state = :s"),
                {"s": IssueState.SENT.value},
            ).one()
    finally:
        engine.dispose()
    return int(row[0]), float(row[1] or 0)


# ---------------------------------------------------------------------- sink and floor


def floor(
    samples: list[tuple[str, bytes]], recipients: list[str], count: int, sender: str, port: int
) -> float:
    """Seconds to send ``count`` sample messages over one smtplib connection."""
    conn = smtplib.SMTP(HOST, port, timeout=60)
    try:
        start = time.perf_counter()
        for i in range(count):
            conn.sendmail(sender, [recipients[i % len(recipients)]], samples[i % len(samples)][1])
        return time.perf_counter() - start
    finally:
        conn.quit()


# ---------------------------------------------------------------------- the run


@dataclass
class Stage:
    name: str
    seconds: float
    parts: dict[str, float] = field(default_factory=dict)  # database, rank, render, smtp


@dataclass
class RunResult:
    exit_status: int
    wall: float
    peak_rss_kib: int
    summary: dict[str, Any]
    stages: list[Stage]
    stderr_tail: str


def run_once(ws: Workspace, *, stages: bool) -> RunResult:
    """``newsletter run --once --json`` in a child process; wall time from spawn to reaping."""
    cli_args = ["-c", str(ws.config), "run", "--once", "--json"]
    timings = ws.folder / "stage_timings.json"
    if stages:
        command = [sys.executable, str(Path(__file__).resolve()), CHILD, str(timings), *cli_args]
    else:
        command = [sys.executable, "-m", "newsletter", *cli_args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    out_path, err_path = ws.folder / "run.stdout.json", ws.folder / "run.stderr.txt"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.monotonic()
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=ws.folder)
        _, status, usage = os.wait4(proc.pid, 0)
        end = time.monotonic()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = err_path.read_text(encoding="utf-8", errors="replace")
    try:
        summary = json.loads(out_path.read_text(encoding="utf-8"))
    except ValueError:
        summary = {}
    found = _stages(json.loads(timings.read_text()), start, end) if timings.exists() else []
    return RunResult(
        exit_status=proc.returncode,
        wall=end - start,
        peak_rss_kib=usage.ru_maxrss,  # KiB on Linux
        summary=summary,
        stages=found,
        stderr_tail="\n".join(stderr.strip().splitlines()[-15:]),
    )


def _stages(data: dict[str, Any], spawned: float, reaped: float) -> list[Stage]:
    """Stage walls in order of first appearance, plus start-up, gaps and exit."""
    events: list[list[Any]] = data["events"]
    if not events:
        return []
    order: dict[str, Stage] = {}
    for name, begin, end in events:
        stage = order.setdefault(name, Stage(name, 0.0, dict(data["parts"].get(name, {}))))
        stage.seconds += end - begin
    first, last = events[0][1], max(e[2] for e in events)
    inside = sum(s.seconds for s in order.values())
    return [
        Stage("start-up", first - spawned),
        *order.values(),
        Stage("between stages", max(0.0, last - first - inside)),
        Stage("exit", reaped - last),
    ]


def _child(timings_path: str, cli_args: list[str]) -> None:
    """The wrapped run: time the stages' methods, then the CLI's own entry point."""
    from newsletter import rank
    from newsletter.cli import main as cli_main
    from newsletter.render import EmailRenderer
    from newsletter.smtp import SmtpMailer
    from newsletter.store import Store

    events: list[tuple[str, float, float]] = []
    parts: dict[str, dict[str, float]] = {}
    now: dict[str, str | None] = {"stage": None, "part": None}

    def stage(name: str, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if now["stage"] is not None:  # a stage method inside another: the outer counts
                return fn(*args, **kwargs)
            now["stage"], begin = name, time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                events.append((name, begin, time.monotonic()))
                now["stage"] = None

        return wrapper  # type: ignore[return-value]

    def part(name: str, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            current = now["stage"]
            if current is None or now["part"] is not None:
                return fn(*args, **kwargs)
            now["part"], begin = name, time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = parts.setdefault(current, {})
                spent[name] = spent.get(name, 0.0) + time.monotonic() - begin
                now["part"] = None

        return wrapper  # type: ignore[return-value]

    for method, name in (
        ("__init__", "open"),
        ("ingest", "ingest"),
        ("sync_subscribers", "subscribers"),
        ("delete_unconfirmed", "subscribers"),
        ("plan_current_slots", "plan"),
        ("deliver", "deliver"),
        ("write_feeds", "feeds"),
    ):
        if hasattr(Newsletter, method):
            setattr(Newsletter, method, stage(name, getattr(Newsletter, method)))
    for method in dir(Store):
        if not method.startswith("_") and inspect.isfunction(inspect.getattr_static(Store, method)):
            setattr(Store, method, part("database", getattr(Store, method)))
    rank.rank_papers = part("rank", rank.rank_papers)
    EmailRenderer.render = part("render", EmailRenderer.render)  # type: ignore[method-assign]
    SmtpMailer.send = part("smtp", SmtpMailer.send)  # type: ignore[method-assign]
    sys.argv = ["newsletter", *cli_args]
    try:
        cli_main()
    finally:
        Path(timings_path).write_text(json.dumps({"events": events, "parts": parts}))


# ---------------------------------------------------------------------- report


@contextmanager
def timed(into: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    into[name] = time.perf_counter() - start


def report(r: dict[str, Any]) -> str:
    kib = 1024
    lines = [
        f"bench_e2e: {r['subscribers']:,} subscribers, {r['backend']}, "
        f"{r['papers']} papers in {r['digest_files']} digest files",
        "setup (not timed as the run): "
        + ", ".join(f"{k} {v:.1f} s" for k, v in r["setup_seconds"].items()),
        f"run --once: exit status {r['exit_status']}; {r['issues_delivered']:,} issues "
        f"delivered, {r['issues_empty']:,} empty; {r['papers_per_issue']:.1f} papers per issue; "
        + (
            f"messages {r['message_bytes'] / kib:.1f} KiB stored"
            if r["message_bytes"]
            else "messages not stored once sent"
        )
        + f" (floor sample {r['floor_message_bytes'] / kib:.1f} KiB)",
        "",
        f"{'':24} {'msg/s':>9} {'seconds':>9} {'messages':>9}",
        f"{'floor before':24} {r['floor_before_rate']:9.1f} {r['floor_before_seconds']:9.2f} "
        f"{r['floor_messages']:9,}",
        f"{'floor after':24} {r['floor_after_rate']:9.1f} {r['floor_after_seconds']:9.2f} "
        f"{r['floor_messages']:9,}",
        f"{'newsletter run --once':24} {r['run_rate']:9.1f} {r['run_seconds']:9.2f} "
        f"{r['issues_delivered']:9,}",
    ]
    if r["deliver_rate"] is not None:
        lines.append(
            f"{'  its deliver stage':24} {r['deliver_rate']:9.1f} "
            f"{r['deliver_seconds']:9.2f} {r['issues_delivered']:9,}"
        )
    lines += [
        "",
        f"ratio run / floor: {r['ratio']:.2f} (floor = both floor runs together, "
        f"{r['floor_rate']:.1f} msg/s; before/after differ by {r['floor_spread']:.0%})",
    ]
    if r["deliver_ratio"] is not None:
        lines.append(f"ratio deliver stage / floor: {r['deliver_ratio']:.2f}")
    lines += [
        f"peak RSS of the run: {r['peak_rss_mib']:.0f} MiB",
        f"database: {r['db_bytes_before'] / 2**20:.1f} MiB before, "
        f"{r['db_bytes_after'] / 2**20:.1f} MiB after: "
        f"{r['db_bytes_per_issue']:,.0f} bytes per delivered issue",
    ]
    if r["stages"]:
        kinds = ("database", "rank", "render", "smtp")
        lines += ["", f"{'stage (wall s)':16} {'total':>8} {'share':>6}"]
        lines[-1] += "".join(f" {k:>8}" for k in kinds) + f" {'other':>8}"
        for s in r["stages"]:
            row = f"{s['name']:16} {s['seconds']:8.2f} {s['seconds'] / r['run_seconds']:6.1%}"
            if s["parts"]:
                row += "".join(
                    f" {s['parts'][k]:8.2f}" if k in s["parts"] else f" {'':8}" for k in kinds
                )
                row += f" {s['seconds'] - sum(s['parts'].values()):8.2f}"
            lines.append(row)
    for warning in r["warnings"]:
        lines.append(f"warning: {warning}")
    if r["workspace"]:
        lines.append(f"workspace kept: {r['workspace']} (database {r['database_url']})")
    return "\n".join(lines)


# ---------------------------------------------------------------------- main


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == CHILD:
        _child(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=10_000, help="N (default 10,000)")
    parser.add_argument("--papers", type=int, default=400, help="new papers (default 400)")
    parser.add_argument(
        "--database-url",
        default=None,
        help="default: a SQLite file in the workspace; a postgresql:// URL names a server, on "
        "which a scratch database is created and dropped",
    )
    parser.add_argument(
        "--floor-messages", type=int, default=None, help="messages per floor run (default N)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the workspace")
    parser.add_argument("--keep", action="store_true", help="keep the workspace (and database)")
    parser.add_argument("--no-stages", action="store_true", help="run the CLI unwrapped")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    rng = random.Random(7)
    setup: dict[str, float] = {}
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="bench_e2e_", dir=args.workdir))
    ws: Workspace | None = None
    sink: subprocess.Popen[bytes] | None = None
    try:
        with timed(setup, "workspace"):
            ws = make_workspace(folder, args.database_url, port)
            papers = build_papers(args.papers, rng)
            files = write_digests(folder / "inbox", papers, rng)
            entries = subscriber_entries(args.subscribers, papers, rng)
        settings = settings_of(ws)
        with timed(setup, "subscribers"), Newsletter(settings) as app:
            insert_subscribers(app, entries, datetime.now(UTC))
        with timed(setup, "floor sample"):
            samples = sample_messages(ws, entries)
        sink = start_sink(port)
        recipients = [e["email"] for e in entries]
        count = args.floor_messages or args.subscribers
        sender = settings.mail.from_address
        before = floor(samples, recipients, count, sender, port)
        db_before = database_bytes(ws.database_url)
        run = run_once(ws, stages=not args.no_stages)
        db_after = database_bytes(ws.database_url)
        sent, message_bytes = stored_messages(ws.database_url)
        after = floor(samples, recipients, count, sender, port)
    finally:
        if sink is not None:
            sink.terminate()
            sink.wait()
        if ws is not None and not args.keep:
            drop_scratch(ws)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    assert ws is not None
    summary = run.summary
    delivered = int(summary.get("issues_delivered", 0))
    warnings = []
    if run.exit_status != 0:
        warnings.append(f"run exit status {run.exit_status}; stderr:\n{run.stderr_tail}")
    if delivered != sent:
        warnings.append(f"summary says {delivered} delivered, the database {sent} sent")
    sample_bytes = sum(len(m) for _, m in samples) / len(samples)
    if message_bytes and abs(sample_bytes / message_bytes - 1) > 0.1:
        warnings.append("the floor's sample messages differ in size from the run's by > 10%")
    deliver = next((s for s in run.stages if s.name == "deliver"), None)
    floor_rate = 2 * count / (before + after)
    run_rate = delivered / run.wall
    deliver_rate = delivered / deliver.seconds if deliver and deliver.seconds else None
    papers_sent = sum(int(d.get("papers", 0)) for d in summary.get("delivered", []))
    result: dict[str, Any] = {
        "subscribers": args.subscribers,
        "backend": make_url(normalize_url(ws.database_url)).get_backend_name(),
        "papers": len(papers),
        "digest_files": len(files),
        "setup_seconds": setup,
        "exit_status": run.exit_status,
        "issues_delivered": delivered,
        "issues_empty": int(summary.get("issues_empty", 0)),
        "papers_per_issue": papers_sent / delivered if delivered else 0.0,
        "message_bytes": message_bytes,
        "floor_message_bytes": sample_bytes,
        "floor_messages": count,
        "floor_before_seconds": before,
        "floor_after_seconds": after,
        "floor_before_rate": count / before,
        "floor_after_rate": count / after,
        "floor_rate": floor_rate,
        "floor_spread": abs(before - after) / min(before, after),
        "run_seconds": run.wall,
        "run_rate": run_rate,
        "ratio": run_rate / floor_rate,
        "deliver_seconds": deliver.seconds if deliver else None,
        "deliver_rate": deliver_rate,
        "deliver_ratio": deliver_rate / floor_rate if deliver_rate else None,
        "peak_rss_mib": run.peak_rss_kib / 1024,
        "db_bytes_before": db_before,
        "db_bytes_after": db_after,
        "db_bytes_per_issue": (db_after - db_before) / delivered if delivered else 0.0,
        "stages": [asdict(s) for s in run.stages],
        "warnings": warnings,
        "workspace": str(folder) if args.keep else None,
        "database_url": ws.database_url if args.keep else None,
    }
    print(json.dumps(result, indent=2) if args.json else report(result))
    if run.exit_status not in (0, 75):
        sys.exit(1)


if __name__ == "__main__":
    main()
