"""Delivery by Celery workers: how throughput grows with the number of worker processes.

Not a test (shared machines are noisy): run it by hand and read the figures as ratios taken in
the same run.

    .venv/bin/python bench/bench_workers.py                  # Redis, 400 issues, ~2 minutes
    .venv/bin/python bench/bench_workers.py --broker redis://127.0.0.1:6379/0 \\
        --broker amqp://guest:guest@127.0.0.1:5672//         # RabbitMQ too
    .venv/bin/python bench/bench_workers.py --layout separate --workers 1 4 --cpu-workers
    .venv/bin/python bench/bench_workers.py --json

What it builds (nothing of it timed): a temporary workspace with a settings file (``mailer =
"smtp"`` to a local sink, no TLS, no AUTH) and a PostgreSQL *template* database on the
``--database-url`` server holding ``--issues`` subscribers, the bench_smtp digest (three
papers: 14 KiB messages) and one planned issue each. Every configuration then gets a fresh
database copied from that template (``CREATE DATABASE … TEMPLATE``: 400 planned issues, none
queued) and a fresh Celery queue name; all of them are dropped at the end.

The sinks: aiosmtpd in its own process (``bench/sink.py``), one answering the end of DATA
``--delay-ms`` late (100: a remote relay that checks the message; many sessions are served
at once), one answering at once (then delivery is CPU-bound on this machine).

One configuration (a number of worker processes, a sink, a broker):

1. start the workers: by default **one** ``newsletter worker --concurrency N`` (the usual
   deployment: one Celery prefork pool of N processes per machine; ``--layout separate``
   starts N ``newsletter worker --concurrency 1`` instead), in their own process group, and
   wait for Celery's ``ready.`` line;
2. warm up: publish the delivery settings and send tasks for an issue id that does not exist
   until every pool process has built its per-process context (database engine, migration
   check, renderer, the worker's lock connection: seen in ``pg_stat_activity``); start-up
   is not measured (``--cold`` skips this: each process then builds it on its first task);
3. **the clock starts**, then the scheduler's enqueue pass runs in this process
   (``Newsletter(settings).deliver()`` with ``queue.broker_url`` set: one task per issue),
   and the database is polled every 20 ms until all issues are ``sent``: **the clock
   stops** at the first poll that sees them all. messages/s = issues / that time;
4. SIGTERM to the workers' process group (warm shutdown), the database and queue dropped.

During the timed window it also reads ``/proc`` (the server and the broker on this machine):
the CPU time of the worker processes (all processes of their groups), of the sink, of the
PostgreSQL backends serving the configuration's database, of the broker (``redis-server`` or
``beam.smp``: other clients' work too) and of this process (the enqueue pass and the polling),
and the whole machine's busy share (``/proc/stat``: the machine is shared, so this includes
whatever else runs). Per message, that says what limits the throughput when the workers do
not scale. The issues' ``sent_at`` is the time their task started (the worker's clock), so
the first and the last of them split the window into ramp-up, steady rate and tail.

Target (issue 14): with the 100 ms sink, 4 workers reach at least 3.2 times the throughput of
1. Without the delay, 2 workers on this 2-core machine against 1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sink import HOST, free_port, start_sink  # noqa: E402
from sqlalchemy import create_engine, func, select, text  # noqa: E402
from sqlalchemy.engine import Engine, make_url  # noqa: E402

from newsletter.app import Newsletter  # noqa: E402
from newsletter.config import Settings, load_settings, masked_broker_url  # noqa: E402
from newsletter.domain import SubscriberSource, SubscriberSpec  # noqa: E402
from newsletter.store import normalize_url  # noqa: E402
from newsletter.store.schema import IssueRow  # noqa: E402
from newsletter.workers.broker import Broker  # noqa: E402
from newsletter.workers.published import published_json  # noqa: E402

DIGEST = """Daily Papers

Nov 22

Quantum Error Correction with Surface Codes at Scale

We study quantum error correction with surface codes and report logical error rates.

Variational Quantum Eigensolvers for Molecular Ground States

A variational quantum algorithm estimates molecular ground-state energies on noisy hardware.

Quantum Annealing Benchmarks on Combinatorial Optimization

