"""Render one subscriber's issue into a complete email (HTML + plain text, RFC 5322 headers).

The expensive step, CSS inlining, runs once per template, on the template rendered with slot
tokens only (see :mod:`newsletter.render_html`); each paper's card is that compiled card with
the paper's link and byline bound once, and per subscriber the renderer only highlights, escapes
and joins, and :mod:`newsletter.mime` assembles the MIME message. No value is ever rendered
into a template before it is cut at its slots, so no value can create or move a slot. Headers
are built from the site settings and the subscriber only, never from paper text, so a title with
CR/LF cannot inject a header.
"""

from __future__ import annotations

import email.errors
import functools
import hashlib
import html
import logging
import re
import textwrap
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from email.headerregistry import Address
from email.utils import format_datetime, formataddr
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from markupsafe import Markup, escape

from newsletter.domain import (
    IssueContent,
    Judgment,
    MatchField,
    Paper,
    Profile,
    ProfileTerm,
    QuietSpell,
    RenderedIssue,
    ScoredPaper,
    SiteInfo,
    Subscriber,
)
from newsletter.errors import SubscriberError
from newsletter.links import paper_links
from newsletter.mime import fold_header, multipart_alternative
from newsletter.render_html import (
    CompiledFragment,
    CssInliner,
    Slots,
    SpanFinder,
    abstract_views,
    highlight_html,
    make_environment,
    slot,
    strip_controls,
    title_html,
    title_text,
)
from newsletter.resources import read_resource

log = logging.getLogger(__name__)

#: Gmail clips an HTML part at about 102 KB; stay clearly below (counted with CRLF line
#: endings, as delivered).
MAX_HTML_BYTES = 100_000
TEXT_WIDTH = 72
MAX_LISTED_AUTHORS = 5
PREHEADER_TITLES = 3
PREHEADER_MAX_CHARS = 200

__all__ = ["MAX_HTML_BYTES", "EmailRenderer", "authors_label", "plural", "render_issue"]


def plural(n: int, word: str) -> str:
    """``1 paper``, ``2 papers``: subjects and links read naturally."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def authors_label(paper: Paper) -> str:
    """First names then "et al.", or "N authors" when only a count is known; "" when unknown."""
    names = [strip_controls(a) for a in paper.authors[:MAX_LISTED_AUTHORS]]
    names = [n for n in names if n]
    if names:
        total = max(len(paper.authors), paper.author_count or 0)
        return ", ".join(names) + (" et al." if total > len(names) else "")
    if paper.author_count:
        return plural(paper.author_count, "author")
    return ""


#: An email keeps at least this many cards with a link for every other title before the
#: titles without a card are listed as text (see :meth:`EmailRenderer._fit`).
MIN_CARDS = 10
#: The most of the size budget the titles list may take when titles are listed as text.
LIST_SHARE = 0.8
#: Title lengths tried, in order, for titles listed as text in a large issue.
_LIST_TITLE_LIMITS: tuple[int | None, ...] = (None, 120, 60, 30)


@dataclass(frozen=True)
class _Looks:
    """How one subscriber's cards look: the highlighted terms, the matcher, the mute terms."""

    subscriber: Subscriber
    title_terms: Sequence[ProfileTerm]
    abstract_terms: Sequence[ProfileTerm]
    find: SpanFinder
    muted: dict[str, str]


@dataclass(frozen=True)
class _Frame:
    subject: str
    issue_date: str
    name: str
    greeting: str  # "Hello <name as given>," or "" when no name was given
    preheader: str
    issue_url: str
    feed_url: str
    looks: _Looks


@dataclass(frozen=True)
class _Layout:
    items: list[str]  # the titles list's <li> items, in the issue's order
    cards: list[Markup]  # the cards of the first len(cards) papers


def _count_line(n_total: int, n_shown: int, quiet: QuietSpell | None = None) -> str:
    """ "Here are 3 papers matching your profile." or, when the email holds fewer than the
    issue, "19 of 50 papers here; 31 more in the full issue on the web.". An empty issue
    (``send_when_empty``) says why it is empty when ``quiet`` tells: no new paper at all
    arrived since the previous issue, or some did and none matched the profile."""
    if not n_total:
        if quiet is None:
            return "No new papers matched your profile for this issue."
        since = "your last issue" if quiet.since_issue else "you subscribed"
        if not quiet.new_papers:
            return f"No new papers at all since {since}."
        return f"{plural(quiet.new_papers, 'new paper')} since {since}, none matching your profile."
    if n_shown >= n_total:
        if n_total == 1:
            return "Here is 1 paper matching your profile."
        return f"Here are {n_total} papers matching your profile."
    return (
        f"{n_shown} of {plural(n_total, 'paper')} here; "
        f"{n_total - n_shown} more in the full issue on the web."
    )


