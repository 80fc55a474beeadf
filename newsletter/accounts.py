"""Subscriber use cases of :class:`newsletter.app.Newsletter`: the CLI's subscriber commands
and the web's account flows (double opt-in, unsubscribe, preferences, archive, feeds).

A mixin so that the application stays one object with one API while its modules stay small;
every rule about subscribers (partial updates, re-activation, the confirmation email's
lifetime and resend limit) is defined here and nowhere in ``cli/`` or ``web/``.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from newsletter.config import Settings
from newsletter.deliver import Envelope
from newsletter.domain import (
    FeedItem,
    FeedVersion,
    FeedWindow,
    IssueContent,
    Paper,
    Subscriber,
    SubscriberSource,
    SubscriberSpec,
    SubscriberStatus,
)
from newsletter.errors import DataRejected, DeliveryError, SubscriberError
from newsletter.store import ConfirmationRequest, Store
from newsletter.subscribers import Defaults, lookup_email, make_spec, read_csv, spec_entry

if TYPE_CHECKING:  # rendering pulls in premailer and lxml: imported where used
    from newsletter.render import EmailRenderer

log = logging.getLogger(__name__)

#: Web handlers run on a thread pool; one archive page is rendered at a time.
_ARCHIVE_RENDER_LOCK = threading.Lock()

#: At most one confirmation email per address in this time.
RESEND_AFTER = timedelta(hours=1)
#: A confirmation link works this long.
CONFIRM_MAX_AGE = timedelta(days=7)

#: Builds the confirmation email for (subscriber id, address, name, token) at a moment.
ComposeConfirmation = Callable[[int, SubscriberSpec, str, datetime], tuple[Envelope, bytes]]
#: Builds the welcome email for a subscriber who just confirmed, at a moment.
ComposeWelcome = Callable[[Subscriber, datetime], tuple[Envelope, bytes]]

#: The kinds of :class:`ConfirmationJob`: the double opt-in email, and the welcome email sent
#: after confirming (which carries no confirmation token: nothing to withdraw if it fails).
CONFIRM, WELCOME = "confirm", "welcome"


@dataclass(frozen=True)
class ConfirmationJob:
    """A composed account email waiting to be sent: a confirmation, and the token it carries
    (so that the token can be withdrawn if the email never goes out), or a welcome email
    (``kind`` :data:`WELCOME`, no token). The repr shows neither the token nor the message,
    so a job can be logged."""

    subscriber_id: int
    token: str = field(repr=False)
    envelope: Envelope
    message: bytes = field(repr=False)
    kind: str = CONFIRM


#: Takes a confirmation email to send later, off the request path; returns False when it
#: cannot take it (its queue is full, it is shutting down). The web's is
#: :meth:`newsletter.web.sender.ConfirmationSender.submit`.
DeliverConfirmation = Callable[[ConfirmationJob], bool]


@dataclass(frozen=True)
class ImportResult:
    added: int
    updated: int
    errors: tuple[str, ...]


class AccountUseCases:
    """Subscriber use cases; :class:`newsletter.app.Newsletter` provides the attributes."""

    settings: Settings
    store: Store
    defaults: Defaults
    clock: Callable[[], datetime]

    def _now(self, now: datetime | None) -> datetime:
        return self.clock() if now is None else now

    def send_message(self, envelope: Envelope, message: bytes) -> str:
        raise NotImplementedError  # pragma: no cover - provided by Newsletter

    def subscribers(self, *, include_unsubscribed: bool = False) -> list[Subscriber]:
        return [
            s
            for s in self.store.subscribers_by_id().values()
            if include_unsubscribed or s.status is not SubscriberStatus.UNSUBSCRIBED
        ]

    def add_subscriber(
        self,
        email: str,
        given: Mapping[str, Any],
        *,
        source: SubscriberSource = SubscriberSource.CLI,
        now: datetime | None = None,
    ) -> tuple[Subscriber, bool]:
        """Add an active subscriber, or update and re-activate an existing one.

        For an existing address only the fields in ``given`` change; the others keep their
        stored values (not the defaults). A new address needs a profile. Returns
        (subscriber, created).
        """
        moment = self._now(now)
        entry: dict[str, Any] = {k: v for k, v in given.items() if v not in (None, "")}
        existing = self.store.subscriber(
            lookup_email(email, allow_local=self.defaults.allow_local_domains)
        )
        if existing is not None:
            entry = {**spec_entry(existing), **entry}
        elif not entry.get("profile"):
            raise SubscriberError(
                f"subscriber add: {email!r} is not subscribed yet: --profile is required "
                "for a new subscriber",
                field="profile",
            )
        spec = make_spec({**entry, "email": email}, self.defaults, where="subscriber add")
        sub, created = self.store.upsert_subscriber(spec, source=source, now=moment)
        if not created and sub.status is not SubscriberStatus.ACTIVE:
            self.store.set_subscriber_status(sub.email, SubscriberStatus.ACTIVE, moment)
            sub = self.store.subscriber(sub.email) or sub
        return sub, created

    def remove_subscriber(self, email: str, now: datetime | None = None) -> str:
        """Unsubscribe by address (history kept); returns the normalized address."""
        address = lookup_email(email, allow_local=self.defaults.allow_local_domains)
        if not self.store.set_subscriber_status(
            address, SubscriberStatus.UNSUBSCRIBED, self._now(now)
        ):
            raise SubscriberError(
                f"no subscriber {email!r}: see `newsletter subscriber list --all`", field="email"
            )
        return address

    def import_subscribers(self, csv_file: Path, now: datetime | None = None) -> ImportResult:
        """Add or update subscribers from a CSV file; bad rows are reported and skipped."""
        result = read_csv(csv_file, self.defaults)
        moment = self._now(now)
        added = updated = 0
        errors = list(result.errors)
        for spec in result.specs:
            try:
                _sub, created = self.store.upsert_subscriber(
                    spec, source=SubscriberSource.CSV, now=moment
                )
            except DataRejected as exc:  # a value validation let through: skip this row only
                errors.append(f"{csv_file}: {exc}")
                continue
            added += created
            updated += not created
        return ImportResult(added, updated, tuple(errors))

    def update_preferences(self, sub: Subscriber, spec: SubscriberSpec) -> Subscriber | None:
        """Store validated settings from the web (never the address or the status).

        Refused (None, nothing stored) for a subscriber of the subscribers file: the next run
        would put the file's settings back, so a change here would be "saved" and then lost.
        The web shows such preferences read-only."""
        if self.from_config_file(sub):
            return None
        return self.store.update_preferences(sub.id, spec, self.clock())

    def from_config_file(self, sub: Subscriber) -> bool:
        """Whether the subscribers file owns this subscriber (a run re-applies its entry)."""
        return self.store.subscriber_source(sub.id) is SubscriberSource.CONFIG

    # ------------------------------------------------------------------ web: lookups

    def subscriber_by_token(self, token: str) -> Subscriber | None:
        """The subscriber of an unsubscribe / preferences / archive link, any status."""
        return self.store.subscriber_by_token(token)

    def subscriber_by_feed_token(self, feed_token: str) -> Subscriber | None:
        return self.store.subscriber_by_feed_token(feed_token)

    def archived_issue(self, sub: Subscriber, slot_date: date) -> IssueContent | None:
        """A sent issue as it was planned: its papers in order with the scores and reasons
        they were sent with, and the moment it was planned; None unless that slot's issue was
        sent (and not pruned by retention). The subscriber and their profile are read as they
        are now."""
        from newsletter.profile import parse_profile

        sent = self.store.sent_issue(sub.id, slot_date)
        if sent is None:
            return None
        return IssueContent(
            subscriber=sub,
            slot_date=sent.slot_date,
            papers=sent.papers,
            profile=parse_profile(sub.profile, who=f"subscriber {sub.email}", strict=False),
            created_at=sent.created_at,
        )

    def archived_issue_html(self, sub: Subscriber, slot_date: date) -> str | None:
        """A sent issue's page in the web archive: None unless that slot's issue was sent
        (and not pruned by retention).

        A sent issue stores no HTML (about 100 KB each): it keeps its papers in order with
        the scores and reasons they were sent with and the moment it was planned, and the
        page is rendered from them (``EmailRenderer.render_page``): the whole issue, every
        paper with its full abstract, under the anchors ``paper-N`` the email links to,
        whatever the email had room for. What is read as it is now is only the subscriber's
        name, timezone and profile (highlighted terms), the site settings, and a paper's
        metadata if a later digest updated it.
        """
        content = self.archived_issue(sub, slot_date)
        if content is None:
            return None
        with _ARCHIVE_RENDER_LOCK:  # the renderer's caches are not shared across threads
            try:
                return self.archive_renderer.render_page(content)
            except SubscriberError as exc:  # an address stored before today's address rule
                log.warning("archive: issue %s of subscriber %s: %s", slot_date, sub.id, exc)
                return None

    @cached_property
    def archive_renderer(self) -> EmailRenderer:
        """The email renderer without the HTML size limit (its own inlined templates, kept
        for the process's life like :attr:`newsletter.app.Newsletter.renderer`)."""
        from newsletter.render import EmailRenderer

        return EmailRenderer(
            self.settings.templates_dir, self.settings.site, max_html_bytes=sys.maxsize
        )

    def recent_days(self, limit: int) -> list[tuple[date, int]]:
        return self.store.recent_days(limit)

    def papers_first_seen_on(
        self, day: date, *, offset: int = 0, limit: int | None = None
    ) -> list[Paper]:
        return self.store.papers_first_seen_on(day, offset=offset, limit=limit)

    def count_papers_first_seen_on(self, day: date) -> int:
        return self.store.count_papers_first_seen_on(day)

    def feed_window(self, now: datetime | None = None) -> FeedWindow:
        """What every feed holds at this moment (``feeds.global_days``, ``feeds.max_entries``)."""
        feeds = self.settings.feeds
        return FeedWindow.ending(self._now(now), days=feeds.global_days, limit=feeds.max_entries)

    def global_feed_items(self, window: FeedWindow) -> list[FeedItem]:
        return self.store.global_feed_items(window)

    def global_feed_version(self, window: FeedWindow) -> FeedVersion:
        return self.store.global_feed_version(window)

    def subscriber_feed_items(self, sub: Subscriber, window: FeedWindow) -> list[FeedItem]:
        return self.store.subscriber_feed_items(sub.id, window)

    def subscriber_feed_version(self, sub: Subscriber, window: FeedWindow) -> FeedVersion:
        return self.store.subscriber_feed_version(sub.id, window)

    def backfill_token_hashes(self) -> int:
        """Hash tokens of rows written without them (raw SQL, an old process): at web start."""
        return self.store.backfill_token_hashes()

    # ------------------------------------------------------------------ web: account flows

    def subscribe(
        self, spec: SubscriberSpec, compose: ComposeConfirmation, deliver: DeliverConfirmation
    ) -> ConfirmationRequest:
        """Double opt-in: record the request and hand a confirmation email to ``deliver``, at
        most once per mailbox per :data:`RESEND_AFTER` (``+tag`` variants of an address are
        one mailbox: :func:`~newsletter.subscribers.mailbox_key`), and at most
        ``web.confirmations_per_hour`` in all; an active address gets nothing (and the caller
        shows the same page whatever happened, so the form reveals nobody). When the cap is
        reached the result's ``retry_after`` says when to try again (the web answers 429).

        The cap is counted in the database, not in a web process's memory: the promise "at
        most N confirmation emails an hour" must hold however many web processes run.

        Nothing is sent here: a web request must not wait for (or queue behind) an SMTP
        server. ``deliver`` takes the job and returns at once (the web's background sender
        queues it for :meth:`send_confirmation` on its own thread); if it cannot take the job
        the token is withdrawn now, as after a failed send, so that a new submission can send
        one at once instead of after :data:`RESEND_AFTER`."""
        now = self.clock()
        request = self.store.request_confirmation(
            spec,
            now,
            resend_after=RESEND_AFTER,
            max_per_window=self.settings.web.confirmations_per_hour,
        )
        if request.token is None or request.subscriber_id is None:
            log.info("subscribe: no confirmation sent (%s)", request.reason)
            return request
        envelope, message = compose(request.subscriber_id, spec, request.token, now)
        job = ConfirmationJob(request.subscriber_id, request.token, envelope, message)
        if deliver(job):
            log.info(
                "subscribe: confirmation for subscriber %s queued (%s)",
                request.subscriber_id,
                request.reason,
            )
        else:
            self.withdraw_confirmation(job, "the send queue is full or closed")
        return request

    def send_confirmation(self, job: ConfirmationJob) -> bool:
        """Send a confirmation or welcome email (the web's sender thread calls this; the
        mailer's own timeouts bound it). If a confirmation cannot be sent its token is
        withdrawn. Returns whether it was sent."""
        try:
            self.send_message(job.envelope, job.message)
        except (DeliveryError, OSError) as exc:
            self.withdraw_confirmation(job, f"send failed: {exc}")
            return False
        what = "confirmation" if job.kind == CONFIRM else "welcome email"
        log.info("subscribe: %s sent to subscriber %s", what, job.subscriber_id)
        return True

    def withdraw_confirmation(self, job: ConfirmationJob, why: str) -> None:
        """A confirmation email will not go out: forget its token (only if it is still the one
        on file), so that the next submission for the address sends a new one at once. A
        welcome email that will not go out is only logged: the subscription stands, and the
        confirmation page showed the same links."""
        if job.kind == WELCOME:
            log.error(
                "confirm: welcome email to subscriber %s not sent (%s)", job.subscriber_id, why
            )
            return
        log.error(
            "subscribe: confirmation for subscriber %s not sent (%s): token withdrawn",
            job.subscriber_id,
            why,
        )
        self.store.cancel_confirmation(job.subscriber_id, job.token)

    def pending_confirmation(self, token: str) -> Subscriber | None:
        """Who a confirmation link would activate, if it still can (the GET page)."""
        return self.store.pending_confirmation(token, self.clock(), max_age=CONFIRM_MAX_AGE)

    def confirm(self, token: str) -> Subscriber | None:
        """Activate the subscriber of a fresh confirmation link; the link works once."""
        sub = self.store.confirm_subscription(token, self.clock(), max_age=CONFIRM_MAX_AGE)
        if sub is not None:
            log.info("confirm: subscriber %s is active", sub.id)
        return sub

    def delete_unconfirmed(self, now: datetime | None = None) -> int:
        """Delete the web sign-ups never confirmed within ``web.unconfirmed_days`` of their
        last request (``run --once`` and the daemon call this); returns how many.

        A pending row is an address somebody typed into the form, maybe somebody else's:
        keeping it forever would keep data its owner never agreed to give us."""
        moment = self._now(now)
        deleted = self.store.delete_unconfirmed(
            moment - timedelta(days=self.settings.web.unconfirmed_days)
        )
        if deleted:
            log.info("deleted %d unconfirmed subscriber(s)", deleted)
        return deleted

    def send_welcome(
        self, sub: Subscriber, compose: ComposeWelcome, deliver: DeliverConfirmation
    ) -> bool:
        """After a confirmation: hand the welcome email (what arrives, when, how to change it
        or leave, the private feed) to ``deliver``, the same background sender as the
        confirmation emails; False (logged) if it could not take it."""
        envelope, message = compose(sub, self.clock())
        job = ConfirmationJob(sub.id, "", envelope, message, kind=WELCOME)
        if deliver(job):
            log.info("confirm: welcome email for subscriber %s queued", sub.id)
            return True
        self.withdraw_confirmation(job, "the send queue is full or closed")
        return False

    def resubscribe(self, sub: Subscriber) -> Subscriber | None:
        """Undo an unsubscribe from the unsubscribe page: the same subscriber, token, feed and
        settings, active again. Only an unsubscribed subscriber comes back (a pending one
        still needs its confirmation); None if nothing changed."""
        if not self.store.resubscribe(sub.id, self.clock()):
            return None
        log.info("resubscribe: subscriber %s is active again", sub.id)
        return self.store.subscriber_by_token(sub.token)

    def unsubscribe(self, sub: Subscriber) -> bool:
        """Unsubscribe at once (a pending confirmation dies with it); False if already gone."""
        done = self.store.unsubscribe(sub.id, self.clock())
        if done:
            log.info("unsubscribe: subscriber %s unsubscribed", sub.id)
        return done
