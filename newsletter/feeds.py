"""RSS 2.0 and Atom 1.0 feeds: the global feed (every new paper) and a private one per subscriber.

Feed readers poll often and many deduplicate by id and by content, so a feed must be a pure
function of its items: the same items give the same bytes. feedgen works against that by
default (entries prepended, "now" as every date, its version as generator), hence the pinned
values below. Files are replaced atomically and only when their bytes change, so an unchanged feed
keeps its modification time and HTTP caches stay valid.

Readers sort by date, newest first, and an issue's papers all arrive at one moment (papers of
one digest too). So every entry gets its own whole second (:func:`entry_times`): the first of
the papers sharing a moment keeps it, each next one a second earlier (and never later than the
entry before it), which puts an issue's #1 on top in every reader and gives no two entries one
``updated``. The times follow from the items alone, never from "now". A feed run
(:func:`newsletter.feed_files.write_all_feeds`) writes its files without a sync each and makes
them durable with one :func:`sync_folder` at the end.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from feedgen.feed import FeedGenerator
from jinja2 import Environment
from markupsafe import Markup

from newsletter import __version__
from newsletter.domain import FeedItem, Judgment, Paper, SiteInfo, Subscriber
from newsletter.errors import NewsletterError
from newsletter.latex import latex_to_html, latex_to_text
from newsletter.limits import http_url
from newsletter.links import paper_links
from newsletter.render import authors_label
from newsletter.render_html import abstract_html, make_environment

log = logging.getLogger(__name__)

__all__ = [
    "EMPTY_FEED_DATE",
    "FORMAT",
    "GLOBAL_STEM",
    "KINDS",
    "FeedState",
    "build_feeds",
    "entry_times",
    "feed_file_stems",
    "feed_stem",
    "sync_folder",
    "version_digest",
    "write_feeds",
]

#: What the feeds' bytes are made of, for the same entries: raised with every change to it
#: (2: one time per entry, LaTeX made readable, the paper's links), so the first feed run of a
#: new release rebuilds every feed file instead of only those whose entries changed.
FORMAT = 2
#: ``updated`` of a feed without entries: fixed, so an empty feed is byte-stable too.
EMPTY_FEED_DATE = datetime(1970, 1, 1, tzinfo=UTC)
GENERATOR = "newsletter"
#: The two formats of every feed, which are also the files' extensions.
KINDS = ("atom", "rss")
#: The global feed's file stem (``all.atom``); a feed token is never "all".
GLOBAL_STEM = "all"

#: Characters XML 1.0 forbids (lxml refuses them): C0 controls but tab/LF/CR, lone surrogates,
#: U+FFFE/U+FFFF. C1 controls are legal but never meant; drop them too.
_XML_ILLEGAL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+$")
#: A tag of sanitized HTML (quoted attribute values may hold ">"), and the placeholder that
#: stands for an inline math span while markdown runs (private-use characters, see
#: :func:`_abstract_html`).
#: One second: the step between entries that share a moment (RSS dates have whole seconds).
_STEP = timedelta(seconds=1)

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
    """Newest first; items of one moment keep the order given: an issue's papers in the
    issue's order, a digest's papers in the store's (first seen, then id)."""
    return sorted(items, key=lambda i: _utc(i.when, i.paper.guid), reverse=True)


def entry_times(items: Sequence[FeedItem]) -> list[datetime]:
    """Each entry's ``updated``/``published`` (RSS ``pubDate``), in the order of ``items``
    (newest first, as :func:`build_feeds` orders them): the item's moment in whole seconds,
    but at least one second before the entry above it.

    So the papers of one issue, sent at one moment, read #1 at the issue's time, #2 a second
    earlier, and so on: readers sorting by date show the issue's order, and no two entries
    share a time (in Atom or RSS). Deterministic: the same items give the same times, and an
    entry's time changes only if entries above it come within seconds of it.
    """
    times: list[datetime] = []
    for item in items:
        when = _utc(item.when, item.paper.guid).replace(microsecond=0)
        if times and when > times[-1] - _STEP:
            when = times[-1] - _STEP
        times.append(when)
    return times


@dataclass(frozen=True)
class _PaperParts:
    """What an entry shows of a paper, whichever feed it is in."""

    guid: str
    title: str  # plain text, LaTeX made readable
    title_html: Markup
    link: str | None
    links: tuple[tuple[str, str], ...]  # (label, URL): PDF, Hugging Face, code
    names: tuple[str, ...]
    authors: str
    abstract_html: Markup


