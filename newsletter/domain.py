"""The values that flow between stages.

Stages (ingest, store, rank, render, feeds, deliver) exchange these frozen dataclasses and
nothing else: no ORM rows, no sessions. That keeps every stage testable on plain values and
lets a stage run alone from the CLI.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import logging
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from urllib.parse import quote, quote_plus

from newsletter.limits import http_url

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- ingest


@dataclass(frozen=True)
class ParsedPaper:
    """One paper entry as a parser read it from a digest file."""

    title: str
    abstract: str = ""
    authors: tuple[str, ...] = ()
    author_count: int | None = None
    published: date | None = None
    upvotes: int | None = None
    arxiv_id: str | None = None
    url: str | None = None
    line: int | None = None  # 1-based line of the entry's title, for error messages
    # The arXiv version the entry names (2 for ``2509.04664v2``), None when it names none:
    # an entry naming a version is that version's text (newsletter/store/rows.py ``merged``).
    arxiv_version: int | None = None


@dataclass(frozen=True)
class ParsedDigest:
    """What a parser made of one digest file."""

    format: str  # e.g. "hf-text"
    papers: tuple[ParsedPaper, ...]
    digest_date: date | None = None  # the page's own date when the file states one
    skipped: tuple[str, ...] = ()  # one note per entry that was not a paper (file, index)


class IngestStatus(enum.StrEnum):
    """What ingest did with one file (``newsletter.ingest.FileReport.status``)."""

    INGESTED = "ingested"  # read, its papers stored
    QUARANTINED = "quarantined"  # unreadable: recorded with a reason, left on disk
    UNCHANGED = "unchanged"  # the same bytes were seen before: nothing to do
    SKIPPED = "skipped"  # not a regular file (a link, FIFO, socket, device): never opened
    WAITING = "waiting"  # still being written: read at a later scan


# --------------------------------------------------------------------------- store


@dataclass(frozen=True)
class Paper:
    """A stored paper: one row per distinct paper, whatever number of digests listed it."""

    id: int
    key: str  # identity: "arxiv:2509.04664" or "title:<normalized title>"
    title: str
    abstract: str
    authors: tuple[str, ...]
    author_count: int | None
    published: date | None
    upvotes: int | None
    arxiv_id: str | None
    url: str | None
    first_seen_at: datetime  # timezone-aware, UTC

    @property
    def guid(self) -> str:
        """A feed id that never changes for this paper (derived from its identity)."""
        digest = hashlib.sha256(self.key.encode("utf-8")).hexdigest()[:24]
        return f"urn:newsletter:paper:{digest}"

    @property
    def n_authors(self) -> int | None:
        return len(self.authors) if self.authors else self.author_count


class SubscriberStatus(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    # A hard bounce, a complaint or too many soft bounces (newsletter/bounces.py): no more
    # issues, no private feed; only the operator's `subscriber add` makes it active again.
    SUPPRESSED = "suppressed"


class SubscriberSource(enum.StrEnum):
    """Where a subscriber came from (stored with the subscriber, as its value)."""

    CONFIG = "config"  # the subscribers file
    CLI = "cli"  # ``newsletter subscribers add``
    CSV = "csv"  # a CSV import
    WEB = "web"  # the subscribe form


class Judgment(enum.StrEnum):
    """A reader's judgment of one paper ("more like this" / "less like this"), stored per
    subscriber and paper (the latest wins) as its value."""

    LIKE = "like"
    DISLIKE = "dislike"


@dataclass(frozen=True)
class Subscriber:
    id: int
    email: str
    name: str
    timezone: str  # IANA name, e.g. "Europe/Berlin"
    send_at: time  # local time of day
    weekdays: tuple[int, ...]  # 0=Monday..6=Sunday; empty = daily
    profile: str  # profile text in the documented syntax
    max_papers: int
    min_score: float
    send_when_empty: bool
    status: SubscriberStatus
    token: str  # secret, URL-safe, 192 bits: unsubscribe, preferences, web view
    feed_token: str = ""  # a second secret for the private feed: feed URLs get shared


@dataclass(frozen=True)
class SubscriberSendTime:
    """An active subscriber's send time and address only: what the daemon keeps in memory
    for the whole audience (no profile, no tokens), read in one light query."""

    id: int
    email: str
    timezone: str
    send_at: time
    weekdays: tuple[int, ...]


# --------------------------------------------------------------------------- rank


@dataclass(frozen=True)
class ProfileTerm:
    """One term of a profile: a word or a quoted phrase."""

    text: str  # as the subscriber wrote it, without weight or prefixes
    stems: tuple[str, ...]  # analyzed form: one stem per word; a phrase has several
    weight: float = 1.0
    title_only: bool = False
    exclude: bool = False
    # Terms of one group are alternatives: a paper matching any of them matches one term of
    # the profile (the ranker's coordination). 0: a group of its own; > 0: a synonym group
    # the subscriber wrote; < 0: typed forms the vocabulary found to be synonyms.
    group: int = 0
    # Set on a term the vocabulary added (newsletter/vocabulary.py): the typed term it expands.
    via: str = ""
    # exact:"a phrase": the words only in this order and next to each other (no window).
    exact: bool = False
    # author:"Name": matches the paper's author names, not its text (newsletter/analysis.py).
    author: bool = False

    @property
    def shown(self) -> str:
        """The term as reasons name it: its text, or ``LLM via large language model`` for a
        form the vocabulary added."""
        return f"{self.via} via {self.text}" if self.via else self.text


@dataclass(frozen=True)
class Profile:
    terms: tuple[ProfileTerm, ...]

    @property
    def positive(self) -> tuple[ProfileTerm, ...]:
        return tuple(t for t in self.terms if not t.exclude)

    @property
    def exclusions(self) -> tuple[ProfileTerm, ...]:
        return tuple(t for t in self.terms if t.exclude)


class MatchField(enum.StrEnum):
    """The field of a paper a profile term matched in."""

    TITLE = "title"
    ABSTRACT = "abstract"
    AUTHORS = "authors"
    # Not a field: the reader's own judgments (newsletter/learn.py), added to the score.
    FEEDBACK = "feedback"
    # Not a field: the optional semantic matching (newsletter/semantic.py); the reason's
    # contribution is the cosine similarity of paper and profile.
    SEMANTIC = "semantic"


@dataclass(frozen=True)
class Reason:
    """Why a paper was selected: one matched term, where, and how much it added."""

    term: str
    where: MatchField
    contribution: float


@dataclass(frozen=True)
class ScoredPaper:
    paper: Paper
    score: float
    reasons: tuple[Reason, ...]


# --------------------------------------------------------------------------- issue / render


class IssueState(enum.StrEnum):
    PLANNED = "planned"
    RENDERED = "rendered"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    # The server took the whole message but its reply to the end of DATA never came: it may
    # or may not have been delivered. Never re-sent unless the operator retries it.
    UNKNOWN = "unknown"


@functools.lru_cache(maxsize=4096)
def _digest_link(guid: str, url: str) -> str | None:
    """:func:`http_url` of a stored paper URL, logging a dropped one once per paper and URL.

    Cached because the same paper's link is built for every subscriber, feed and web page: a
    bad URL gives one warning, not one per recipient.
    """
    checked = http_url(url)
    if checked is None:
        log.warning(
            "paper %s: URL %.100r is not an http(s) link; linking to arXiv or the title search "
            "instead",
            guid,
            url,
        )
    return checked


#: Hex digits of the HMAC in a bounce token (64 bits: unguessable, short enough for a local part).
BOUNCE_MAC_DIGITS = 16


def bounce_mac(subscriber_id: int, token: str) -> str:
    """The MAC part of a bounce token: HMAC-SHA256 keyed by the subscriber's secret token."""
    mac = hmac.new(token.encode("utf-8"), f"bounce:{subscriber_id}".encode(), hashlib.sha256)
    return mac.hexdigest()[:BOUNCE_MAC_DIGITS]


