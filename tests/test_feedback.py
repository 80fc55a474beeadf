"""Reader feedback (issue 15): "more / less like this" links and pages, muting a term, the
``feedback`` table, ``newsletter feedback add|list`` and the ids in ``rank --json``; on SQLite
and (when given) PostgreSQL."""

from __future__ import annotations

import email
import email.policy
import html
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from urllib.parse import quote

import feedparser
import pytest
from click.testing import CliRunner
from markupsafe import escape
from starlette.testclient import TestClient

from newsletter.app import Newsletter
from newsletter.cli import cli
from newsletter.config import Settings
from newsletter.deliver import MemoryMailer
from newsletter.domain import (
    Judgment,
    ParsedPaper,
    Subscriber,
    SubscriberSource,
    SubscriberSpec,
    SubscriberStatus,
)
from newsletter.errors import FeedbackError
from newsletter.profile import parse_profile
from newsletter.render import mute_terms
from newsletter.store import KeyedPaper, Store
from tests.conftest import NOW
from tests.factories import open_store, run_once, settings_env, sql_statements
from tests.test_web import Clock, csrf_of, make_client

DAY = "2026-11-23"
ADA = "ada@example.org"
#: A subscriber the CLI added (not from the subscribers file): muting works for them.
LIN = "lin@example.org"
LIN_PROFILE = 'speech, "speech synthesis"'


# ---------------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def mailer() -> MemoryMailer:
    """The messages of the fixture's run (Ada, Grace and Karen: the subscribers file's)."""
    return MemoryMailer()


@pytest.fixture
def client(settings: Settings, mailer: MemoryMailer, clock: Clock) -> Iterator[TestClient]:
    """The app after one run (380 papers, one sent issue each for the file's subscribers),
    with Lin added from the CLI afterwards (no issue yet)."""
    run_once(settings, now=NOW, mailer=mailer)
    with Newsletter(settings) as app:
        app.add_subscriber(LIN, {"profile": LIN_PROFILE}, now=NOW)
    with make_client(settings, MemoryMailer(), clock) as c:
        yield c


@pytest.fixture
def db(settings: Settings) -> Iterator[Store]:
    s = open_store(settings)
    yield s
    s.close()


def sub_of(store: Store, address: str) -> Subscriber:
    found = store.subscriber(address)
    assert found is not None
    return found


def html_and_text(mailer: MemoryMailer, address: str) -> tuple[str, str]:
    (raw,) = [m for e, m in mailer.sent if e.recipient == address]
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    html_part, text_part = msg.get_body(("html",)), msg.get_body(("plain",))
    assert html_part is not None and text_part is not None
    crlf = "\r\n"  # SMTP line endings
    return html_part.get_content().replace(crlf, "\n"), text_part.get_content().replace(crlf, "\n")


def esc(text: str) -> str:
    """As Jinja2 and the email renderer escape: ``"`` is ``&#34;``."""
    return str(escape(text))


def forms(page: str) -> list[str]:
    return re.findall(r"<form\b.*?</form>", page, flags=re.S)


def buttons(page: str) -> list[str]:
    return re.findall(r"<button\b", page)


# ---------------------------------------------------------------------- storage


def _seed(store: Store) -> tuple[list[int], list[int]]:
    keyed = [
        KeyedPaper(key=f"title:p{i}", paper=ParsedPaper(title=f"P{i}", abstract="x"))
        for i in range(3)
    ]
    store.record_digest(path="d", content_hash="h", size=1, seen_at=NOW, format="t", papers=keyed)
    subs = [
        store.upsert_subscriber(
            SubscriberSpec(email=f"s{i}@example.org", profile="x"),
            source=SubscriberSource.CLI,
            now=NOW,
        )[0].id
        for i in range(2)
    ]
    return subs, [p.id for p in store.papers()]