def _ranked(items: Sequence[str]) -> Iterator[tuple[int, str]]:
    return zip(range(1, len(items) + 1), items, strict=True)


def _toc_item(title: str, href: str | None) -> str:
    """One item of the titles list; ``title`` is safe HTML, ``href`` a URL (escaped here)."""
    if href is None:
        return f"<li>{title}</li>"
    return f'<li><a href="{escape(href)}">{title}</a></li>'


def _shorten_html(safe_html: str, limit: int | None) -> str:
    """A title's HTML cut to about ``limit`` characters of text (tags dropped when cut)."""
    if limit is None:
        return safe_html
    text = html.unescape(re.sub(r"<[^>]*>", "", safe_html))
    if len(text) <= limit:
        return safe_html
    return str(escape(text[: limit - 1].rstrip() + "\u2026"))


def _size(markup: str) -> int:
    """Bytes of ``markup`` as delivered: the message's lines end in CRLF, so a line break
    counts twice (Gmail's clipping counts what arrives)."""
    return len(markup.encode("utf-8")) + markup.count("\n")


def _published_label(paper: Paper) -> str:
    return f"{paper.published.day} {paper.published:%b %Y}" if paper.published else ""


def _upvotes_label(paper: Paper) -> str | None:
    return None if paper.upvotes is None else plural(paper.upvotes, "upvote")


def _meta_label(paper: Paper) -> str:
    """The byline under a title: authors · published · upvotes, whichever are known."""
    parts = (authors_label(paper), _published_label(paper), _upvotes_label(paper) or "")
    return " · ".join(x for x in parts if x)


