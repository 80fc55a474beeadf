"""Delivery to an SMTP server with :mod:`smtplib`: one session reused for many messages.

Why the transaction is driven command by command (``mail``, ``rcpt``, ``data``) rather than
with ``sendmail``: ``sendmail`` throws the server's final reply away, and that reply
("250 2.0.0 Ok: queued as 4Xk2…") is what an operator greps the server's log for. It also lets
each reply be classified where it happens:

* 2xx: accepted; the final reply is returned and stored on the issue.
* Anything that goes wrong before the server has accepted ``MAIL FROM`` stops every message
  alike and is :class:`~newsletter.deliver.MailerUnavailable`, so the pipeline stops for this
  run (the issue's attempt not counted) instead of burning every issue's attempts one by one:
  the connection refused or timing out, no greeting, any non-2xx greeting or reply to
  EHLO/HELO (``421 too busy``, ``451``), STARTTLS, TLS or login failing, any refusal of MAIL
  FROM (4xx: the server is not taking mail now; 5xx: it refuses our sender address), a server
  that stalls (no reply within ``timeout``) at any of these steps, or a connection dropped at
  MAIL FROM again right after reconnecting. Nothing of the message has been sent by then, so
  none of this can be the message's fault.
* From RCPT TO on, replies are about this message. 4xx (including 421, after which the server
  closes), timeouts and network errors: transient :class:`~newsletter.errors.DeliveryError`;
  the pipeline retries with backoff. 5xx to RCPT TO, DATA or at the end of DATA:
  ``permanent`` for this message (this recipient or this content); the other issues go on.
  So is a recipient that smtplib cannot even write as ``RCPT TO`` (a non-ASCII address
  stored before the address rule of :func:`newsletter.subscribers.normalize_email`): the
  reason names the address. After any refusal the transaction is ended with ``RSET`` and the
  session serves the next message; after anything unforeseen in a transaction the session
  is dropped, so that a half-open transaction can never make the next ``MAIL FROM`` fail
  (``503 nested MAIL``) and stop delivery for everyone.
* The reply to the end of DATA (the lone ``.``) is awaited for ``data_timeout`` instead
  (``smtp.data_timeout_seconds``, default 600 s as RFC 5321 §4.5.3.2.6 recommends): the server
  may be scanning the message. If even that expires, the whole message went out and the
  server may have queued it, so re-sending could deliver it twice: the mailer raises
  :class:`~newsletter.deliver.OutcomeUnknown` (the pipeline records the issue as ``unknown``)
  and drops the connection.

A connection found closed when a message starts (the server dropped an idle session, a broken
pipe) is reopened once and the message sent again within the same :meth:`SmtpMailer.send`.
If the drop came after the server had accepted the message but before its reply reached us,
that re-send is a duplicate; it carries the same Message-ID, like the re-send after a crash.

With ``smtp.connections`` > 1, :class:`SmtpPool` holds that many such sessions (opened only as
they are needed) and sends from several threads at once, every session paced by one shared
:class:`RateLimiter`; the pipeline reads ``parallel_sessions`` to know how many messages it
may have in flight.
"""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from newsletter.deliver import Envelope, MailerUnavailable, OutcomeUnknown
from newsletter.errors import ConfigError, DeliveryError

if TYPE_CHECKING:
    from newsletter.config import Settings

log = logging.getLogger(__name__)

Security = Literal["none", "starttls", "ssl"]

__all__ = ["RateLimiter", "SmtpMailer", "SmtpPool", "mailer_from_settings"]


