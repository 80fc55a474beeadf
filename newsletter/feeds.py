"""RSS 2.0 and Atom 1.0 feeds: the global feed (every new paper) and a private one per subscriber.

Feed readers poll often and many deduplicate by id and by content, so a feed must be a pure
function of its items: the same items give the same bytes. feedgen works against that by
default (entries prepended, "now" as every date, its version as generator), hence the pinned
values below. Files are replaced atomically and only when their bytes change, so an unchanged feed
keeps its modification time and HTTP caches stay valid.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feedgen.feed import FeedGenerator
from jinja2 import Environment
from markupsafe import Markup

from newsletter import __version__
from newsletter.domain import FeedItem, SiteInfo, Subscriber
from newsletter.errors import NewsletterError
from newsletter.limits import http_url
from newsletter.render import authors_label
from newsletter.render_html import make_environment, sanitize_abstract

log = logging.getLogger(__name__)

__all__ = ["EMPTY_FEED_DATE", "build_feeds", "write_feeds"]

#: ``updated`` of a feed without entries: fixed, so an empty feed is byte-stable too.
EMPTY_FEED_DATE = datetime(1970, 1, 1, tzinfo=UTC)
GENERATOR = "newsletter"

#: Characters XML 1.0 forbids (lxml refuses them): C0 controls but tab/LF/CR, lone surrogates,
#: U+FFFE/U+FFFF. C1 controls are legal but never meant; drop them too.
_XML_ILLEGAL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+$")

#: One environment per override folder (None: the packaged templates only).
_environments: dict[Path | None, Environment] = {}


def xml_text(text: str) -> str:
    """Text that lxml accepts: XML-illegal characters removed, CR/LF normalized."""
    return _XML_ILLEGAL_RE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def _one_line(text: str) -> str:
    """Titles and names: an illegal character becomes a space (a vertical tab separates words)."""
    return " ".join(_XML_ILLEGAL_RE.sub(" ", text).split())


def _environment(templates_dir: Path | None) -> Environment:
    env = _environments.get(templates_dir)
    if env is None:
        env = _environments[templates_dir] = make_environment(templates_dir)
    return env


def _utc(moment: datetime, what: str) -> datetime:
    """Feed dates in UTC: the same instant always serializes the same way."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise NewsletterError(
            f"feed item {what} has a naive datetime {moment.isoformat()}; feed dates must be "
            "timezone-aware (store them in UTC)"
        )
    return moment.astimezone(UTC)


def _sorted(items: Sequence[FeedItem]) -> list[FeedItem]:
    """Newest first; the paper id breaks ties so equal timestamps keep a stable order."""
    by_id = sorted(items, key=lambda i: i.paper.id)
    return sorted(by_id, key=lambda i: _utc(i.when, i.paper.guid), reverse=True)


def build_feeds(
    items: Sequence[FeedItem],
    *,
    site: SiteInfo,
    subscriber: Subscriber | None,
    templates_dir: Path | None = None,
) -> dict[str, bytes]:
    """Build the Atom and RSS documents of one feed: ``{"atom": ..., "rss": ...}``.

    ``subscriber=None`` is the global feed; otherwise the subscriber's private feed, whose
    entries also say why the paper was picked.
    """
    env = _environment(templates_dir)
    entry_template = env.get_template("feed_entry.html.j2")
    ordered = _sorted(items)
    updated = max((_utc(i.when, i.paper.guid) for i in ordered), default=EMPTY_FEED_DATE)
    site_name = _one_line(site.name)

    fg = FeedGenerator()
    fg.load_extension("dc", atom=False, rss=True)  # RSS <author> needs an email; dc:creator not
    atom_url, rss_url = site.feed_url(subscriber, "atom"), site.feed_url(subscriber, "rss")
    if subscriber is None:
        fg.title(f"{site_name}: all new papers")
        fg.description(f"Every new paper {site_name} has seen, on the day it was first seen.")
    else:
        who = _one_line(subscriber.name) or "you"
        fg.title(f"{site_name} for {who}")
        fg.description(f"The papers {site_name} picked for {who}, with the reasons.")
    fg.id(atom_url)
    fg.link(href=site.base_url, rel="alternate")
    fg.author({"name": _one_line(site.from_name) or site_name})
    fg.generator(GENERATOR, version=__version__)
    fg.language("en")
    fg.updated(updated)  # also rss lastBuildDate; feedgen's default is "now"

    for item in ordered:
        paper = item.paper
        fe: Any = fg.add_entry(order="append")  # feedgen prepends by default
        fe.id(paper.guid)
        fe.guid(paper.guid, permalink=False)
        fe.title(_one_line(paper.title) or "(untitled)")
        # paper_url drops digest links that are not http(s) (javascript:, data:, relative);
        # http_url here also covers the configured title-search template
        link = http_url(site.paper_url(paper))
        if link is not None:
            fe.link(href=link, rel="alternate")
        when = _utc(item.when, paper.guid)
        fe.updated(when)
        fe.published(when)
        names = [n for n in (_one_line(a) for a in paper.authors) if n]
        if names:
            fe.author([{"name": n} for n in names])
            fe.dc.dc_creator(names)
        show_reasons = subscriber is not None and bool(item.reasons)
        content = entry_template.render(
            authors=_one_line(authors_label(paper)),
            abstract_html=Markup(sanitize_abstract(xml_text(paper.abstract))),
            reasons=[
                {
                    "term": _one_line(r.term),
                    "where": r.where,
                    "contribution": f"{r.contribution:.2f}",
                }
                for r in item.reasons
            ]
            if show_reasons
            else [],
            score=f"{item.score:.2f}" if item.score is not None else "n/a",
        ).strip()
        fe.content(xml_text(content), type="html")

    # the self links must be set per format: each document points at itself
    fg.link(href=atom_url, rel="self", type="application/atom+xml")
    atom = fg.atom_str(pretty=True, encoding="UTF-8")
    fg.link(href=rss_url, rel="self", type="application/rss+xml", replace=True)
    fg.link(href=site.base_url, rel="alternate")
    rss = fg.rss_str(pretty=True, encoding="UTF-8")
    return {"atom": bytes(atom), "rss": bytes(rss)}


def write_feeds(
    items: Sequence[FeedItem],
    *,
    site: SiteInfo,
    subscriber: Subscriber | None,
    directory: Path,
    templates_dir: Path | None = None,
) -> list[Path]:
    """Write ``all.atom``/``all.rss`` (or ``<feed_token>.atom``/``.rss``); return what changed.

    Each file is written to a temporary file in the same directory and moved into place with
    ``os.replace``, so a reader never sees half a feed; identical bytes are not rewritten.
    """
    if subscriber is None:
        stem = "all"
    else:
        if not _TOKEN_RE.match(subscriber.feed_token) or subscriber.feed_token == "all":
            raise NewsletterError(
                f"subscriber {subscriber.id}: feed token {subscriber.feed_token!r} cannot name a "
                "feed file "
                "(expected URL-safe characters only); regenerate the subscriber's token"
            )
        stem = subscriber.feed_token
    documents = build_feeds(items, site=site, subscriber=subscriber, templates_dir=templates_dir)
    directory.mkdir(parents=True, exist_ok=True)
    changed: list[Path] = []
    for kind in ("atom", "rss"):
        path = directory / f"{stem}.{kind}"
        if _write_if_changed(path, documents[kind]):
            changed.append(path)
    log.debug("feed %s: %d item(s), %d file(s) changed", stem, len(items), len(changed))
    return changed


def _write_if_changed(path: Path, data: bytes) -> bool:
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return True
