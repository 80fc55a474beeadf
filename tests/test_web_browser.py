"""The web side in a real browser: Debian's chromium driven by Playwright, against the app
served by uvicorn on a free loopback port in a background thread.

Playwright never downloads a browser here: it launches /usr/bin/chromium (the setup script
installs it). Without that binary or the playwright package these tests skip with the reason.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from newsletter.config import Settings, load_settings
from newsletter.deliver import MemoryMailer
from newsletter.domain import SubscriberStatus
from newsletter.web import create_app
from newsletter.web.sender import ConfirmationSender
from tests.browser import launched, require_browser
from tests.conftest import NOW, ROOT
from tests.factories import CONFIG, open_store, run_once, workspace_env
from tests.test_web import (
    DAY,
    XSS_TITLE,
    Clock,
    confirm_links,
    xss_settings,
)

ARTIFACTS = ROOT / "tests" / "artifacts"
require_browser()

import uvicorn  # noqa: E402  (after the skips: only needed when the tests run)
from playwright.sync_api import Browser, Dialog, Page, expect  # noqa: E402


@dataclass
class Served:
    url: str
    settings: Settings
    mailer: MemoryMailer
    sender: ConfirmationSender  # wait_idle() before reading the mailer


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launched()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 900, "height": 1000})
    p = context.new_page()
    refused: list[str] = []
    p.on("console", lambda m: refused.append(m.text) if "Refused to" in m.text else None)
    yield p
    context.close()
    # A CSP violation (a blocked stylesheet, an inline style on our pages) is logged as
    # "Refused to apply/load/execute …". (4xx answers, such as a form with errors or the
    # favicon, are logged as errors too, and are expected.)
    assert refused == []


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def serve(settings: Settings, sock: socket.socket) -> Iterator[Served]:
    """Run the app on uvicorn in a thread until the test is done."""
    mailer = MemoryMailer()
    app = create_app(settings, mailer=mailer, clock=Clock(NOW), secret=b"browser-test-secret!")
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Served(settings.base_url, settings, mailer, app.state.web.sender)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def settings_for(workdir: Path, database_url: str, base_url: str) -> Settings:
    return load_settings(CONFIG, environ=workspace_env(workdir, database_url, base_url=base_url))


@pytest.fixture
def site(workdir: Path, database_url: str) -> Iterator[Served]:
    """The seed corpus after one run, served; base_url is the server's own address."""
    sock = free_socket()
    settings = settings_for(workdir, database_url, f"http://127.0.0.1:{sock.getsockname()[1]}")
    run_once(settings, now=NOW, mailer=MemoryMailer())
    with serve(settings, sock) as served:
        yield served


def status_of(settings: Settings, address: str) -> SubscriberStatus:
    store = open_store(settings)
    try:
        found = store.subscriber(address)
        assert found is not None
        return found.status
    finally:
        store.close()


