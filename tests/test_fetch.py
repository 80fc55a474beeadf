"""`newsletter fetch` and the daemon's sources against a real HTTP server on 127.0.0.1.

The server (http.server in a thread) serves the recorded-format samples of
tests/fixtures/fetch/ with scripted replies: ETag/Last-Modified then 304, 429 with Retry-After,
500s, a slow reply, a body shorter than its Content-Length, a body over the size limit. The
fetcher's sleep and clocks are fakes: the tests assert the waits asked for, never wait them
(but for the timeout test, which waits for a real timeout of a fraction of a second).
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest

from newsletter import __version__
from newsletter.app import Newsletter
from newsletter.config import Settings, load_settings
from newsletter.daemon import Daemon
from newsletter.deliver import MemoryMailer
from newsletter.errors import ConfigError
from newsletter.fetch.http import BACKOFF_SECONDS, parse_retry_after
from newsletter.fetch.run import (
    FetchStatus,
    SourceJobs,
    exit_status,
    fetch_sources,
    make_fetcher,
    weekday_hours,
)
from newsletter.fetch.sources import SourceKind, request_url
from tests.factories import CONFIG, run_cli, workspace_env

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "fetch"
HF = (FIXTURES / "hf_daily_papers.json").read_bytes()
RSS = (FIXTURES / "arxiv_rss.xml").read_bytes()
RSS_EMPTY = (FIXTURES / "arxiv_rss_empty.xml").read_bytes()
ATOM = (FIXTURES / "arxiv_api.atom").read_bytes()
NOW = datetime(2025, 11, 24, 9, 0, tzinfo=UTC)  # a Monday
ETAG = '"hf-2025-11-24-v1"'
LAST_MODIFIED = "Mon, 24 Nov 2025 08:00:00 GMT"


# ---------------------------------------------------------------------- the server


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (the slow reply)
    declared_length: int | None = None  # a Content-Length larger than the body sent
    no_length: bool = False  # no Content-Length: the body ends when the connection closes


class Upstream:
    """Scripted replies per path (the last one repeats) and the requests received."""

    def __init__(self) -> None:
        self.routes: dict[str, list[Reply]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.url = ""

    def route(self, path: str, *replies: Reply) -> str:
        self.routes[path] = list(replies)
        return self.url + path

    def next_reply(self, path: str) -> Reply:
        replies = self.routes.get(path)
        if not replies:
            return Reply(404, b"not found")
        return replies.pop(0) if len(replies) > 1 else replies[0]

    def paths(self) -> list[str]:
        return [p for p, _ in self.requests]


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    state = Upstream()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            return None

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            state.requests.append((self.path, dict(self.headers.items())))
            reply = state.next_reply(urlsplit(self.path).path)
            if reply.delay:
                threading.Event().wait(reply.delay)
            etag = reply.headers.get("ETag")
            if reply.status == 200 and etag and self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.no_length:
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                length = reply.declared_length or len(reply.body)
                self.send_header("Content-Length", str(length))
                if reply.declared_length:
                    self.send_header("Connection", "close")
                    self.close_connection = True
            self.end_headers()
            self.wfile.write(reply.body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


class FakeTime:
    """The fetcher's sleep and monotonic clock: a sleep only moves the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


def make_settings(tmp_path: Path, database_url: str, sources: list[dict[str, Any]], **extra: Any):
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    env = workspace_env(
        tmp_path,
        database_url,
        source=json.dumps(sources),
        sources_user_agent_contact="ops@example.org",
        **extra,
    )
    return load_settings(CONFIG, environ=env)


def fetch(settings: Settings, fake: FakeTime, *, now: datetime = NOW, seed: int = 7, **kw: Any):
    with (
        Newsletter(settings, clock=lambda: now) as app,
        make_fetcher(
            settings,
            sleep=fake.sleep,
            monotonic=fake.monotonic,
            wall_clock=lambda: now,
            rng=random.Random(seed),
        ) as fetcher,
    ):
        return fetch_sources(app, fetcher, settings.source, now=now, **kw)


def inbox_files(settings: Settings) -> list[str]:
    return sorted(p.name for p in settings.inbox.iterdir())


def sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