def bounce_token(subscriber: Subscriber) -> str:
    """The subscriber's token in VERP return paths: ``<id>-<mac>``, lower-case.

    Bounce addresses are seen by every relay on the way, so this is never the unsubscribe
    token: it is the id and an HMAC keyed by that token, which tells nothing about the token
    and cannot be forged without it. Nothing is stored: :mod:`newsletter.bounces` checks a
    token by computing the MAC again (and a database copy keeps the tokens, so old bounces
    still match)."""
    return f"{subscriber.id}-{bounce_mac(subscriber.id, subscriber.token)}"


@dataclass(frozen=True)
class SiteInfo:
    """Who sends, and where the web side lives: everything links and headers are built from."""

    name: str  # newsletter name, e.g. "Paper Digest"
    from_address: str
    from_name: str
    base_url: str  # e.g. "https://papers.example.org" (no trailing slash)
    list_id: str  # e.g. "papers.example.org"
    paper_url_template: str  # used when a paper has no link of its own; "{title}" is replaced
    # VERP return path (``mail.bounce_address``), e.g. "bounces+{token}@example.org"; empty:
    # the envelope sender is ``from_address``.
    bounce_address: str = ""

    def paper_url(self, paper: Paper) -> str:
        """The paper's link in emails, feeds and web pages.

        The digest's own URL only when :func:`~newsletter.limits.http_url` allows it (a
        ``javascript:`` or ``data:`` URL is dropped, logged once per paper and URL); else the
        arXiv page, else the site's title search. The id and the title are percent-encoded, so
        neither can change the URL's structure.
        """
        if paper.url:
            url = _digest_link(paper.guid, paper.url)
            if url is not None:
                return url
        arxiv_id = (paper.arxiv_id or "").strip()
        if arxiv_id:
            return f"https://arxiv.org/abs/{quote(arxiv_id, safe='/.', errors='replace')}"
        title = quote_plus(paper.title, errors="replace")
        return self.paper_url_template.replace("{title}", title)

    def unsubscribe_url(self, subscriber: Subscriber) -> str:
        return f"{self.base_url}/unsubscribe/{subscriber.token}"

    def preferences_url(self, subscriber: Subscriber) -> str:
        return f"{self.base_url}/preferences/{subscriber.token}"

    def issue_url(self, subscriber: Subscriber, slot_date: date) -> str:
        return f"{self.base_url}/issues/{subscriber.token}/{slot_date.isoformat()}"

    def feedback_url(
        self, subscriber: Subscriber, paper_id: int, judgment: Judgment, *, feed: bool = False
    ) -> str:
        """The "more / less like this" link of one paper: a page whose button records the
        judgment. Emails and archived issues carry the subscriber's token; a private feed
        (``feed=True``) its feed token, because feed URLs get shared: whoever holds a feed can
        judge its papers, never unsubscribe, edit preferences or mute terms."""
        token = subscriber.feed_token if feed else subscriber.token
        return f"{self.base_url}/feedback/{token}/{paper_id}/{Judgment(judgment).value}"

    def mute_url(self, subscriber: Subscriber, term: str) -> str:
        """The "mute" link of a matched term: a page whose button adds ``-term`` to the
        profile. The term is percent-encoded, so it cannot change the URL's structure."""
        quoted = quote(term, safe="", errors="replace")
        return f"{self.base_url}/mute/{subscriber.token}?term={quoted}"

    def feed_url(self, subscriber: Subscriber | None, kind: str) -> str:
        """kind is "atom" or "rss"; None is the global feed."""
        if subscriber is None:
            return f"{self.base_url}/feeds/all.{kind}"
        return f"{self.base_url}/feeds/{subscriber.feed_token}.{kind}"

    @property
    def domain(self) -> str:
        return self.from_address.rsplit("@", 1)[-1]

    def envelope_sender(self, subscriber: Subscriber) -> str:
        """The SMTP envelope sender (MAIL FROM) of this subscriber's issues: the VERP address
        with their :func:`bounce_token` when ``bounce_address`` is set, so a bounce names who
        bounced; else ``from_address``. The header From never changes."""
        if not self.bounce_address:
            return self.from_address
        return self.bounce_address.replace("{token}", bounce_token(subscriber))

    def message_id(self, subscriber: Subscriber, slot_date: date) -> str:
        """Deterministic: a resend of the same slot carries the same Message-ID."""
        seed = f"{subscriber.id}:{subscriber.email}:{slot_date.isoformat()}".encode()
        return f"<issue-{hashlib.sha256(seed).hexdigest()[:32]}@{self.domain}>"


