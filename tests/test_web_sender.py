"""The web never sends mail on a request thread: confirmation emails go through the background
sender (newsletter/web/sender.py), on SQLite and (when given) PostgreSQL.

The SMTP server is real (aiosmtpd on loopback, tests/smtp_server.py) and can hold every
message at DATA until the test releases it; the app runs on a real uvicorn server in a thread
(or under Starlette's TestClient). Nothing is mocked between the app and the SMTP socket.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx2
import pytest
import uvicorn
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.testclient import TestClient

from newsletter.accounts import CONFIRM_MAX_AGE, ConfirmationJob
from newsletter.config import Settings
from newsletter.deliver import Envelope as MailEnvelope
from newsletter.deliver import MemoryMailer
from newsletter.store import Store
from newsletter.web import create_app
from newsletter.web.sender import ConfirmationSender
from tests.conftest import NOW
from tests.factories import open_store, with_web
from tests.smtp_server import Received, Recorder, SmtpServer, free_port, smtp_settings
from tests.test_web import SECRET, Clock, subscribe_form, web_context

SUBSCRIBES = 45
#: Upper bound for anything the test waits for (never a timing assertion: a deadline).
DEADLINE = 60.0
CONFIRM = re.compile(r"/confirm/([A-Za-z0-9_-]+)")


@dataclass
class HoldingRecorder(Recorder):
    """Holds every message at DATA until ``release`` is set; ``arrived`` counts the messages
    whose DATA started (held or not), ``received`` only the completed ones."""

    release: threading.Event = field(default_factory=threading.Event)
    arrived: int = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.arrived += 1
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        return await super().handle_DATA(server, session, envelope)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition()`` until it is true; fail after :data:`DEADLINE`."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.02)


@contextmanager
def serve(app: Starlette) -> Iterator[str]:
    """Run the app on uvicorn on a free loopback port in a thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), "uvicorn to start")
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=DEADLINE)
        sock.close()
    assert not thread.is_alive(), "uvicorn did not stop"


def token_of(message: Received) -> str:
    msg = email.message_from_bytes(message.raw, policy=email.policy.default)
    found = CONFIRM.findall(msg.as_string())
    assert len(found) == 1, found
    return str(found[0])


def confirm_hash(store: Store, address: str) -> str | None:
    with store.engine.connect() as conn:
        value = conn.execute(
            text("SELECT confirm_token_hash FROM subscribers WHERE email = :email"),
            {"email": address},
        ).scalar_one()
    return None if value is None else str(value)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    s = open_store(settings)
    yield s
    s.close()


# ---------------------------------------------------------------------- a slow SMTP server


def test_subscribes_answer_while_the_smtp_server_holds_every_message(
    settings: Settings, store: Store
) -> None:
    recorder = HoldingRecorder()
    addresses = [f"reader{n:02d}@example.org" for n in range(SUBSCRIBES)]
    with SmtpServer(recorder) as smtp:
        # A long SMTP timeout: the server holds the first message until the test says so.
        app = create_app(
            # One client posts all 45: lift the per-client rate limit (tests/test_web_abuse.py).
            with_web(
                smtp_settings(settings, smtp.port, timeout_seconds=DEADLINE),
                subscribe_limit_per_client="",
            ),
            clock=Clock(NOW),
            secret=SECRET,
        )
        try:
            with (
                serve(app) as url,
                httpx2.Client(base_url=url, limits=httpx2.Limits(max_connections=50)) as http,
                ThreadPoolExecutor(SUBSCRIBES) as pool,
            ):
                posts = list(
                    pool.map(lambda a: http.post("/subscribe", data=subscribe_form(a)), addresses)
                )
                assert [r.status_code for r in posts] == [200] * SUBSCRIBES
                assert all("<h1>Check your inbox</h1>" in r.text for r in posts)
                # The sender is stuck in the first message's DATA; the site still answers.
                wait_for(lambda: recorder.arrived >= 1, "the first message to reach DATA")
                started = time.perf_counter()
                assert http.get("/").status_code == 200
                # Reported, not asserted (timings on a shared machine are noisy).
                print(f"\nGET / while 45 confirmations wait: {time.perf_counter() - started:.3f} s")
                assert recorder.arrived == 1 and recorder.received == []
                recorder.release.set()
                wait_for(lambda: len(recorder.received) >= SUBSCRIBES, "all 45 confirmations")
                assert web_context(app).sender.wait_idle(DEADLINE)
        finally:
            recorder.release.set()
    assert sorted(m.recipient for m in recorder.received) == addresses  # one per address
    for message in recorder.received:
        sub = store.pending_confirmation(token_of(message), NOW, max_age=CONFIRM_MAX_AGE)
        assert sub is not None and sub.email == message.recipient


# ---------------------------------------------------------------------- failed sends


