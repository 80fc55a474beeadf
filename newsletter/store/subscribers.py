"""Subscribers: upserts from config, CLI and CSV, bulk reads, and the web's account flows.

Secret tokens are never compared in SQL. A lookup runs on the SHA-256 of the token
(``token_hash``, ``feed_token_hash``, ``confirm_token_hash``, unique indexes): an index lookup
compares bytes with early exit, but the bytes compared are a hash an attacker cannot choose
prefixes of, so response timing tells nothing about the token. The row found is then checked
with :func:`hmac.compare_digest` against the token given. Confirmation tokens are stored only
as their hash: a copy of the database cannot confirm anybody.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, func, or_, select, text, update
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from newsletter.domain import (
    Subscriber,
    SubscriberSendTime,
    SubscriberSource,
    SubscriberSpec,
    SubscriberStatus,
)
from newsletter.errors import DataRejected
from newsletter.store import rows
from newsletter.store.engine import BATCH, StoreBase, chunks, new_token
from newsletter.store.schema import FeedbackRow, IssueRow, SubscriberRow, token_digest
from newsletter.subscribers import mailbox_key

log = logging.getLogger(__name__)

#: PostgreSQL: the transaction advisory lock that serializes confirmation requests across
#: web processes (SQLite serializes them with its write lock). A fixed 64-bit key, made like
#: the keys of :mod:`newsletter.store.lock`.
CONFIRM_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"newsletter confirmations").digest()[:8], "big", signed=True
)

#: Longest token we look up: ours are 32 characters; anything far longer is not one of ours.
MAX_TOKEN_LENGTH = 128


@dataclass(frozen=True)
class ConfirmationRequest:
    """What a subscribe form submission did.

    ``token`` is the new confirmation token to email, or None when no email must go out:
    ``reason`` then says why (for the log only; the visitor sees the same page either way).
    ``retry_after`` is set only when the cap on confirmation emails refused the request: how
    long until the oldest email in the window leaves it (the web answers 429 with it).
    """

    subscriber_id: int | None
    token: str | None
    reason: str
    retry_after: timedelta | None = None


def _plausible(token: str) -> bool:
    return 0 < len(token) <= MAX_TOKEN_LENGTH


def _like_literal(text: str) -> str:
    """``text`` as a literal inside a LIKE pattern with ``\\`` as the escape character."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _mailbox_sent_since(s: Session, email: str, since: datetime) -> bool:
    """Whether any address of ``email``'s mailbox (the untagged one, or any ``+tag`` of it)
    was handed a confirmation token after ``since``.

    No column holds the mailbox key (that would need a migration): the rows are found by the
    untagged address and a LIKE on ``mailbox+%@domain`` (addresses are stored lower-case),
    then checked with :func:`mailbox_key` itself, which is the rule.
    """
    key = mailbox_key(email)
    mailbox, _, domain = key.rpartition("@")
    pattern = f"{_like_literal(mailbox)}+%@{_like_literal(domain)}"
    found = s.scalars(
        select(SubscriberRow.email).where(
            SubscriberRow.confirm_sent_at > since,
            or_(SubscriberRow.email == key, SubscriberRow.email.like(pattern, escape="\\")),
        )
    )
    return any(mailbox_key(address) == key for address in found)


