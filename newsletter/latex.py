"""Inline LaTeX in titles and abstracts, made readable for email, web pages and feeds.

Digests copy arXiv's text as authors wrote it: ``14\\%``, ``$^{RL}$``, ``$L_2$``,
``$\\mathcal{O}(n \\log n)$``. Shown raw, backslashes and dollars get in the reader's way. Only
what is unambiguous is converted, so that ordinary text never changes:

* the escapes ``\\%``, ``\\&``, ``\\$``, ``\\#``, ``\\_``, ``\\{``, ``\\}`` become the character;
* inline math ``$…$`` (on one line, at most :data:`MAX_MATH` characters, not ``$$``) loses its
  dollars: superscripts and subscripts (``^{RL}``, ``_2``) become ``<sup>``/``<sub>`` in HTML and
  Unicode super/subscript digits or ``^RL`` in text, and macros (``\\alpha``, ``\\times``,
  ``\\leq``, ``\\mathcal{O}``) their Unicode text, from pylatexenc's table;
* formatting commands outside math (``\\textbf{x}``, ``\\emph{x}``, ``\\textit{x}``) keep their
  argument.

A price of "$5 and $10" stays as it is (a ``$`` followed or preceded by a space does not open or
close math). Matching (:mod:`newsletter.analysis`) reads the raw text and is not affected.
"""

from __future__ import annotations

import re
from functools import lru_cache
from html import escape

__all__ = ["MATH_RE", "MAX_MATH", "latex_to_html", "latex_to_text"]

#: Longest inline math converted; longer ``$…$`` spans are left as they are.
MAX_MATH = 200

_ESCAPES = {"\\%": "%", "\\&": "&", "\\$": "$", "\\#": "#", "\\_": "_", "\\{": "{", "\\}": "}"}
_ESCAPE_RE = re.compile(r"\\[%&$#_{}]")
#: Inline math ``$…$``: not ``$$``, no space just inside the dollars, no newline or dollar inside.
MATH_RE = re.compile(r"(?<![\\$])\$(?![\s$])([^$\n]{1," + str(MAX_MATH) + r"}?)(?<![\s\\])\$(?!\d)")
_FORMAT_RE = re.compile(r"\\(?:textbf|textit|emph|texttt|textrm|textsc|mathrm|text)\{([^{}]*)\}")
_SCRIPT_RE = re.compile(r"([\^_])(?:\{([^{}]*)\}|(\\[A-Za-z]+|[^\s{}\\]))")
_SUPER = str.maketrans("0123456789+-=()n", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾ⁿ")
_SUB = str.maketrans("0123456789+-=()", "₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎")
_SUPER_CHARS = frozenset("0123456789+-=()n")
_SUB_CHARS = frozenset("0123456789+-=()")


def latex_to_text(text: str) -> str:
    """``text`` with its inline LaTeX as plain Unicode text."""
    if "\\" not in text and "$" not in text:
        return text
    return _convert(text, html=False)


def latex_to_html(text: str) -> str:
    """``text`` HTML-escaped, with its inline LaTeX as text, ``<sup>`` and ``<sub>``: safe to
    put into a page or an email as it is."""
    if "\\" not in text and "$" not in text:
        return escape(text, quote=False)
    return _convert(text, html=True)


def _convert(text: str, *, html: bool) -> str:
    out: list[str] = []
    last = 0
    for match in MATH_RE.finditer(text):
        out.append(_plain(text[last : match.start()], html=html))
        out.append(_math(match.group(1), html=html))
        last = match.end()
    out.append(_plain(text[last:], html=html))
    return "".join(out)


def _plain(text: str, *, html: bool) -> str:
    """Text outside math: escapes and formatting commands."""
    text = _FORMAT_RE.sub(lambda m: m.group(1), text)
    text = _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group()], text)
    return escape(text, quote=False) if html else text


def _math(body: str, *, html: bool) -> str:
    """Inline math: scripts as tags (HTML) or Unicode/caret (text), macros as Unicode."""
    parts: list[str] = []
    last = 0
    for match in _SCRIPT_RE.finditer(body):
        parts.append(_symbols(body[last : match.start()], html=html))
        kind, inner = (
            match.group(1),
            match.group(2) if match.group(2) is not None else match.group(3),
        )
        parts.append(_script(kind, _symbols(inner, html=False), html=html))
        last = match.end()
    parts.append(_symbols(body[last:], html=html))
    return "".join(parts)


def _script(kind: str, inner: str, *, html: bool) -> str:
    inner = inner.strip()
    if not inner:
        return ""
    if html:
        tag = "sup" if kind == "^" else "sub"
        return f"<{tag}>{escape(inner, quote=False)}</{tag}>"
    chars, table = (_SUPER_CHARS, _SUPER) if kind == "^" else (_SUB_CHARS, _SUB)
    if set(inner) <= chars:
        return inner.translate(table)
    return f"{kind}{inner}"


def _symbols(body: str, *, html: bool) -> str:
    """Macros and braces of a math fragment as text (pylatexenc's macro table)."""
    text = _macros_to_text(body) if "\\" in body else body
    text = text.replace("{", "").replace("}", "")
    text = _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group()], text)
    return escape(text, quote=False) if html else text


@lru_cache(maxsize=4096)
def _macros_to_text(body: str) -> str:
    from pylatexenc.latex2text import LatexNodes2Text

    try:
        converted = LatexNodes2Text(
            math_mode="text", strict_latex_spaces="based-on-source"
        ).latex_to_text(body)
    except Exception:  # noqa: BLE001 - a fragment pylatexenc cannot parse stays as written
        return body
    return str(converted)