def test_judgments_latest_wins_and_are_read_in_bulk(store: Store) -> None:
    (a, b), (p1, p2, p3) = _seed(store)
    later = NOW.replace(hour=10)
    assert store.record_judgment(a, p1, Judgment.LIKE, NOW)
    assert store.record_judgment(a, p1, Judgment.DISLIKE, later)  # the latest wins
    assert store.record_judgment(a, p2, Judgment.LIKE, NOW)
    assert store.record_judgment(b, p3, Judgment.DISLIKE, NOW)
    # unknown paper or subscriber: refused by the foreign keys, nothing stored
    assert not store.record_judgment(a, 999_999, Judgment.LIKE, NOW)
    assert not store.record_judgment(999_999, p1, Judgment.LIKE, NOW)
    with sql_statements(store, with_transactions=False) as statements:
        found = store.judgments([a, b, 424242])
    assert len(statements) == 1  # one query for many subscribers
    assert found == {
        a: {p1: Judgment.DISLIKE, p2: Judgment.LIKE},
        b: {p3: Judgment.DISLIKE},
    }
    entries = store.feedback_entries(a)
    assert [(e.paper_id, e.judgment) for e in entries] == [
        (p1, Judgment.DISLIKE),
        (p2, Judgment.LIKE),
    ]
    assert (entries[0].created_at, entries[0].updated_at) == (NOW, later)


# ---------------------------------------------------------------------- CLI


def test_cli_records_and_lists_judgments(client: TestClient, settings: Settings, db: Store) -> None:
    runner = CliRunner(env=settings_env(settings))
    ranked = runner.invoke(cli, ["rank", "--profile", "speech", "--limit", "3", "--json"])
    assert ranked.exit_code == 0, ranked.output
    rows = json.loads(ranked.output)
    ids = [r["id"] for r in rows]
    assert len(ids) == 3 and all(isinstance(i, int) for i in ids)
    papers = db.papers_by_id(ids)
    assert [papers[r["id"]].title for r in rows] == [r["title"] for r in rows]  # the right ids

    first, second = ids[0], ids[1]
    for args in (
        [first, "--like"],
        [second, "--like"],
        [second, "--dislike"],  # replaces the like
    ):
        r = runner.invoke(cli, ["feedback", "add", ADA, "--paper", str(args[0]), str(args[1])])
        assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["feedback", "add", ADA, "--paper", str(first), "--like", "--json"])
    assert json.loads(r.output) == {
        "email": ADA,
        "paper": first,
        "title": papers[first].title,
        "judgment": "like",
    }
    ada = sub_of(db, ADA)
    assert db.judgments([ada.id]) == {ada.id: {first: Judgment.LIKE, second: Judgment.DISLIKE}}
    listed = runner.invoke(cli, ["feedback", "list", ADA, "--json"])
    assert listed.exit_code == 0, listed.output
    assert {(e["paper"], e["judgment"]) for e in json.loads(listed.output)} == {
        (first, "like"),
        (second, "dislike"),
    }
    text = runner.invoke(cli, ["feedback", "list", ADA])
    assert papers[first].title in text.output and "dislike" in text.output

    # errors: no judgment, unknown paper, unknown subscriber (one `error:` line, status 1)
    assert runner.invoke(cli, ["feedback", "add", ADA, "--paper", str(first)]).exit_code == 2
    for args in (
        ["feedback", "add", ADA, "--paper", "999999", "--like"],
        ["feedback", "add", "nobody@example.org", "--paper", str(first), "--like"],
        ["feedback", "list", "nobody@example.org"],
    ):
        r = runner.invoke(cli, args)
        assert r.exit_code == 1 and r.exception is not None, args
    assert db.judgments([ada.id]) == {ada.id: {first: Judgment.LIKE, second: Judgment.DISLIKE}}


# ---------------------------------------------------------------------- "more / less like this"


def test_feedback_get_changes_nothing_and_shows_one_button(client: TestClient, db: Store) -> None:
    ada = sub_of(db, ADA)
    (issue,) = [i for i in db.issues() if i.subscriber_id == ada.id]
    for paper_id in issue.paper_ids:
        for judgment in ("like", "dislike"):
            r = client.get(f"/feedback/{ada.token}/{paper_id}/{judgment}")
            assert r.status_code == 200
            assert len(forms(r.text)) == 1 and len(buttons(r.text)) == 1
            assert 'method="post"' in r.text and 'name="csrf"' in r.text
            assert r.headers["cache-control"] == "no-store"
    assert db.judgments([ada.id]) == {}  # a link scanner opening every link records nothing


