"""The account emails, built with the ``email`` package from text templates.

* The double opt-in email carries nothing typed into the form but the address it goes to: no
  name (not even in the To header), no profile. Anybody can submit anybody's address, so any
  free text from the form would make this email a relay for the submitter's words to a
  stranger's inbox, under our name. Only the site settings, the validated address and the
  link reach it.
* The welcome email goes out after the owner of the mailbox pressed the confirmation button
  (whose page showed the settings): it says what arrives (papers matching the profile, how
  many at most), when (send time and days, in the subscriber's timezone), how to change it
  (preferences) and how to leave (unsubscribe), and gives the private feed. It greets with
  the name as given, or none; the To header carries the address only.

Every link is built from ``base_url``, never from the request, so a forged Host header cannot
point it elsewhere.
"""

from __future__ import annotations

import textwrap
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

from newsletter.deliver import Envelope
from newsletter.domain import SiteInfo, Subscriber, SubscriberSpec
from newsletter.render_html import strip_controls
from newsletter.web.context import WebContext

CONFIRM_PATH = "/confirm/"
_DAY_NAMES = ("Mondays", "Tuesdays", "Wednesdays", "Thursdays", "Fridays", "Saturdays", "Sundays")


def schedule_text(sub: Subscriber) -> str:
    """When issues go out, in words: ``every day at 07:30 (Europe/London time)``, ``on
    Mondays and Thursdays at 06:30 (Asia/Tokyo time)``."""
    days = [_DAY_NAMES[d] for d in sorted(set(sub.weekdays)) if 0 <= d < len(_DAY_NAMES)]
    if not days or len(days) == len(_DAY_NAMES):
        when = "every day"
    elif len(days) == 1:
        when = f"on {days[0]}"
    else:
        when = f"on {', '.join(days[:-1])} and {days[-1]}"
    return f"{when} at {sub.send_at:%H:%M} ({sub.timezone} time)"


def confirm_url(site: SiteInfo, token: str) -> str:
    return f"{site.base_url}{CONFIRM_PATH}{token}"


def confirmation_message(
    ctx: WebContext, subscriber_id: int, spec: SubscriberSpec, token: str, now: datetime
) -> tuple[Envelope, bytes]:
    """The confirmation email for a subscribe request (a :data:`ComposeConfirmation`)."""
    site = ctx.site
    email = spec.email
    text = ctx.templates.get_template("confirm_email.txt.j2").render(
        site_name=site.name,
        # Always empty, never the form's name (see the module docstring); still passed so
        # that an override template written for the old email renders.
        name="",
        email=email,
        confirm_url=confirm_url(site, token),
        base_url=site.base_url,
    )
    msg = EmailMessage(policy=SMTP)
    msg["From"] = Address(strip_controls(site.from_name), addr_spec=site.from_address)
    msg["To"] = Address(addr_spec=email)
    msg["Subject"] = f"Confirm your subscription to {strip_controls(site.name)}"
    msg["Date"] = format_datetime(now)
    message_id = make_msgid(idstring="confirm", domain=site.domain)
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(text)
    envelope = Envelope(
        sender=site.from_address,
        recipient=email,
        message_id=message_id,
        name_hint=f"confirm_{subscriber_id}_{now:%Y%m%dT%H%M%S}",
    )
    return envelope, msg.as_bytes()


def welcome_message(ctx: WebContext, sub: Subscriber, now: datetime) -> tuple[Envelope, bytes]:
    """The welcome email for a subscriber who just confirmed (a ``ComposeWelcome``)."""
    site = ctx.site
    name = strip_controls(sub.name)
    text = ctx.templates.get_template("welcome_email.txt.j2").render(
        site_name=strip_controls(site.name),
        greeting=f"Hello {name}," if name else "Hello,",
        email=sub.email,
        profile=sub.profile,
        max_papers=sub.max_papers,
        when=textwrap.fill(
            f"When: {schedule_text(sub)}."
            + (
                ""
                if sub.send_when_empty
                else " A day without a new matching paper brings no email."
            ),
            width=72,
            break_long_words=False,
            break_on_hyphens=False,
        ),
        preferences_url=site.preferences_url(sub),
        unsubscribe_url=site.unsubscribe_url(sub),
        atom_url=site.feed_url(sub, "atom"),
        rss_url=site.feed_url(sub, "rss"),
        base_url=site.base_url,
    )
    # Headers up to RFC 5322's 998 characters stay on one line: folding would put the
    # List-Unsubscribe URL on a continuation line (parsed back with a leading space).
    msg = EmailMessage(policy=SMTP.clone(max_line_length=998))
    msg["From"] = Address(strip_controls(site.from_name), addr_spec=site.from_address)
    msg["To"] = Address(addr_spec=sub.email)
    msg["Subject"] = f"Welcome to {strip_controls(site.name)}"
    msg["Date"] = format_datetime(now)
    message_id = make_msgid(idstring="welcome", domain=site.domain)
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"
    msg["List-Unsubscribe"] = f"<{site.unsubscribe_url(sub)}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(text)
    envelope = Envelope(
        sender=site.from_address,
        recipient=sub.email,
        message_id=message_id,
        name_hint=f"welcome_{sub.id}_{now:%Y%m%dT%H%M%S}",
    )
    return envelope, msg.as_bytes()