def jitter(seed: int, *bases: float) -> list[float]:
    """The backoffs a fetcher seeded with ``seed`` asks for, one per base."""
    rng = random.Random(seed)
    return [base + rng.uniform(0, base) for base in bases]


# ---------------------------------------------------------------------- must show 1 and 2


def test_hf_daily_is_written_ingested_then_a_304_writes_nothing(
    tmp_path: Path, database_url: str, upstream: Upstream
) -> None:
    url = upstream.route(
        "/api/daily_papers",
        Reply(
            200,
            HF,
            {"ETag": ETAG, "Last-Modified": LAST_MODIFIED, "Content-Type": "application/json"},
        ),
    )
    settings = make_settings(
        tmp_path,
        database_url,
        [{"name": "hf", "kind": "hf_daily", "url": url, "every_minutes": 60}],
    )
    fake = FakeTime()

    [first] = fetch(settings, fake)

    assert first.status is FetchStatus.FETCHED and first.papers_new == 2
    assert first.url == url + "?date=2025-11-24"
    [name] = inbox_files(settings)  # no temporary file left behind
    assert name.startswith("hf-2025-11-24-") and name.endswith(".json")
    assert first.path == str(settings.inbox / name)
    assert (settings.inbox / name).read_bytes() == HF
    path, headers = upstream.requests[0]
    assert path == "/api/daily_papers?date=2025-11-24"
    assert (
        headers["User-Agent"]
        == f"newsletter/{__version__} (+http://127.0.0.1:8080; ops@example.org)"
    )
    assert "If-None-Match" not in headers and "If-Modified-Since" not in headers
    with Newsletter(settings) as app:
        assert app.count_papers() == 2
        health = app.store.source_health("hf")
    assert health is not None
    assert (health.etag, health.last_modified) == (ETAG, LAST_MODIFIED)
    assert (health.last_success_at, health.last_new_paper_at) == (NOW, NOW)
    assert (health.consecutive_failures, health.last_error) == (0, None)

    later = NOW + timedelta(hours=1)
    [second] = fetch(settings, fake, now=later)

    assert second.status is FetchStatus.NOT_MODIFIED and second.path is None
    _path, headers = upstream.requests[1]
    assert headers["If-None-Match"] == ETAG
    assert headers["If-Modified-Since"] == LAST_MODIFIED
    assert inbox_files(settings) == [name]
    with Newsletter(settings) as app:
        health = app.store.source_health("hf")
    assert health is not None
    assert (health.last_success_at, health.last_new_paper_at) == (later, NOW)
    assert exit_status([first, second]) == 0
    assert fake.sleeps == []


def test_arxiv_rss_and_api_files_ingest_with_the_existing_parsers(
    tmp_path: Path, upstream: Upstream
) -> None:
    rss = upstream.route("/rss", Reply(200, RSS, {"Content-Type": "application/rss+xml"}))
    upstream.route("/rss/cs.CL+cs.LG", Reply(200, RSS, {"Content-Type": "application/rss+xml"}))
    api = upstream.route("/api/query", Reply(200, ATOM, {"Content-Type": "application/atom+xml"}))
    settings = make_settings(
        tmp_path,
        sqlite(tmp_path),
        [
            {
                "name": "rss",
                "kind": "arxiv_rss",
                "url": rss,
                "categories": "cs.CL+cs.LG",
                "at": "06:00",
            },
            {
                "name": "api",
                "kind": "arxiv_api",
                "url": api,
                "query": "abs:retrieval",
                "every_minutes": 720,
            },
        ],
    )

    results = fetch(settings, FakeTime())

    assert [(r.name, r.status, r.papers_new) for r in results] == [
        ("rss", FetchStatus.FETCHED, 3),
        ("api", FetchStatus.FETCHED, 1),  # 2511.19021 came with the RSS already
    ]
    assert upstream.paths()[0] == "/rss/cs.CL+cs.LG"
    query = parse_qs(urlsplit(upstream.paths()[1]).query)
    assert query == {
        "search_query": ["abs:retrieval"],
        "sortBy": ["submittedDate"],
        "sortOrder": ["descending"],
        "start": ["0"],
        "max_results": ["100"],
    }
    names = inbox_files(settings)
    assert [n.rsplit(".", 1)[1] for n in names] == ["atom", "rss"]
    with Newsletter(settings) as app:
        assert app.count_papers() == 4
        titles = {p.title for p in app.store.papers()}
    assert "Sparse Retrieval Heads for Long-Context Question Answering" in titles


