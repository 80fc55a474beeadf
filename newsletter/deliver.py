"""Delivery: one mailer interface, swappable implementations.

* :class:`OutboxMailer` writes each message as an ``.eml`` file (the embedded default: no
  server needed, and any mail client opens the files);
* :class:`MemoryMailer` keeps messages in a list, for unit tests;
* :class:`newsletter.smtp.SmtpMailer` talks to an SMTP server.

A mailer only moves bytes: the issue state machine around it (planned → rendered → sending →
sent) lives in :mod:`newsletter.pipeline` and the database. A mailer reports a failure as a
:class:`~newsletter.errors.DeliveryError` (transient, or ``permanent`` for this message), or as
:class:`MailerUnavailable` when no message can go out at all right now.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from newsletter.errors import DeliveryError

log = logging.getLogger(__name__)


class MailerUnavailable(DeliveryError):
    """Nothing can be delivered now (server unreachable, session refused), whatever the message.

    Unlike a per-message error this says nothing about the issue being sent, so the pipeline
    does not count it against the issue: it hands the claimed issue back, stops delivering for
    this run, and leaves every remaining issue pending for the next run.
    """


class OutcomeUnknown(DeliveryError):
    """The whole message went out but no final reply came (the end-of-DATA reply timed out):
    the server may have queued it. The pipeline records the issue as ``unknown`` instead of
    re-sending it; the operator decides (``newsletter retry``)."""


@dataclass(frozen=True)
class Envelope:
    sender: str
    recipient: str
    message_id: str
    name_hint: str  # a short, safe label for file names and logs, e.g. "2026-11-23_alice"


class Mailer(Protocol):
    """What the pipeline sends through. A mailer that can have several messages in flight
    (:class:`newsletter.smtp.SmtpPool`) says how many in an int attribute
    ``parallel_sessions`` and makes :meth:`send` thread-safe; the pipeline then sends a batch
    from that many threads. Without the attribute a mailer is sent one message at a time
    (the outbox: its writes go to one disk; the memory mailer and the tests' own)."""

    def send(self, envelope: Envelope, message: bytes) -> str:
        """Deliver one message; return where it went (a path, a server reply)."""

    def close(self) -> None:
        """Release connections or handles."""


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

#: Errors writing the outbox that are the file system's fault, not the message's: full (or
#: over quota), failing, remounted read-only, not writable by us, not a folder, or out of file
#: handles. Any of them stops every message alike, so it is :class:`MailerUnavailable`. Other
#: errors (e.g. EFBIG, a message over a file-size limit) stay per-issue.
OUTBOX_OUTAGE_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EIO,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ENOTDIR,
        errno.EMFILE,
        errno.ENFILE,
    }
)


class OutboxMailer:
    """Writes ``<name_hint>.eml`` atomically (temp file, fsync, rename) into a folder.

    The file name is derived from the issue, so writing the same issue twice (a retry
    after a crash) replaces the file instead of adding a second copy.

    A folder that cannot be created, or an error in :data:`OUTBOX_OUTAGE_ERRNOS` while
    writing (a full disk, EIO, a read-only file system...), is :class:`MailerUnavailable`:
    the issue stays pending, its attempt not counted, until the file system is fixed.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def send(self, envelope: Envelope, message: bytes) -> str:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file in the way, no permission, read-only parent...
            raise self._unavailable(exc) from None
        target = self.directory / f"{_UNSAFE.sub('_', envelope.name_hint)}.eml"
        try:
            self._write(target, message)
        except OSError as exc:
            if exc.errno in OUTBOX_OUTAGE_ERRNOS:
                raise self._unavailable(exc) from None
            raise
        return str(target)

    def _write(self, target: Path, message: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".eml")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(message)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _unavailable(self, exc: OSError) -> MailerUnavailable:
        reason = exc.strerror or str(exc)
        code = errno.errorcode.get(exc.errno or 0, "")
        return MailerUnavailable(
            f"outbox {self.directory} not writable: {reason}"
            + (f" ({code})" if code else "")
            + "; nothing is written until the file system is fixed"
        )

    def close(self) -> None:
        return None


@dataclass
class MemoryMailer:
    """Collects messages in memory: for unit tests of the code around a mailer."""

    sent: list[tuple[Envelope, bytes]] = field(default_factory=list)

    def send(self, envelope: Envelope, message: bytes) -> str:
        self.sent.append((envelope, message))
        return f"memory #{len(self.sent)}"

    def close(self) -> None:
        return None