def _zone(subscriber: Subscriber) -> tzinfo:
    """The subscriber's timezone; UTC (with a warning) if the stored name is unknown here."""
    try:
        return ZoneInfo(subscriber.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        log.warning(
            "subscriber %s: unknown timezone %r; showing times in UTC",
            subscriber.id,
            subscriber.timezone,
        )
        return UTC


def _span_finder() -> SpanFinder:
    """The ranker's matcher, so highlights agree exactly with what was scored."""
    from newsletter.analysis import highlight_spans

    return highlight_spans


@functools.lru_cache(maxsize=8192)
def _wrap(text: str, indent: str = "", first: str | None = None) -> str:
    """textwrap is slow and abstracts repeat across subscribers: wrap each one once."""
    return textwrap.fill(
        text,
        width=TEXT_WIDTH,
        initial_indent=indent if first is None else first,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    )


class EmailRenderer:
    """Renders issues for many subscribers; holds the inlined templates and per-paper cards.

    Create one per run (or per worker) and reuse it: the first issue pays for inlining the
    shell, each new paper pays for inlining its card once, every later use is string joining.

    :meth:`render` builds the email (size-budgeted, short abstracts); :meth:`render_page`
    the issue's page in the web archive (every paper, whole abstracts, no budget) from the
    same templates, cards and anchors.
    """

    def __init__(
        self,
        templates_dir: Path | None,
        site: SiteInfo,
        *,
        max_html_bytes: int = MAX_HTML_BYTES,
        card_cache_size: int = 4096,
    ) -> None:
        self.site = site
        self.templates_dir = templates_dir
        self.max_html_bytes = max_html_bytes
        self._env = make_environment(templates_dir)
        self._text_template = self._env.get_template("email.txt.j2")
        css = read_resource("email.css", templates_dir).decode("utf-8")
        self._inliner = CssInliner(self._env, css)
        self._fragments: dict[str, CompiledFragment] = {}
        self._cards: OrderedDict[Paper, CompiledFragment] = OrderedDict()
        self._card_cache_size = card_cache_size
        self._site_header_lines: tuple[bytes, bytes] | None = None

    # ------------------------------------------------------------------ cached fragments

    def _fragment(self, name: str) -> CompiledFragment:
        """A shell, card or macro fragment, inlined on first use and kept for the renderer's life.

        Every template is rendered with slot tokens only (no paper, subscriber or site value),
        so cutting it at its tokens cannot be confused by anything a value spells.
        """
        compiled = self._fragments.get(name)
        if compiled is None:
            if name == "shell":
                document = self._env.get_template("email.html.j2").render(slots=Slots())
                compiled = CompiledFragment.from_html(self._inliner.inline_document(document))
            elif name in ("card", "card_with_meta"):
                piece = self._env.get_template("card.html.j2").render(
                    slots=Slots(), has_meta=name == "card_with_meta"
                )
                compiled = CompiledFragment.from_html(self._inliner.inline_fragment(Markup(piece)))
            else:
                macros: Any = self._env.get_template("fragments.html.j2").module
                args = {
                    "mark": (slot("text"),),
                    "reason": (
                        slot("term"),
                        slot("where"),
                        slot("contribution"),
                        slot("mute_url"),
                    ),
                    "reason_plain": (slot("term"), slot("where"), slot("contribution")),
                    "paper_link": (slot("url"), slot("label")),
                    "full_abstract": (slot("url"),),
                    "greeting": (slot("text"),),
                    "toc": (slot("items"),),
                    "more_papers": (slot("count_label"), slot("url")),
                    "no_papers": (),
                    "view_link": (slot("url"),),
                }[name]
                piece = Markup(getattr(macros, name)(*args))
                compiled = CompiledFragment.from_html(self._inliner.inline_fragment(piece))
            self._fragments[name] = compiled
        return compiled

    def _card(self, paper: Paper) -> CompiledFragment:
        """The paper's card with its link, byline and row of links bound (cached: papers repeat
        across subscribers); the per-issue slots stay open."""
        compiled = self._cards.get(paper)
        if compiled is not None:
            self._cards.move_to_end(paper)
            return compiled
        meta = _meta_label(paper)
        template = self._fragment("card_with_meta" if meta else "card")
        link = self._fragment("paper_link")
        links = Markup(" &middot; ").join(
            link.fill({"url": escape(url), "label": escape(label)})
            for label, url in self.paper_link_row(paper)
        )
        compiled = template.bind(
            {"url": escape(self.site.paper_url(paper)), "meta": escape(meta), "links": links}
        )
        self._cards[paper] = compiled
        if len(self._cards) > self._card_cache_size:
            self._cards.popitem(last=False)
        return compiled

    def paper_link_row(self, paper: Paper) -> list[tuple[str, str]]:
        """A card's links as (label, URL): the abstract page (:meth:`SiteInfo.paper_url`), then
        PDF, Hugging Face page and code repository when :func:`paper_links` knows them."""
        main = self.site.paper_url(paper)
        derived = paper_links(paper)
        searched = not paper.arxiv_id and main != paper.url
        row = [("Search arXiv" if searched else "Abstract", main)]
        for label, url in (
            ("PDF", derived.pdf),
            ("Hugging Face", derived.huggingface),
            ("Code", derived.code),
        ):
            if url and url != main:
                row.append((label, url))
        return row

    # ------------------------------------------------------------------ per subscriber

    def _card_html(
        self,
        rank: int,
        scored: ScoredPaper,
        looks: _Looks,
        *,
        full: bool,
        archive_url: str,
    ) -> Markup:
        """One paper's card: the first sentences of its abstract and a link to the whole one
        in the web archive (``full=False``, the email), or the whole abstract (the page)."""
        mark = self._fragment("mark")
        reason = self._fragment("reason")
        paper = scored.paper
        site, sub = self.site, looks.subscriber
        reasons = Markup("").join(
            reason.fill(
                {
                    "term": escape(strip_controls(r.term)),
                    "where": escape(r.where),
                    "contribution": escape(f"{r.contribution:+.2f}"),
                    "mute_url": escape(site.mute_url(sub, looks.muted.get(r.term, r.term))),
                }
            )
            if r.where in _MUTABLE
            else self._fragment("reason_plain").fill(
                {
                    "term": escape(strip_controls(r.term)),
                    "where": escape(r.where),
                    "contribution": escape(f"{r.contribution:+.2f}"),
                }
            )
            for r in scored.reasons
        )
        views = abstract_views(paper.abstract)
        more = Markup("")
        if full:
            abstract = views.full_html
        else:
            abstract = views.short_html
            if views.cut:
                more = Markup(" ") + self._fragment("full_abstract").fill(
                    {"url": escape(f"{archive_url}#paper-{rank}")}
                )
        return self._card(paper).fill(
            {
                "rank": escape(str(rank)),
                "title": highlight_html(
                    title_html(paper.title), looks.title_terms, mark, looks.find
                ),
                "abstract": highlight_html(abstract, looks.abstract_terms, mark, looks.find),
                "full_abstract": more,
                "score": escape(f"{scored.score:.2f}"),
                "reasons": reasons,
                "more_url": escape(site.feedback_url(sub, paper.id, Judgment.LIKE)),
                "less_url": escape(site.feedback_url(sub, paper.id, Judgment.DISLIKE)),
            }
        )

    def _frame(self, issue: IssueContent) -> _Frame:
        """What the email and the page share: subject, dates, greeting, links."""
        site, sub = self.site, issue.subscriber
        n_total = len(issue.papers)
        when = f"{issue.slot_date:%a %d %b %Y}"
        subject = f"{strip_controls(site.name)}: {plural(n_total, 'paper')} for {when}"
        local = _aware(issue.created_at).astimezone(_zone(sub))
        issue_date = f"Sent {local:%a %d %b %Y, %H:%M} {local.tzname() or ''}".rstrip()
        name = strip_controls(sub.name)
        preheader = " · ".join(title_text(sp.paper.title) for sp in issue.papers[:PREHEADER_TITLES])
        if len(preheader) > PREHEADER_MAX_CHARS:
            preheader = preheader[: PREHEADER_MAX_CHARS - 1].rstrip() + "…"
        positive = issue.profile.positive
        looks = _Looks(
            subscriber=sub,
            title_terms=positive,
            abstract_terms=tuple(t for t in positive if not t.title_only),
            find=_span_finder() if positive else _no_spans,
            muted=mute_terms(issue.profile),
        )
        return _Frame(
            subject=subject,
            issue_date=issue_date,
            name=name,
            greeting=f"Hello {name}," if name else "",
            preheader=preheader,
            issue_url=site.issue_url(sub, issue.slot_date),
            feed_url=site.feed_url(sub, "atom"),
            looks=looks,
        )

    def _shell_values(self, issue: IssueContent, frame: _Frame, *, page: bool) -> dict[str, Markup]:
        site, sub = self.site, issue.subscriber
        if page:
            note = (
                f"The issue of {issue.slot_date:%a %d %b %Y} for {sub.email}, every paper with "
                "its whole abstract; each paper says which of your terms it matched."
            )
            view = Markup("")
        else:
            note = (
                f"You get this email because {sub.email} subscribed to "
                f"{strip_controls(site.name)} with a keyword profile; each paper above says "
                "which of your terms it matched."
            )
            view = self._fragment("view_link").fill({"url": escape(frame.issue_url)})
        greeting = (
            self._fragment("greeting").fill({"text": escape(frame.greeting)})
            if frame.greeting
            else Markup("")
        )
        return {
            "subject": escape(frame.subject),
            "site_name": escape(strip_controls(site.name)),
            "preheader": escape(frame.preheader or frame.subject),
            "issue_date": escape(frame.issue_date),
            "greeting": greeting,
            "count": Markup(""),
            "toc": Markup(""),
            "toc_more": Markup(""),
            "cards": Markup(""),
            "more": Markup(""),
            "footer_note": escape(note),
            "feed_url": escape(frame.feed_url),
            "view_link": view,
            "preferences_url": escape(site.preferences_url(sub)),
            "unsubscribe_url": escape(site.unsubscribe_url(sub)),
        }

    def render_page(self, issue: IssueContent) -> str:
        """The issue's page in the web archive (``/issues/<token>/<date>``): a complete HTML
        document, the email's shell and cards with every paper of the issue, each with its
        whole abstract (sanitized markdown, LaTeX converted, terms highlighted), its reasons
        and its feedback and mute links; the titles list links every card by its anchor
        ``paper-N`` (N = position in the issue, from 1: the anchors the email links to);
        the footer links the private Atom feed, preferences and unsubscribe. No size limit.

        Deterministic, like :meth:`render`: the same content gives the same bytes.
        """
        frame = self._frame(issue)
        values = self._shell_values(issue, frame, page=True)
        n_total = len(issue.papers)
        if n_total:
            values["count"] = escape(
                "Here is the one paper of this issue."
                if n_total == 1
                else f"Here are all {n_total} papers of this issue."
            )
            titles = [title_html(sp.paper.title) for sp in issue.papers]
            values["toc"] = self._fragment("toc").fill(
                {"items": Markup("".join(_toc_item(t, f"#paper-{r}") for r, t in _ranked(titles)))}
            )
            values["cards"] = Markup("").join(
                self._card_html(r, sp, frame.looks, full=True, archive_url=frame.issue_url)
                for r, sp in enumerate(issue.papers, start=1)
            )
        else:
            values["more"] = self._fragment("no_papers").fill({})
        return str(self._fragment("shell").fill(values))

    def render(self, issue: IssueContent) -> RenderedIssue:
        """Build the subject, both body parts and the complete message for one issue."""
        site, sub = self.site, issue.subscriber
        frame = self._frame(issue)
        values = self._shell_values(issue, frame, page=False)
        n_total = len(issue.papers)
        count_reserve = escape(_count_line(n_total, 0, issue.quiet))
        values["count"] = count_reserve
        layout = self._fit(issue, frame, values)
        n_shown = len(layout.cards)
        n_more = n_total - n_shown
        values["count"] = escape(_count_line(n_total, n_shown, issue.quiet))
        more_label = plural(n_more, "more paper") if n_more else ""
        if n_total:
            values["toc"] = self._fragment("toc").fill({"items": Markup("".join(layout.items))})
        if n_more:
            more = self._fragment("more_papers").fill(
                {"count_label": escape(more_label), "url": escape(frame.issue_url)}
            )
            values["toc_more"] = more
            values["more"] = more
            log.info(
                "issue for subscriber %s: %d of %d papers fit in %d bytes; listing the rest",
                sub.id,
                n_shown,
                n_total,
                self.max_html_bytes,
            )
        elif not n_total:
            values["more"] = self._fragment("no_papers").fill({})
        values["cards"] = Markup("").join(layout.cards)
        html_part = str(self._fragment("shell").fill(values))
        if _size(html_part) > self.max_html_bytes:
            log.warning(
                "issue for subscriber %s: HTML part exceeds %d bytes", sub.id, self.max_html_bytes
            )

        text_part = self._render_text(issue, frame, n_shown=n_shown, more_label=more_label)
        message_id = site.message_id(sub, issue.slot_date)
        message = self._message(issue, frame.subject, text_part, html_part, message_id, frame.name)
        return RenderedIssue(
            subject=frame.subject,
            html=html_part,
            text=text_part,
            message=message,
            message_id=message_id,
        )

    def _fit(self, issue: IssueContent, frame: _Frame, values: dict[str, Markup]) -> _Layout:
        """The email's titles list and cards under the size limit.

        Every title is listed, in the issue's order; a paper with a card links to it
        (``#paper-N``), any other to its anchor in the web archive. The top papers get cards
        while the list keeps a link for every other title. When that leaves fewer than
        :data:`MIN_CARDS` cards (a large issue), the titles of papers without a card are
        listed as text first (shortened, or the last ones left to the "more" line, only when
        even that does not fit in :data:`LIST_SHARE` of the budget), cards fill the room left
        and the leftover turns the first of those titles into links again.
        """
        n_total = len(issue.papers)
        if not n_total:
            return _Layout(items=[], cards=[])
        more = self._fragment("more_papers").fill(
            {"count_label": escape(plural(n_total, "more paper")), "url": escape(frame.issue_url)}
        )
        toc_frame = self._fragment("toc").fill({"items": Markup("")})
        budget = (
            self.max_html_bytes
            - 1  # strictly under the limit
            - _size(self._fragment("shell").fill(values))
            - 2 * _size(more)
            - _size(toc_frame)
        )
        titles = [title_html(sp.paper.title) for sp in issue.papers]
        archive = frame.issue_url
        to_card = [_toc_item(t, f"#paper-{r}") for r, t in _ranked(titles)]
        to_archive = [_toc_item(t, f"{archive}#paper-{r}") for r, t in _ranked(titles)]
        size_card = [_size(x) for x in to_card]
        size_archive = [_size(x) for x in to_archive]
        cards: list[Markup] = []
        card_sizes: list[int] = []

        def card(i: int) -> int:
            while len(cards) <= i:
                r = len(cards) + 1
                made = self._card_html(
                    r, issue.papers[r - 1], frame.looks, full=False, archive_url=archive
                )
                cards.append(made)
                card_sizes.append(_size(made))
            return card_sizes[i]

        # First try: every title without a card links to the archive.
        used, shown = 0, 0
        tail = sum(size_archive)
        while shown < n_total:
            cost = used + card(shown) + size_card[shown] + tail - size_archive[shown]
            if cost > budget:
                break
            used += card_sizes[shown] + size_card[shown]
            tail -= size_archive[shown]
            shown += 1
        if shown >= min(n_total, MIN_CARDS):
            return _Layout(items=to_card[:shown] + to_archive[shown:], cards=cards[:shown])

        # A large issue: the titles without a card as text, shortened if need be.
        plain: list[str] = []
        for limit in _LIST_TITLE_LIMITS:
            plain = [_toc_item(_shorten_html(t, limit), None) for t in titles]
            if sum(_size(x) for x in plain) <= budget * LIST_SHARE:
                break
        size_plain = [_size(x) for x in plain]
        listed, room = 0, budget * LIST_SHARE
        while listed < n_total and size_plain[listed] <= room:
            room -= size_plain[listed]
            listed += 1
        used, shown = 0, 0
        tail = sum(size_plain[:listed])
        while shown < listed:
            cost = used + card(shown) + size_card[shown] + tail - size_plain[shown]
            if cost > budget:
                break
            used += card_sizes[shown] + size_card[shown]
            tail -= size_plain[shown]
            shown += 1
        items = to_card[:shown]
        left = budget - used - tail
        for i in range(shown, listed):
            extra = size_archive[i] - size_plain[i]
            if plain[i] == _toc_item(titles[i], None) and extra <= left:
                items.append(to_archive[i])
                left -= extra
            else:
                items.append(plain[i])
        return _Layout(items=items, cards=cards[:shown])

    def _render_text(
        self, issue: IssueContent, frame: _Frame, *, n_shown: int, more_label: str
    ) -> str:
        site, sub = self.site, issue.subscriber
        n_total = len(issue.papers)
        width = len(f"{n_total}. ")
        toc = []
        for rank, scored in enumerate(issue.papers, start=1):
            first = f"{rank}. ".rjust(width)
            entry = _wrap(title_text(scored.paper.title), " " * width, first=first)
            if rank > n_shown:
                entry += f"\n{' ' * width}{frame.issue_url}#paper-{rank}"
            toc.append(entry)
        cards = []
        for rank, scored in enumerate(issue.papers[:n_shown], start=1):
            paper = scored.paper
            indent = " " * len(f"{rank}. ")
            meta = _meta_label(paper)
            views = abstract_views(paper.abstract)
            cards.append(
                {
                    "heading": _wrap(title_text(paper.title), indent, first=f"{rank}. "),
                    "indent": indent,
                    "meta": _wrap(meta, indent) if meta else "",
                    "links": [f"{label}: {url}" for label, url in self.paper_link_row(paper)],
                    "abstract": _wrap(views.short_text, indent) if views.short_text else "",
                    "full_url": f"{frame.issue_url}#paper-{rank}" if views.cut else "",
                    "score": f"{scored.score:.2f}",
                    "reasons": [
                        f"\u201c{strip_controls(r.term)}\u201d in {r.where}: {r.contribution:+.2f}"
                        for r in scored.reasons
                    ],
                    "more_url": site.feedback_url(sub, paper.id, Judgment.LIKE),
                    "less_url": site.feedback_url(sub, paper.id, Judgment.DISLIKE),
                }
            )
        footer_note = _wrap(
            f"You get this email because {sub.email} subscribed to {strip_controls(site.name)} "
            "with a keyword profile; each paper above says which of your terms it matched."
        )
        return self._text_template.render(
            subject=frame.subject,
            issue_date=frame.issue_date,
            greeting=_wrap(frame.greeting) if frame.greeting else "",
            count=_wrap(_count_line(n_total, n_shown, issue.quiet)),
            toc=toc,
            cards=cards,
            more_label=more_label,
            issue_url=frame.issue_url,
            footer_note=footer_note,
            feed_url=frame.feed_url,
            preferences_url=site.preferences_url(sub),
            unsubscribe_url=site.unsubscribe_url(sub),
        )

    def _site_headers(self) -> tuple[bytes, bytes]:
        """``From`` and the list headers, the same for every issue: folded once."""
        if self._site_header_lines is None:
            site = self.site
            try:
                from_ = Address(strip_controls(site.from_name), addr_spec=site.from_address)
                from_line = fold_header("From", str(from_))
            except (ValueError, IndexError, email.errors.HeaderParseError) as exc:
                raise SubscriberError(
                    f"sender address {site.from_address!r} is not a valid email address "
                    f"({exc}); fix mail.from_address in the configuration"
                ) from exc
            list_lines = fold_header(
                "List-Id", formataddr((strip_controls(site.name), site.list_id))
            )
            self._site_header_lines = (from_line, list_lines)
        return self._site_header_lines

    def _message(
        self,
        issue: IssueContent,
        subject: str,
        text_part: str,
        html_part: str,
        message_id: str,
        name: str,
    ) -> bytes:
        """The MIME message; every header value comes from settings or the subscriber record."""
        site, sub = self.site, issue.subscriber
        from_line, list_id_line = self._site_headers()
        try:
            to_line = fold_header(
                "To", str(Address(header_display_name(name), addr_spec=sub.email))
            )
        except (ValueError, IndexError, email.errors.HeaderParseError) as exc:
            raise SubscriberError(
                f"subscriber {sub.id}: email {sub.email!r} is not a valid address ({exc}); "
                "correct or remove this subscriber",
                field="email",
            ) from exc
        headers = [
            from_line,
            to_line,
            _subject_line(subject),
            fold_header("Date", format_datetime(_aware(issue.created_at))),
            fold_header("Message-ID", message_id),
            list_id_line,
            fold_header("List-Unsubscribe", f"<{site.unsubscribe_url(sub)}>"),
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
        ]
        # A boundary derived from the Message-ID makes a re-render byte-identical; "==" cannot
        # occur in quoted-printable bodies, so it cannot collide with the content.
        digest = hashlib.sha256(message_id.encode("utf-8")).hexdigest()[:24]
        return multipart_alternative(headers, f"==nl-{digest}==", text_part, html_part)


@functools.lru_cache(maxsize=256)
def _subject_line(subject: str) -> bytes:
    """Subjects repeat (one per site and date): fold each once."""
    return fold_header("Subject", subject)


#: RFC 5322 specials: a display name holding one must be quoted, and Python's email package
#: (3.11) can drop those quotes when it folds a long To header, so that a name such as
#: 'Eve "x" <evil@example.net>, Mallory <m@example.net>' became three addresses.
_NAME_SPECIALS_RE = re.compile(r'["\\<>()\[\]:;@,.]')
#: A run of this many non-blank characters gets a space after it: the same folder can emit an
#: empty line (which ends the header block) when one word does not fit on a line.
_LONG_WORD_RE = re.compile(r"\S{40}(?=\S)")


def header_display_name(name: str) -> str:
    """The subscriber's name as the To header can carry it: specials become spaces and very
    long words are broken, so the header always parses back to exactly one address.

    Only the header is affected; the greeting in the email shows the name as given.
    """
    plain = " ".join(_NAME_SPECIALS_RE.sub(" ", strip_controls(name)).split())
    return _LONG_WORD_RE.sub(lambda m: m.group() + " ", plain)


def _aware(moment: datetime) -> datetime:
    """The Date header needs an offset; a naive time is taken as UTC rather than local time."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _no_spans(text: str, terms: Sequence[ProfileTerm]) -> list[tuple[int, int]]:
    return []


#: Reasons a "mute" link can act on: terms matched in the text (muting appends an exclusion);
#: not author: terms nor the reader's feedback.
_MUTABLE = frozenset({MatchField.TITLE, MatchField.ABSTRACT})


def mute_terms(profile: Profile) -> dict[str, str]:
    """A reason's term → the term its "mute" link mutes.

    A reason names a profile term as the ranker shows it (:attr:`ProfileTerm.shown`): the
    term's text, or ``LLM via large language model`` for a form the vocabulary added. Muting
    that reason
    mutes the form that matched (``large language model``), not the whole sentence; a reason
    whose term is not in the profile as it is now (an archived issue after a profile change)
    mutes its text as shown.
    """
    return {t.shown: t.text for t in profile.positive}


def render_issue(templates_dir: Path | None, site: SiteInfo, issue: IssueContent) -> RenderedIssue:
    """One-off convenience (CLI dry runs); batch callers keep one :class:`EmailRenderer`."""
    return EmailRenderer(templates_dir, site).render(issue)
