"""A real SMTP server on loopback for the delivery tests: aiosmtpd with faults the test controls.

Never a mock of smtplib: the code under test speaks SMTP over a TCP socket to this server.
The handler records every accepted message, and can be told to refuse a recipient, answer
DATA with 4xx replies a given number of times, or drop the connection instead of answering.
:class:`Outage` also refuses EHLO/HELO or MAIL FROM while told to. :class:`ScriptedServer`
is a small hand-written SMTP server on a plain socket for what aiosmtpd cannot do: go silent
at a chosen step, or answer the end of DATA late.
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
from typing import Any, Literal

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


@dataclass
class Outage(Recorder):
    """A :class:`Recorder` that, while the field is set, answers EHLO and HELO with
    ``helo_reply`` or MAIL FROM with ``mail_reply`` (e.g. ``"421 4.3.2 Service not available"``);
    set it back to None and the server is healthy again."""

    helo_reply: str | None = None
    mail_reply: str | None = None

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: Any
    ) -> list[str]:
        if self.helo_reply is not None:
            return [self.helo_reply]
        session.host_name = hostname  # the five-argument hook must set it (aiosmtpd 1.4)
        return list(responses)

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        if self.helo_reply is not None:
            return self.helo_reply
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.mail_reply is not None:
            return self.mail_reply
        return await super().handle_MAIL(server, session, envelope, address, options)


Step = Literal["greeting", "EHLO", "MAIL"]


@dataclass(frozen=True)
class Wire:
    """One message as :class:`ScriptedServer` got it."""

    sender: str
    recipient: str
    wire: bytes  # the bytes after the 354, up to and including the lone "."
    data: bytes  # the message: dot-stuffing undone, the final "." line removed
    session: int


class ScriptedServer:
    """A minimal SMTP server on 127.0.0.1 (plain sockets, a thread per connection).

    ``stall_at`` makes it go silent at that step (before the greeting, on EHLO/HELO, on MAIL
    FROM) while keeping the connection open until :meth:`stop`; ``data_reply_delay`` delays
    the reply to the end of DATA by that many seconds (the message is recorded before the
    wait). Both are read at each step, so a test can make the server healthy between runs.
    """

    def __init__(self, *, stall_at: Step | None = None, data_reply_delay: float = 0.0) -> None:
        self.stall_at = stall_at
        self.data_reply_delay = data_reply_delay
        self.received: list[Wire] = []
        self.connections = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((HOST, 0))
        self._listener.listen(16)
        self._listener.settimeout(0.1)  # the accept loop notices stop() within this
        self.port = int(self._listener.getsockname()[1])

    def start(self) -> ScriptedServer:
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in list(self._threads):
            thread.join(5)
        self._listener.close()

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self._lock:
                self._sockets.append(conn)
                self.connections += 1
                number = self.connections
            self._spawn(self._serve, conn, number)

    def _stalls(self, step: Step) -> bool:
        if self.stall_at != step:
            return False
        self._stop.wait()  # silent, the connection open, until the test stops the server
        return True

    def _serve(self, conn: socket.socket, number: int) -> None:
        reader = conn.makefile("rb")

        def reply(line: str) -> None:
            conn.sendall(line.encode("ascii") + b"\r\n")

        try:
            if self._stalls("greeting"):
                return
            reply("220 scripted.test ESMTP")
            sender, recipients = "", list[str]()
            while not self._stop.is_set():
                line = reader.readline()
                if not line:
                    return
                command = line.decode("ascii", "replace").strip()
                verb, _, arg = command.partition(" ")
                verb = verb.upper()
                if verb in ("EHLO", "HELO"):
                    if self._stalls("EHLO"):
                        return
                    reply("250 scripted.test")
                elif verb == "MAIL":
                    if self._stalls("MAIL"):
                        return
                    sender = arg.partition(":")[2].strip().strip("<>")
                    recipients = []
                    reply("250 2.1.0 Ok")
                elif verb == "RCPT":
                    recipients.append(arg.partition(":")[2].strip().strip("<>"))
                    reply("250 2.1.5 Ok")
                elif verb == "DATA":
                    reply("354 End data with <CR><LF>.<CR><LF>")
                    wire: list[bytes] = []
                    while (chunk := reader.readline()) != b".\r\n":
                        if not chunk:
                            return
                        wire.append(chunk)
                    data = b"".join(c[1:] if c.startswith(b".") else c for c in wire)
                    with self._lock:
                        for rcpt in recipients:
                            got = Wire(sender, rcpt, b"".join(wire) + b".\r\n", data, number)
                            self.received.append(got)
                        queued = len(self.received)
                    if self.data_reply_delay and self._stop.wait(self.data_reply_delay):
                        return
                    reply(f"250 2.0.0 Ok: queued as {queued}")
                elif verb in ("RSET", "NOOP"):
                    reply("250 2.0.0 Ok")
                elif verb == "QUIT":
                    reply("221 2.0.0 Bye")
                    return
                else:
                    reply("502 5.5.2 Error: command not recognized")
        except OSError:
            return  # the client went away (or stop() cut the connection)
        finally:
            reader.close()
            conn.close()


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