def test_feedback_post_with_a_signed_form_records(client: TestClient, db: Store) -> None:
    ada = sub_of(db, ADA)
    (issue,) = [i for i in db.issues() if i.subscriber_id == ada.id]
    paper_id = issue.paper_ids[0]
    path = f"/feedback/{ada.token}/{paper_id}/like"
    r = client.post(path, data={"csrf": csrf_of(client.get(path).text)})
    assert r.status_code == 200
    assert 'id="feedback-done"' in r.text
    assert f'href="/preferences/{ada.token}"' in r.text  # a link back
    assert db.judgments([ada.id]) == {ada.id: {paper_id: Judgment.LIKE}}
    # "less like this" later replaces it
    path = f"/feedback/{ada.token}/{paper_id}/dislike"
    assert client.post(path, data={"csrf": csrf_of(client.get(path).text)}).status_code == 200
    assert db.judgments([ada.id]) == {ada.id: {paper_id: Judgment.DISLIKE}}


def test_feedback_post_without_a_valid_signature_is_refused(client: TestClient, db: Store) -> None:
    ada, grace = sub_of(db, ADA), sub_of(db, "grace@example.org")
    (issue,) = [i for i in db.issues() if i.subscriber_id == ada.id]
    p1, p2 = issue.paper_ids[:2]
    path = f"/feedback/{ada.token}/{p1}/like"
    other_paper = csrf_of(client.get(f"/feedback/{ada.token}/{p2}/like").text)
    other_judgment = csrf_of(client.get(f"/feedback/{ada.token}/{p1}/dislike").text)
    other_subscriber = csrf_of(client.get(f"/feedback/{grace.token}/{p1}/like").text)
    # A valid signature of another form: Lin's preferences (Ada's are read-only, unsigned).
    preferences_form = csrf_of(client.get(f"/preferences/{sub_of(db, LIN).token}").text)
    for csrf in ("", "garbage", "a.1.b", other_paper, other_judgment, other_subscriber):
        r = client.post(path, data={"csrf": csrf})
        assert r.status_code == 403, csrf
        assert 'id="notice"' in r.text and len(buttons(r.text)) == 1  # press again
    r = client.post(path, data={"csrf": preferences_form})
    assert r.status_code == 403
    assert client.post(path).status_code == 415  # no form at all
    assert db.judgments([ada.id, grace.id]) == {}


def test_unknown_token_paper_or_judgment_is_404(client: TestClient, db: Store) -> None:
    ada = sub_of(db, ADA)
    (issue,) = [i for i in db.issues() if i.subscriber_id == ada.id]
    pid = issue.paper_ids[0]
    for path in (
        f"/feedback/unknown-token/{pid}/like",
        f"/feedback/{ada.token}/999999/like",
        f"/feedback/{ada.token}/0/like",
        f"/feedback/{ada.token}/{10**30}/like",
        f"/feedback/{ada.token}/{pid}/love",
        f"/feedback/{ada.token}/abc/like",
        "/mute/unknown-token?term=speech",
        f"/mute/{ada.feed_token}?term=speech",  # a feed's token cannot change the profile
    ):
        assert client.get(path).status_code == 404, path
        assert client.post(path, data={"csrf": "x"}).status_code == 404, path
    assert db.judgments([ada.id]) == {}


def test_a_pending_subscriber_has_no_feedback_pages(client: TestClient, db: Store) -> None:
    """A web sign-up never confirmed was never sent a paper: its token opens nothing here,
    and ``feedback add`` refuses it (so an unconfirmed row can still be deleted)."""
    request = db.request_confirmation(
        SubscriberSpec(email="pending@example.org", profile="speech"),
        NOW,
        resend_after=timedelta(hours=1),
    )
    assert request.token is not None
    pending = sub_of(db, "pending@example.org")
    assert pending.status is SubscriberStatus.PENDING
    (paper,) = db.papers()[:1]
    for path in (
        f"/feedback/{pending.token}/{paper.id}/like",
        f"/feedback/{pending.feed_token}/{paper.id}/like",
        f"/mute/{pending.token}?term=speech",
    ):
        assert client.get(path).status_code == 404, path
    with pytest.raises(FeedbackError, match="not confirmed"):
        with Newsletter(client.app.state.web.settings) as app:  # type: ignore[attr-defined]
            app.add_judgment("pending@example.org", paper.id, Judgment.LIKE)
    assert db.judgments([pending.id]) == {}