class RateLimiter:
    """Starts at most ``rate`` sends per second, evenly spaced (``0``: no limit).

    Spacing rather than bursts of ``rate`` per second: providers meter short windows, and an
    even pace never trips a limit that a burst would. One limiter is shared by every session
    of an :class:`SmtpPool` (the provider meters our sender, not each connection), so it is
    thread-safe: each caller reserves the next free start under a lock and sleeps until it
    outside the lock, so N threads get N distinct starts ``interval`` apart.
    """

    def __init__(
        self,
        rate_per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 1.0 / rate_per_second if rate_per_second > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Return at this caller's start: at least ``interval`` after the previous one."""
        if not self.interval:
            return
        with self._lock:
            now = self._clock()
            start = now if self._next is None else max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self._sleep(start - now)


class RecipientRefused(DeliveryError):
    """The server refused the recipient (its reply to RCPT TO). A 5xx is ``permanent``: the
    issue fails, and the pipeline records it as a hard bounce (:mod:`newsletter.bounces`), so
    the subscriber is suppressed rather than tried again at every slot."""

    def __init__(self, reply: str, *, code: int, recipient: str) -> None:
        super().__init__(f"{reply} (reply to RCPT TO)", permanent=500 <= code < 600)
        self.reply = reply
        self.code = code
        self.recipient = recipient


def _reply(code: int, text: bytes | str) -> str:
    """``"550 5.1.1 <x>: user unknown"``: a multi-line reply on one line, as stored and logged."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {' '.join(text.split())}".strip()


def _unsendable(recipient: str, exc: ValueError) -> DeliveryError:
    """The recipient cannot even be written as ``RCPT TO`` (smtplib writes commands in ASCII
    and refuses line breaks): permanent for this message, and the reason names the address,
    not the server or the sender. Only a row stored before
    :func:`newsletter.subscribers.normalize_email` made every address ASCII gets here."""
    if isinstance(exc, UnicodeEncodeError):
        why = (
            "it is not ASCII, and SMTP without SMTPUTF8 carries only ASCII addresses; "
            "`newsletter subscriber remove` it and add it again (a Unicode domain is then "
            "stored in its IDNA xn-- form)"
        )
    else:
        why = f"{exc}; `newsletter subscriber remove` it and add it again"
    return DeliveryError(
        f"cannot send to the recipient address {recipient!r}: {why}; not retried",
        permanent=True,
    )


def _timed_out(exc: BaseException) -> bool:
    """smtplib reports a socket timeout as SMTPServerDisconnected; the cause tells them apart."""
    cause = exc.__cause__ or exc.__context__
    return isinstance(exc, TimeoutError) or isinstance(cause, TimeoutError)


_LEADING_DOT = re.compile(rb"(?m)^\.")


def _data_payload(message: bytes) -> bytes:
    """The bytes after DATA's 354, exactly as :meth:`smtplib.SMTP.data` sends bytes: lines
    starting with ``.`` doubled, a final CRLF if missing, then the lone ``.``."""
    payload = _LEADING_DOT.sub(b"..", message)
    if not payload.endswith(b"\r\n"):
        payload += b"\r\n"
    return payload + b".\r\n"


class SmtpMailer:
    """Sends each message over one SMTP session, kept open between messages.

    ``password`` is given by the caller (from ``NEWSLETTER_SMTP_PASSWORD`` via the settings)
    and is never logged or shown in a repr. ``connections`` counts the sessions opened, for
    the operator's log and the tests. ``limiter`` replaces the mailer's own rate limiter
    (``rate_per_second`` is then ignored): :class:`SmtpPool` gives all its sessions one.
    One session sends one message at a time: not thread-safe (see :class:`SmtpPool`).
    """

    #: Messages this mailer can have in flight at once (the pipeline reads it).
    parallel_sessions = 1

    def __init__(
        self,
        host: str,
        port: int = 587,
        *,
        security: Security = "starttls",
        username: str = "",
        password: str | None = None,
        timeout: float = 30.0,
        data_timeout: float = 600.0,
        rate_per_second: float = 0.0,
        ca_file: Path | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        if not host:
            raise ConfigError("the SMTP mailer needs a host: set smtp.host or NEWSLETTER_SMTP_HOST")
        if username and not password:
            raise ConfigError(
                "smtp.username is set but NEWSLETTER_SMTP_PASSWORD is not: export the password"
            )
        self.host, self.port, self.security = host, port, security
        self.username = username
        self._password = password
        self.timeout = timeout
        self.data_timeout = data_timeout  # only for the reply to the end of DATA
        self.ca_file = ca_file
        self._limiter = limiter if limiter is not None else RateLimiter(rate_per_second)
        self._conn: smtplib.SMTP | None = None
        self.connections = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpMailer:
        return cls(settings.smtp.host, settings.smtp.port, **_session_options(settings))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        user = f", username={self.username!r}" if self.username else ""
        return f"SmtpMailer({self.address}, security={self.security!r}{user})"

    # ------------------------------------------------------------------ Mailer protocol

    def send(self, envelope: Envelope, message: bytes) -> str:
        """Send one message; return the server's final reply (e.g. ``250 2.0.0 Ok: queued``).

        The rate limit paces each MAIL FROM (a re-send after a reconnect too), once the session
        is open: what a provider meters is transactions, and pacing after the connect keeps
        the starts even when one session of a pool is still doing its TLS handshake.
        """
        for attempt in (1, 2):
            conn = self._session()
            self._limiter.wait()
            try:
                self._mail_from(conn, envelope)
            except smtplib.SMTPServerDisconnected as exc:
                self._discard()
                if _timed_out(exc):
                    raise MailerUnavailable(
                        f"SMTP server {self.address} stalled: no reply to MAIL FROM within "
                        f"{self.timeout:g} s"
                    ) from None
                if attempt == 2:
                    raise MailerUnavailable(
                        f"SMTP server {self.address} closed the connection before answering "
                        f"MAIL FROM, again after reconnecting ({exc})"
                    ) from None
                log.info("connection to %s lost (%s); reconnecting once", self.address, exc)
                continue
            except OSError as exc:
                self._discard()
                raise MailerUnavailable(
                    f"network error talking to {self.address} before MAIL FROM was answered: {exc}"
                ) from None
            except ValueError as exc:  # smtplib could not write the command: nothing was sent
                raise MailerUnavailable(
                    f"the sender {envelope.sender!r} cannot be written in an SMTP command "
                    f"({exc}); check mail.from_address"
                ) from None
            except DeliveryError:
                raise
            except BaseException:  # unforeseen: the session's state is unknown (see below)
                self._discard()
                raise
            try:
                return self._transaction(conn, envelope, message)
            except smtplib.SMTPServerDisconnected as exc:
                self._discard()
                if _timed_out(exc):
                    raise DeliveryError(
                        f"timed out after {self.timeout:g} s waiting for {self.address}; will retry"
                    ) from None
                if attempt == 2:
                    raise DeliveryError(
                        f"connection to {self.address} lost again after reconnecting ({exc}); "
                        "will retry"
                    ) from None
                log.info("connection to %s lost (%s); reconnecting once", self.address, exc)
            except OSError as exc:  # smtplib wraps most socket errors, not all
                self._discard()
                raise DeliveryError(f"network error talking to {self.address}: {exc}") from None
            except DeliveryError:
                raise  # classified where it happened, the session already reset or dropped
            except BaseException:
                # Anything unforeseen inside the transaction (a bug, an interrupt) leaves the
                # server in the middle of it: drop the session, so that the next message starts
                # on a fresh one instead of meeting "503 nested MAIL command".
                self._discard()
                raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        """End the session politely (QUIT); a dead connection is simply dropped."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.quit()
        except (smtplib.SMTPException, OSError):
            conn.close()

    # ------------------------------------------------------------------ session

    def _session(self) -> smtplib.SMTP:
        if self._conn is not None:
            return self._conn
        try:
            self._conn = self._connect()
        except smtplib.SMTPAuthenticationError as exc:
            raise MailerUnavailable(
                f"SMTP server {self.address} refused the login of {self.username!r}: "
                f"{_reply(exc.smtp_code, exc.smtp_error)}; check smtp.username and "
                "NEWSLETTER_SMTP_PASSWORD"
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise MailerUnavailable(
                f"SMTP server {self.address} does not support what we need ({exc}); check "
                "smtp.security and smtp.username"
            ) from None
        except ssl.SSLError as exc:
            raise MailerUnavailable(
                f"TLS with SMTP server {self.address} failed: {exc}; check smtp.security, "
                "smtp.port and smtp.ca_file"
            ) from None
        except smtplib.SMTPHeloError as exc:  # EHLO refused, then HELO too
            raise MailerUnavailable(
                f"SMTP server unreachable: {self.address} answered "
                f"{_reply(exc.smtp_code, exc.smtp_error)} (reply to HELO)"
            ) from None
        except smtplib.SMTPResponseException as exc:  # e.g. "421 too busy" as the greeting
            raise MailerUnavailable(
                f"SMTP server unreachable: {self.address} answered "
                f"{_reply(exc.smtp_code, exc.smtp_error)}"
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            detail = exc
            raise MailerUnavailable(
                f"SMTP server unreachable: cannot connect to {self.address} ({detail})"
            ) from None
        return self._conn

    def _connect(self) -> smtplib.SMTP:
        context = None
        if self.security != "none":
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        conn: smtplib.SMTP
        if self.security == "ssl":
            conn = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        else:
            conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            conn.ehlo_or_helo_if_needed()
            if self.security == "starttls":
                code, text = conn.starttls(context=context)
                if code != 220:  # smtplib returns a refusal instead of raising
                    raise MailerUnavailable(
                        f"SMTP server {self.address} refused STARTTLS: {_reply(code, text)}; "
                        "check smtp.security"
                    )
                conn.ehlo_or_helo_if_needed()
            if self.username:
                assert self._password is not None
                conn.login(self.username, self._password)
        except BaseException:
            conn.close()
            raise
        self.connections += 1
        log.info(
            "connected to SMTP server %s (%s%s)",
            self.address,
            self.security,
            f", as {self.username}" if self.username else "",
        )
        return conn

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # ------------------------------------------------------------------ transaction

    def _mail_from(self, conn: smtplib.SMTP, envelope: Envelope) -> None:
        """Start the transaction; any refusal is :class:`MailerUnavailable` (see _refused)."""
        code, text = conn.mail(envelope.sender)
        if code != 250:
            self._refused(conn, "MAIL FROM", code, text, envelope)

    def _transaction(self, conn: smtplib.SMTP, envelope: Envelope, message: bytes) -> str:
        """RCPT TO and DATA, after :meth:`_mail_from` was accepted."""
        try:
            code, text = conn.rcpt(envelope.recipient)
        except ValueError as exc:
            self._reset(conn)
            raise _unsendable(envelope.recipient, exc) from None
        if code not in (250, 251):
            self._refused(conn, "RCPT TO", code, text, envelope)
        code, text = conn.docmd("data")
        if code != 354:  # the DATA command itself was refused
            self._refused(conn, "DATA", code, text, envelope)
        code, text = self._send_data(conn, message)
        if code != 250:
            self._refused(conn, "end of DATA", code, text, envelope)
        return _reply(code, text)

    def _send_data(self, conn: smtplib.SMTP, message: bytes) -> tuple[int, bytes]:
        """Send the message after the 354 and wait up to ``data_timeout`` for the final reply.

        What :meth:`smtplib.SMTP.data` does after the 354, with the socket's timeout raised
        around the one read that may legitimately take long (the server checks the message
        before it answers). A timeout there is :class:`OutcomeUnknown`: the message is out.
        """
        conn.send(_data_payload(message))
        sock = conn.sock
        assert sock is not None  # send() raises SMTPServerDisconnected when it is not
        sock.settimeout(self.data_timeout)
        try:
            return conn.getreply()
        except smtplib.SMTPServerDisconnected as exc:
            if not _timed_out(exc):
                raise  # a drop: send() reconnects once, as for any drop
            self._discard()
            raise OutcomeUnknown(
                f"no reply from {self.address} within {self.data_timeout:g} s after the end of "
                "DATA: the message went out and may have been accepted; not re-sent "
                "automatically"
            ) from None
        finally:
            if conn.sock is not None:  # smtplib closes the connection on a failed read
                conn.sock.settimeout(self.timeout)

    def _reset(self, conn: smtplib.SMTP) -> None:
        """End the transaction with RSET so the session serves the next message; a session
        that cannot even do that is dropped (the next message opens a new one)."""
        try:
            code, _text = conn.rset()
        except (smtplib.SMTPException, OSError):
            self._discard()
            return
        if code != 250:
            self._discard()

    def _refused(
        self, conn: smtplib.SMTP, stage: str, code: int, text: bytes | str, envelope: Envelope
    ) -> NoReturn:
        """Turn a refusal into the right error, leaving the session usable for the next one."""
        reply = _reply(code, text)
        if code == 421:  # the server is closing the session
            self._discard()
        else:
            self._reset(conn)
        if stage == "MAIL FROM" and code >= 500:
            raise MailerUnavailable(
                f"SMTP server {self.address} refuses the sender {envelope.sender}: {reply}; "
                "check mail.from_address"
            )
        if stage == "MAIL FROM":  # 4xx (or garbage): nothing of the message was sent yet
            raise MailerUnavailable(
                f"SMTP server {self.address} is not taking mail now: {reply} (reply to MAIL FROM)"
            )
        if stage == "RCPT TO":
            raise RecipientRefused(reply, code=code, recipient=envelope.recipient)
        raise DeliveryError(f"{reply} (reply to {stage})", permanent=500 <= code < 600)


class SmtpPool:
    """Up to ``size`` SMTP sessions to one server, sending in parallel under one rate limit.

    Why: one session waits for the server's reply to every command, so against a relay a
    round trip away it sends one message per few round trips whatever the machine can do;
    providers and relays accept several sessions from one client (``smtp.connections``).
    Each session is an :class:`SmtpMailer` with every error classification of its own (a
    drop reconnects that session once; ``MailerUnavailable``, ``DeliveryError`` and
    ``OutcomeUnknown`` come out of :meth:`send` exactly as from one mailer). All of them
    share one :class:`RateLimiter`, so the pace is the configured one across the pool.

    :meth:`send` is thread-safe: it borrows an idle session (the one used last, so sessions
    are opened lazily, only as many as there are concurrent senders), sends, and gives it
    back; with every session busy it waits for one. :meth:`close` ends them all and must not
    run while a send is in progress.
    """

    def __init__(
        self,
        host: str,
        port: int = 587,
        *,
        size: int,
        security: Security = "starttls",
        username: str = "",
        password: str | None = None,
        timeout: float = 30.0,
        data_timeout: float = 600.0,
        rate_per_second: float = 0.0,
        ca_file: Path | None = None,
    ) -> None:
        if size < 1:
            raise ConfigError(f"smtp.connections must be at least 1, not {size}")
        self.parallel_sessions = size
        self._limiter = RateLimiter(rate_per_second)

        def session() -> SmtpMailer:
            return SmtpMailer(
                host,
                port,
                security=security,
                username=username,
                password=password,
                timeout=timeout,
                data_timeout=data_timeout,
                ca_file=ca_file,
                limiter=self._limiter,
            )

        self._new_session = session
        first = session()  # checks host and credentials now, like a single mailer (no connect)
        self.host, self.port, self.security, self.username = host, port, security, username
        self._sessions: list[SmtpMailer] = [first]
        self._idle: list[SmtpMailer] = [first]
        self._free = threading.Condition()

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpPool:
        s = settings.smtp
        return cls(s.host, s.port, size=s.connections, **_session_options(settings))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        """Sessions opened so far by all members (reconnects included), as for one mailer."""
        with self._free:
            return sum(session.connections for session in self._sessions)

    def __repr__(self) -> str:
        user = f", username={self.username!r}" if self.username else ""
        return (
            f"SmtpPool({self.address}, size={self.parallel_sessions}, "
            f"security={self.security!r}{user})"
        )

    def send(self, envelope: Envelope, message: bytes) -> str:
        """Send one message over an idle session; return the server's final reply."""
        session = self._borrow()
        try:
            return session.send(envelope, message)
        finally:
            with self._free:
                self._idle.append(session)
                self._free.notify()

    def close(self) -> None:
        """End every session (QUIT); a pool closed this way opens sessions again if used."""
        with self._free:
            sessions = list(self._sessions)
        for session in sessions:
            session.close()

    def _borrow(self) -> SmtpMailer:
        with self._free:
            while True:
                if self._idle:
                    return self._idle.pop()  # the most recently used: keeps the others unopened
                if len(self._sessions) < self.parallel_sessions:
                    session = self._new_session()
                    self._sessions.append(session)
                    return session
                self._free.wait()


def mailer_from_settings(settings: Settings) -> SmtpMailer | SmtpPool:
    """The SMTP mailer the settings ask for: one session, or a pool of ``smtp.connections``."""
    if settings.smtp.connections > 1:
        return SmtpPool.from_settings(settings)
    return SmtpMailer.from_settings(settings)


def _session_options(settings: Settings) -> dict[str, Any]:
    """The settings of one SMTP session, as :class:`SmtpMailer` and :class:`SmtpPool` take them."""
    s = settings.smtp
    return {
        "security": s.security,
        "username": s.username,
        "password": settings.smtp_password,
        "timeout": s.timeout_seconds,
        "data_timeout": s.data_timeout_seconds,
        "rate_per_second": s.rate_per_second,
        "ca_file": s.ca_file,
    }
