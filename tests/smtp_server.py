"""A real SMTP server on loopback for the delivery tests: aiosmtpd with faults the test controls.

Never a mock of smtplib: the code under test speaks SMTP over a TCP socket to this server.
The handler records every accepted message, and can be told to refuse a recipient, answer
DATA with 4xx replies a given number of times, or drop the connection instead of answering.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import ssl
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from newsletter.config import Settings, SmtpSettings
from tests.factories import settings_env

HOST = "127.0.0.1"


def free_port() -> int:
    """A port nobody listens on right now (bound and released; fine on loopback in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Received:
    sender: str
    recipient: str
    message_id: str
    raw: bytes
    session: int  # which connection brought it (1 = the first one)


@dataclass
class Recorder:
    """The aiosmtpd handler: records messages, injects the faults set on it."""

    refuse: dict[str, str] = field(default_factory=dict)  # recipient -> RCPT reply
    data_replies: dict[str, list[str]] = field(default_factory=dict)  # recipient -> replies to
    # its next DATA attempts, one popped per attempt; 250 once the list is empty
    drops: dict[str, int] = field(default_factory=dict)  # recipient -> DATA attempts to answer
    # by closing the connection instead
    accept_reply: str = "250 2.0.0 Ok: queued as {n}"
    log_file: Path | None = None  # one "recipient<TAB>Message-ID" line per message, as it comes
    received: list[Received] = field(default_factory=list)
    sessions: list[Session] = field(default_factory=list)
    logins: list[tuple[str, str, str]] = field(default_factory=list)  # (mechanism, user, pass)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def connections(self) -> int:
        """Sessions that started a mail transaction (the controller's own probe does not)."""
        return len(self.sessions)

    def _session_number(self, session: Session) -> int:
        for i, known in enumerate(self.sessions, start=1):
            if known is session:
                return i
        self.sessions.append(session)
        return len(self.sessions)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        with self.lock:
            self._session_number(session)
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            (rcpt,) = envelope.rcpt_tos  # our mailer sends one recipient per message
            if self.drops.get(rcpt):
                self.drops[rcpt] -= 1
                assert server.transport is not None
                server.transport.close()
                return "421 4.4.2 never seen: the connection is gone"
            if self.data_replies.get(rcpt):
                return self.data_replies[rcpt].pop(0)
            raw = bytes(envelope.original_content or b"")
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            number = self._session_number(session)
            for rcpt in envelope.rcpt_tos:
                got = Received(str(envelope.mail_from), rcpt, str(msg["Message-ID"]), raw, number)
                self.received.append(got)
                if self.log_file is not None:
                    with self.log_file.open("a", encoding="utf-8") as handle:
                        handle.write(f"{rcpt}\t{got.message_id}\n")
            return self.accept_reply.format(n=len(self.received))


class _Smtp(SMTP):
    """aiosmtpd's protocol, remembering its transports so a test can cut them."""

    live: set[_Smtp]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.live.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.live.discard(self)
        super().connection_lost(error)


class _Controller(Controller):
    def __init__(self, handler: Recorder, live: set[_Smtp], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._live = live

    def factory(self) -> SMTP:
        with warnings.catch_warnings():
            # Our implicit-TLS server allows AUTH without STARTTLS on purpose (see SmtpServer).
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            protocol = _Smtp(self.handler, **self.SMTP_kwargs)
        protocol.live = self._live
        return protocol


class SmtpServer:
    """An aiosmtpd server on 127.0.0.1 that can be stopped and started again on its port."""

    def __init__(
        self,
        handler: Recorder | None = None,
        *,
        port: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        tls_context: ssl.SSLContext | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        self.handler = handler or Recorder()
        self.port = port or free_port()
        self._live: set[_Smtp] = set()
        self._kwargs: dict[str, Any] = {}
        if ssl_context is not None:
            self._kwargs["ssl_context"] = ssl_context
            self._kwargs["server_hostname"] = "localhost"
            # aiosmtpd only counts STARTTLS as TLS; on an implicit-TLS socket it would never
            # offer AUTH. The whole session is encrypted here, so allow it.
            self._kwargs["auth_require_tls"] = False
        if tls_context is not None:
            self._kwargs.update(tls_context=tls_context, require_starttls=True)
        if users is not None:
            # LOGIN left out: aiosmtpd waits for a second line where smtplib sends its
            # initial response, so a refused PLAIN would hang in the LOGIN fallback.
            self._kwargs.update(
                authenticator=self._authenticator(users),
                auth_required=True,
                auth_exclude_mechanism=["LOGIN"],
            )
        self._controller: _Controller | None = None

    def _authenticator(self, users: dict[str, str]) -> Callable[..., AuthResult]:
        def check(
            server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
        ) -> AuthResult:
            assert isinstance(data, LoginPassword)
            user, password = data.login.decode(), data.password.decode()
            self.handler.logins.append((mechanism, user, password))
            # handled=False: aiosmtpd then sends its own "535 5.7.8 …" refusal.
            return AuthResult(success=users.get(user) == password, handled=False)

        return check

    def start(self) -> SmtpServer:
        self._controller = _Controller(
            self.handler, self._live, hostname=HOST, port=self.port, **self._kwargs
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def close_transports(self) -> None:
        assert self._controller is not None
        loop = self._controller.loop
        done = threading.Event()

        def cut() -> None:
            for protocol in list(self._live):
                if protocol.transport is not None:
                    protocol.transport.close()
            done.set()

        loop.call_soon_threadsafe(cut)
        assert done.wait(5)

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def smtp_settings(settings: Settings, port: int, **smtp: Any) -> Settings:
    """The test settings switched to SMTP on 127.0.0.1:port (plain, unless told otherwise)."""
    values = {"host": HOST, "port": port, "security": "none", "timeout_seconds": 5.0, **smtp}
    return settings.model_copy(update={"mailer": "smtp", "smtp": SmtpSettings(**values)})


def cli_env(settings: Settings, port: int, **extra: object) -> dict[str, str]:
    """Environment for ``python -m newsletter`` on the test's folders, mailing via SMTP
    (``extra`` as in :func:`tests.factories.workspace_env`: ``smtp_rate_per_second=5``)."""
    return settings_env(
        settings, mailer="smtp", smtp_host=HOST, smtp_port=port, smtp_security="none", **extra
    )