def test_the_feed_token_can_judge_but_not_more(client: TestClient, db: Store) -> None:
    ada = sub_of(db, ADA)
    (issue,) = [i for i in db.issues() if i.subscriber_id == ada.id]
    pid = issue.paper_ids[0]
    path = f"/feedback/{ada.feed_token}/{pid}/dislike"
    page = client.get(path).text
    assert ada.token not in page  # no preferences link from a feed's page
    r = client.post(path, data={"csrf": csrf_of(page)})
    assert r.status_code == 200 and ada.token not in r.text
    assert db.judgments([ada.id]) == {ada.id: {pid: Judgment.DISLIKE}}


# ---------------------------------------------------------------------- muting a term


def test_mute_adds_the_exclusion_and_planning_drops_its_papers(
    client: TestClient, settings: Settings, db: Store
) -> None:
    lin = sub_of(db, LIN)
    with Newsletter(settings) as app:
        phrase_papers = {sp.paper.id for sp in app.rank('"speech synthesis"')}
        before = {sp.paper.id for sp in app.rank(LIN_PROFILE)}
    assert phrase_papers and phrase_papers <= before  # the test means something

    path = f"/mute/{lin.token}?term={quote('speech synthesis')}"
    page = client.get(path)
    assert page.status_code == 200
    assert len(forms(page.text)) == 1 and len(buttons(page.text)) == 1
    assert esc('speech, "speech synthesis", -"speech synthesis"') in page.text
    assert sub_of(db, LIN).profile == LIN_PROFILE  # GET changed nothing

    refused = client.post(path, data={"csrf": "garbage", "term": "speech synthesis"})
    assert refused.status_code == 403 and sub_of(db, LIN).profile == LIN_PROFILE
    # a signature for one term does not mute another
    forged = client.post(path, data={"csrf": csrf_of(page.text), "term": "speech"})
    assert forged.status_code == 403 and sub_of(db, LIN).profile == LIN_PROFILE

    done = client.post(path, data={"csrf": csrf_of(page.text), "term": "speech synthesis"})
    assert done.status_code == 200 and 'id="mute-done"' in done.text
    muted = sub_of(db, LIN).profile
    assert muted == 'speech, "speech synthesis", -"speech synthesis"'
    assert (
        parse_profile(muted).exclusions[0].stems
        == parse_profile('"speech synthesis"').terms[0].stems
    )

    # muting again changes nothing
    again = client.get(path)
    assert 'id="mute-already"' in again.text and not forms(again.text)
    assert sub_of(db, LIN).profile == muted

    with Newsletter(settings) as app:
        after = {sp.paper.id for sp in app.rank(muted)}
        assert after and not after & phrase_papers
        assert app.plan_current_slots(NOW).planned == 1  # Lin's first issue
    (issue,) = [i for i in db.issues() if i.subscriber_id == lin.id]
    assert issue.paper_ids and not set(issue.paper_ids) & phrase_papers


def test_mute_quotes_words_like_the_profile_syntax(client: TestClient, db: Store) -> None:
    lin = sub_of(db, LIN)
    for term, excluded in (("music", "-music"), ("AND", '-"AND"'), ("title:x", '-"title:x"')):
        page = client.get(f"/mute/{lin.token}?term={quote(term)}")
        assert page.status_code == 200, term
        r = client.post(
            f"/mute/{lin.token}?term={quote(term)}",
            data={"csrf": csrf_of(page.text), "term": term},
        )
        assert r.status_code == 200, term
        assert sub_of(db, LIN).profile.endswith(f", {excluded}")
    parse_profile(sub_of(db, LIN).profile)  # still a valid profile


def test_mute_refuses_terms_that_are_not_terms(client: TestClient, db: Store) -> None:
    lin = sub_of(db, LIN)
    for term in ("", "   ", '"', "---", "x" * 201, "a\x07b"):
        r = client.get(f"/mute/{lin.token}?term={quote(term)}")
        assert r.status_code == 400, term
        assert not forms(r.text)
    assert sub_of(db, LIN).profile == LIN_PROFILE