def test_arxiv_api_requests_are_three_seconds_apart_across_sources(
    tmp_path: Path, upstream: Upstream
) -> None:
    api = upstream.route("/api/query", Reply(200, ATOM))
    settings = make_settings(
        tmp_path,
        sqlite(tmp_path),
        [
            {
                "name": "a",
                "kind": "arxiv_api",
                "url": api,
                "query": "abs:retrieval",
                "every_minutes": 60,
            },
            {
                "name": "b",
                "kind": "arxiv_api",
                "url": api,
                "query": "cat:cs.CL",
                "every_minutes": 60,
            },
        ],
    )
    fake = FakeTime()

    results = fetch(settings, fake)

    assert [(r.status, r.papers_new) for r in results] == [
        (FetchStatus.FETCHED, 2),
        (FetchStatus.FETCHED, 0),
    ]
    assert fake.sleeps == [3.0]
    assert len(upstream.requests) == 2


def test_429_with_retry_after_seconds_is_honoured(tmp_path: Path, upstream: Upstream) -> None:
    url = upstream.route("/hf", Reply(429, b"slow down", {"Retry-After": "5"}), Reply(200, HF))
    settings = make_settings(
        tmp_path,
        sqlite(tmp_path),
        [{"name": "hf", "kind": "hf_daily", "url": url, "every_minutes": 60}],
    )
    fake = FakeTime()

    [result] = fetch(settings, fake)

    assert result.status is FetchStatus.FETCHED
    assert fake.sleeps == [5.0]
    assert len(upstream.requests) == 2


def test_retry_after_as_an_http_date_and_the_cap(tmp_path: Path, upstream: Upstream) -> None:
    url = upstream.route(
        "/hf",
        Reply(503, b"", {"Retry-After": format_datetime(NOW + timedelta(seconds=7), usegmt=True)}),
        Reply(429, b"", {"Retry-After": "100000"}),
        Reply(200, HF),
    )
    settings = make_settings(
        tmp_path,
        sqlite(tmp_path),
        [{"name": "hf", "kind": "hf_daily", "url": url, "every_minutes": 60}],
        sources_max_retry_wait_seconds=120,
    )
    fake = FakeTime()

    [result] = fetch(settings, fake)

    assert result.status is FetchStatus.FETCHED
    assert fake.sleeps == [7.0, 120.0]
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(format_datetime(NOW - timedelta(hours=1), usegmt=True), NOW) == 0.0


def test_500_then_200_backs_off_with_jitter(tmp_path: Path, upstream: Upstream) -> None:
    url = upstream.route("/hf", Reply(500, b"oops"), Reply(502, b"oops"), Reply(200, HF))
    settings = make_settings(
        tmp_path,
        sqlite(tmp_path),
        [{"name": "hf", "kind": "hf_daily", "url": url, "every_minutes": 60}],
    )
    fake = FakeTime()

    [result] = fetch(settings, fake, seed=11)

    assert result.status is FetchStatus.FETCHED and result.papers_new == 2
    assert fake.sleeps == jitter(11, BACKOFF_SECONDS, 2 * BACKOFF_SECONDS)
    assert BACKOFF_SECONDS <= fake.sleeps[0] <= 2 * BACKOFF_SECONDS


