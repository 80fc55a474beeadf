"""Conversions between ORM rows and the domain dataclasses, and the paper merge rules.

Kept apart from :mod:`newsletter.store` so that the session-handling code reads as a list of
units of work.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import time
from typing import Any

from newsletter.domain import (
    DigestRecord,
    DigestState,
    IssueRecord,
    IssueState,
    MatchField,
    Paper,
    ParsedPaper,
    Reason,
    Subscriber,
    SubscriberSpec,
    SubscriberStatus,
)
from newsletter.store.schema import DigestFileRow, IssueRow, PaperRow, SubscriberRow


def richer(old: ParsedPaper, new: ParsedPaper) -> ParsedPaper:
    """Field by field, keep the richer value; an empty value never overwrites a real one."""

    def longer(a: str, b: str) -> str:
        return b if len(b.strip()) > len(a.strip()) else a

    def first(a: Any, b: Any) -> Any:
        return a if a not in (None, "", ()) else b

    return ParsedPaper(
        title=old.title or new.title,
        abstract=longer(old.abstract, new.abstract),
        authors=new.authors if len(new.authors) > len(old.authors) else old.authors,
        author_count=max(
            (c for c in (old.author_count, new.author_count) if c is not None), default=None
        ),
        published=first(old.published, new.published),
        upvotes=max((u for u in (old.upvotes, new.upvotes) if u is not None), default=None),
        arxiv_id=first(old.arxiv_id, new.arxiv_id),
        url=first(old.url, new.url),
    )


def merged(old: ParsedPaper, new: ParsedPaper, *, newer_than: int | None = None) -> ParsedPaper:
    """The stored paper after another sighting: :func:`richer`, except that an entry naming
    its arXiv version (``2509.04664v2``) of a paper stored under that arXiv id is that
    version's text, so its title and abstract (when it has one) replace the stored ones: a
    revised paper reads as revised. Entries are read in the order they arrive (an inbox scan
    reads its files in name order); ``newer_than``, the highest version already read in
    the same file, keeps an older version listed after it from undoing it. The version itself
    is not stored: an old file dropped in the inbox after a newer one would bring its text
    back."""
    kept = richer(old, new)
    version = new.arxiv_version
    if version is None or old.arxiv_id is None:  # a scrape matched by title: no version read
        return kept
    if newer_than is not None and version < newer_than:  # an older version's text: not kept
        return replace(kept, title=old.title, abstract=old.abstract)
    return replace(
        kept,
        title=new.title or kept.title,
        abstract=new.abstract if new.abstract.strip() else kept.abstract,
    )


# The paper metadata columns, shared by ParsedPaper and Paper; authors is JSON in the row.
_METADATA = (
    "title",
    "abstract",
    "authors",
    "author_count",
    "published",
    "upvotes",
    "arxiv_id",
    "url",
)


def paper_values(p: ParsedPaper) -> dict[str, Any]:
    values = {name: getattr(p, name) for name in _METADATA}
    values["authors"] = json.dumps(list(p.authors), ensure_ascii=False)
    return values


def _metadata(r: PaperRow) -> dict[str, Any]:
    values = {name: getattr(r, name) for name in _METADATA}
    values["authors"] = tuple(json.loads(r.authors or "[]"))
    return values


def parsed_from_row(r: PaperRow) -> ParsedPaper:
    return ParsedPaper(**_metadata(r))


def paper(r: PaperRow) -> Paper:
    return Paper(id=r.id, key=r.key, first_seen_at=r.first_seen_at, **_metadata(r))


def reasons(raw: str) -> tuple[Reason, ...]:
    return tuple(
        Reason(term=t, where=MatchField(w), contribution=float(c)) for t, w, c in json.loads(raw)
    )


def digest(r: DigestFileRow) -> DigestRecord:
    return DigestRecord(
        id=r.id,
        path=r.path,
        content_hash=r.content_hash,
        size=r.size,
        state=DigestState(r.state),
        format=r.format,
        reason=r.reason,
        entries=r.entries,
        papers_new=r.papers_new,
        papers_merged=r.papers_merged,
        digest_date=r.digest_date,
        seen_at=r.seen_at,
    )


def apply_spec(row: SubscriberRow, spec: SubscriberSpec) -> bool:
    values = {
        "name": spec.name,
        "timezone": spec.timezone,
        "send_at": spec.send_at.strftime("%H:%M"),
        "weekdays": ",".join(str(d) for d in spec.weekdays),
        "profile": spec.profile,
        "max_papers": spec.max_papers,
        "min_score": spec.min_score,
        "send_when_empty": spec.send_when_empty,
    }
    changed = False
    for name, value in values.items():
        if getattr(row, name, None) != value:
            setattr(row, name, value)
            changed = True
    return changed


def send_at(text: str) -> time:
    """A stored ``HH:MM`` send time."""
    hour, minute = (int(x) for x in text.split(":"))
    return time(hour, minute)


def weekdays(text: str) -> tuple[int, ...]:
    """Stored weekdays (``"0,3"``; empty: every day)."""
    return tuple(int(d) for d in text.split(",") if d)


def subscriber(r: SubscriberRow) -> Subscriber:
    return Subscriber(
        id=r.id,
        email=r.email,
        name=r.name,
        timezone=r.timezone,
        send_at=send_at(r.send_at),
        weekdays=weekdays(r.weekdays),
        profile=r.profile,
        max_papers=r.max_papers,
        min_score=r.min_score,
        send_when_empty=r.send_when_empty,
        status=SubscriberStatus(r.status),
        token=r.token,
        feed_token=r.feed_token,
    )


def issue(r: IssueRow, paper_ids: tuple[int, ...]) -> IssueRecord:
    return IssueRecord(
        id=r.id,
        subscriber_id=r.subscriber_id,
        slot_date=r.slot_date,
        state=IssueState(r.state),
        attempts=r.attempts,
        last_reply=r.last_reply,
        next_retry_at=r.next_retry_at,
        message_id=r.message_id,
        subject=r.subject,
        created_at=r.created_at,
        sent_at=r.sent_at,
        paper_ids=paper_ids,
    )
