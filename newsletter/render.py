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
import logging
import re
import textwrap
from collections import OrderedDict
from collections.abc import Sequence
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
    RenderedIssue,
    ScoredPaper,
    SiteInfo,
    Subscriber,
)
from newsletter.errors import SubscriberError
from newsletter.mime import fold_header, multipart_alternative
from newsletter.render_html import (
    CompiledFragment,
    CssInliner,
    Slots,
    SpanFinder,
    abstract_plain_text,
    highlight_html,
    highlight_text,
    make_environment,
    sanitize_abstract,
    slot,
    strip_controls,
)
from newsletter.resources import read_resource

log = logging.getLogger(__name__)

#: Gmail clips an HTML part at about 102 KB; stay clearly below.
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
                    "more_papers": (slot("count_label"), slot("url")),
                    "no_papers": (),
                }[name]
                piece = Markup(getattr(macros, name)(*args))
                compiled = CompiledFragment.from_html(self._inliner.inline_fragment(piece))
            self._fragments[name] = compiled
        return compiled

    def _card(self, paper: Paper) -> CompiledFragment:
        """The paper's card with its link and byline bound (cached: papers repeat across
        subscribers); the per-subscriber slots stay open."""
        compiled = self._cards.get(paper)
        if compiled is not None:
            self._cards.move_to_end(paper)
            return compiled
        meta = _meta_label(paper)
        template = self._fragment("card_with_meta" if meta else "card")
        compiled = template.bind({"url": escape(self.site.paper_url(paper)), "meta": escape(meta)})
        self._cards[paper] = compiled
        if len(self._cards) > self._card_cache_size:
            self._cards.popitem(last=False)
        return compiled

    # ------------------------------------------------------------------ per subscriber

    def _card_html(
        self,
        rank: int,
        scored: ScoredPaper,
        title_terms: Sequence[ProfileTerm],
        abstract_terms: Sequence[ProfileTerm],
        find: SpanFinder,
        sub: Subscriber,
        muted: dict[str, str],
    ) -> Markup:
        mark = self._fragment("mark")
        reason = self._fragment("reason")
        paper = scored.paper
        site = self.site
        reasons = Markup("").join(
            reason.fill(
                {
                    "term": escape(strip_controls(r.term)),
                    "where": escape(r.where),
                    "contribution": escape(f"{r.contribution:+.2f}"),
                    "mute_url": escape(site.mute_url(sub, muted.get(r.term, r.term))),
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
        return self._card(paper).fill(
            {
                "rank": escape(str(rank)),
                "title": highlight_text(strip_controls(paper.title), title_terms, mark, find),
                "abstract": highlight_html(
                    sanitize_abstract(paper.abstract), abstract_terms, mark, find
                ),
                "score": escape(f"{scored.score:.2f}"),
                "reasons": reasons,
                "more_url": escape(site.feedback_url(sub, paper.id, Judgment.LIKE)),
                "less_url": escape(site.feedback_url(sub, paper.id, Judgment.DISLIKE)),
            }
        )

    def render(self, issue: IssueContent) -> RenderedIssue:
        """Build the subject, both body parts and the complete message for one issue."""
        site, sub = self.site, issue.subscriber
        name = strip_controls(sub.name)
        n_total = len(issue.papers)
        when = f"{issue.slot_date:%a %d %b %Y}"
        subject = f"{strip_controls(site.name)}: {plural(n_total, 'paper')} for {when}"
        local = _aware(issue.created_at).astimezone(_zone(sub))
        issue_date = f"Sent {local:%a %d %b %Y, %H:%M} {local.tzname() or ''}".rstrip()
        intro = f"Hello {name}," if name else "Hello,"
        if n_total:
            verb = "is" if n_total == 1 else "are"
            intro += f" here {verb} {plural(n_total, 'paper')} matching your profile."
        issue_url = site.issue_url(sub, issue.slot_date)
        preheader = " · ".join(
            strip_controls(sp.paper.title) for sp in issue.papers[:PREHEADER_TITLES]
        )
        if len(preheader) > PREHEADER_MAX_CHARS:
            preheader = preheader[: PREHEADER_MAX_CHARS - 1].rstrip() + "…"

        shell = self._fragment("shell")
        values: dict[str, Markup] = {
            "subject": escape(subject),
            "site_name": escape(strip_controls(site.name)),
            "preheader": escape(preheader or intro),
            "issue_date": escape(issue_date),
            "intro": escape(intro),
            "email": escape(sub.email),
            "view_url": escape(issue_url),
            "preferences_url": escape(site.preferences_url(sub)),
            "unsubscribe_url": escape(site.unsubscribe_url(sub)),
            "cards": Markup(""),
            "more": Markup(""),
        }
        chosen = self._fit_cards(issue, shell, values)
        n_more = n_total - len(chosen)
        more_label = plural(n_more, "more paper") if n_more else ""
        if n_more:
            values["more"] = self._fragment("more_papers").fill(
                {"count_label": escape(more_label), "url": escape(issue_url)}
            )
            log.info(
                "issue for subscriber %s: %d of %d papers fit in %d bytes; linking the rest",
                sub.id,
                len(chosen),
                n_total,
                self.max_html_bytes,
            )
        elif not n_total:
            values["more"] = self._fragment("no_papers").fill({})
        values["cards"] = Markup("").join(chosen)
        html_part = str(shell.fill(values))
        if len(html_part.encode("utf-8")) > self.max_html_bytes:
            log.warning(
                "issue for subscriber %s: HTML part exceeds %d bytes", sub.id, self.max_html_bytes
            )

        text_part = self._render_text(
            issue,
            subject=subject,
            issue_date=issue_date,
            intro=intro,
            n_shown=len(chosen),
            more_label=more_label,
            issue_url=issue_url,
        )
        message_id = site.message_id(sub, issue.slot_date)
        message = self._message(issue, subject, text_part, html_part, message_id, name)
        return RenderedIssue(
            subject=subject,
            html=html_part,
            text=text_part,
            message=message,
            message_id=message_id,
        )

    def _fit_cards(
        self, issue: IssueContent, shell: CompiledFragment, values: dict[str, Markup]
    ) -> list[Markup]:
        """The top cards that keep the HTML part under the limit, with room for the "more" link."""
        n_total = len(issue.papers)
        budget = self.max_html_bytes - len(shell.fill(values).encode("utf-8"))
        more_reserve = len(
            self._fragment("more_papers")
            .fill(
                {
                    "count_label": escape(plural(n_total, "more paper")),
                    "url": escape(self.site.issue_url(issue.subscriber, issue.slot_date)),
                }
            )
            .encode("utf-8")
        )
        positive = issue.profile.positive
        abstract_terms = tuple(t for t in positive if not t.title_only)
        find = _span_finder() if positive else _no_spans
        muted = mute_terms(issue.profile)
        chosen: list[Markup] = []
        used = 0
        for rank, scored in enumerate(issue.papers, start=1):
            card = self._card_html(
                rank, scored, positive, abstract_terms, find, issue.subscriber, muted
            )
            size = len(card.encode("utf-8"))
            reserve = more_reserve if rank < n_total else 0
            if used + size + reserve > budget:
                break
            chosen.append(card)
            used += size
        return chosen

    def _render_text(
        self,
        issue: IssueContent,
        *,
        subject: str,
        issue_date: str,
        intro: str,
        n_shown: int,
        more_label: str,
        issue_url: str,
    ) -> str:
        site, sub = self.site, issue.subscriber
        cards = []
        for rank, scored in enumerate(issue.papers[:n_shown], start=1):
            paper = scored.paper
            indent = " " * len(f"{rank}. ")
            meta = _meta_label(paper)
            paragraphs = [p for p in abstract_plain_text(paper.abstract).split("\n\n") if p.strip()]
            cards.append(
                {
                    "heading": _wrap(strip_controls(paper.title), indent, first=f"{rank}. "),
                    "indent": indent,
                    "url": site.paper_url(paper),
                    "meta": _wrap(meta, indent) if meta else "",
                    "abstract": "\n\n".join(_wrap(" ".join(p.split()), indent) for p in paragraphs),
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
            subject=subject,
            issue_date=issue_date,
            intro=_wrap(intro),
            cards=cards,
            more_label=more_label,
            issue_url=issue_url,
            footer_note=footer_note,
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
