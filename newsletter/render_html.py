"""HTML building blocks of the email renderer: CSS inlining once, slots, sanitizing, highlighting.

premailer costs tens of milliseconds per email, so it must not run once per subscriber (a
design rule). Templates are therefore rendered with *slot tokens* where values go, inlined once,
and cut at the tokens into a :class:`CompiledFragment`; an email is the fragments joined with
values escaped for their context. The tokens are plain ASCII words because libxml2
percent-escapes non-ASCII characters inside ``href`` attributes when premailer serializes.

Injection-proof by construction: a template is rendered with slot tokens *only* (no paper,
subscriber or site value), and it is cut at its tokens exactly once, before any value exists.
Values are joined in afterwards (:meth:`CompiledFragment.fill`, :meth:`CompiledFragment.bind`)
and the result is never scanned for tokens again, so a title, author or URL that spells a slot
token is just text: it cannot create a slot, and it cannot reach premailer or lxml either.
"""

from __future__ import annotations

import functools
import html
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import markdown
import nh3
from jinja2 import Environment, StrictUndefined, select_autoescape
from markupsafe import Markup, escape
from premailer import Premailer

from newsletter.domain import ProfileTerm
from newsletter.limits import LINK_SCHEMES, http_url
from newsletter.resources import template_loader

log = logging.getLogger(__name__)

_SLOT_PREFIX = "ZZNLSLOT"
_SLOT_RE = re.compile(rf"{_SLOT_PREFIX}([a-z_]+)ZZ")
_FRAGMENT_START = "<!--fragment-start-->"
_FRAGMENT_END = "<!--fragment-end-->"

#: Control characters (C0 except tab/newline, DEL, C1), Unicode line/paragraph separators, and
#: lone surrogates (JSON's "\ud800" decodes to one; UTF-8 cannot encode it, so the email would
#: fail to build).
_CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
#: A tag of serialized, sanitized HTML; quoted attribute values may contain ">".
_TAG_RE = re.compile(r"""(<(?:[^>"']|"[^"]*"|'[^']*')*>)""")
#: Characters percent-encoded in links kept from abstracts (see :func:`_abstract_link`).
_URL_QUOTE_RE = re.compile("[\"'<>`]")
#: An inline markdown link ``[text](target "title")``; one level of parentheses in the target.
_MD_LINK_RE = re.compile(
    r"\[([^\[\]\n]*)\]\(\s*<?([^\s<>()]*(?:\([^\s<>()]*\)[^\s<>()]*)*)>?(?:\s+[^)\n]*)?\)"
)
#: A markdown reference definition ``[label]: target``, a line of its own.
_MD_REF_RE = re.compile(r"^ {0,3}\[[^\[\]\n]+\]:[ \t]*<?([^\s<>]*)>?[^\n]*(?:\n|$)", re.M)

ABSTRACT_TAGS = frozenset({"p", "em", "strong", "code", "a", "ul", "ol", "li", "sup", "sub"})


def slot(name: str) -> str:
    """The token a template prints where the per-subscriber value ``name`` will go."""
    return f"{_SLOT_PREFIX}{name}ZZ"


class Slots:
    """Lets a template write ``{{ slots.title }}`` for the token of slot ``title``."""

    def __getattr__(self, name: str) -> str:
        return slot(name)


