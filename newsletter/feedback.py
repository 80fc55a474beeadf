"""Reader feedback use cases of :class:`newsletter.app.Newsletter` (a mixin): "more / less
like this" judgments of papers, and muting a matched term.

Rules, and why:

* **A judgment is per (subscriber, paper); the latest wins.** It is recorded from the web
  (the button of a link's page: a link scanner that opens every link records nothing) or from
  ``newsletter feedback add``. Any stored paper can be judged; a pending subscriber (a web
  sign-up never confirmed) cannot: they were never sent a paper. Judgments are read in bulk
  (:meth:`FeedbackUseCases.judgments`): planning trains each judging subscriber's model on
  them (:mod:`newsletter.learn`), and a judged paper is never a candidate again.
* **Muting a term appends an exclusion** (``-term``, ``-"a phrase"``, quoted the way
  :func:`newsletter.profile.format_profile` writes terms) to the stored profile, so it is
  visible and undoable on the preferences page like any other term. A term already excluded
  is left alone; the new profile must parse and fit :data:`~newsletter.limits.MAX_PROFILE_CHARS`.
* **A subscriber of the subscribers file cannot mute from a link**: every run syncs the file
  over the stored profile, so the exclusion would vanish at the next run. The page says to
  have the operator add it to the file instead (the preferences page warns the same
  subscribers that the file's settings replace web changes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from newsletter.config import Settings
from newsletter.domain import (
    Judgment,
    Paper,
    Profile,
    ProfileTerm,
    Subscriber,
    SubscriberSource,
    SubscriberStatus,
)
from newsletter.errors import FeedbackError, ProfileError, SubscriberError
from newsletter.limits import MAX_PROFILE_CHARS, unstorable_character
from newsletter.store import FeedbackEntry, Store
from newsletter.subscribers import Defaults, lookup_email

log = logging.getLogger(__name__)

__all__ = ["MAX_MUTE_CHARS", "MAX_PAPER_ID", "FeedbackUseCases", "MutePlan"]

#: The longest term a mute link may carry (profile terms are words and short phrases).
MAX_MUTE_CHARS = 200
#: Paper ids are 32-bit integers in both databases: a larger id in a URL is simply unknown.
MAX_PAPER_ID = 2**31 - 1


@dataclass(frozen=True)
class MutePlan:
    """What muting ``term`` does to a subscriber's profile: ``exclusion`` (e.g.
    ``-"a phrase"``) appended gives ``profile``; ``changed`` is False when the profile
    already excludes the term (then ``profile`` is the stored one)."""

    term: str
    exclusion: str
    profile: str
    changed: bool


class FeedbackUseCases:
    """Feedback use cases; :class:`newsletter.app.Newsletter` provides the attributes."""

    settings: Settings
    store: Store
    defaults: Defaults
    clock: Callable[[], datetime]

    # ------------------------------------------------------------------ lookups

    def feedback_subscriber(self, token: str) -> tuple[Subscriber, bool] | None:
        """Whose "more / less like this" link this token is: (subscriber, via the feed
        token). Emails carry the subscriber's token, private feeds the feed token."""
        sub = self.store.subscriber_by_token(token)
        if sub is not None:
            return sub, False
        sub = self.store.subscriber_by_feed_token(token)
        return None if sub is None else (sub, True)

    def paper(self, paper_id: int) -> Paper | None:
        if not 0 < paper_id <= MAX_PAPER_ID:
            return None
        return self.store.papers_by_id([paper_id]).get(paper_id)

    def _subscriber_by_email(self, email: str) -> Subscriber:
        sub = self.store.subscriber(
            lookup_email(email, allow_local=self.defaults.allow_local_domains)
        )
        if sub is None:
            raise SubscriberError(
                f"no subscriber {email!r}: see `newsletter subscriber list --all`", field="email"
            )
        return sub

    # ------------------------------------------------------------------ judgments

    def record_judgment(self, sub: Subscriber, paper_id: int, judgment: Judgment) -> Paper:
        """Store ``judgment`` of the paper for the subscriber (replacing an earlier one);
        returns the paper. :class:`FeedbackError` for an unknown paper or a pending
        subscriber."""
        if sub.status is SubscriberStatus.PENDING:
            raise FeedbackError(
                f"subscriber {sub.email} has not confirmed the subscription: nothing to judge"
            )
        paper = self.paper(paper_id)
        if paper is None or not self.store.record_judgment(
            sub.id, paper_id, Judgment(judgment), self.clock()
        ):
            raise FeedbackError(
                f"no paper with id {paper_id}: `newsletter rank --profile '...' --json` "
                "shows the ids of stored papers"
            )
        log.info("feedback: subscriber %s: %s paper %s", sub.id, Judgment(judgment), paper_id)
        return paper

    def add_judgment(
        self, email: str, paper_id: int, judgment: Judgment
    ) -> tuple[Subscriber, Paper]:
        """``newsletter feedback add``: the same as the web's button, by address."""
        sub = self._subscriber_by_email(email)
        return sub, self.record_judgment(sub, paper_id, judgment)

    def feedback_of(self, email: str) -> tuple[Subscriber, list[FeedbackEntry]]:
        """``newsletter feedback list``: a subscriber's judgments, latest first."""
        sub = self._subscriber_by_email(email)
        return sub, self.store.feedback_entries(sub.id)

    def judgments(self, subscriber_ids: Iterable[int]) -> dict[int, dict[int, Judgment]]:
        """Every judgment of these subscribers, in bulk: subscriber id → paper id →
        judgment (one query per 500 subscribers)."""
        return self.store.judgments(subscriber_ids)

    # ------------------------------------------------------------------ muting a term

    def plan_mute(self, sub: Subscriber, term: str) -> MutePlan:
        """What muting ``term`` would make of the subscriber's profile, without storing it.

        :class:`FeedbackError` when the term cannot be muted (empty, too long, a quote or a
        control character, no words), when the result would not be a valid profile, or when
        the subscribers file owns the subscriber (its next sync would undo the mute).
        """
        from newsletter.analysis import analyze_query_term
        from newsletter.profile import format_profile, parse_profile

        text = " ".join(term.split())
        if not text or len(text) > MAX_MUTE_CHARS or '"' in text or unstorable_character(text):
            raise FeedbackError(
                f"{text[:MAX_MUTE_CHARS]!r} cannot be muted: a term is a word or a phrase of "
                f"at most {MAX_MUTE_CHARS} characters, without quotes"
            )
        stems = analyze_query_term(text)
        if not stems:
            raise FeedbackError(f"{text!r} cannot be muted: it has no words to match")
        if self.store.subscriber_source(sub.id) is SubscriberSource.CONFIG:
            raise FeedbackError(
                f"the profile of {sub.email} is kept in the subscribers file "
                f"({self.settings.subscribers_file}), which every run applies again: add "
                f"-{text!r} to its profile there instead"
            )
        who = f"subscriber {sub.email}"
        try:
            current = parse_profile(sub.profile, who=who, strict=False)
        except ProfileError as exc:  # stored before today's rules: fix it by hand first
            raise FeedbackError(f"{exc} (fix it on the preferences page)") from None
        if any(t.exclude and not t.title_only and t.stems == stems for t in current.terms):
            return MutePlan(text, "", sub.profile, changed=False)
        exclusion = format_profile(Profile((ProfileTerm(text=text, stems=stems, exclude=True),)))
        profile = f"{sub.profile.rstrip().rstrip(',').rstrip()}, {exclusion}"
        if len(profile) > MAX_PROFILE_CHARS:
            raise FeedbackError(
                f"muting {text!r} would make the profile of {sub.email} longer than "
                f"{MAX_PROFILE_CHARS:,} characters: edit it on the preferences page instead"
            )
        try:
            muted = parse_profile(profile, who=who, strict=False)
        except ProfileError as exc:
            raise FeedbackError(f"{text!r} cannot be muted: {exc}") from None
        if not any(t.exclude and t.stems == stems for t in muted.terms):
            raise FeedbackError(f"{text!r} cannot be muted: it does not read as one term")
        return MutePlan(text, exclusion, profile, changed=True)

    def mute_term(self, sub: Subscriber, term: str) -> MutePlan:
        """Append the exclusion of :meth:`plan_mute` to the stored profile (nothing when the
        term is already excluded). :class:`FeedbackError` as there, or when the profile
        changed since ``sub`` was read (the page is shown again with the new profile)."""
        plan = self.plan_mute(sub, term)
        if plan.changed:
            if not self.store.replace_profile(sub.id, sub.profile, plan.profile, self.clock()):
                raise FeedbackError(
                    f"the profile of {sub.email} changed meanwhile: nothing was muted; "
                    "open the link again"
                )
            log.info("feedback: subscriber %s muted a term", sub.id)
        return plan
