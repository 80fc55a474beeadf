"""Bytes to clean text: encodings, line endings, control characters.

Scrapers save files in whatever encoding their platform likes. We accept UTF-8 with or
without BOM, UTF-16 with BOM, and fall back to cp1252 (the usual culprit for "smart quotes"
saved on Windows); then normalize CRLF and CR to LF and drop control characters, which
would otherwise end up in titles and break XML feeds.
"""

from __future__ import annotations

import codecs
import re

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_WORD = re.compile(r"\S+")


def decode(data: bytes) -> tuple[str, str]:
    """Return (text, encoding name). Never raises: cp1252 with replacement is the last resort."""
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8) :].decode("utf-8", errors="replace"), "utf-8-sig"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="replace"), "utf-16"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace"), "cp1252"


def clean_text(text: str) -> str:
    """LF line endings, no control characters (tabs and newlines kept)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


def squash_spaces(text: str, limit: int) -> str:
    """``" ".join(text.split())``, but of at most ``limit + 1`` characters.

    Parsers collapse white space in every title and abstract; doing it on a 47 MB abstract
    made millions of word objects. Stopping one character past the limit keeps memory to
    the size of the text while still telling the field limits (in ``newsletter.ingest``)
    that the value was longer, so they cut it and say so.
    """
    if len(text) <= limit:
        return " ".join(text.split())
    words: list[str] = []
    size = -1
    for match in _WORD.finditer(text):
        words.append(match.group())
        size += len(words[-1]) + 1
        if size > limit:
            break
    return " ".join(words)[: limit + 1]


def looks_binary(data: bytes) -> bool:
    """NUL bytes outside a UTF-16 file mean this is not a text digest."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return False
    return b"\x00" in data[:65536]