@dataclass(frozen=True)
class CompiledFragment:
    """Inlined HTML cut at its slots: ``parts[0] slot[0] parts[1] slot[1] ... parts[-1]``."""

    parts: tuple[str, ...]
    slots: tuple[str, ...]

    @classmethod
    def from_html(cls, inlined: str) -> CompiledFragment:
        """Cut a rendered template at its slot tokens.

        Only for template output rendered with slot tokens and no values: this is the one place
        tokens are searched for, so a value must never pass through here (see the module doc).
        """
        pieces = _SLOT_RE.split(inlined)
        return cls(parts=tuple(pieces[0::2]), slots=tuple(pieces[1::2]))

    def fill(self, values: Mapping[str, Markup]) -> Markup:
        """Join the parts with the values; values must already be safe (escaped or sanitized)."""
        out = [self.parts[0]]
        for name, part in zip(self.slots, self.parts[1:], strict=True):
            out.append(values[name])
            out.append(part)
        return Markup("".join(out))

    def bind(self, values: Mapping[str, Markup]) -> CompiledFragment:
        """Fill some slots now and keep the others: a paper's card binds its link and byline
        once, and each subscriber fills only rank, title, abstract, score and reasons.

        The bound values are joined into the static parts, never scanned for tokens, so they
        stay plain content whatever they spell.
        """
        parts: list[str] = []
        slots: list[str] = []
        current = [self.parts[0]]
        for name, part in zip(self.slots, self.parts[1:], strict=True):
            value = values.get(name)
            if value is None:
                parts.append("".join(current))
                slots.append(name)
                current = [part]
            else:
                current.append(value)
                current.append(part)
        parts.append("".join(current))
        return CompiledFragment(parts=tuple(parts), slots=tuple(slots))

    @property
    def static_size(self) -> int:
        """UTF-8 size of everything but the slot values, for the size budget."""
        return sum(len(p.encode("utf-8")) for p in self.parts)