@dataclass(frozen=True)
class IssueContent:
    """One subscriber's issue for one slot, ready to render."""

    subscriber: Subscriber
    slot_date: date
    papers: tuple[ScoredPaper, ...]
    profile: Profile
    created_at: datetime  # timezone-aware; the email's Date header
    # For an issue without papers: how many papers were new since the subscriber's previous
    # issue, which the email tells its reader (None: not known, e.g. a preview).
    quiet: QuietSpell | None = None


@dataclass(frozen=True)
class QuietSpell:
    """Why an issue is empty: ``new_papers`` papers were first seen since ``since_issue``
    (the subscriber's previous issue's planning time; None: they have had no issue before,
    and the count runs from their sign-up) and none of them matched the profile. Zero: no new
    paper at all arrived (a quiet day, or sources that stopped: ``newsletter status``)."""

    new_papers: int
    since_issue: datetime | None


@dataclass(frozen=True)
class RenderedIssue:
    subject: str
    html: str  # the full HTML part, CSS inlined
    text: str  # the text/plain part
    message: bytes  # the complete RFC 5322 message, as delivered
    message_id: str


@dataclass(frozen=True)
class FeedItem:
    """One feed entry: a paper, when it entered this feed, and (per-subscriber) why."""

    paper: Paper
    when: datetime  # timezone-aware
    reasons: tuple[Reason, ...] = field(default=())
    score: float | None = None