@functools.lru_cache(maxsize=8192)
def _paper_parts(paper: Paper, site: SiteInfo) -> _PaperParts:
    """Cached per paper (its whole value, so an updated paper is a new key): a feed run puts
    the same few hundred papers into thousands of private feeds, and cleaning titles, names,
    links and abstracts was a third of building one."""
    # paper_url drops digest links that are not http(s) (javascript:, data:, relative);
    # http_url here also covers the configured title-search template
    link = http_url(site.paper_url(paper))
    derived = paper_links(paper)
    links: list[tuple[str, str]] = []
    for label, url in (
        ("PDF", derived.pdf),
        ("Hugging Face", derived.huggingface),
        ("Code", derived.code),
    ):
        url = http_url(url) if url else None
        if url and url != link and url not in (u for _, u in links):
            links.append((label, url))
    title = _one_line(paper.title)
    return _PaperParts(
        guid=paper.guid,
        title=_one_line(latex_to_text(title)) or "(untitled)",
        title_html=Markup(latex_to_html(title) or "(untitled)"),
        link=link,
        links=tuple(links),
        names=tuple(n for n in (_one_line(a) for a in paper.authors) if n),
        authors=_one_line(authors_label(paper)),
        abstract_html=_abstract_html(paper.abstract),
    )


def _abstract_html(abstract: str) -> Markup:
    """The abstract as the email's archive shows it (:func:`newsletter.render_html.abstract_html`:
    markdown, the allow-list, LaTeX made readable), with what XML cannot hold removed first."""
    return Markup(abstract_html(xml_text(abstract)))


def build_feeds(
    items: Sequence[FeedItem],
    *,
    site: SiteInfo,
    subscriber: Subscriber | None,
    templates_dir: Path | None = None,
) -> dict[str, bytes]:
    """Build the Atom and RSS documents of one feed: ``{"atom": ..., "rss": ...}``.

    ``subscriber=None`` is the global feed; otherwise the subscriber's private feed, whose
    entries also say why the paper was picked and link to "more / less like this".
    """
    env = _environment(templates_dir)
    entry_template = env.get_template("feed_entry.html.j2")
    ordered = _sorted(items)
    times = entry_times(ordered)
    updated = times[0] if times else EMPTY_FEED_DATE
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

    for item, when in zip(ordered, times, strict=True):
        parts = _paper_parts(item.paper, site)
        fe: Any = fg.add_entry(order="append")  # feedgen prepends by default
        fe.id(parts.guid)
        fe.guid(parts.guid, permalink=False)
        fe.title(parts.title)
        if parts.link is not None:
            fe.link(href=parts.link, rel="alternate")
        fe.updated(when)
        fe.published(when)
        if parts.names:
            fe.author([{"name": n} for n in parts.names])
            # RSS <author> needs an email: one dc:creator with every name, which readers
            # (and feedparser's ``author``) show as the item's author line. A paper known
            # only by its author count gets no author element: no invented name.
            fe.dc.dc_creator(", ".join(parts.names))
        show_reasons = subscriber is not None and bool(item.reasons)
        content = entry_template.render(
            title_html=parts.title_html,
            link=parts.link or "",
            links=[{"label": label, "url": url} for label, url in parts.links],
            authors=parts.authors,
            abstract_html=parts.abstract_html,
            reasons=[
                {
                    "term": _one_line(r.term),
                    "where": r.where,
                    "contribution": f"{r.contribution:+.2f}",
                }
                for r in item.reasons
            ]
            if show_reasons
            else [],
            score=f"{item.score:.2f}" if item.score is not None else "n/a",
            # private feeds: "more / less like this", with the feed token (feeds get shared)
            more_url=""
            if subscriber is None
            else site.feedback_url(subscriber, item.paper.id, Judgment.LIKE, feed=True),
            less_url=""
            if subscriber is None
            else site.feedback_url(subscriber, item.paper.id, Judgment.DISLIKE, feed=True),
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
    durable: bool = True,
) -> list[Path]:
    """Write ``all.atom``/``all.rss`` (or ``<feed_token>.atom``/``.rss``); return what changed.

    Each file is written to a temporary file in the same directory and moved into place with
    ``os.replace``, so a reader never sees half a feed; identical bytes are not rewritten.
    ``durable=False`` skips the ``fsync`` of each file: a caller writing many feeds syncs them
    all at once with :func:`sync_folder` (one per run instead of two per subscriber).
    """
    stem = feed_stem(subscriber)
    documents = build_feeds(items, site=site, subscriber=subscriber, templates_dir=templates_dir)
    directory.mkdir(parents=True, exist_ok=True)
    changed: list[Path] = []
    for kind in KINDS:
        path = directory / f"{stem}.{kind}"
        if write_if_changed(path, documents[kind], durable=durable):
            changed.append(path)
    # Never the stem itself: a private feed's name is the subscriber's secret feed token.
    who = "all" if subscriber is None else f"of subscriber {subscriber.id}"
    log.debug("feed %s: %d item(s), %d file(s) changed", who, len(items), len(changed))
    return changed