def make_environment(templates_dir: Path | None, subdir: str = "") -> Environment:
    """Jinja2 with autoescape on for HTML templates and off for the text part.

    Templates come from the package (``newsletter/templates/<subdir>``); ``templates_dir``,
    when set, is an override folder searched first (see :mod:`newsletter.resources`).
    """
    return Environment(
        loader=template_loader(templates_dir, subdir),
        autoescape=select_autoescape(
            enabled_extensions=("html", "html.j2", "xml"), default_for_string=True, default=False
        ),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


class CssInliner:
    """premailer, configured once: no network, keep !important and @media rules, quiet cssutils."""

    def __init__(self, env: Environment, css: str) -> None:
        self._env = env
        self._css = css

    def inline_document(self, document: str) -> str:
        """Inline a whole document whose <style> block stays (for @media and dark-mode rules)."""
        return str(self._premailer(document, keep_style_tags=True, css_text=None).transform())

    def inline_fragment(self, fragment: Markup) -> str:
        """Inline a piece of body HTML with the stylesheet; return the inlined piece only."""
        document = self._env.get_template("_fragment.html.j2").render(fragment=fragment)
        inlined = str(
            self._premailer(document, keep_style_tags=False, css_text=self._css).transform()
        )
        start = inlined.index(_FRAGMENT_START) + len(_FRAGMENT_START)
        end = inlined.index(_FRAGMENT_END, start)
        return inlined[start:end].strip()

    @staticmethod
    def _premailer(document: str, *, keep_style_tags: bool, css_text: str | None) -> Premailer:
        return Premailer(
            document,
            base_url=None,
            disable_link_rewrites=True,
            disable_validation=True,
            allow_network=False,
            allow_loading_external_files=False,
            keep_style_tags=keep_style_tags,
            css_text=css_text,
            disable_leftover_css=css_text is not None,
            strip_important=False,
            remove_classes=False,
            include_star_selectors=False,
            cssutils_logging_level=logging.CRITICAL,
        )


def strip_controls(text: str) -> str:
    """Replace control characters by spaces and collapse whitespace to single spaces.

    Used for one-line values (names, titles): a CR/LF in a name must never reach a header, and a
    stray escape character has no business in an email either.
    """
    return " ".join(_CONTROL_RE.sub(" ", text).split())


def strip_controls_keep_lines(text: str) -> str:
    """Remove control characters but keep newlines and tabs (for multi-paragraph abstracts)."""
    return _CONTROL_RE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


@functools.lru_cache(maxsize=4096)
def sanitize_abstract(abstract: str) -> str:
    """Markdown to HTML, then an allow-list sanitizer.

    python-markdown passes raw HTML and ``javascript:`` links through untouched, so nh3 must run
    after it. Cached per abstract: the same papers go to many subscribers.
    """
    rendered = markdown.markdown(strip_controls_keep_lines(abstract), output_format="html")
    return escape_text_segments(_ABSTRACT_CLEANER.clean(rendered).strip())


def escape_text_segments(safe_html: str) -> str:
    """Re-escape the text between the tags of sanitized HTML with :func:`markupsafe.escape`.

    nh3 leaves quotes in text unescaped (valid HTML, but not safe in every context a caller
    may put it in); after this every ``"`` and ``'`` outside a tag is an entity. Attribute
    values are already quoted by nh3, and the only ones left are checked links.
    """
    out: list[str] = []
    for i, piece in enumerate(_TAG_RE.split(safe_html)):
        out.append(piece if i % 2 else str(escape(html.unescape(piece))))
    return "".join(out)


def _abstract_link(element: str, attribute: str, value: str) -> str | None:
    """nh3's attribute filter: an abstract's ``href`` stays only if :func:`http_url` allows it.

    Characters that could end a quoted attribute in a careless consumer are percent-encoded
    (they mean the same in a URL). Logged at debug level: sanitizing is cached per abstract.
    """
    if attribute != "href":
        return value
    url = http_url(value)
    if url is None:
        log.debug("abstract link %.100r dropped: only http(s) URLs become links", value)
        return None
    return _URL_QUOTE_RE.sub(lambda m: f"%{ord(m.group()):02X}", url)


#: The one sanitizer for abstracts: allowed tags only; on links only ``href`` (http(s) with a
#: host, checked by :func:`http_url`) and the ``rel`` nh3 adds; no generic attributes (nh3
#: would otherwise keep ``title`` and ``lang`` on every tag).
_ABSTRACT_CLEANER = nh3.Cleaner(
    tags=set(ABSTRACT_TAGS),
    attributes={"a": {"href"}, "*": set()},
    attribute_filter=_abstract_link,
    url_schemes=set(LINK_SCHEMES),
    url_relative="deny",
    link_rel="noopener noreferrer nofollow",
    strip_comments=True,
)


@functools.lru_cache(maxsize=4096)
def abstract_plain_text(abstract: str) -> str:
    """The abstract for the text part: markdown left as written, but no HTML tags at all.

    A markdown link whose target is not an http(s) URL keeps only its text (and a reference
    definition to one is dropped): a ``javascript:`` target must not reach the text part,
    where mail clients turn URLs into links.
    """
    no_tags = nh3.clean(strip_controls_keep_lines(abstract), tags=set(), strip_comments=True)
    text = _MD_LINK_RE.sub(_plain_link, html.unescape(no_tags))
    return _MD_REF_RE.sub(_plain_reference, text).strip()


def _plain_link(match: re.Match[str]) -> str:
    if http_url(match.group(2)) is not None:
        return match.group(0)
    log.debug("abstract link %.100r dropped from the text part", match.group(2))
    return match.group(1)


def _plain_reference(match: re.Match[str]) -> str:
    if http_url(match.group(1)) is not None:
        return match.group(0)
    log.debug("abstract link %.100r dropped from the text part", match.group(1))
    return ""


SpanFinder = Callable[[str, Sequence[ProfileTerm]], list[tuple[int, int]]]


def highlight_text(
    text: str, terms: Sequence[ProfileTerm], mark: CompiledFragment, find: SpanFinder
) -> Markup:
    """Escape ``text`` and wrap every matched span in the (pre-inlined) <mark> element.

    Spans are computed on the raw text and each piece is escaped separately, so an ``&`` next to
    a match can never be split into a broken entity.
    """
    spans = find(text, terms) if terms and text else []
    out: list[str] = []
    pos = 0
    for start, end in spans:
        if start < pos or end <= start:
            continue  # defensive: spans must be sorted and disjoint
        out.append(escape(text[pos:start]))
        out.append(mark.fill({"text": escape(text[start:end])}))
        pos = end
    out.append(escape(text[pos:]))
    return Markup("".join(out))


def highlight_html(
    safe_html: str, terms: Sequence[ProfileTerm], mark: CompiledFragment, find: SpanFinder
) -> Markup:
    """Highlight matches in the text segments of sanitized HTML, leaving its tags untouched."""
    if not terms:
        return Markup(safe_html)
    out: list[str] = []
    for i, piece in enumerate(_TAG_RE.split(safe_html)):
        if i % 2:  # a tag
            out.append(piece)
        elif piece:
            out.append(highlight_text(html.unescape(piece), terms, mark, find))
    return Markup("".join(out))


# ------------------------------------------------------------------ LaTeX, short abstracts

#: Words ending in a period that do not end a sentence ("e.g.", "et al.", "Fig. 3").
_ABBREVIATIONS = frozenset(
    {
        "al", "approx", "cf", "e.g", "eg", "eq", "eqs", "etc", "fig", "figs", "i.e", "ie",
        "no", "nos", "ref", "refs", "resp", "sec", "secs", "tab", "vs", "viz", "w.r.t", "wrt",
        "dr", "prof", "mr", "mrs", "ms", "st", "jr", "sr", "ca", "incl", "appx", "app", "ch",
    }
)  # fmt: skip
#: Tags that separate blocks of text: a space in the plain text of an abstract.
_BLOCK_TAG_RE = re.compile(r"</?(?:p|li|ul|ol)\b[^>]*>")
#: A possible sentence end: ., ! or ? (closing quotes/brackets allowed) before white space.
_SENTENCE_END_RE = re.compile(r"[.!?][\"'\u201d\u2019)\]]*(?=\s+\S)")
#: The word before a period, to tell "et al." and "A. Author" from a sentence end.
_LAST_WORD_RE = re.compile(r"(\S+)$")
#: At most this many sentences, and this many characters, of an abstract in an email card.
SHORT_SENTENCES = 3
SHORT_MAX_CHARS = 420


def split_sentences(text: str) -> list[str]:
    """``text`` cut into sentences: at ``.``, ``!`` or ``?`` followed by white space and a
    capital, digit or opening bracket; never after an abbreviation ("e.g.", "et al.", "Fig."),
    a single initial ("A. Author") or inside a number ("0.5", "v2.1")."""
    text = " ".join(text.split())
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END_RE.finditer(text):
        end = match.end()
        following = text[end:].lstrip()
        if not following or not (
            following[0].isupper() or following[0].isdigit() or following[0] in "(["
        ):
            continue
        if text[match.start()] == ".":
            word = _LAST_WORD_RE.search(text[start : match.start()])
            last = word.group(1).lstrip("(\"'[").casefold() if word else ""
            if last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha()):
                continue
        sentences.append(text[start:end].strip())
        start = end
    rest = text[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences


def shorten(text: str) -> tuple[str, bool]:
    """The first sentences of ``text``: up to :data:`SHORT_SENTENCES` while they fit in
    :data:`SHORT_MAX_CHARS` characters (a longer first sentence is cut at a word, with "…");
    and whether anything was left out."""
    sentences = split_sentences(text)
    if not sentences:
        return "", False
    chosen = [sentences[0]]
    length = len(sentences[0])
    for sentence in sentences[1:SHORT_SENTENCES]:
        if length + 1 + len(sentence) > SHORT_MAX_CHARS:
            break
        chosen.append(sentence)
        length += 1 + len(sentence)
    short = " ".join(chosen)
    if len(short) > SHORT_MAX_CHARS:
        short = short[:SHORT_MAX_CHARS].rsplit(" ", 1)[0].rstrip(" ,;:") + "\u2026"
    return short, short != " ".join(sentences)


@functools.lru_cache(maxsize=8192)
def title_html(title: str) -> str:
    """A one-line title as safe HTML: controls stripped, LaTeX as text, ``<sup>``, ``<sub>``."""
    from newsletter.latex import latex_to_html

    return escape_text_segments(latex_to_html(strip_controls(title)))


@functools.lru_cache(maxsize=8192)
def title_text(title: str) -> str:
    """A one-line title as plain text, LaTeX as Unicode text."""
    from newsletter.latex import latex_to_text

    return strip_controls(latex_to_text(title))


@dataclass(frozen=True)
class AbstractViews:
    """One abstract, prepared once for every card that shows it."""

    full_html: str  # sanitized markdown, LaTeX converted (the web archive)
    short_html: str  # the first sentences, escaped text with LaTeX as <sup>/<sub>
    short_text: str  # the same sentences as plain text (the text part)
    cut: bool  # whether the short version leaves something out


# Placeholders for math spans while markdown runs: private-use characters, which mean nothing
# in an abstract (any found there are dropped first).
_HOLE_OPEN, _HOLE_CLOSE = "\ue000", "\ue001"
_HOLE_RE = re.compile(f"{_HOLE_OPEN}(\\d+){_HOLE_CLOSE}")


def _sanitize_keeping_math(abstract: str) -> tuple[str, list[str]]:
    """(sanitized HTML with each inline math span as a placeholder, the spans).

    Markdown would read the ``*`` and ``_`` inside ``$a*b$ and $c*d$`` as emphasis; the spans
    are set aside before it runs and put back, converted, by the callers."""
    from newsletter.latex import MATH_RE

    text = abstract.replace(_HOLE_OPEN, "").replace(_HOLE_CLOSE, "")
    spans: list[str] = []
    if "$" in text:

        def hole(match: re.Match[str]) -> str:
            spans.append(match.group())
            return f"{_HOLE_OPEN}{len(spans) - 1}{_HOLE_CLOSE}"

        text = MATH_RE.sub(hole, text)
    return sanitize_abstract(text), spans


def _math_back_html(sanitized: str, spans: Sequence[str]) -> str:
    """Sanitized HTML with its math spans back and the LaTeX of its text made readable
    (:func:`newsletter.latex.latex_to_html`); every quote in text an entity again."""
    from newsletter.latex import latex_to_html

    if not spans and "\\" not in sanitized:
        return sanitized
    out: list[str] = []
    for i, piece in enumerate(_TAG_RE.split(sanitized)):
        if i % 2:  # a tag: a span inside a link's URL goes back as it was
            out.append(_HOLE_RE.sub(lambda m: str(escape(spans[int(m.group(1))])), piece))
            continue
        for j, part in enumerate(_HOLE_RE.split(html.unescape(piece))):
            converted = latex_to_html(spans[int(part)] if j % 2 else part)
            out.append(converted.replace('"', "&#34;").replace("'", "&#39;"))
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def abstract_html(abstract: str) -> str:
    """The whole abstract as safe HTML: markdown, the allow-list, LaTeX made readable (math
    kept out of markdown's way). Email cards' full version, the web archive and feeds."""
    return _math_back_html(*_sanitize_keeping_math(abstract))


@functools.lru_cache(maxsize=4096)
def abstract_views(abstract: str) -> AbstractViews:
    """The full and the short abstract of a card, in HTML and text (cached per abstract).

    The short one is read from the sanitized HTML's text (markdown already applied, no tags),
    so neither markdown syntax nor markup reaches it; LaTeX is converted after the cut."""
    from newsletter.latex import latex_to_html, latex_to_text

    sanitized, spans = _sanitize_keeping_math(abstract)
    spaced = _BLOCK_TAG_RE.sub(" ", sanitized)  # paragraphs and items end with a space
    plain = html.unescape(" ".join(_TAG_RE.sub("", spaced).split()))
    plain = _HOLE_RE.sub(lambda m: spans[int(m.group(1))], plain)
    short, cut = shorten(plain)
    return AbstractViews(
        full_html=_math_back_html(sanitized, spans),
        short_html=escape_text_segments(latex_to_html(short)),
        short_text=" ".join(latex_to_text(short).split()),
        cut=cut,
    )