def test_subscribe_confirm_edit_preferences_unsubscribe(site: Served, page: Page) -> None:
    page.goto(site.url + "/")
    expect(page.locator("h1")).to_have_text("Paper Digest")
    # The stylesheet came through the CSP (style-src 'self').
    assert page.eval_on_selector("button", "b => getComputedStyle(b).borderRadius") == "6px"
    page.fill("#sub-email", "hedy@example.org")
    page.fill("#sub-name", "Hedy Lamarr")
    page.fill("#sub-profile", '"speech recognition"^2, asr')
    page.fill("#sub-timezone", "Europe/Vienna")
    expect(page.locator("#sub-send_at")).to_have_value("07:00")  # the defaults
    expect(page.locator("#sub-max_papers")).to_have_value("10")
    expect(page.locator("input[name=days]:checked")).to_have_count(0)  # every day
    page.fill("#sub-send_at", "07:15")
    page.check("input[name=days][value=tue]")
    page.fill("#sub-max_papers", "6")
    page.get_by_role("button", name="Subscribe").click()
    expect(page.locator("h1")).to_have_text("Check your inbox")
    expect(page.locator("main")).to_contain_text("If hedy@example.org can be subscribed")
    assert status_of(site.settings, "hedy@example.org") is SubscriberStatus.PENDING

    assert site.sender.wait_idle(30), "the confirmation email was not sent"
    (link,) = confirm_links(site.mailer)
    assert link.startswith(site.url + "/confirm/")
    page.goto(link)
    expect(page.locator("h1")).to_have_text("Confirm your subscription")
    assert status_of(site.settings, "hedy@example.org") is SubscriberStatus.PENDING
    expect(page.locator("#settings")).to_contain_text("on Tuesdays at 07:15 (Europe/Vienna time)")
    page.get_by_role("button", name="Confirm subscription").click()
    expect(page.locator("h1")).to_have_text("You are subscribed")
    assert status_of(site.settings, "hedy@example.org") is SubscriberStatus.ACTIVE
    store = open_store(site.settings)
    hedy = store.subscriber("hedy@example.org")
    store.close()
    assert hedy is not None
    feed = f"{site.url}/feeds/{hedy.feed_token}.atom"
    expect(page.locator("#feed-atom")).to_have_attribute("href", feed)
    assert site.sender.wait_idle(30), "the welcome email was not sent"
    assert [e.recipient for e, _ in site.mailer.sent] == ["hedy@example.org"] * 2
    assert feed.encode() in site.mailer.sent[1][1]  # the welcome email

    page.click("#preferences-link")
    expect(page.locator("h1")).to_have_text("Preferences for hedy@example.org")
    expect(page.locator("#pref-timezone")).to_have_value("Europe/Vienna")
    expect(page.locator("#pref-send_at")).to_have_value("07:15")
    expect(page.locator("#pref-max_papers")).to_have_value("6")
    expect(page.locator("#feed-atom")).to_have_attribute("href", feed)
    page.fill("#pref-send_at", "25:00")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#error-send_at")).to_have_text(
        "send_at '25:00' is not a time of day like 07:30 (24-hour HH:MM)"
    )
    expect(page.locator("#pref-send_at")).to_have_value("25:00")
    store = open_store(site.settings)
    hedy = store.subscriber("hedy@example.org")
    store.close()
    assert hedy is not None and hedy.send_at.isoformat() == "07:15:00"

    page.fill("#pref-send_at", "06:30")
    page.uncheck("input[name=days][value=tue]")
    page.check("input[name=days][value=mon]")
    page.check("input[name=days][value=thu]")
    page.fill("#pref-max_papers", "5")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#notice")).to_have_text("Saved.")
    expect(page.locator("p.error")).to_have_count(0)
    store = open_store(site.settings)
    hedy = store.subscriber("hedy@example.org")
    store.close()
    assert hedy is not None
    assert (hedy.send_at.isoformat(), hedy.weekdays, hedy.max_papers, hedy.timezone) == (
        "06:30:00",
        (0, 3),
        5,
        "Europe/Vienna",
    )

    page.get_by_role("link", name="Unsubscribe").first.click()
    expect(page.locator("h1")).to_have_text("Unsubscribe")
    assert status_of(site.settings, "hedy@example.org") is SubscriberStatus.ACTIVE
    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.locator("h1")).to_have_text("You are unsubscribed")
    assert status_of(site.settings, "hedy@example.org") is SubscriberStatus.UNSUBSCRIBED
    page.reload()  # a GET of the page changes nothing
    expect(page.locator("h1")).to_have_text("You are unsubscribed")
    assert status_of(site.settings, "hedy@example.org") is SubscriberStatus.UNSUBSCRIBED
    page.get_by_role("button", name="Subscribe again").click()
    expect(page.locator("h1")).to_have_text("You are subscribed again")
    assert status_of(site.settings, "hedy@example.org") is SubscriberStatus.ACTIVE


def test_preferences_of_a_file_subscriber_are_read_only(site: Served, page: Page) -> None:
    store = open_store(site.settings)
    ada = store.subscriber("ada@example.org")
    store.close()
    assert ada is not None
    page.goto(f"{site.url}/preferences/{ada.token}")
    expect(page.locator("#file-notice")).to_contain_text(
        "managed in the subscribers file by the operator"
    )
    expect(page.locator("#pref-send_at")).to_be_disabled()
    expect(page.locator("#pref-send_at")).to_have_value("07:30")
    expect(page.locator("#pref-profile")).to_be_disabled()
    expect(page.get_by_role("button")).to_have_count(0)  # nothing to save
    expect(page.locator("#feed-atom")).to_be_visible()


def test_script_title_shows_as_text(tmp_path: Path, database_url: str, browser: Browser) -> None:
    sock = free_socket()
    settings = xss_settings(
        tmp_path, database_url, base_url=f"http://127.0.0.1:{sock.getsockname()[1]}"
    )
    run_once(settings, now=NOW, mailer=MemoryMailer())
    store = open_store(settings)
    mallory = store.subscriber("mallory@example.org")
    store.close()
    assert mallory is not None
    with serve(settings, sock) as served:
        context = browser.new_context()
        page = context.new_page()
        dialogs: list[str] = []

        def on_dialog(dialog: Dialog) -> None:
            dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        for path in (f"/issues/{mallory.token}/{DAY}", f"/days/{DAY}"):
            page.goto(served.url + path)
            page.wait_for_load_state("load")
            # (the archive lists it twice: in the titles and on its card)
            expect(page.get_by_role("link", name=XSS_TITLE, exact=True).last).to_be_visible()
            assert page.locator("script").count() == 0
            assert page.locator("img").count() == 0
            assert XSS_TITLE in page.inner_text("body")
        page.wait_for_timeout(300)  # a dialog would have opened by now
        assert dialogs == []
        context.close()


def test_archived_issue_screenshot(site: Served, page: Page) -> None:
    store = open_store(site.settings)
    ada = store.subscriber("ada@example.org")
    store.close()
    assert ada is not None
    response = page.goto(f"{site.url}/issues/{ada.token}/{DAY}")
    assert response is not None and response.status == 200
    expect(page.locator(".brand").first).to_have_text("Paper Digest")
    cards = page.locator("a", has_text=re.compile(r"\w"))
    assert cards.count() > 8
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = ARTIFACTS / "archived_issue.png"
    page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 10_000