def feed_stem(subscriber: Subscriber | None) -> str:
    """The file name of a feed without its extension: ``all`` or the subscriber's feed token."""
    if subscriber is None:
        return GLOBAL_STEM
    if not _TOKEN_RE.match(subscriber.feed_token) or subscriber.feed_token == GLOBAL_STEM:
        raise NewsletterError(
            f"subscriber {subscriber.id}: feed token {subscriber.feed_token!r} cannot name a "
            "feed file "
            "(expected URL-safe characters only); regenerate the subscriber's token"
        )
    return subscriber.feed_token


def feed_file_stems(directory: Path) -> dict[str, set[str]]:
    """The feeds present in the folder, stem → kinds, from one listing (no stat per file)."""
    found: dict[str, set[str]] = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return found
    for name in names:
        stem, _, kind = name.rpartition(".")
        if kind in KINDS and _TOKEN_RE.match(stem):
            found.setdefault(stem, set()).add(kind)
    return found


def version_digest(*parts: object) -> str:
    """A short digest of what a feed's bytes depend on, for the state file."""
    return hashlib.sha256(repr(parts).encode("utf-8")).hexdigest()[:24]


@dataclass(frozen=True)
class FeedState:
    """What the last feed run wrote, kept next to the feeds folder (``var/.feeds.state.json``
    for ``var/feeds``: the folder itself holds feeds only, and may be served as it is).

    A feed's bytes are a function of its entries, the site settings and the templates; a run
    rebuilds a feed only when the digest of its :class:`~newsletter.domain.FeedVersion` (and
    the subscriber's name) differs from the one recorded here, or its files are missing. So
    a run does not rebuild two files per subscriber when nothing changed for them. Only
    digests and subscriber ids are stored, never a token or a name. ``fingerprint`` covers
    the settings; when it changes, everything is rebuilt.
    """

    fingerprint: str = ""
    digests: Mapping[str, str] = field(default_factory=dict)  # "all" or subscriber id → digest

    @classmethod
    def load(cls, directory: Path) -> FeedState:
        """The recorded state, or an empty one (missing or unreadable: rebuild everything)."""
        path = state_path(directory)
        try:
            data = json.loads(path.read_bytes())
            fingerprint, digests = data["fingerprint"], data["digests"]
            if isinstance(fingerprint, str) and isinstance(digests, dict):
                return cls(fingerprint, {str(k): str(v) for k, v in digests.items()})
        except (FileNotFoundError, NotADirectoryError):
            pass  # first run, or no usable folder (writing the feeds then reports that)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s unreadable (%s): rebuilding every feed", path, exc)
        return cls()

    def save(self, directory: Path) -> None:
        data = {"fingerprint": self.fingerprint, "digests": dict(sorted(self.digests.items()))}
        path = state_path(directory)
        path.parent.mkdir(parents=True, exist_ok=True)
        if write_if_changed(path, json.dumps(data, indent=0).encode("utf-8")):
            _fsync_directory(path.parent)  # the rename too, not only the bytes


def state_path(directory: Path) -> Path:
    """Where :class:`FeedState` of a feeds folder is kept: beside it, a dot file."""
    absolute = directory.absolute()
    return absolute.parent / f".{absolute.name or 'feeds'}.state.json"


def write_if_changed(path: Path, data: bytes, *, durable: bool = True) -> bool:
    """Replace the file atomically with these bytes unless it holds them already.

    ``durable`` syncs the new bytes before the rename (a crash leaves the old file or the new
    one, never an empty one). Without it, the caller must :func:`sync_folder` before relying
    on the file surviving a crash (e.g. before recording that it was written).
    """
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return True


def _fsync_directory(directory: Path) -> None:
    """Make the entries of a folder (renames, removals) durable: one ``fsync`` of its fd."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems (and platforms) cannot sync a directory
        log.debug("cannot fsync %s: %s", directory, exc)
    finally:
        os.close(fd)


def _syncfs(fd: int) -> bool:
    """Linux ``syncfs(2)``: write out everything pending on the file system holding ``fd``
    (data, inodes, directory entries) with one call. False where it is not available."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    syncfs = getattr(libc, "syncfs", None)
    if syncfs is None:
        return False
    if syncfs(ctypes.c_int(fd)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"syncfs: {os.strerror(errno)}")
    return True


def sync_folder(directory: Path) -> None:
    """Make every file written into ``directory`` without a sync durable, at once.

    An ``fsync`` per file costs a journal commit each (about 0.4 ms here, two files per
    subscriber); one ``syncfs`` of the folder's file system costs one, whatever the number of
    files. It also writes out whatever else is pending on that file system, which another
    process would have synced itself sooner or later. Elsewhere than Linux: ``os.sync`` and an
    ``fsync`` of the folder.
    """
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if _syncfs(fd):
            return
    finally:
        os.close(fd)
    os.sync()
    _fsync_directory(directory)