def test_mute_refuses_a_subscriber_of_the_subscribers_file(
    client: TestClient, settings: Settings, db: Store
) -> None:
    ada = sub_of(db, ADA)
    path = f"/mute/{ada.token}?term=speech"
    page = client.get(path)
    assert page.status_code == 200
    assert 'id="file-notice"' in page.text and "config/subscribers.toml" in page.text
    assert not forms(page.text)  # no button: the next sync would undo it
    # a signed POST (as if the form had been shown) is refused too, and says why
    signer = client.app.state.web.signer  # type: ignore[attr-defined]
    csrf = signer.issue("mute", f"{ada.token}\nspeech", NOW)
    r = client.post(path, data={"csrf": csrf, "term": "speech"})
    assert r.status_code == 409 and 'id="file-notice"' in r.text
    assert (
        sub_of(db, ADA).profile
        == '"speech recognition"^2, speech^1.5, asr, "speech synthesis", -music'
    )


# ---------------------------------------------------------------------- the links


def test_every_paper_of_email_archive_and_private_feed_has_the_links(
    client: TestClient, mailer: MemoryMailer, settings: Settings, db: Store
) -> None:
    site = settings.site
    for address in (ADA, "grace@example.org", "karen@example.org"):
        sub = sub_of(db, address)
        muted = mute_terms(parse_profile(sub.profile))
        sent = db.sent_issue(sub.id, NOW.date())
        assert sent is not None and sent.papers
        html_part, text_part = html_and_text(mailer, address)
        archive = client.get(f"/issues/{sub.token}/{DAY}")
        assert archive.status_code == 200
        feed = feedparser.parse(client.get(f"/feeds/{sub.feed_token}.atom").content)
        contents = {e.id: e.content[0].value for e in feed.entries}
        assert len(contents) == len(sent.papers)
        for sp in sent.papers:
            more = site.feedback_url(sub, sp.paper.id, Judgment.LIKE)
            less = site.feedback_url(sub, sp.paper.id, Judgment.DISLIKE)
            assert more == f"{settings.base_url}/feedback/{sub.token}/{sp.paper.id}/like"
            for page in (html_part, archive.text):
                assert f'href="{esc(more)}"' in page
                assert f'href="{esc(less)}"' in page
                for reason in sp.reasons:
                    term = muted.get(reason.term, reason.term)  # "X via Y" mutes Y
                    assert f'href="{esc(site.mute_url(sub, term))}"' in page
            assert f"More like this: {more}\n" in text_part
            assert f"Less like this: {less}\n" in text_part
            # the private feed carries the feed token, never the subscriber's own token
            entry = contents[sp.paper.guid]
            feed_more = site.feedback_url(sub, sp.paper.id, Judgment.LIKE, feed=True)
            assert f"/feedback/{sub.feed_token}/{sp.paper.id}/like" in feed_more
            assert f'href="{feed_more}"' in entry
            assert (
                f'href="{site.feedback_url(sub, sp.paper.id, Judgment.DISLIKE, feed=True)}"'
                in entry
            )
            assert sub.token not in entry
        assert html_part.count("More like this</a>") == len(sent.papers)
        assert text_part.count("More like this: ") == len(sent.papers)
    # the global feed has no feedback links
    assert b"/feedback/" not in client.get("/feeds/all.atom").content


def test_links_open_pages_that_change_nothing(
    client: TestClient, mailer: MemoryMailer, db: Store
) -> None:
    """Open every link of Ada's email, as a link scanner does: nothing is recorded."""
    html_part, _text = html_and_text(mailer, ADA)
    ada = sub_of(db, ADA)
    before = ada.profile
    links = {
        html.unescape(h)
        for h in re.findall(r'href="([^"]+)"', html_part)
        if "/feedback/" in h or "/mute/" in h
    }
    assert links
    for link in links:
        assert client.get(link.removeprefix("http://127.0.0.1:8080")).status_code == 200, link
    assert db.judgments([ada.id]) == {}
    assert sub_of(db, ADA).profile == before
    assert sub_of(db, ADA).status is SubscriberStatus.ACTIVE


def test_mute_link_of_a_vocabulary_expansion_mutes_the_form_that_matched() -> None:
    from newsletter.domain import Profile, ProfileTerm

    profile = Profile(
        (
            ProfileTerm("llm", ("llm",), group=1),
            ProfileTerm("large language model", ("larg", "languag", "model"), group=1, via="llm"),
            ProfileTerm("music", ("music",), exclude=True),
        )
    )
    assert mute_terms(profile) == {
        "llm": "llm",
        "llm via large language model": "large language model",
    }
