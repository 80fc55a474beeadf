"""Rendering in worker processes (``render_processes``): the same bytes as in-process, every
issue once, and a worker that dies loses nothing.

The pool only starts for passes of at least ``MIN_ISSUES_FOR_PROCESSES`` due issues; the tests
lower that bound so that a 12-reader pass uses real spawned workers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from newsletter import render_pool
from newsletter.app import Newsletter
from newsletter.config import Settings
from newsletter.deliver import MemoryMailer
from newsletter.domain import IssueContent, IssueState, SubscriberSource, SubscriberSpec
from newsletter.pipeline import issue_content
from newsletter.render import EmailRenderer
from newsletter.render_pool import RenderPoolBroken, RenderWorkers
from tests.conftest import NOW, SEEDS

READERS = 12


@pytest.fixture
def started_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wait for the workers when the pool is made, so that every batch goes to them (a pass
    renders in-process until its workers are up, which takes longer than these passes)."""
    original = RenderWorkers.__init__

    def wait_for_workers(self: RenderWorkers, renderer: EmailRenderer, processes: int) -> None:
        original(self, renderer, processes)
        for future in self._started:
            future.result()

    monkeypatch.setattr(RenderWorkers, "__init__", wait_for_workers)


def _settings(settings: Settings, processes: int) -> Settings:
    return settings.model_copy(update={"delivery_batch_size": 5, "render_processes": processes})


def _deliver(settings: Settings) -> tuple[MemoryMailer, list[IssueState], dict[str, bytes]]:
    """Deliver one issue to each of READERS readers; also render every issue again in this
    process, after the pass, for comparison (an issue's message is a function of the issue)."""
    mailer = MemoryMailer()
    with Newsletter(settings, mailer=mailer) as app:
        app.ingest([SEEDS], now=NOW)
        for n in range(READERS):
            app.store.upsert_subscriber(
                SubscriberSpec(
                    email=f"reader{n:02d}@example.org",
                    name=f"Reader {n}",
                    profile="speech, language, diffusion",
                    max_papers=4,
                    min_score=0.0,
                ),
                source=SubscriberSource.CLI,
                now=NOW,
            )
        assert app.plan_current_slots(NOW).planned == READERS
        app.deliver(NOW)
        issues = app.store.issues()
        subscribers = app.store.subscribers_by_id()
        again = {
            subscribers[i.subscriber_id].email: app.renderer.render(
                issue_content(app.store, i, subscribers[i.subscriber_id])
            ).message
            for i in issues
        }
    return mailer, [issue.state for issue in issues], again


def test_workers_render_the_same_bytes_as_the_sending_process(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, started_at_once: None
) -> None:
    monkeypatch.setattr(render_pool, "MIN_ISSUES_FOR_PROCESSES", 1)
    started: list[int] = []
    original = RenderWorkers.__init__

    def spy(self: RenderWorkers, renderer: EmailRenderer, processes: int) -> None:
        started.append(processes)
        original(self, renderer, processes)

    rendered: list[int] = []
    original_render = RenderWorkers.render

    def count(self: RenderWorkers, contents: Sequence[IssueContent]) -> list[object]:
        rendered.append(len(contents))
        return list(original_render(self, contents))

    monkeypatch.setattr(RenderWorkers, "__init__", spy)
    monkeypatch.setattr(RenderWorkers, "render", count)
    mailer, states, in_process = _deliver(_settings(settings, 2))
    assert started == [2]
    assert rendered == [5, 5, 2]  # every batch went to the workers
    assert states == [IssueState.SENT] * READERS
    sent = {envelope.recipient: message for envelope, message in mailer.sent}
    assert len(mailer.sent) == len(sent) == READERS
    assert sent == in_process  # byte for byte: same Message-ID, Date, boundary and bodies
    assert all(b"Content-Type: multipart/alternative" in m for m in sent.values())


