"""Form validation through :func:`newsletter.subscribers.make_spec`, one error per field.

The web must accept exactly what the subscribers file and the CLI accept, so it validates with
the same function. ``make_spec`` stops at the first bad field; to show every error next to its
field at once, the failing field is set aside (replaced by a known-good value) and validation
runs again, until it passes or every field has been tried.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from newsletter.domain import Subscriber, SubscriberSpec
from newsletter.errors import SubscriberError
from newsletter.subscribers import FIELDS, Defaults, make_spec, spec_entry

__all__ = ["FormResult", "bounded", "preferences_values", "validate"]

_WHERE = "form"
#: Values that always pass, to keep validating the other fields once one has failed.
_PLACEHOLDERS: Mapping[str, Any] = {
    "email": "placeholder@example.org",
    "profile": "placeholder",
    "timezone": "UTC",
    "send_at": "07:00",
    "days": "",
    "max_papers": 10,
    "min_score": 0,
    "send_when_empty": False,
    "name": "",
}


#: Fields whose valid values are short (``07:30``, ``500``, ``mon``): a longer submission is
#: cut to this many characters before validation, so that its error (which quotes the value)
#: stays one line; it is invalid either way.
SHORT_FIELDS = {"send_at": 16, "max_papers": 16, "days": 16}


def bounded(name: str, value: str) -> str:
    """``value`` cut for its error message when ``name`` is a short field (see
    :data:`SHORT_FIELDS`); other fields are make_spec's to bound (names, profiles)."""
    limit = SHORT_FIELDS.get(name)
    if limit is None or len(value) <= limit:
        return value
    return value[:limit] + "…"


@dataclass(frozen=True)
class FormResult:
    spec: SubscriberSpec | None
    errors: dict[str, str] = field(default_factory=dict)


def validate(entry: Mapping[str, Any], defaults: Defaults) -> FormResult:
    """Validate the form's fields; ``errors`` maps a field name to its error text.

    An entry with a field ``make_spec`` does not know is the caller's bug, not the visitor's
    mistake: its SubscriberError (``field`` None) propagates.

    Length limits (:mod:`newsletter.limits`) are ``make_spec``'s too, so a 37 KB name is
    refused here with the same message the subscribers file and the CLI give.
    """
    values = dict(entry)
    errors: dict[str, str] = {}
    for _ in range(len(FIELDS) + 1):
        try:
            spec = make_spec(values, defaults, where=_WHERE)
        except SubscriberError as exc:
            name = exc.field
            if name is None:
                raise
            if name in errors:  # the placeholder failed too: give up on the others
                break
            errors[name] = exc.detail
            values[name] = _PLACEHOLDERS[name]
            continue
        return FormResult(None if errors else spec, errors)
    return FormResult(None, errors)


def preferences_values(sub: Subscriber) -> dict[str, Any]:
    """The preferences form filled with the stored settings (the fields the form shows)."""
    stored = spec_entry(sub)
    values = {name: stored[name] for name in ("name", "profile", "timezone", "send_at", "days")}
    return {**values, "max_papers": str(sub.max_papers)}
