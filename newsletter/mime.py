"""Assemble an issue's ``multipart/alternative`` message from its headers and two text parts.

The ``email`` package built every issue before: parsing and folding nine headers and
quoted-printable-encoding about 60 KB line by line in Python took about half of an issue's
rendering time (5 ms of 10). The structure of an issue never changes, so this module writes
it directly:

* each header goes through the ``email`` package's own header classes and folding
  (:data:`email.policy.SMTP`), except a short printable-ASCII value, which that folding would
  write unchanged (``Name: value`` + CRLF) and which is therefore written as it is;
* the constant headers (``From``, ``List-Id``, ...) are folded once per renderer;
* bodies are quoted-printable-encoded by :func:`binascii.b2a_qp` (C), which keeps every line
  under 77 octets and the message 7-bit clean, as the ``email`` package's encoder does.

The result parses back (``email.message_from_bytes``) to the same headers and parts as the
``email`` package's output; ``tests/test_render*.py`` check that, including for hostile values.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable
from email.policy import SMTP

__all__ = ["fold_header", "multipart_alternative"]

_CRLF = b"\r\n"
_MAX_LINE = 78


def fold_header(name: str, value: str) -> bytes:
    """One header field, folded and encoded (RFC 2047) as :data:`email.policy.SMTP` does.

    A value holding CR or LF is refused (``ValueError``), as ``EmailMessage`` refuses it: it
    could start a header of its own.
    """
    if "\r" in value or "\n" in value:
        raise ValueError(f"header {name} holds a line break: {value!r:.80}")
    if (
        value.isascii()
        and value.isprintable()
        and value == value.strip()
        and "  " not in value
        and len(name) + 2 + len(value) <= _MAX_LINE
    ):
        return f"{name}: {value}\r\n".encode("ascii")
    folded: str = SMTP.header_factory(name, value).fold(policy=SMTP)
    return folded.encode("ascii")


def _quoted_printable(text: str) -> bytes:
    """UTF-8, quoted-printable, CRLF line ends."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n")
    if not lines.endswith("\n"):
        lines += "\n"
    encoded = binascii.b2a_qp(lines.encode("utf-8"), quotetabs=False, istext=True, header=False)
    return encoded.replace(b"\n", _CRLF)


def _part(subtype: str, text: str) -> bytes:
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    ).encode("ascii") + _quoted_printable(text)


def multipart_alternative(headers: Iterable[bytes], boundary: str, text: str, html: str) -> bytes:
    """The whole message: ``headers`` (folded lines), MIME headers, the text part, then the
    HTML part. ``boundary`` must not occur in quoted-printable output (e.g. hold ``==``).

    Laid out as the ``email`` package's generator does: each part's text ends with a line
    break of its own, and the CRLF before each delimiter belongs to the delimiter.
    """
    marker = f"--{boundary}".encode("ascii")
    return b"".join(
        [
            *headers,
            b"MIME-Version: 1.0\r\n",
            fold_header("Content-Type", f'multipart/alternative; boundary="{boundary}"'),
            _CRLF,
            marker + _CRLF,
            _part("plain", text),
            _CRLF + marker + _CRLF,
            _part("html", html),
            _CRLF + marker + b"--" + _CRLF,
        ]
    )
