"""Limits on values from outside (digests, forms, config files), each defined once.

Every entry point checks against these names: ingest cuts over-long paper fields (and says so
in the file's report), the config file, the CLI, CSV imports and the web form refuse over-long
subscriber values naming the field. Keeping them here means the web form cannot accept what
the config file refuses, nor the other way round.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

#: A paper title (the Hugging Face text scrape treats a longer line as a paragraph).
MAX_TITLE_CHARS = 400
#: An abstract: real ones are under 2,000 characters; a 47 MB one cost a run 6.6 GB.
MAX_ABSTRACT_CHARS = 20_000
#: Authors kept per paper (the count beyond is kept as ``author_count``).
MAX_AUTHORS = 200
#: One author's name.
MAX_AUTHOR_NAME_CHARS = 200
#: A paper URL.
MAX_URL_CHARS = 2_000

#: A subscriber's display name (used in greetings and the To header).
MAX_NAME_CHARS = 100
#: A subscriber's keyword profile, in characters, at every entry point.
MAX_PROFILE_CHARS = 4_000

#: Characters no subscriber text may hold: control characters other than tab and line breaks
#: (PostgreSQL refuses NUL, mail headers break on the others) and lone surrogates (what a
#: non-UTF-8 command-line argument decodes to; no database can encode them).
_UNSTORABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def unstorable_character(text: str) -> str | None:
    """Why ``text`` cannot be stored as subscriber text, or None when it can.

    The one rule for names and profiles from every entry point, checked before anything is
    written: otherwise the validator accepts what the database refuses, and one row takes the
    whole run (or import) down with it. Tabs and line breaks pass: a profile may span lines.
    """
    match = _UNSTORABLE.search(text)
    if match is None:
        return None
    code = ord(match.group())
    kind = "text that is not UTF-8" if 0xD800 <= code <= 0xDFFF else "a control character"
    return f"contains {kind} (U+{code:04X}) at character {match.start() + 1}: remove it"


LINK_SCHEMES = frozenset({"http", "https"})


def http_url(url: str | None) -> str | None:
    """``url`` if it is an absolute http(s) URL with a host, else None.

    The one rule for links taken from digest files: ``javascript:``, ``data:``, relative and
    scheme-less values never become a link in an email, a feed or a web page.
    """
    if not url:
        return None
    url = url.strip()
    if len(url) > MAX_URL_CHARS or any(
        ch.isspace() or ord(ch) < 32 or "\ud800" <= ch <= "\udfff" for ch in url
    ):  # a lone surrogate (JSON's "\ud800") cannot be encoded into any message or page
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in LINK_SCHEMES or not parts.netloc:
        return None
    return url
