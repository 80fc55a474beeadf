"""Bounces and complaints: reading reports, matching them to subscribers, the policy.

``newsletter bounces SOURCE`` reads a mailbox (a maildir folder, an mbox file, or an IMAP
mailbox over TLS) and, for each message:

1. **parses** it (:func:`parse_report`): a delivery status notification (RFC 3464:
   ``multipart/report; report-type=delivery-status`` with a ``message/delivery-status`` part:
   per recipient ``Action`` failed or delayed, ``Status`` 5.x.x hard or 4.x.x soft,
   ``Final-Recipient``, ``Diagnostic-Code``) or a feedback-loop report (RFC 5965: ``report-
   type=feedback-report``, ``Feedback-Type: abuse`` is a complaint), with the Message-ID of the
   returned original (``message/rfc822`` or ``text/rfc822-headers``). Anything else (an
   auto-reply, a "delivered" notice) is reported and left alone;
2. **matches** it to a subscriber (:func:`match_report`), in this order: the VERP return
   path (the bounce went to ``mail.bounce_address`` with the subscriber's
   :func:`~newsletter.domain.bounce_token`, an HMAC checked again here; ARF's
   ``Original-Mail-From`` carries it too), the returned issue's Message-ID (issues keep it),
   then the ``Final-Recipient`` / ``Original-Rcpt-To`` address. An unmatched report is
   reported, never fatal;
3. **applies the policy** (:class:`BouncePolicy`): a hard bounce or a complaint suppresses the
   subscriber at once (the reason is stored: "hard bounce 5.1.1 user unknown", "complaint
   (abuse)"); soft bounces suppress once ``bounces.soft_limit`` of them (of distinct issues)
   fall within ``bounces.soft_days`` days. Each report is recorded under its own Message-ID,
   so reading the same mailbox again counts nothing twice; the mailbox is never changed.

A 5xx reply to RCPT TO from our own SMTP server is a hard bounce too (:func:`record_refusal`,
called by the delivery pass). A suppressed subscriber gets no issue (everything that sends,
plans or serves feeds asks for ``active`` subscribers); only the operator's ``newsletter
subscriber add`` makes it active again (a web resubscribe or sign-up does not).
"""

from __future__ import annotations

import email
import email.utils
import enum
import hashlib
import hmac
import imaplib
import logging
import mailbox
import os
import re
import ssl
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from email.message import Message
from email.parser import HeaderParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from newsletter.domain import BOUNCE_MAC_DIGITS, SiteInfo, Subscriber, bounce_mac
from newsletter.errors import NewsletterError
from newsletter.store import BounceEvent, BounceKind, MatchedBy, Store

log = logging.getLogger(__name__)

#: The environment variable holding the IMAP password (never a setting, never logged).
IMAP_PASSWORD_ENV = "NEWSLETTER_IMAP_PASSWORD"
#: Messages fetched from IMAP per FETCH command.
IMAP_BATCH = 100
#: Longest reason stored on a subscriber.
MAX_REASON = 200

_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_SMTP_CODE = re.compile(r"^\s*([245])\d\d[\s-]+")


class BounceError(NewsletterError):
    """A mailbox that cannot be read (missing, not a mailbox, IMAP refused): names ``source``."""

    def __init__(self, message: str, *, source: str) -> None:
        super().__init__(message)
        self.source = source


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class MailboxMessage:
    """One message of a mailbox: its key there (maildir key, mbox position, IMAP UID)."""

    key: str
    raw: bytes


@dataclass(frozen=True)
class ImapSource:
    """``imaps://user@host[:port]/MAILBOX`` (the mailbox defaults to INBOX)."""

    user: str
    host: str
    port: int
    mailbox: str

    @classmethod
    def parse(cls, url: str) -> ImapSource:
        parts = urlsplit(url)
        if parts.scheme != "imaps":
            raise BounceError(
                f"{url!r}: only imaps:// (IMAP over TLS) is supported", source=_shown(url)
            )
        if parts.password is not None:
            raise BounceError(
                f"put no password in the URL: export it in {IMAP_PASSWORD_ENV}",
                source=_shown(url),
            )
        if not parts.username or not parts.hostname:
            raise BounceError(f"{url!r}: expected imaps://user@host/INBOX", source=_shown(url))
        try:
            port = parts.port or 993
        except ValueError:
            raise BounceError(f"{url!r}: the port is not a number", source=url) from None
        return cls(
            user=unquote(parts.username),
            host=parts.hostname,
            port=port,
            mailbox=unquote(parts.path.lstrip("/")) or "INBOX",
        )

    def __str__(self) -> str:
        return f"imaps://{self.user}@{self.host}:{self.port}/{self.mailbox}"


