"""The package's exceptions.

Every error the package raises on purpose derives from :class:`NewsletterError`, and its
message says what went wrong *and* what to do about it, because an operator reads it in a
log at 3 a.m. with no source code at hand.
"""

from __future__ import annotations


class NewsletterError(Exception):
    """Base class of every error this package raises deliberately."""


class ConfigError(NewsletterError):
    """A setting is missing, unknown or has a bad value (the message names the key)."""


class ParseError(NewsletterError):
    """A digest file cannot be read as papers (the message names the file and line)."""


class ProfileError(NewsletterError):
    """A profile string is invalid (the message names the term)."""


class SubscriberError(NewsletterError):
    """A subscriber entry is invalid (the message names the entry, its line if known, the field).

    ``field`` is the subscriber field at fault ("email", "send_at", "profile", …), or None when
    the fault is no one field's value (an unknown field name, an unreadable file, a CSV header).
    ``detail`` is the message without the entry and the field: what a form shows next to the
    field. Without ``detail``, it is the whole message.
    """

    def __init__(
        self, message: str, *, field: str | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.field = field
        self.detail = message if detail is None else detail


class DeliveryError(NewsletterError):
    """A message could not be delivered."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class StorageError(NewsletterError):
    """The database cannot be opened or migrated."""


class DataRejected(StorageError):
    """The database refused values (too long, out of range): the input is at fault."""


class FeedbackError(NewsletterError):
    """A judgment or a muted term cannot be recorded: an unknown paper, a term that cannot be
    muted, a profile the subscribers file owns (the message says what to do instead)."""