def test_persistent_500_exits_75_and_status_shows_the_health(
    tmp_path: Path, database_url: str, upstream: Upstream
) -> None:
    url = upstream.route("/hf", Reply(500, b"down"))
    sources = [{"name": "hf", "kind": "hf_daily", "url": url, "every_minutes": 60}]
    (tmp_path / "inbox").mkdir()
    env = workspace_env(
        tmp_path,
        database_url,
        source=json.dumps(sources),
        sources_retries=1,
        sources_max_retry_wait_seconds=0,  # the real sleep of the CLI: no wait
    )

    first = run_cli(env, "fetch", "--json")
    second = run_cli(env, "fetch", "hf")

    assert first.returncode == 75, first.stderr
    out = json.loads(first.stdout)
    assert out["exit_status"] == 75
    [src] = out["sources"]
    assert (src["name"], src["status"], src["transient"]) == ("hf", "failed", True)
    assert "HTTP 500" in src["error"] and "after 2 attempts" in src["error"]
    assert second.returncode == 75
    assert second.stdout.startswith("hf: failed: ")
    assert len(upstream.requests) == 4
    assert list(tmp_path.joinpath("inbox").iterdir()) == []

    status = run_cli(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    [line] = json.loads(status.stdout)["sources"]
    assert line["name"] == "hf" and line["kind"] == "hf_daily"
    assert line["consecutive_failures"] == 2
    assert line["last_success"] is None and line["last_new_paper"] is None
    assert "HTTP 500" in line["last_error"]
    assert datetime.fromisoformat(line["last_error_at"]).tzinfo is not None
    text = run_cli(env, "status")
    assert "sources:\n  hf " in text.stdout
    assert "last success: never; last new paper: never; 2 failure(s) in a row" in text.stdout

    unknown = run_cli(env, "fetch", "nope")
    assert unknown.returncode == 1
    assert "no source named 'nope'" in unknown.stderr


def test_a_fetch_then_status_shows_the_success(tmp_path: Path, upstream: Upstream) -> None:
    url = upstream.route("/hf", Reply(200, HF))
    sources = [{"name": "hf", "kind": "hf_daily", "url": url, "every_minutes": 60}]
    (tmp_path / "inbox").mkdir()
    env = workspace_env(tmp_path, sqlite(tmp_path), source=json.dumps(sources))

    done = run_cli(env, "fetch", "hf", "--date", "2025-11-21")

    assert done.returncode == 0, done.stderr
    [name] = [p.name for p in (tmp_path / "inbox").iterdir()]
    assert name.startswith("hf-2025-11-21-")
    assert (
        done.stdout
        == f"hf: fetched, {len(HF)} bytes into {tmp_path / 'inbox' / name}, 2 new paper(s)\n"
    )
    assert upstream.paths() == ["/hf?date=2025-11-21"]
    [line] = json.loads(run_cli(env, "status", "--json").stdout)["sources"]
    assert line["consecutive_failures"] == 0 and line["last_error"] is None
    assert line["last_success"] == line["last_new_paper"] is not None


def test_a_slow_reply_times_out_and_is_transient(tmp_path: Path, upstream: Upstream) -> None:
    url = upstream.route("/hf", Reply(200, HF, delay=2.0))
    settings = make_settings(
        tmp_path,
        sqlite(tmp_path),
        [{"name": "hf", "kind": "hf_daily", "url": url, "every_minutes": 60}],
        sources_timeout_seconds=0.3,
        sources_retries=1,
    )
    fake = FakeTime()

    [result] = fetch(settings, fake, seed=3)

    assert result.status is FetchStatus.FAILED and result.transient is True
    assert result.error is not None and "timed out (ReadTimeout)" in result.error
    assert fake.sleeps == jitter(3, BACKOFF_SECONDS)
    assert exit_status([result]) == 75
    assert inbox_files(settings) == []


def test_a_truncated_body_is_retried(tmp_path: Path, upstream: Upstream) -> None:
    url = upstream.route("/hf", Reply(200, HF[:100], declared_length=len(HF)), Reply(200, HF))
    settings = make_settings(
        tmp_path,
        sqlite(tmp_path),
        [{"name": "hf", "kind": "hf_daily", "url": url, "every_minutes": 60}],
    )
    fake = FakeTime()

    [result] = fetch(settings, fake, seed=5)

    assert result.status is FetchStatus.FETCHED and result.papers_new == 2
    assert fake.sleeps == jitter(5, BACKOFF_SECONDS)
    [name] = inbox_files(settings)
    assert (settings.inbox / name).read_bytes() == HF


@pytest.mark.parametrize("no_length", [False, True], ids=["content-length", "streamed"])
def test_a_body_over_the_size_limit_is_refused_for_good(
    tmp_path: Path, upstream: Upstream, no_length: bool
) -> None:
    url = upstream.route("/hf", Reply(200, HF, no_length=no_length))
    settings = make_settings(
        tmp_path,
        sqlite(tmp_path),
        [{"name": "hf", "kind": "hf_daily", "url": url, "every_minutes": 60}],
        max_digest_bytes=1000,
    )
    fake = FakeTime()

    [result] = fetch(settings, fake)

    assert result.status is FetchStatus.FAILED and result.transient is False
    assert result.error is not None and "over max_digest_bytes (1000 bytes)" in result.error
    assert fake.sleeps == [] and len(upstream.requests) == 1
    assert exit_status([result]) == 1
    assert inbox_files(settings) == []


def test_a_404_is_permanent_and_an_unreadable_answer_is_quarantined(
    tmp_path: Path, upstream: Upstream
) -> None:
    missing = upstream.url + "/nothing-here"
    page = upstream.route(
        "/page",
        Reply(
            200,
            b"<html><head><title>Rate limit exceeded</title></head><body>try later</body></html>",
            {"Content-Type": "text/html"},
        ),
    )
    settings = make_settings(
        tmp_path,
        sqlite(tmp_path),
        [
            {"name": "gone", "kind": "url", "url": missing, "every_minutes": 60},
            {"name": "page", "kind": "url", "url": page, "every_minutes": 60},
        ],
    )

    gone, html = fetch(settings, FakeTime())

    assert gone.status is FetchStatus.FAILED and gone.transient is False
    assert gone.error is not None and "HTTP 404" in gone.error
    assert html.status is FetchStatus.FAILED and html.transient is False
    assert html.error is not None and "Rate limit exceeded" in html.error
    [name] = inbox_files(settings)  # kept, and recorded as quarantined like any digest file
    assert name.startswith("page-2025-11-24-") and name.endswith(".txt")
    with Newsletter(settings) as app:
        health = app.store.source_health("gone")
    assert health is not None and health.consecutive_failures == 1


def test_an_empty_day_writes_nothing_and_counts_as_an_answer(
    tmp_path: Path, upstream: Upstream
) -> None:
    rss = upstream.route("/rss", Reply(200, RSS_EMPTY))
    upstream.route("/rss/cs.CL", Reply(200, RSS_EMPTY))
    hf = upstream.route("/hf", Reply(200, b"[]"))
    settings = make_settings(
        tmp_path,
        sqlite(tmp_path),
        [
            {"name": "rss", "kind": "arxiv_rss", "url": rss, "categories": "cs.CL", "at": "06:00"},
            {"name": "hf", "kind": "hf_daily", "url": hf, "every_minutes": 60},
        ],
    )

    results = fetch(settings, FakeTime())

    assert [r.status for r in results] == [FetchStatus.EMPTY, FetchStatus.EMPTY]
    assert inbox_files(settings) == []
    assert exit_status(results) == 0


# ---------------------------------------------------------------------- configuration


def test_request_urls_per_kind() -> None:
    day = date(2025, 11, 24)
    assert (
        request_url(SourceKind.HF_DAILY, "https://huggingface.co/api/daily_papers", day=day)
        == "https://huggingface.co/api/daily_papers?date=2025-11-24"
    )
    assert (
        request_url(
            SourceKind.ARXIV_RSS, "https://rss.arxiv.org/rss", day=day, categories="cs.CL+cs.LG"
        )
        == "https://rss.arxiv.org/rss/cs.CL+cs.LG"
    )
    assert request_url(
        SourceKind.ARXIV_API,
        "http://export.arxiv.org/api/query",
        day=day,
        query="cat:cs.CL AND abs:rag",
    ) == (
        "http://export.arxiv.org/api/query?search_query=cat%3Acs.CL+AND+abs%3Arag"
        "&sortBy=submittedDate&sortOrder=descending&start=0&max_results=100"
    )
    assert request_url(SourceKind.URL, "https://example.org/x.json?a=1", day=day) == (
        "https://example.org/x.json?a=1"
    )


def test_source_defaults() -> None:
    settings = load_settings(
        CONFIG,
        environ={
            "NEWSLETTER_SOURCE": json.dumps(
                [
                    {"name": "hf", "kind": "hf_daily", "every_minutes": 60},
                    {"name": "rss", "kind": "arxiv_rss", "categories": "cs.CL", "at": "06:00"},
                    {"name": "api", "kind": "arxiv_api", "query": "cat:cs.CL", "at": "07:30"},
                ]
            )
        },
    )
    assert [s.base_url for s in settings.source] == [
        "https://huggingface.co/api/daily_papers",
        "https://rss.arxiv.org/rss",
        "http://export.arxiv.org/api/query",
    ]
    assert settings.sources.stale_after_hours == 36.0
    assert settings.sources.operator_email == ""


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        (
            [
                {"name": "a", "kind": "hf_daily", "every_minutes": 5},
                {"name": "a", "kind": "hf_daily", "at": "06:00"},
            ],
            "source names must be unique: a given twice",
        ),
        (
            [{"name": "a", "kind": "hf_daily", "every_minutes": 5, "at": "06:00"}],
            "give one of every_minutes",
        ),
        ([{"name": "a", "kind": "hf_daily"}], "give one of every_minutes"),
        ([{"name": "a", "kind": "arxiv_rss", "at": "06:00"}], "kind arxiv_rss needs categories"),
        ([{"name": "a", "kind": "arxiv_api", "at": "06:00"}], "kind arxiv_api needs a query"),
        ([{"name": "a", "kind": "url", "at": "06:00"}], "kind url needs a url"),
        (
            [{"name": "a", "kind": "url", "url": "ftp://example.org/x", "at": "06:00"}],
            "must be an http(s) URL",
        ),
        ([{"name": "a", "kind": "rss", "at": "06:00"}], "'source.0.kind'"),
        ([{"name": "a", "kind": "hf_daily", "at": "25:00"}], "'source.0.at'"),
        ([{"name": "A b", "kind": "hf_daily", "at": "06:00"}], "'source.0.name'"),
    ],
)
def test_bad_sources_are_refused_naming_the_key(
    sources: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(CONFIG, environ={"NEWSLETTER_SOURCE": json.dumps(sources)})
    assert message in str(err.value)


def test_sources_from_a_toml_file(tmp_path: Path) -> None:
    config = tmp_path / "newsletter.toml"
    config.write_text(
        '[[source]]\nname = "hf"\nkind = "hf_daily"\nevery_minutes = 60\n\n'
        '[[source]]\nname = "rss"\nkind = "arxiv_rss"\ncategories = "cs.CL+cs.LG"\nat = "06:00"\n\n'
        '[sources]\nstale_after_hours = 48\noperator_email = "Ops@Example.org"\n',
        encoding="utf-8",
    )
    settings = load_settings(config, environ={})
    assert [(s.name, s.kind) for s in settings.source] == [
        ("hf", SourceKind.HF_DAILY),
        ("rss", SourceKind.ARXIV_RSS),
    ]
    assert settings.sources.stale_after_hours == 48
    assert settings.sources.operator_email == "ops@example.org"


# ---------------------------------------------------------------------- the daemon


def test_the_daemon_schedules_one_job_per_source(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        sqlite(tmp_path),
        [
            {"name": "hf", "kind": "hf_daily", "every_minutes": 30},
            {"name": "rss", "kind": "arxiv_rss", "categories": "cs.CL", "at": "06:15"},
        ],
        timezone="Europe/Berlin",
    )
    daemon = Daemon(settings, clock=lambda: NOW)
    daemon._add_jobs()
    jobs = {job.id: job for job in daemon.scheduler.get_jobs()}
    assert {"source:hf", "source:rss"} <= set(jobs)
    hf, rss = jobs["source:hf"], jobs["source:rss"]
    assert hf.args == ("hf",) and rss.args == ("rss",)
    assert hf.trigger.interval == timedelta(minutes=30)
    assert hf.next_run_time == NOW  # at start-up, then every 30 minutes
    fields = {f.name: str(f) for f in rss.trigger.fields}
    assert (fields["hour"], fields["minute"]) == ("6", "15")
    assert str(rss.trigger.timezone) == "Europe/Berlin"


def test_the_daemon_job_fetches_and_ingests(tmp_path: Path, upstream: Upstream) -> None:
    url = upstream.route("/hf", Reply(200, HF))
    settings = make_settings(
        tmp_path,
        sqlite(tmp_path),
        [{"name": "hf", "kind": "hf_daily", "url": url, "every_minutes": 60}],
    )
    with Daemon(settings, clock=lambda: NOW, mailer=MemoryMailer()) as daemon:
        daemon.fetch_source("hf")
        assert daemon.app.count_papers() == 2
        assert "Speech Tokenizers Are Secretly Phoneme Recognizers" in (
            settings.feeds_dir / "all.atom"
        ).read_text(encoding="utf-8")
        health = daemon.app.store.source_health("hf")
    assert health is not None and health.last_new_paper_at == NOW


# ---------------------------------------------------------------------- stale alert


def test_weekday_hours_skip_saturday_and_sunday() -> None:
    zone = ZoneInfo("UTC")
    friday_noon = datetime(2025, 11, 21, 12, tzinfo=UTC)
    assert weekday_hours(friday_noon, friday_noon + timedelta(days=3), zone) == 24.0
    assert weekday_hours(friday_noon, friday_noon + timedelta(hours=6), zone) == 6.0
    saturday = datetime(2025, 11, 22, 1, tzinfo=UTC)
    assert weekday_hours(saturday, saturday + timedelta(hours=40), zone) == 0.0
    assert weekday_hours(friday_noon, friday_noon - timedelta(hours=1), zone) == 0.0
    # in the deployment's zone: Friday 23:00 UTC is already Saturday in Tokyo
    assert (
        weekday_hours(
            datetime(2025, 11, 21, 14, tzinfo=UTC),
            friday_noon + timedelta(hours=11),
            ZoneInfo("Asia/Tokyo"),
        )
        == 1.0
    )


def test_one_stale_alert_per_stale_spell(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(
        tmp_path,
        database_url,
        [{"name": "hf", "kind": "hf_daily", "every_minutes": 60}],
        sources_operator_email="ops@example.org",
    )
    mailer = MemoryMailer()
    monday = datetime(2025, 11, 24, 9, tzinfo=UTC)
    jobs = SourceJobs(settings, started=monday - timedelta(days=30))
    with Newsletter(settings, mailer=mailer) as app:
        app.store.record_source_success(
            "hf", monday, url="u", etag=None, last_modified=None, new_papers=True
        )
        assert jobs.check_stale(app, monday + timedelta(hours=35)) is False
        assert jobs.check_stale(app, monday + timedelta(hours=37)) is True
        assert jobs.check_stale(app, monday + timedelta(hours=50)) is True
        assert len(mailer.sent) == 1
        envelope, message = mailer.sent[0]
        assert envelope.recipient == "ops@example.org"
        assert b"Subject: Paper Digest: no new papers for 37 hours" in message
        assert b"- hf (hf_daily): last success 2025-11-24T09:00:00+00:00" in message
        warnings = [r for r in caplog.records if "no source has brought a new paper" in r.message]
        assert len(warnings) == 1  # one warning per spell, not one per check
        assert app.store.stale_alert_sent_at() == monday + timedelta(hours=37)

        # a new paper on Friday noon; the weekend does not count: Monday noon is 24 h
        friday = datetime(2025, 11, 28, 12, tzinfo=UTC)
        app.store.record_source_success(
            "hf", friday, url="u", etag=None, last_modified=None, new_papers=True
        )
        assert jobs.check_stale(app, friday + timedelta(days=3)) is False
        assert jobs.check_stale(app, friday + timedelta(days=3, hours=13)) is True
        assert len(mailer.sent) == 2  # a new spell: one more email
        assert jobs.check_stale(app, friday + timedelta(days=4)) is True
        assert len(mailer.sent) == 2


def test_stale_without_an_operator_only_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(
        tmp_path, sqlite(tmp_path), [{"name": "hf", "kind": "hf_daily", "every_minutes": 60}]
    )
    mailer = MemoryMailer()
    started = datetime(2025, 11, 24, 0, tzinfo=UTC)
    jobs = SourceJobs(settings, started=started)
    with Newsletter(settings, mailer=mailer) as app:
        assert jobs.check_stale(app, started + timedelta(hours=40)) is True
    assert mailer.sent == []
    assert any(
        "no source has brought a new paper for 40 weekday hours" in r.message
        for r in caplog.records
    )
