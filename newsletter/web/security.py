"""Web security in one place: response headers, form signatures (CSRF), bounded form reading.

* Every response carries a Content-Security-Policy without inline scripts (there is no script
  at all), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` (URLs hold
  secret tokens: a click on a paper link must not send them to the paper's site),
  ``X-Frame-Options: DENY`` and ``Cache-Control: no-store`` unless a handler set its own.
* The preferences form carries ``nonce.issued.mac``: an HMAC-SHA256 under the server secret of
  the purpose, the subscriber's token, a random per-form nonce and the issue time. A form
  older than :data:`FORM_MAX_AGE`, from another server secret or for another subscriber is
  refused.
* Request bodies are read up to :data:`MAX_FORM_BYTES` and parsed here: forms are small, and
  an unbounded body must not be read into memory.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from urllib.parse import parse_qsl

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from newsletter.config import MIN_SECRET_KEY_BYTES

__all__ = [
    "ARCHIVE_CSP",
    "FORM_MAX_AGE",
    "MAX_FORM_BYTES",
    "PAGE_CSP",
    "FormSigner",
    "SecurityHeaders",
    "read_form",
]

#: Our own pages: one stylesheet from this origin, no script, forms only to this origin.
PAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
#: An archived issue is the email renderer's page (``EmailRenderer.render_page``), whose
#: styles are inline (premailer): inline styles are allowed there, scripts still not, and it
#: has no forms.
ARCHIVE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
DEFAULT_HEADERS = (
    ("content-security-policy", PAGE_CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cache-control", "no-store"),
)
FORM_MAX_AGE = timedelta(hours=12)
MAX_FORM_BYTES = 64 * 1024
MAX_FORM_FIELDS = 40


class SecurityHeaders:
    """ASGI middleware adding :data:`DEFAULT_HEADERS` to every response that lacks them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in DEFAULT_HEADERS:
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


class FormSigner:
    """Signs and checks the hidden ``csrf`` field of forms that change settings."""

    def __init__(self, secret: bytes, max_age: timedelta = FORM_MAX_AGE) -> None:
        if len(secret) < MIN_SECRET_KEY_BYTES:  # load_settings refuses a shorter key first
            raise ValueError(f"the web secret must be at least {MIN_SECRET_KEY_BYTES} bytes")
        self._secret = secret
        self.max_age = max_age

    def _mac(self, purpose: str, subject: str, nonce: str, issued: int) -> str:
        data = "\x00".join((purpose, subject, nonce, str(issued))).encode("utf-8")
        return hmac.new(self._secret, data, hashlib.sha256).hexdigest()

    def issue(self, purpose: str, subject: str, now: datetime) -> str:
        nonce = secrets.token_urlsafe(16)
        issued = int(now.timestamp())
        return f"{nonce}.{issued}.{self._mac(purpose, subject, nonce, issued)}"

    def check(self, value: str, purpose: str, subject: str, now: datetime) -> bool:
        nonce, _, rest = value.partition(".")
        issued_text, _, mac = rest.partition(".")
        if not nonce or not issued_text.isdigit() or len(issued_text) > 12 or not mac:
            return False
        issued = int(issued_text)
        age = now.timestamp() - issued
        if age > self.max_age.total_seconds() or age < -60:  # expired, or from the future
            return False
        expected = self._mac(purpose, subject, nonce, issued)
        return hmac.compare_digest(expected.encode("ascii"), mac.encode("ascii", "replace"))


async def read_form(request: Request) -> dict[str, list[str]]:
    """The url-encoded body of a form post, bounded in size and number of fields.

    415 for another content type (our forms only post url-encoded), 413 past the size limit,
    400 for bytes that are not UTF-8 or too many fields.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise HTTPException(415, "forms are posted as application/x-www-form-urlencoded")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, "form too large")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "malformed form") from None
    form: dict[str, list[str]] = {}
    for name, value in pairs:
        form.setdefault(name, []).append(value)
    return form


def first(form: dict[str, list[str]], name: str) -> str:
    """The first value of a field, or "" (a browser omits empty checkboxes)."""
    values = form.get(name)
    return values[0] if values else ""
