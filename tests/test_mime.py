"""The issue's MIME assembly (newsletter/mime.py) against the ``email`` package it replaces.

``multipart_alternative`` writes the message directly for speed; these tests build the same
message with ``EmailMessage`` (as the renderer did before) and check that both parse back to
the same headers and the same decoded parts, for plain and hostile values, and that the
output is 7-bit, CRLF-terminated and has no line over 78 octets (RFC 5322's SHOULD).
"""

from __future__ import annotations

import email
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP, default

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter.mime import fold_header, multipart_alternative

BOUNDARY = "==nl-0123456789abcdef01234567=="

HEADERS = [
    ("Subject", "Paper Digest: 10 papers for Mon 05 Jan 2026"),
    (
        "Subject",
        "Paper Digest — ünïcode and a rather long subject line that has to be folded twice",
    ),
    ("To", str(Address("Ada Lovelace", addr_spec="ada@example.org"))),
    ("To", str(Address("Zoë Ünicode", addr_spec="zoe@example.org"))),
    ("To", str(Address("A " * 60, addr_spec="long@example.org"))),
    ("From", str(Address("Papers, Daily", addr_spec="news@example.org"))),
    ("Date", "Mon, 05 Jan 2026 07:00:00 +0000"),
    ("Message-ID", "<2026-01-05.42.abcdef@papers.example.org>"),
    ("List-Unsubscribe", "<https://papers.example.org/unsubscribe/" + "t" * 43 + ">"),
    ("List-Id", "Paper Digest <papers.example.org>"),
]


#: One of each, as an issue carries them (the hostile-looking ones where they can be).
MESSAGE = [HEADERS[i] for i in (5, 4, 1, 6, 7, 9, 8)]


def _reference(headers: list[tuple[str, str]], text: str, html: str) -> bytes:
    msg = EmailMessage(policy=SMTP)
    for name, value in headers:
        msg[name] = value
    msg.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
    msg.set_boundary(BOUNDARY)
    return msg.as_bytes(policy=SMTP)


def _ours(headers: list[tuple[str, str]], text: str, html: str) -> bytes:
    return multipart_alternative(
        [fold_header(name, value) for name, value in headers], BOUNDARY, text, html
    )


def _parsed(raw: bytes) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    msg = email.message_from_bytes(raw, policy=default)
    parts = [
        (p.get_content_type(), p.get_content().replace("\r\n", "\n")) for p in msg.iter_parts()
    ]
    return [(k, str(v)) for k, v in msg.items()], parts


def _check_wire_format(raw: bytes) -> None:
    assert raw.isascii()
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78


@pytest.mark.parametrize(("name", "value"), HEADERS)
def test_a_header_folds_as_the_email_package_folds_it(name: str, value: str) -> None:
    msg = EmailMessage(policy=SMTP)
    msg[name] = value
    assert fold_header(name, value) == msg.as_bytes(policy=SMTP).split(b"\r\n\r\n")[0] + b"\r\n"


def test_an_issue_parses_to_what_the_email_package_would_have_built() -> None:
    text = "Hello Ada,\n\n1. A title\n   https://arxiv.org/abs/2401.00001\n" + "word " * 40
    html = '<!DOCTYPE html>\n<html><body style="margin:0">' + "<p>é &amp; ü</p>" * 50 + "</body>"
    ours, reference = _ours(MESSAGE, text, html), _reference(MESSAGE, text, html)
    assert _parsed(ours) == _parsed(reference)
    headers, parts = _parsed(ours)
    assert [k for k, _ in headers][-2:] == ["MIME-Version", "Content-Type"]
    assert parts == [("text/plain", text + "\n"), ("text/html", html + "\n")]
    _check_wire_format(ours)
    assert ours.endswith(f"\r\n--{BOUNDARY}--\r\n".encode())


# Text as the renderer hands it over: no lone surrogates (they are stripped before), any
# other character, long lines, trailing blanks, lines that start with "." or "From ".
_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=600) | st.lists(
    st.sampled_from([".", "From x", "a" * 90, "tab\t", "end  ", "=3D", "é"])
).map("\n".join)


@settings(max_examples=150, deadline=None)
@given(text=_text, html=_text)
def test_any_body_round_trips(text: str, html: str) -> None:
    ours = _ours(HEADERS[:1], text, html)
    _check_wire_format(ours)
    _, parts = _parsed(ours)
    _, reference = _parsed(_reference(HEADERS[:1], text, html))
    assert parts == reference
    normalized = text.replace("\r\n", "\n").replace("\r", "\n")
    assert parts[0][1].rstrip("\n") == normalized.rstrip("\n")


@pytest.mark.parametrize("value", ["a\r\nBcc: evil@example.net", "a\nX: y", "a\rb"])
def test_a_header_value_with_a_line_break_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="line break"):
        fold_header("Subject", value)