class SubscriberQueries(StoreBase):
    """Subscribers and their tokens (part of :class:`newsletter.store.Store`)."""

    # ------------------------------------------------------------------ subscribers

    def upsert_subscriber(
        self,
        spec: SubscriberSpec,
        *,
        source: SubscriberSource,
        now: datetime,
        update: bool = True,
        status: SubscriberStatus = SubscriberStatus.ACTIVE,
    ) -> tuple[Subscriber, bool]:
        """Insert a subscriber, or update the settings of an existing one (never its status:
        an unsubscribe must stick whatever the config file says). Returns (subscriber, created).

        Two processes syncing the same new address at once (overlapping runs on PostgreSQL):
        the unique address refuses the second insert, and the unit is run again, finding the
        row the other one made."""
        for attempt in (1, 2):
            try:
                return self._upsert_subscriber(spec, source, now, update, status)
            except IntegrityError:
                if attempt == 2:
                    raise
                log.info("concurrent insert of subscriber %s; retrying", spec.email)
            except (DataError, OverflowError, UnicodeEncodeError) as exc:
                # A value the columns cannot hold, which validation should have refused: the
                # entry's fault, so the caller skips it and goes on with the others.
                detail = " ".join(str(getattr(exc, "orig", None) or exc).split())
                raise DataRejected(
                    f"subscriber {spec.email}: the database refused a value ({detail})"
                ) from None
        raise AssertionError("unreachable")

    def _upsert_subscriber(
        self,
        spec: SubscriberSpec,
        source: SubscriberSource,
        now: datetime,
        update: bool,
        status: SubscriberStatus,
    ) -> tuple[Subscriber, bool]:
        with self._session() as s:
            row = s.scalar(select(SubscriberRow).where(SubscriberRow.email == spec.email))
            created = row is None
            if row is None:
                row = SubscriberRow(
                    email=spec.email,
                    status=status.value,
                    token=new_token(),
                    feed_token=new_token(),
                    source=source.value,
                    created_at=now,
                )
                s.add(row)
            elif not update:
                return rows.subscriber(row), False
            changed = rows.apply_spec(row, spec)
            if created or changed:
                row.updated_at = now
            s.flush()
            return rows.subscriber(row), created

    def subscriber(self, email: str) -> Subscriber | None:
        with self._read() as s:
            row = s.scalar(select(SubscriberRow).where(SubscriberRow.email == email.lower()))
            return rows.subscriber(row) if row else None

    def subscribers(self, status: SubscriberStatus | None = None) -> list[Subscriber]:
        with self._read() as s:
            query = select(SubscriberRow).order_by(SubscriberRow.id)
            if status is not None:
                query = query.where(SubscriberRow.status == status.value)
            return [rows.subscriber(r) for r in s.scalars(query)]

    def subscribers_by_id(
        self, ids: Iterable[int] | None = None, *, status: SubscriberStatus | None = None
    ) -> dict[int, Subscriber]:
        """Subscribers by id, in id order: all of them (or those with ``status``), or the
        given ids (unknown ids are left out)."""
        with self._read() as s:
            query = select(SubscriberRow).order_by(SubscriberRow.id)
            if status is not None:
                query = query.where(SubscriberRow.status == status.value)
            if ids is None:
                return {r.id: rows.subscriber(r) for r in s.scalars(query)}
            found: dict[int, Subscriber] = {}
            for chunk in chunks(sorted(set(ids)), BATCH):
                for r in s.scalars(query.where(SubscriberRow.id.in_(chunk))):
                    found[r.id] = rows.subscriber(r)
            return dict(sorted(found.items()))

    def active_send_times(self) -> dict[int, SubscriberSendTime]:
        """Every active subscriber's send time and address, by id: one query on five short
        columns, so the daemon can refresh 100,000 of them every minute without reading
        profiles or tokens."""
        query = (
            select(
                SubscriberRow.id,
                SubscriberRow.email,
                SubscriberRow.timezone,
                SubscriberRow.send_at,
                SubscriberRow.weekdays,
            )
            .where(SubscriberRow.status == SubscriberStatus.ACTIVE.value)
            .order_by(SubscriberRow.id)
        )
        with self._read() as s:
            return {
                sid: SubscriberSendTime(sid, email, zone, rows.send_at(at), rows.weekdays(days))
                for sid, email, zone, at, days in s.execute(query)
            }

    def active_feed_names(self) -> dict[int, tuple[str, str]]:
        """Every active subscriber's feed token and name, by id: what a feed run needs to
        decide which private feeds to rebuild or remove (one query on three short columns;
        loading 100,000 whole subscribers took 5 s). The few rebuilt are then loaded whole."""
        query = (
            select(SubscriberRow.id, SubscriberRow.feed_token, SubscriberRow.name)
            .where(SubscriberRow.status == SubscriberStatus.ACTIVE.value)
            .order_by(SubscriberRow.id)
        )
        with self._read() as s:
            return {sid: (token, name) for sid, token, name in s.execute(query)}

    def set_subscriber_status(self, email: str, status: SubscriberStatus, now: datetime) -> bool:
        """The operator's status change (CLI). Making a subscriber active clears a bounce
        suppression (newsletter/bounces.py): that is the one way to undo it."""
        cleared = {"suppressed_reason": None, "suppressed_at": None}
        with self._session() as s:
            result = s.execute(
                update(SubscriberRow)
                .where(SubscriberRow.email == email.lower())
                .values(
                    status=status.value,
                    updated_at=now,
                    **(cleared if status is SubscriberStatus.ACTIVE else {}),
                )
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ web accounts

    def subscriber_by_token(self, token: str) -> Subscriber | None:
        """The subscriber whose unsubscribe/preferences/web-view token this is, any status."""
        if not _plausible(token):
            return None
        with self._read() as s:
            row = s.scalar(
                select(SubscriberRow).where(SubscriberRow.token_hash == token_digest(token))
            )
            if row is None or not hmac.compare_digest(row.token.encode(), token.encode()):
                return None
            return rows.subscriber(row)

    def subscriber_by_feed_token(self, feed_token: str) -> Subscriber | None:
        """The subscriber whose private-feed token this is, any status."""
        if not _plausible(feed_token):
            return None
        with self._read() as s:
            row = s.scalar(
                select(SubscriberRow).where(
                    SubscriberRow.feed_token_hash == token_digest(feed_token)
                )
            )
            if row is None or not hmac.compare_digest(row.feed_token.encode(), feed_token.encode()):
                return None
            return rows.subscriber(row)

    def backfill_token_hashes(self) -> int:
        """Hash the tokens of rows written without the mapper events (raw SQL, an old process).

        Run when the web app starts: a row without hashes could not be found by its links.
        """
        with self._session() as s:
            missing = s.scalars(
                select(SubscriberRow).where(
                    or_(SubscriberRow.token_hash.is_(None), SubscriberRow.feed_token_hash.is_(None))
                )
            ).all()
            for row in missing:
                row.token_hash = token_digest(row.token)  # the mapper event recomputes both
            return len(missing)

    def unsubscribe(self, subscriber_id: int, now: datetime) -> bool:
        """Unsubscribe at once; a pending confirmation dies with it. False if already gone."""
        with self._session() as s:
            row = s.get(SubscriberRow, subscriber_id)
            if row is None:
                return False
            row.confirm_token_hash = None
            if row.status == SubscriberStatus.UNSUBSCRIBED.value:
                return False
            row.status = SubscriberStatus.UNSUBSCRIBED.value
            row.updated_at = now
            return True

    def resubscribe(self, subscriber_id: int, now: datetime) -> bool:
        """An unsubscribed subscriber becomes active again (same token, feed and settings);
        False if it is not unsubscribed (a pending one still needs its confirmation)."""
        with self._session() as s:
            result = s.execute(
                update(SubscriberRow)
                .where(
                    SubscriberRow.id == subscriber_id,
                    SubscriberRow.status == SubscriberStatus.UNSUBSCRIBED.value,
                    # suppressed by bounces before unsubscribing: only the operator undoes it
                    SubscriberRow.suppressed_reason.is_(None),
                )
                .values(status=SubscriberStatus.ACTIVE.value, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def subscriber_source(self, subscriber_id: int) -> SubscriberSource | None:
        """Where a subscriber came from: config | cli | csv | web (the domain object omits it)."""
        with self._read() as s:
            found = s.scalar(select(SubscriberRow.source).where(SubscriberRow.id == subscriber_id))
        return None if found is None else SubscriberSource(found)

    def update_preferences(
        self, subscriber_id: int, spec: SubscriberSpec, now: datetime
    ) -> Subscriber | None:
        """Store validated settings (never the email address or status); the next slot uses them."""
        with self._session() as s:
            row = s.get(SubscriberRow, subscriber_id)
            if row is None:
                return None
            if rows.apply_spec(row, spec):
                row.updated_at = now
            s.flush()
            return rows.subscriber(row)

    def request_confirmation(
        self,
        spec: SubscriberSpec,
        now: datetime,
        *,
        resend_after: timedelta,
        max_per_window: int | None = None,
    ) -> ConfirmationRequest:
        """Record a subscribe request and hand out a confirmation token, unless one went out
        lately to the same mailbox or the cap on confirmation emails is reached.

        The rules, in order:

        1. The cap: at most ``max_per_window`` tokens handed out in the last ``resend_after``,
           counted in the table, so that every web process shares it. It is checked first,
           whatever the address, so that a refusal reveals nothing about the address. The
           count is exact: a row's ``confirm_sent_at`` moves only after ``resend_after``, so
           each token of the window is on a row of its own (a withdrawn token was never sent
           and leaves the count).
        2. An active address gets nothing: it is subscribed already, and the form must not
           reveal that.
        3. At most one token per mailbox (:func:`~newsletter.subscribers.mailbox_key`) per
           ``resend_after``: ``victim+1@`` and ``victim+2@`` are one mailbox.
        4. A new address becomes a pending subscriber; a pending or unsubscribed one gets the
           submitted settings and a new token.

        The unit is serialized across processes (SQLite: the write lock its BEGIN takes;
        PostgreSQL: a transaction-level advisory lock), so two simultaneous requests can pass
        neither the cap nor the mailbox rule together.
        """
        token = secrets.token_urlsafe(24)
        digest = token_digest(token)
        since = now - resend_after
        with self._session() as s:
            if self.dialect == "postgresql":
                s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CONFIRM_LOCK_KEY})
            if max_per_window is not None:
                sent, oldest = s.execute(
                    select(func.count(), func.min(SubscriberRow.confirm_sent_at)).where(
                        SubscriberRow.confirm_sent_at > since
                    )
                ).one()
                if sent >= max_per_window and oldest is not None:
                    wait = max(oldest + resend_after - now, timedelta(seconds=1))
                    return ConfirmationRequest(None, None, "confirmation cap reached", wait)
            row = s.scalar(select(SubscriberRow).where(SubscriberRow.email == spec.email))
            if row is not None and row.status == SubscriberStatus.ACTIVE.value:
                return ConfirmationRequest(row.id, None, "already active")
            if row is not None and row.suppressed_reason is not None:  # bounces: operator only
                return ConfirmationRequest(row.id, None, "suppressed address")
            if _mailbox_sent_since(s, spec.email, since):
                known = None if row is None else row.id
                return ConfirmationRequest(known, None, "confirmation sent recently")
            if row is None:
                row = SubscriberRow(
                    email=spec.email,
                    status=SubscriberStatus.PENDING.value,
                    token=new_token(),
                    feed_token=new_token(),
                    source=SubscriberSource.WEB.value,
                    created_at=now,
                    updated_at=now,
                    confirm_token_hash=digest,
                    confirm_sent_at=now,
                )
                rows.apply_spec(row, spec)
                try:
                    with s.begin_nested():
                        s.add(row)
                except IntegrityError:  # the same address submitted twice at the same moment
                    return ConfirmationRequest(None, None, "concurrent request")
                return ConfirmationRequest(row.id, token, "new address")
            claimed = s.execute(
                update(SubscriberRow)
                .where(
                    SubscriberRow.id == row.id,
                    SubscriberRow.status != SubscriberStatus.ACTIVE.value,
                    or_(
                        SubscriberRow.confirm_sent_at.is_(None),
                        SubscriberRow.confirm_sent_at <= now - resend_after,
                    ),
                )
                .values(confirm_token_hash=digest, confirm_sent_at=now)
                .execution_options(synchronize_session=False)
            )
            if not claimed.rowcount:  # type: ignore[attr-defined]
                return ConfirmationRequest(row.id, None, "confirmation sent recently")
            s.refresh(row)
            if rows.apply_spec(row, spec):
                row.updated_at = now
            return ConfirmationRequest(row.id, token, f"{row.status} address")

    def delete_unconfirmed(self, before: datetime) -> int:
        """Delete, in one statement, the pending subscribers (web sign-ups never confirmed)
        created before ``before`` and sent no confirmation since; returns how many.

        A pending row holds an address somebody typed into a form, maybe not its owner's: it
        is kept only as long as its confirmation could still be used. Rows with an issue are
        never deleted, nor rows with a judgment (a pending subscriber has none; the guards keep
        the history safe should a status ever be set by hand)."""
        with self._session() as s:
            result = s.execute(
                delete(SubscriberRow)
                .where(
                    SubscriberRow.status == SubscriberStatus.PENDING.value,
                    SubscriberRow.created_at < before,
                    or_(
                        SubscriberRow.confirm_sent_at.is_(None),
                        SubscriberRow.confirm_sent_at < before,
                    ),
                    ~exists().where(IssueRow.subscriber_id == SubscriberRow.id),
                    ~exists().where(FeedbackRow.subscriber_id == SubscriberRow.id),
                )
                .execution_options(synchronize_session=False)
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    def cancel_confirmation(self, subscriber_id: int, token: str) -> None:
        """The confirmation email could not be sent: forget the token and allow a new request."""
        with self._session() as s:
            s.execute(
                update(SubscriberRow)
                .where(
                    SubscriberRow.id == subscriber_id,
                    SubscriberRow.confirm_token_hash == token_digest(token),
                )
                .values(confirm_token_hash=None, confirm_sent_at=None)
            )

    def _by_confirm_token(
        self, token: str, now: datetime, max_age: timedelta
    ) -> tuple[int, bool] | None:
        """(subscriber id, usable) for a confirmation token still on file; None if unknown."""
        if not _plausible(token):
            return None
        digest = token_digest(token)
        with self._read() as s:
            row = s.scalar(select(SubscriberRow).where(SubscriberRow.confirm_token_hash == digest))
            if row is None or row.confirm_token_hash is None:
                return None
            if not hmac.compare_digest(row.confirm_token_hash, digest):
                return None
            fresh = row.confirm_sent_at is not None and now - row.confirm_sent_at <= max_age
            return row.id, fresh and row.status != SubscriberStatus.ACTIVE.value

    def pending_confirmation(
        self, token: str, now: datetime, *, max_age: timedelta
    ) -> Subscriber | None:
        """The subscriber a confirmation link would activate, if it still can (for the GET page)."""
        found = self._by_confirm_token(token, now, max_age)
        if found is None or not found[1]:
            return None
        with self._read() as s:
            row = s.get(SubscriberRow, found[0])
            return rows.subscriber(row) if row else None

    def confirm_subscription(
        self, token: str, now: datetime, *, max_age: timedelta
    ) -> Subscriber | None:
        """Activate the subscriber of a fresh confirmation token and burn the token (single use).

        The update is conditional on the token hash, so of two simultaneous clicks one wins and
        the other finds nothing; both show the visitor a subscribed page (the caller decides).
        """
        found = self._by_confirm_token(token, now, max_age)
        if found is None or not found[1]:
            return None
        with self._session() as s:
            done = s.execute(
                update(SubscriberRow)
                .where(
                    SubscriberRow.id == found[0],
                    SubscriberRow.confirm_token_hash == token_digest(token),
                )
                .values(
                    status=SubscriberStatus.ACTIVE.value, confirm_token_hash=None, updated_at=now
                )
                .execution_options(synchronize_session=False)
            )
            if not done.rowcount:  # type: ignore[attr-defined]
                return None
            row = s.get(SubscriberRow, found[0])
            return rows.subscriber(row) if row else None