@pytest.mark.parametrize(
    ("processes", "threshold"),
    [(2, render_pool.MIN_ISSUES_FOR_PROCESSES), (0, 1)],
    ids=["below-threshold", "disabled"],
)
def test_no_pool_below_the_threshold_or_when_disabled(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, processes: int, threshold: int
) -> None:
    started: list[int] = []
    monkeypatch.setattr(RenderWorkers, "__init__", lambda *a: started.append(1))
    monkeypatch.setattr(render_pool, "MIN_ISSUES_FOR_PROCESSES", threshold)
    mailer, states, in_process = _deliver(_settings(settings, processes))
    assert started == []
    assert states == [IssueState.SENT] * READERS
    assert {e.recipient: m for e, m in mailer.sent} == in_process


def test_a_dead_worker_loses_nothing(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    started_at_once: None,
) -> None:
    """The first batch goes to a pool whose workers were SIGKILLed: the pass renders it and
    every later batch in-process, and every issue is sent exactly once."""
    monkeypatch.setattr(render_pool, "MIN_ISSUES_FOR_PROCESSES", 1)
    original = RenderWorkers.render
    killed: list[int] = []

    def kill_then_render(self: RenderWorkers, contents: Sequence[IssueContent]) -> list[object]:
        if not killed:
            original(self, contents[:1])  # the workers are up
            for pid in list(self._pool._processes):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        return list(original(self, contents))

    monkeypatch.setattr(RenderWorkers, "render", kill_then_render)
    mailer, states, _ = _deliver(_settings(settings, 1))
    assert len(killed) == 1
    assert "rendering worker process died" in caplog.text
    assert "rendering the rest in this process" in caplog.text
    assert states == [IssueState.SENT] * READERS
    assert sorted(e.recipient for e, _ in mailer.sent) == [
        f"reader{n:02d}@example.org" for n in range(READERS)
    ]


def test_a_broken_pool_says_so(settings: Settings) -> None:
    with Newsletter(settings) as app:
        renderer: EmailRenderer = app.renderer
    with RenderWorkers(renderer, 1) as workers:
        assert workers.render([]) == []
        workers._pool.submit(os.getpid).result()  # start the worker
        for pid in list(workers._pool._processes):
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(RenderPoolBroken, match="rendering worker process died"):
            workers.render([_content_for(app)])


def _content_for(app: Newsletter) -> IssueContent:
    from newsletter.domain import ScoredPaper
    from newsletter.profile import parse_profile
    from tests.factories import make_paper, make_subscriber

    paper = make_paper(1, "Speech models", "About speech.")
    return IssueContent(
        subscriber=make_subscriber(),
        slot_date=NOW.date(),
        papers=(ScoredPaper(paper, 1.0, ()),),
        profile=parse_profile("speech"),
        created_at=NOW,
    )


def test_workers_that_cannot_start_leave_rendering_in_process(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(render_pool, "MIN_ISSUES_FOR_PROCESSES", 1)

    def cannot_start(self: RenderWorkers, renderer: EmailRenderer, processes: int) -> None:
        raise OSError("no more processes")

    monkeypatch.setattr(RenderWorkers, "__init__", cannot_start)
    mailer, states, in_process = _deliver(_settings(settings, 2))
    assert "cannot start the rendering workers (no more processes)" in caplog.text
    assert states == [IssueState.SENT] * READERS
    assert {e.recipient: m for e, m in mailer.sent} == in_process


_ORPHAN = """
import os, sys
from newsletter.config import Settings
from newsletter.app import Newsletter
from newsletter.render_pool import RenderWorkers

if __name__ == "__main__":
    with Newsletter(Settings(database_url=sys.argv[1])) as app:
        workers = RenderWorkers(app.renderer, 1)
        for future in workers._started:
            print(future.result(), flush=True)
        os.kill(os.getpid(), 9)  # the parent dies without shutting the pool down
"""


def test_a_worker_ends_when_its_parent_is_killed(tmp_path: Path) -> None:
    """A spawned worker ignores Ctrl-C and waits on its job queue: without a watch on its
    parent it would outlive a SIGKILLed run forever (seen: parent PID 1, still running)."""
    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script), f"sqlite:///{tmp_path / 'db.sqlite'}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    worker = int(done.stdout.split()[0])
    deadline = time.monotonic() + 30  # the watch looks once a second
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(worker), f"render worker {worker} outlived its parent"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"