We benchmark quantum annealing against classical heuristics on combinatorial problems.
"""
NEWSLETTER = str(Path(sys.executable).with_name("newsletter"))
POLL_SECONDS = 0.02
#: A task for this issue id builds the worker process's context, then finds no issue.
WARM_UP_ID = 2**31 - 1
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Measure:
    broker: str
    delay_ms: float
    workers: int
    layout: str
    issues: int
    seconds: float
    msg_per_s: float
    ratio_to_1: float | None
    enqueue_seconds: float  # the scheduler's pass (publish 400 tasks, mark them queued)
    workers_cpu_ms_per_msg: float
    sink_cpu_ms_per_msg: float
    bench_cpu_ms_per_msg: float  # the enqueue pass and the polling
    postgres_cpu_ms_per_msg: float  # the backends of the configuration's database
    broker_cpu_ms_per_msg: float  # redis-server or RabbitMQ's beam.smp
    machine_busy: float  # share of all cores busy during the window (0..1)
    # When the first and the last task started (their issues' sent_at is the task's start),
    # seconds after the clock started, and the rate in between (no ramp-up, no tail).
    first_task_s: float
    last_task_s: float
    steady_msg_per_s: float
    cores: int


# ---------------------------------------------------------------------- /proc


def _proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _group_cpu_seconds(pgid: int) -> float:
    """CPU seconds of every live process of a process group (a worker and its pool)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def _named_cpu_seconds(names: tuple[str, ...]) -> float:
    """CPU seconds of every live process whose command name is one of ``names`` (the
    broker): any client's work, not only ours."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat[stat.index("(") + 1 : stat.rindex(")")] in names:
            fields = stat[stat.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def _backends_cpu_seconds(engine: Engine) -> float:
    """CPU seconds of the PostgreSQL backends serving the configuration's database (server
    on this machine): the workers', the scheduler's and the polling connections."""
    with engine.connect() as conn:
        pids = conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        ).scalars()
        return sum(_proc_cpu_seconds(int(pid)) for pid in pids)


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


# ---------------------------------------------------------------------- databases


@contextmanager
def _admin(server_url: str) -> Iterator[Engine]:
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        yield engine
    finally:
        engine.dispose()


def _db_url(server_url: str, name: str) -> str:
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def create_database(server_url: str, name: str, template: str | None = None) -> str:
    with _admin(server_url) as engine, engine.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        copy = f' TEMPLATE "{template}"' if template else ""
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"{copy}')
    return _db_url(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    with _admin(server_url) as engine, engine.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------------- workspace


def write_workspace(folder: Path) -> Path:
    """The settings file and the inbox; database, SMTP port and queue come from the
    environment of each configuration."""
    inbox = folder / "inbox"
    inbox.mkdir()
    digest = inbox / "today.txt"
    digest.write_text(DIGEST, encoding="utf-8")
    old = time.time() - 3600  # arrived an hour ago: no settling pause
    os.utime(digest, (old, old))
    config = folder / "newsletter.toml"
    q = json.dumps  # a JSON string is a TOML basic string
    config.write_text(
        "# Written by bench/bench_workers.py\n"
        f"inbox = {q(str(inbox))}\n"
        f"outbox_dir = {q(str(folder / 'outbox'))}\n"
        f"feeds_dir = {q(str(folder / 'feeds'))}\n"
        f"subscribers_file = {q(str(folder / 'subscribers.toml'))}  # absent: none synced\n"
        'log_level = "INFO"\n'
        'mailer = "smtp"\n\n'
        "[smtp]\n"
        f"host = {q(HOST)}\n"
        'security = "none"\n',
        encoding="utf-8",
    )
    return config


def environment(database_url: str, port: int, broker: str | None, queue: str) -> dict[str, str]:
    env = {
        "NEWSLETTER_DATABASE_URL": database_url,
        "NEWSLETTER_SMTP_PORT": str(port),
        "NEWSLETTER_QUEUE_NAME": queue,
    }
    if broker:
        env["NEWSLETTER_QUEUE_BROKER_URL"] = broker
    return env


def settings_for(config: Path, env: dict[str, str]) -> Settings:
    return load_settings(config, environ=env)


def prepare_template(config: Path, database_url: str, issues: int) -> None:
    """``issues`` subscribers with one planned issue each (delivered in-process: no broker)."""
    settings = settings_for(config, environment(database_url, 25, None, "unused"))
    now = datetime.now(UTC)
    with Newsletter(settings) as app:
        app.ingest(now=now)
        for i in range(issues):
            spec = SubscriberSpec(
                email=f"reader{i:05d}@example.org",
                name=f"Reader {i}",
                profile="quantum",
                max_papers=3,
                min_score=0.01,
            )
            app.store.upsert_subscriber(spec, source=SubscriberSource.CLI, now=now)
        plan = app.plan_current_slots(now)
        if plan.planned != issues:
            raise SystemExit(f"planned {plan.planned} issues, expected {issues}")
        app.store.engine.dispose()


# ---------------------------------------------------------------------- workers


@dataclass
class Workers:
    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]

    def pgids(self) -> list[int]:
        return [p.pid for p in self.procs]  # each started in its own session

    def cpu_seconds(self) -> float:
        return sum(_group_cpu_seconds(g) for g in self.pgids())

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the pool, if any
            proc.wait()


def start_workers(
    config: Path, env: dict[str, str], processes: int, layout: str, folder: Path
) -> Workers:
    """One worker with a pool of ``processes``, or that many workers of one process each."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    full_env.update(env)
    counts = [processes] if layout == "pool" else [1] * processes
    workers = Workers([], [])
    for i, concurrency in enumerate(counts):
        log_path = folder / f"worker-{env['NEWSLETTER_QUEUE_NAME']}-{i}.log"
        with log_path.open("wb") as log_file:
            workers.procs.append(
                subprocess.Popen(
                    [NEWSLETTER, "-c", str(config), "worker", f"--concurrency={concurrency}"],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=full_env,
                    start_new_session=True,
                )
            )
        workers.logs.append(log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        dead = [p for p in workers.procs if p.poll() is not None]
        if dead:
            workers.stop()
            raise SystemExit(f"a worker exited at start:\n{workers.logs[0].read_text()[-3000:]}")
        if all(" ready." in path.read_text(errors="replace") for path in workers.logs):
            return workers
        time.sleep(0.1)
    workers.stop()
    raise SystemExit(f"the workers were not ready within 60 s:\n{workers.logs[0].read_text()}")


def warm_up(engine: Engine, broker: Broker, processes: int) -> None:
    """Until every pool process holds its worker connection (it built its context)."""
    dbname = make_url(engine.url).database
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = :db AND application_name LIKE 'newsletter worker pid=%'"
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        broker.publish([WARM_UP_ID] * processes)
        until = time.monotonic() + 1.0
        while time.monotonic() < until:
            with engine.connect() as conn:
                ready = int(conn.execute(query, {"db": dbname}).scalar_one())
            if ready >= processes and broker.queue_length() == 0:
                time.sleep(0.2)  # the last warm-up tasks finish
                return
            time.sleep(0.05)
    raise SystemExit(f"the workers' processes did not all start within 60 s ({ready} did)")


def delete_queue(broker_url: str, broker: Broker, name: str) -> None:
    """Remove the configuration's queue from the broker (empty by now): on Redis its list and
    kombu's binding sets (every key with the unique name in it), on RabbitMQ the queue and its
    exchange."""
    if broker_url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(broker_url)
        try:
            keys = list(client.scan_iter(match=f"*{name}*"))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
        return
    with broker.app.connection_for_write() as conn:
        channel = conn.default_channel
        channel.queue_delete(name)
        channel.exchange_delete(name)


# ---------------------------------------------------------------------- one configuration


def states(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT state, count(*) FROM issues GROUP BY state"))
        return {str(state): int(n) for state, n in rows}


def _cpu_now(workers: Workers, sink: subprocess.Popen[bytes], engine: Engine) -> tuple[float, ...]:
    return (
        workers.cpu_seconds(),
        _proc_cpu_seconds(sink.pid),
        time.process_time(),
        _backends_cpu_seconds(engine),
        _named_cpu_seconds(("redis-server", "beam.smp")),
    )


def measure(
    *,
    config: Path,
    server_url: str,
    template: str,
    broker_url: str,
    sink: subprocess.Popen[bytes],
    port: int,
    delay_ms: float,
    processes: int,
    layout: str,
    issues: int,
    cold: bool,
    folder: Path,
    seq: int,
) -> Measure:
    name = f"{template.removesuffix('_tmpl')}_{seq}"
    database_url = create_database(server_url, name, template=template)
    queue = f"bench_{uuid.uuid4().hex[:12]}"
    env = environment(database_url, port, broker_url, queue)
    settings = settings_for(config, env)
    engine = create_engine(normalize_url(database_url))
    broker = Broker(settings.queue)
    workers: Workers | None = None
    app = Newsletter(settings)  # the scheduler's application, built before the clock starts
    try:
        workers = start_workers(config, env, processes, layout, folder)
        if not cold:
            app.store.publish_delivery_settings(published_json(settings), datetime.now(UTC))
            warm_up(engine, broker, processes)
        deadline = time.monotonic() + 120 + issues * (delay_ms / 1000 + 0.1)
        cpu0 = _cpu_now(workers, sink, engine)
        machine0 = _machine_ticks()
        start, started = time.perf_counter(), datetime.now(UTC)
        delivery = app.deliver(datetime.now(UTC))
        enqueued = time.perf_counter()
        if delivery.stopped or delivery.queued != issues:
            raise SystemExit(f"the enqueue pass queued {delivery.queued}: {delivery.stopped}")
        while True:
            counts = states(engine)
            if counts.get("sent", 0) >= issues:
                break
            bad = {s: n for s, n in counts.items() if s in ("failed", "unknown")}
            if bad or time.monotonic() > deadline:
                raise SystemExit(f"not all sent: {counts}; see {workers.logs}")
            time.sleep(POLL_SECONDS)
        seconds = time.perf_counter() - start
        cpu1 = _cpu_now(workers, sink, engine)
        machine1 = _machine_ticks()
        with engine.connect() as conn:
            sent_at = IssueRow.sent_at
            first, last = conn.execute(select(func.min(sent_at), func.max(sent_at))).one()
        assert first is not None and last is not None, "every issue is sent"
    finally:
        if workers is not None:
            workers.stop()
        app.close()
        delete_queue(broker_url, broker, queue)
        broker.close()
        engine.dispose()
        drop_database(server_url, name)
    busy = (machine1[0] - machine0[0]) / max(1, machine1[1] - machine0[1])
    per_msg = [1000 * (b - a) / issues for a, b in zip(cpu0, cpu1, strict=True)]
    return Measure(
        broker=masked_broker_url(broker_url) or broker_url,
        delay_ms=delay_ms,
        workers=processes,
        layout=layout,
        issues=issues,
        seconds=seconds,
        msg_per_s=issues / seconds,
        ratio_to_1=None,
        enqueue_seconds=enqueued - start,
        workers_cpu_ms_per_msg=per_msg[0],
        sink_cpu_ms_per_msg=per_msg[1],
        bench_cpu_ms_per_msg=per_msg[2],
        postgres_cpu_ms_per_msg=per_msg[3],
        broker_cpu_ms_per_msg=per_msg[4],
        machine_busy=busy,
        first_task_s=(first - started).total_seconds(),
        last_task_s=(last - started).total_seconds(),
        steady_msg_per_s=(issues - 1) / max(1e-6, (last - first).total_seconds()),
        cores=os.cpu_count() or 1,
    )


# ---------------------------------------------------------------------- main


def _ratios(measures: list[Measure]) -> None:
    for m in measures:
        base = next(
            (
                b
                for b in measures
                if b.workers == 1 and b.broker == m.broker and b.delay_ms == m.delay_ms
            ),
            None,
        )
        m.ratio_to_1 = m.msg_per_s / base.msg_per_s if base else None


def print_table(measures: list[Measure]) -> None:
    print(
        f"{'broker':<26} {'sink':>6} {'workers':>7} {'seconds':>7} {'msg/s':>6} "
        f"{'× 1':>5} {'enqueue':>7} {'1st task':>8} {'last':>6} {'steady':>6} | "
        f"{'workers':>7} {'sink':>5} {'pg':>5} {'broker':>6} {'bench':>5} | {'machine':>7}"
    )
    for m in measures:
        ratio = f"{m.ratio_to_1:.2f}" if m.ratio_to_1 is not None else "—"
        print(
            f"{m.broker:<26} {m.delay_ms:>3g} ms {m.workers:>7} {m.seconds:>7.2f} "
            f"{m.msg_per_s:>6.1f} {ratio:>5} {m.enqueue_seconds:>6.2f}s {m.first_task_s:>7.2f}s "
            f"{m.last_task_s:>5.2f}s {m.steady_msg_per_s:>6.1f} | "
            f"{m.workers_cpu_ms_per_msg:>7.1f} {m.sink_cpu_ms_per_msg:>5.1f} "
            f"{m.postgres_cpu_ms_per_msg:>5.1f} {m.broker_cpu_ms_per_msg:>6.1f} "
            f"{m.bench_cpu_ms_per_msg:>5.1f} | {100 * m.machine_busy:>6.0f}%"
        )
    print(
        "× 1: throughput over 1 worker's (same broker and sink); enqueue: the scheduler's pass; "
        "1st task, last: when the first and the last task started (the issues' sent_at); "
        "steady: msg/s between the two. "
        "Between the bars: CPU ms per message during the timed window of all worker processes, "
        "the sink, the database's PostgreSQL backends, the broker (other clients' too), and this "
        "process (enqueue pass, polling); machine: share of all cores busy."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--issues", type=int, default=400, help="issues to deliver (400)")
    parser.add_argument(
        "--broker",
        action="append",
        default=None,
        help="broker URL, repeatable (default redis://127.0.0.1:6379/0)",
    )
    parser.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server: throwaway databases are created on it and dropped",
    )
    parser.add_argument("--delay-ms", type=float, default=100.0, help="the slow sink's delay")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2, 4], help="against the slow sink"
    )
    parser.add_argument(
        "--cpu-workers",
        type=int,
        nargs="*",
        default=[1, 2],
        help="against the sink without delay (none: skip)",
    )
    parser.add_argument(
        "--layout",
        choices=("pool", "separate"),
        default="pool",
        help="pool: one worker --concurrency N; separate: N workers --concurrency 1",
    )
    parser.add_argument("--cold", action="store_true", help="no warm-up of the pool processes")
    parser.add_argument("--json", action="store_true", help="print the measures as JSON")
    args = parser.parse_args()
    brokers = args.broker or ["redis://127.0.0.1:6379/0"]
    server_url = normalize_url(args.database_url)
    if make_url(server_url).get_backend_name() != "postgresql":
        raise SystemExit("--database-url must name a PostgreSQL server")

    plan = [(args.delay_ms, n) for n in args.workers] + [(0.0, n) for n in args.cpu_workers]
    template = f"bench_workers_{os.getpid()}_tmpl"
    measures: list[Measure] = []
    sinks: dict[float, tuple[subprocess.Popen[bytes], int]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_workers_") as tmp:
        folder = Path(tmp)
        config = write_workspace(folder)
        try:
            template_url = create_database(server_url, template)
            prepare_template(config, template_url, args.issues)
            for delay in sorted({d for d, _ in plan}):
                port = free_port()
                sinks[delay] = (start_sink(port, data_delay=delay / 1000), port)
            seq = 0
            for broker_url in brokers:
                for delay, processes in plan:
                    seq += 1
                    sink, port = sinks[delay]
                    m = measure(
                        config=config,
                        server_url=server_url,
                        template=template,
                        broker_url=broker_url,
                        sink=sink,
                        port=port,
                        delay_ms=delay,
                        processes=processes,
                        layout=args.layout,
                        issues=args.issues,
                        cold=args.cold,
                        folder=folder,
                        seq=seq,
                    )
                    measures.append(m)
                    print(
                        f"{m.broker}, sink {delay:g} ms, {processes} worker(s): "
                        f"{m.msg_per_s:.1f} msg/s ({m.seconds:.2f} s)",
                        file=sys.stderr,
                    )
        finally:
            for sink, _ in sinks.values():
                sink.terminate()
                sink.wait()
            drop_database(server_url, template)
    _ratios(measures)
    if args.json:
        print(json.dumps([asdict(m) for m in measures], indent=2))
    else:
        layout = (
            "one `newsletter worker --concurrency N`"
            if args.layout == "pool"
            else "N × `newsletter worker --concurrency 1`"
        )
        print(f"{args.issues} issues per measure, {layout}, {os.cpu_count()} cores")
        print_table(measures)


if __name__ == "__main__":
    main()