def _shown(url: str) -> str:
    """A URL for messages: any password in it replaced."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()


def read_mailbox(
    source: str,
    *,
    ca_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Iterator[MailboxMessage]:
    """Every message of a maildir folder, an mbox file or an IMAP mailbox (``imaps://``),
    read only: nothing is deleted, moved or marked seen."""
    if source.startswith(("imaps://", "imap://")):
        env = os.environ if environ is None else environ
        yield from _read_imap(ImapSource.parse(source), env.get(IMAP_PASSWORD_ENV), ca_file)
        return
    path = Path(source)
    if path.is_dir():
        if not all((path / sub).is_dir() for sub in ("cur", "new", "tmp")):
            raise BounceError(
                f"{source}: a folder but not a maildir (no cur/, new/, tmp/)", source=source
            )
        box: mailbox.Mailbox[mailbox.Message] = mailbox.Maildir(path, factory=None, create=False)
    elif path.is_file():
        box = mailbox.mbox(path, create=False)
    else:
        raise BounceError(f"{source}: no such maildir folder or mbox file", source=source)
    try:
        for key in sorted(box.keys()):
            yield MailboxMessage(str(key), box.get_bytes(key))
    finally:
        box.close()


def _read_imap(
    where: ImapSource, password: str | None, ca_file: Path | None
) -> Iterator[MailboxMessage]:
    if not password:
        raise BounceError(
            f"{where}: export the IMAP password in {IMAP_PASSWORD_ENV}", source=str(where)
        )
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    try:
        conn = imaplib.IMAP4_SSL(where.host, where.port, ssl_context=context, timeout=60)
    except (OSError, imaplib.IMAP4.error) as exc:
        raise BounceError(f"{where}: cannot connect: {exc}", source=str(where)) from None
    try:
        try:
            conn.login(where.user, password)
        except imaplib.IMAP4.error:
            raise BounceError(
                f"{where}: the server refused the login of {where.user!r}", source=str(where)
            ) from None
        status, _ = conn.select(_imap_quote(where.mailbox), readonly=True)
        if status != "OK":
            raise BounceError(f"{where}: no such mailbox", source=str(where))
        status, found = conn.uid("SEARCH", "ALL")
        uids = found[0].split() if status == "OK" and found and found[0] else []
        for start in range(0, len(uids), IMAP_BATCH):
            chunk = b",".join(uids[start : start + IMAP_BATCH]).decode("ascii")
            status, data = conn.uid("FETCH", chunk, "(UID BODY.PEEK[])")
            if status != "OK":
                raise BounceError(f"{where}: FETCH failed: {data!r}", source=str(where))
            for item in data:
                if isinstance(item, tuple):
                    uid = re.search(rb"UID (\d+)", item[0])
                    yield MailboxMessage(uid.group(1).decode() if uid else "?", item[1])
    except (OSError, imaplib.IMAP4.error) as exc:
        raise BounceError(f"{where}: {exc}", source=str(where)) from None
    finally:
        try:
            conn.logout()
        except (OSError, imaplib.IMAP4.error):
            pass


def _imap_quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------- parsing


class ReportType(enum.StrEnum):
    DSN = "dsn"  # RFC 3464 delivery status notification
    ARF = "arf"  # RFC 5965 feedback report
    OTHER = "other"  # not a report we read


@dataclass(frozen=True)
class Report:
    """What one message says, before matching."""

    report_id: str  # the message's own Message-ID (or a hash of its bytes without one)
    type: ReportType
    kind: BounceKind | None  # None: not a bounce (delivered, relayed, an auto-reply...)
    status: str | None  # "5.1.1"
    detail: str  # "user unknown", "abuse"
    recipients: tuple[str, ...]  # Final-Recipient / Original-Rcpt-To addresses
    original_message_id: str | None
    addresses: tuple[str, ...]  # where the report was sent, and the original's envelope sender
    date: datetime | None

    @property
    def reason(self) -> str:
        """The suppression reason this report gives (when the policy suppresses)."""
        if self.kind is BounceKind.COMPLAINT:
            return f"complaint ({self.detail or 'abuse'})"
        words = [f"{self.kind.value if self.kind else 'not a'} bounce"]
        words += [w for w in (self.status, self.detail) if w]
        return " ".join(words)[:MAX_REASON]


def _blocks(part: Message) -> list[Message]:
    """The field blocks of a message/delivery-status or message/feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    text = payload if isinstance(payload, str) else ""
    if part.get("Content-Transfer-Encoding", "").lower() in ("base64", "quoted-printable"):
        raw = part.get_payload(decode=True)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else text
    return [HeaderParser().parsestr(block + "\n") for block in re.split(r"\r?\n\s*\r?\n", text)]


def _address_field(value: str | None) -> str | None:
    """``rfc822; ada@example.org`` → ``ada@example.org`` (lower case)."""
    if not value:
        return None
    text = str(value).split(";", 1)[-1]
    address = email.utils.parseaddr(text)[1].strip().lower()
    return address if "@" in address else None


def _original_message_id(report: Message) -> str | None:
    for part in report.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            inner = part.get_payload()
            headers = inner[0] if isinstance(inner, list) and inner else None
        elif kind == "text/rfc822-headers":
            raw = part.get_payload(decode=True)
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
            headers = HeaderParser().parsestr(text)
        else:
            continue
        if isinstance(headers, Message) and headers.get("Message-ID"):
            return _message_id(headers.get("Message-ID"))
    return None


def _message_id(value: object) -> str | None:
    text = " ".join(str(value).split())
    found = re.search(r"<[^<>\s]+>", text)
    return found.group(0) if found else (text or None)


def _diagnostic(value: str | None) -> str:
    """``smtp; 550 5.1.1 <ada@example.org>: User unknown`` → ``<ada@example.org>: User
    unknown`` without the reply code and status; one line, bounded."""
    if not value:
        return ""
    text = str(value)
    if re.match(r"\s*[A-Za-z][\w-]*\s*;", text):  # a diagnostic type: "smtp; 550 ..."
        text = text.split(";", 1)[1]
    text = " ".join(text.split())
    text = _SMTP_CODE.sub("", text)
    text = re.sub(r"^\s*[245]\.\d{1,3}\.\d{1,3}\s*", "", text)  # its own status code
    return text[:MAX_REASON].strip()


def parse_report(raw: bytes) -> Report:
    """Read one message as a DSN or a feedback report (see the module docstring)."""
    msg = email.message_from_bytes(raw)
    own_id = _message_id(msg.get("Message-ID", "")) or ("sha256:" + hashlib.sha256(raw).hexdigest())
    addresses = tuple(
        a.lower()
        for _, a in email.utils.getaddresses(
            [
                str(v)
                for name in ("To", "Delivered-To", "X-Original-To", "Envelope-To", "Return-Path")
                for v in msg.get_all(name, [])
            ]
        )
        if "@" in a
    )
    try:
        date = email.utils.parsedate_to_datetime(str(msg.get("Date", "")))
    except (TypeError, ValueError, IndexError):
        date = None
    if date is not None and date.tzinfo is None:
        date = None
    base = Report(
        report_id=own_id[:255],
        type=ReportType.OTHER,
        kind=None,
        status=None,
        detail="not a delivery status notification or feedback report",
        recipients=(),
        original_message_id=_original_message_id(msg),
        addresses=addresses,
        date=date,
    )
    report_type = msg.get_param("report-type", "", header="Content-Type")
    report_type = str(report_type).lower() if isinstance(report_type, str) else ""
    if msg.get_content_type() == "multipart/report" and report_type == "feedback-report":
        return _feedback(msg, base)
    if msg.get_content_type() == "multipart/report" and report_type == "delivery-status":
        return _delivery_status(msg, base)
    return base


def _feedback(msg: Message, base: Report) -> Report:
    fields = next(
        (
            block
            for part in msg.walk()
            if part.get_content_type() == "message/feedback-report"
            for block in _blocks(part)
        ),
        Message(),
    )
    feedback_type = str(fields.get("Feedback-Type", "")).strip().lower()
    rcpts = [_address_field(v) for v in fields.get_all("Original-Rcpt-To", [])]
    senders = [_address_field(v) for v in fields.get_all("Original-Mail-From", [])]
    return replace(
        base,
        type=ReportType.ARF,
        kind=BounceKind.COMPLAINT if feedback_type == "abuse" else None,
        detail=feedback_type or "no Feedback-Type",
        recipients=tuple(r for r in rcpts if r),
        addresses=base.addresses + tuple(s for s in senders if s),
    )


#: Severity of what a recipient block says: the worst one is the report's.
_SEVERITY = {None: 0, BounceKind.SOFT: 1, BounceKind.HARD: 2}


def _delivery_status(msg: Message, base: Report) -> Report:
    worst: tuple[BounceKind | None, str | None, str] = (None, None, "")
    recipients: list[str] = []
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        for block in _blocks(part):
            action = str(block.get("Action", "")).strip().lower()
            if not action:
                continue  # the per-message block
            found = _STATUS.search(str(block.get("Status", "")))
            status = ".".join(found.groups()) if found else None
            if action == "failed":
                kind: BounceKind | None = (
                    BounceKind.SOFT if status and status.startswith("4") else BounceKind.HARD
                )
            elif action == "delayed":
                kind = BounceKind.SOFT
            else:  # delivered, relayed, expanded: not a bounce
                kind = None
            recipient = _address_field(block.get("Final-Recipient")) or _address_field(
                block.get("Original-Recipient")
            )
            if recipient and kind is not None:
                recipients.append(recipient)
            if _SEVERITY[kind] > _SEVERITY[worst[0]]:
                worst = (kind, status, _diagnostic(block.get("Diagnostic-Code")))
    kind, status, detail = worst
    return replace(
        base,
        type=ReportType.DSN,
        kind=kind,
        status=status,
        detail=detail if kind is not None else "no failed or delayed recipient",
        recipients=tuple(recipients),
    )


# --------------------------------------------------------------------------- matching


def _verp_pattern(bounce_address: str) -> re.Pattern[str] | None:
    """The regular expression of ``mail.bounce_address`` with its token captured."""
    if "{token}" not in bounce_address:
        return None
    before, after = bounce_address.lower().split("{token}", 1)
    token = rf"(?P<id>[0-9]+)-(?P<mac>[0-9a-f]{{{BOUNCE_MAC_DIGITS}}})"
    return re.compile(re.escape(before) + token + re.escape(after), re.IGNORECASE)


def verp_subscriber(store: Store, site: SiteInfo, addresses: Iterable[str]) -> Subscriber | None:
    """The subscriber whose VERP address is among ``addresses`` (its HMAC checked)."""
    pattern = _verp_pattern(site.bounce_address)
    if pattern is None:
        return None
    for address in addresses:
        found = pattern.fullmatch(address.strip().lower())
        if found is None:
            continue
        sub = store.subscriber_by_id(int(found.group("id")))
        if sub is not None and hmac.compare_digest(
            bounce_mac(sub.id, sub.token), found.group("mac")
        ):
            return sub
    return None


def match_report(
    store: Store, site: SiteInfo, report: Report
) -> tuple[Subscriber, MatchedBy] | None:
    """The report's subscriber and how it was found (see the module docstring), or None."""
    sub = verp_subscriber(store, site, report.addresses)
    if sub is not None:
        return sub, MatchedBy.VERP
    if report.original_message_id:
        sub = store.subscriber_by_message_id(report.original_message_id)
        if sub is not None:
            return sub, MatchedBy.MESSAGE_ID
    for address in report.recipients:
        sub = store.subscriber(address)
        if sub is not None:
            return sub, MatchedBy.RECIPIENT
    return None


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class BouncePolicy:
    """When bounces suppress (settings ``bounces.soft_limit`` and ``bounces.soft_days``)."""

    soft_limit: int = 3
    soft_days: int = 7

    def reason(self, report: Report, soft_count: int) -> str | None:
        """The suppression reason, or None: a hard bounce or a complaint at once; a soft
        bounce when it makes ``soft_limit`` within the window."""
        if report.kind in (BounceKind.HARD, BounceKind.COMPLAINT):
            return report.reason
        if report.kind is BounceKind.SOFT and soft_count >= self.soft_limit:
            return f"{soft_count} soft bounces in {self.soft_days} days (last: {report.reason})"[
                :MAX_REASON
            ]
        return None


# --------------------------------------------------------------------------- processing


class Outcome(enum.StrEnum):
    """What processing did with one message."""

    SUPPRESSED = "suppressed"  # recorded, and it suppressed its subscriber
    RECORDED = "recorded"  # recorded (a soft bounce under the limit, or already suppressed)
    DUPLICATE = "duplicate"  # processed before (its Message-ID is on record)
    UNMATCHED = "unmatched"  # a bounce or complaint of nobody we know
    IGNORED = "ignored"  # not a bounce: a "delivered" DSN, another feedback type, any mail


@dataclass(frozen=True)
class MessageResult:
    key: str
    report_id: str
    type: ReportType
    kind: BounceKind | None
    status: str | None
    email: str | None
    matched_by: MatchedBy | None
    outcome: Outcome
    note: str  # the reason given or why nothing was done


@dataclass(frozen=True)
class BounceRun:
    messages: tuple[MessageResult, ...]

    @property
    def summary(self) -> dict[str, int]:
        counts = Counter(m.outcome.value for m in self.messages)
        return {"read": len(self.messages), **{o.value: counts[o.value] for o in Outcome}}


def process_messages(
    store: Store,
    messages: Iterable[MailboxMessage],
    *,
    site: SiteInfo,
    policy: BouncePolicy,
    now: datetime,
) -> BounceRun:
    """Parse, match and record every message (see the module docstring)."""
    results = []
    for message in messages:
        results.append(process_one(store, message, site=site, policy=policy, now=now))
    return BounceRun(tuple(results))


def process_one(
    store: Store, message: MailboxMessage, *, site: SiteInfo, policy: BouncePolicy, now: datetime
) -> MessageResult:
    report = parse_report(message.raw)

    def result(
        outcome: Outcome, note: str, sub: Subscriber | None = None, by: MatchedBy | None = None
    ) -> MessageResult:
        return MessageResult(
            message.key,
            report.report_id,
            report.type,
            report.kind,
            report.status,
            sub.email if sub else None,
            by,
            outcome,
            note,
        )

    if report.kind is None:
        return result(Outcome.IGNORED, report.detail)
    matched = match_report(store, site, report)
    if matched is None:
        log.warning("%s report %s matches no subscriber", report.kind.value, report.report_id)
        return result(Outcome.UNMATCHED, report.reason)
    sub, by = matched
    when = report.date if report.date is not None and report.date <= now else now
    event = BounceEvent(
        report_id=report.report_id,
        subscriber_id=sub.id,
        kind=report.kind,
        status=report.status,
        detail=report.detail,
        original_message_id=report.original_message_id,
        matched_by=by,
        received_at=when,
    )
    done = store.record_bounce(
        event,
        lambda soft: policy.reason(report, soft),
        soft_since=now - timedelta(days=policy.soft_days),
        now=now,
    )
    if done.duplicate:
        return result(Outcome.DUPLICATE, "processed before", sub, by)
    if done.suppressed is not None:
        log.info("subscriber %s suppressed: %s", sub.id, done.suppressed)
        return result(Outcome.SUPPRESSED, done.suppressed, sub, by)
    note = report.reason
    if report.kind is BounceKind.SOFT:
        note += f" ({done.soft_count} of {policy.soft_limit} in {policy.soft_days} days)"
    return result(Outcome.RECORDED, note, sub, by)


def record_refusal(
    store: Store, sub: Subscriber, reply: str, message_id: str | None, now: datetime
) -> str | None:
    """A 5xx reply to RCPT TO while sending ``sub`` an issue: a hard bounce, recorded (once
    per issue Message-ID) and suppressing the subscriber. Returns the reason, or None when
    the subscriber was suppressed already."""
    found = _STATUS.search(reply)
    status = ".".join(found.groups()) if found else None
    detail = _diagnostic(reply) or reply[:MAX_REASON]
    reason = " ".join(w for w in ("hard bounce", status, detail) if w)[:MAX_REASON]
    report_id = f"rcpt:{message_id}" if message_id else f"rcpt:{sub.id}:{now.isoformat()}"
    done = store.record_bounce(
        BounceEvent(
            report_id=report_id,
            subscriber_id=sub.id,
            kind=BounceKind.HARD,
            status=status,
            detail=detail,
            original_message_id=message_id,
            matched_by=MatchedBy.SMTP,
            received_at=now,
        ),
        lambda _soft: reason,
        soft_since=now,
        now=now,
    )
    if done.suppressed is not None:
        log.warning("subscriber %s suppressed: %s (reply to RCPT TO)", sub.id, done.suppressed)
    return done.suppressed
