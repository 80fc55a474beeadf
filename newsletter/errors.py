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
    """A subscriber entry is invalid (the message names the field and, if known, the line)."""


class DeliveryError(NewsletterError):
    """A message could not be delivered."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class StorageError(NewsletterError):
    """The database cannot be opened or migrated."""


class DataRejected(StorageError):
    """The database refused values (too long, out of range): the input is at fault."""