@dataclass(frozen=True)
class FeedWindow:
    """Which entries a feed holds: dated at or after ``since``, the newest ``limit`` of them
    (ties: lowest paper id first). One window for the files and the web, so both serve the
    same entries; a feed's size no longer grows with the newsletter's history."""

    since: datetime  # timezone-aware
    limit: int

    @classmethod
    def ending(cls, now: datetime, *, days: int, limit: int) -> FeedWindow:
        """The last ``days`` days up to ``now`` (settings ``feeds.global_days``/``max_entries``)."""
        return cls(since=now - timedelta(days=days), limit=limit)


@dataclass(frozen=True)
class FeedVersion:
    """A cheap summary of a feed's window, read with one aggregate query and no entry: when
    it is unchanged the feed's entries are too, so a cached build (or a 304) can answer.

    ``count``/``oldest``/``newest`` catch entries that arrive or leave the window; ``updated``
    (the newest paper update, when the query reads it) catches a paper merged richer later.
    """

    count: int
    oldest: datetime | None
    newest: datetime | None
    updated: datetime | None = None

    @property
    def last_modified(self) -> datetime | None:
        """The latest change among the entries, or None for an empty window."""
        moments = [m for m in (self.newest, self.updated) if m is not None]
        return max(moments) if moments else None


# --------------------------------------------------------------------------- records (store)


@dataclass(frozen=True)
class SubscriberSpec:
    """A validated subscriber as given by config, CLI, CSV or the web (no id, no token yet)."""

    email: str
    name: str = ""
    timezone: str = "UTC"
    send_at: time = time(7, 0)
    weekdays: tuple[int, ...] = ()
    profile: str = ""
    max_papers: int = 10
    min_score: float = 1.0
    send_when_empty: bool = False


class DigestState(enum.StrEnum):
    """A recorded digest file's state (stored as its value)."""

    INGESTED = "ingested"
    QUARANTINED = "quarantined"


@dataclass(frozen=True)
class DigestRecord:
    """A digest file as ingest saw it: ingested with its counts, or quarantined with a reason."""

    id: int
    path: str
    content_hash: str
    size: int
    state: DigestState
    format: str | None
    reason: str | None
    entries: int
    papers_new: int
    papers_merged: int
    digest_date: date | None
    seen_at: datetime


@dataclass(frozen=True)
class IssueRecord:
    id: int
    subscriber_id: int
    slot_date: date
    state: IssueState
    attempts: int
    last_reply: str | None
    next_retry_at: datetime | None
    message_id: str | None
    subject: str | None
    created_at: datetime
    sent_at: datetime | None
    paper_ids: tuple[int, ...]