@pytest.mark.parametrize("fault", ["refused", "down"])
def test_a_failed_send_withdraws_the_token_so_a_new_submission_sends_again(
    settings: Settings, store: Store, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    address = "hedy@example.org"
    recorder = Recorder()
    smtp = SmtpServer(recorder, port=free_port())
    if fault == "refused":
        recorder.refuse[address] = "550 5.1.1 <hedy@example.org>: mailbox unavailable"
        smtp.start()
    app = create_app(smtp_settings(settings, smtp.port), clock=Clock(NOW), secret=SECRET)
    try:
        with TestClient(app) as client:
            ctx = web_context(app)
            first = client.post("/subscribe", data=subscribe_form(address))
            assert first.status_code == 200 and "<h1>Check your inbox</h1>" in first.text
            assert ctx.sender.wait_idle(DEADLINE)
            assert recorder.received == []
            assert confirm_hash(store, address) is None  # withdrawn: no link is on file
            hedy = store.subscriber(address)
            assert hedy is not None
            assert f"confirmation for subscriber {hedy.id} not sent" in caplog.text

            # The server is back (or accepts the address): the next submission sends at once,
            # not an hour later.
            if fault == "refused":
                del recorder.refuse[address]
            else:
                smtp.start()
            again = client.post("/subscribe", data=subscribe_form(address))
            assert again.status_code == 200 and again.text == first.text
            assert ctx.sender.wait_idle(DEADLINE)
            (message,) = recorder.received
            token = token_of(message)
            sub = store.pending_confirmation(token, NOW, max_age=CONFIRM_MAX_AGE)
            assert sub is not None and sub.email == address
            assert f"confirmation sent to subscriber {hedy.id}" in caplog.text
            assert token not in caplog.text
    finally:
        smtp.stop()


def test_a_full_queue_withdraws_the_token_at_once(
    settings: Settings, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    mailer = MemoryMailer()
    app = create_app(settings, mailer=mailer, clock=Clock(NOW), secret=SECRET)
    ctx = web_context(app)
    started, release = threading.Event(), threading.Event()

    def slow_send(job: ConfirmationJob) -> bool:
        started.set()
        assert release.wait(DEADLINE)
        return ctx.app.send_confirmation(job)

    ctx.sender = ConfirmationSender(slow_send, ctx.app.withdraw_confirmation, maxsize=1)
    addresses = ["a@example.org", "b@example.org", "c@example.org"]
    try:
        with TestClient(app) as client:
            assert client.post("/subscribe", data=subscribe_form(addresses[0])).status_code == 200
            assert started.wait(DEADLINE)  # a's email is being sent, the queue is empty
            for address in addresses[1:]:  # b fills the queue; c finds it full
                assert client.post("/subscribe", data=subscribe_form(address)).status_code == 200
            assert confirm_hash(store, "c@example.org") is None
            assert "send queue is full" in caplog.text
            release.set()
            assert ctx.sender.wait_idle(DEADLINE)
    finally:
        release.set()
    assert [e.recipient for e, _ in mailer.sent] == addresses[:2]
    assert confirm_hash(store, "a@example.org") is not None
    assert confirm_hash(store, "b@example.org") is not None


# ---------------------------------------------------------------------- the sender itself


def job(n: int) -> ConfirmationJob:
    envelope = MailEnvelope("d@example.org", f"r{n}@example.org", f"<{n}@example.org>", f"c{n}")
    return ConfirmationJob(n, f"secret-token-{n}", envelope, b"message")


def test_shutdown_drains_with_a_bounded_wait_and_withdraws_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started, release = threading.Event(), threading.Event()
    sent: list[int] = []
    withdrawn: list[tuple[int, str]] = []

    def send(j: ConfirmationJob) -> None:
        started.set()
        assert release.wait(DEADLINE)
        sent.append(j.subscriber_id)

    sender = ConfirmationSender(send, lambda j, why: withdrawn.append((j.subscriber_id, why)))
    assert sender.submit(job(1))
    assert started.wait(DEADLINE)
    assert sender.submit(job(2)) and sender.submit(job(3))
    try:
        sender.close(timeout=0.1)  # job 1 is held: the wait runs out
        assert withdrawn == [(2, "not sent before shutdown"), (3, "not sent before shutdown")]
        assert not sender.submit(job(4))  # closed
        assert "2 email(s) still queued" in caplog.text
    finally:
        release.set()
        sender.close(timeout=DEADLINE)  # waits for the worker again
    assert sent == [1]
    assert "secret-token" not in caplog.text and "secret-token" not in repr(job(1))


def test_the_worker_survives_an_unexpected_error(caplog: pytest.LogCaptureFixture) -> None:
    sent: list[int] = []

    def send(j: ConfirmationJob) -> None:
        if j.subscriber_id == 1:
            raise RuntimeError("a bug")
        sent.append(j.subscriber_id)

    sender = ConfirmationSender(send, lambda j, why: None)
    try:
        assert sender.submit(job(1)) and sender.submit(job(2))
        assert sender.wait_idle(DEADLINE)
    finally:
        sender.close()
    assert sent == [2]
    assert "the confirmation of subscriber 1 failed" in caplog.text
